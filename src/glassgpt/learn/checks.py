"""The grader's checks, in the order a learner builds a GPT.

Every component is tested in isolation against the reference: the reference's weights are loaded
into the learner's module by name (strictly: a readable diff of missing, extra or misshaped
weights), both get the same input (the reference's own input at that trace point), and outputs,
input gradients and weight gradients are compared, each within the tolerance `TOLERANCES` gives
that check. A failing output is matched against the catalogue of common mistakes (`mistakes.py`);
when it matches none, the property checks (unit RMS, relative-only RoPE, causal and grouped-query
attention) try to say what is wrong. The whole model is compared trace point by trace point, so a
failure names the first place where the learner's model leaves the reference's.

A check returns a `CheckResult`; the learner's `NotImplementedError` becomes the TODO to do next.
Every hint comes from the explanation registry (`glassgpt.see.registry`), like the trace view's text.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from glassgpt.config import TrainConfig
from glassgpt.learn import mistakes
from glassgpt.learn.compare import Comparison, compare
from glassgpt.model import taps
from glassgpt.model.config import GPTConfig
from glassgpt.model.gpt import GPT, head_is_tied, rotary_tables
from glassgpt.see.registry import explain, grader_hint
from glassgpt.train.optim import OptimizerSettings, build_optimizers
from glassgpt.train.step import train_step

# How close is close enough, per check and per quantity, as (atol, rtol): a value passes when
# |got - expected| ≤ atol + rtol · |expected|. Each fits its numerics in fp32 and sits 10x or more
# above the largest error of a correct implementation written differently from the reference (the
# test fixtures; docs/reference/learn.md lists the measurements). Outputs of closed-form pieces (norm,
# rotary) are tight, so that an epsilon in the wrong place cannot hide; softmax-and-matmul pieces and
# compositions accumulate rounding and get more room; gradients, which sum over batch and time and
# pass through the norms' cancellations, more again; the loss curve compounds 10 optimiser steps.
TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "forward.norm": {"output": (1e-6, 1e-5), "gradient": (1e-4, 1e-3), "unit_rms": (1e-3, 0.0)},
    "forward.rotary_tables": {"output": (1e-6, 1e-6)},
    "forward.apply_rotary": {"output": (1e-6, 1e-5), "relative": (1e-5, 1e-4)},
    "forward.mlp": {"output": (1e-5, 1e-4), "gradient": (1e-4, 1e-3)},
    "forward.attention": {"output": (1e-5, 1e-4), "gradient": (1e-4, 1e-3), "property": (1e-5, 1e-4)},
    "forward.block": {"output": (2e-5, 2e-4), "gradient": (2e-4, 2e-3)},
    "forward.gpt": {"logits": (1e-4, 1e-4), "loss": (1e-5, 1e-5), "trace_point": (1e-4, 1e-3)},
    "backward.gpt": {"gradient": (1e-4, 1e-3)},
    "optimizer.step": {"parameter": (1e-5, 1e-4)},
    "training.loss_curve": {"loss": (1e-4, 1e-4)},
    # initialisation is random, so its statistics are compared: the standard deviation within 15% of
    # the reference's, the mean within 0.1 standard deviations of 0
    "init.weights": {"std": (0.0, 0.15), "mean_in_stds": (0.1, 0.0)},
}


class CheckFailed(Exception):
    """A check's verdict: what was compared, and (when known) the mistake and a hint."""

    def __init__(self, message: str, comparison: Comparison | None = None, mistake: str | None = None,
                 hint: str | None = None):
        super().__init__(message)
        self.comparison, self.mistake, self.hint = comparison, mistake, hint


def mistake_failure(message: str, mistake_id: str, comparison: Comparison | None = None) -> CheckFailed:
    return CheckFailed(message, comparison, mistake_id, mistakes.BY_ID[mistake_id].hint)


@dataclass
class CheckResult:
    name: str
    phase: str
    status: str  # pass | fail | not_started | error | timeout
    message: str = ""
    max_abs_error: float | None = None
    comparison: dict | None = None
    mistake: str | None = None
    hint: str | None = None
    todo: str | None = None
    milestones: list[str] = field(default_factory=list)  # milestones reached during this check


@dataclass
class Check:
    name: str
    phase: str
    run: Callable  # (Context) -> None; raises CheckFailed; records milestones with ctx.reach
    needs: tuple[str, ...] = ()
    families: tuple[str, ...] = ("nanochat", "gpt2")
    milestones: tuple[str, ...] = ()  # reached when the check passes


MILESTONES = ["model initialises", "forward works", "backward works", "a training step completes",
              "loss decreases", "generation works", "matches the reference"]


# -- the shared setting: a tiny reference model and its traced forward pass ---------------------------


def grading_config(family: str) -> GPTConfig:
    """Small, but with every feature exercised: 2 blocks, 4 query heads sharing 2 key/value heads."""
    return GPTConfig.from_depth(2, 101, family, n_embd=64, n_head=4, n_kv_head=2, sequence_len=16)


class Context:
    def __init__(self, learner, family: str):
        self.learner, self.family = learner, family
        self.config = grading_config(family)
        torch.manual_seed(0)
        self.reference = GPT.build(self.config)
        with torch.no_grad():  # constant weights (zero projections, unit gains) would hide mistakes
            for p in self.reference.parameters():
                if (p == p.flatten()[0]).all():
                    p.add_(torch.randn_like(p) * 0.2)
        self.reference.eval()
        generator = torch.Generator().manual_seed(1)
        self.idx = torch.randint(0, self.config.vocab_size, (2, 12), generator=generator)
        self.targets = torch.randint(0, self.config.vocab_size, (2, 12), generator=generator)
        self.targets[0, :3] = -1  # some ignored targets, as in a chat batch
        with taps.RecordingTracer("*") as tracer:  # every tensor of the real GPT, for first_divergence
            self.ref_logits = self.reference(self.idx)
        self.trace = tracer.tensors
        self.ref_loss = self.reference(self.idx, self.targets)
        T, D = self.idx.shape[1], self.config.head_dim
        self.cos, self.sin = rotary_tables(T, D, self.config.rope_base)

        self.reached: list[str] = []
        self.max_abs_error: float | None = None  # the largest error of the running check's comparisons

    def reach(self, milestone: str) -> None:
        if milestone not in self.reached:
            self.reached.append(milestone)

    def cached(self, name: str) -> torch.Tensor:
        return self.trace[name].clone()

    def compare(self, what: str, expected: torch.Tensor, got, tolerance: tuple[float, float]) -> Comparison:
        """`compare`, remembering the largest error seen, which a passing check reports."""
        comparison = compare(what, expected, got, *tolerance)
        if comparison.max_abs_error is not None:
            self.max_abs_error = max(self.max_abs_error or 0.0, comparison.max_abs_error)
        return comparison


# -- helpers -----------------------------------------------------------------------------------


def tensor_names(module: torch.nn.Module) -> dict[str, str]:
    """Each name in `module.state_dict()` → the first name of the same tensor (itself, unless the
    module registers one tensor under two names, as nanoGPT's `lm_head.weight = wte.weight` does)."""
    first_name: dict[int, str] = {}
    return {name: first_name.setdefault(id(tensor), name) for name, tensor in module.state_dict(keep_vars=True).items()}


def load_into(learner_module: torch.nn.Module, reference_module: torch.nn.Module, what: str) -> None:
    """Load the reference's weights by name, strictly, or fail with a readable diff.

    A second name for one of the reference's tensors (nanoGPT's tied `lm_head.weight`, where the
    reference has only `wte.weight`) is accepted and loaded with that tensor; one tensor of yours
    where the reference has two is a mistake."""
    expected = reference_module.state_dict()
    got = learner_module.state_dict()
    first_of = tensor_names(learner_module)
    missing = [n for n in expected if n not in got]
    second_names = {n: first_of[n] for n in got if n not in expected and first_of[n] in expected}
    extra = [n for n in got if n not in expected and n not in second_names]
    misshaped = [n for n in expected if n in got and tuple(got[n].shape) != tuple(expected[n].shape)]
    if missing or extra or misshaped:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(f"{n} {tuple(expected[n].shape)}" for n in missing[:6]))
        if extra:
            parts.append("unexpected " + ", ".join(f"{n} {tuple(got[n].shape)}" for n in extra[:6]))
        if misshaped:
            parts.append("wrong shape " + ", ".join(
                f"{n}: got {tuple(got[n].shape)}, expected {tuple(expected[n].shape)}" for n in misshaped[:6]))
        hint = grader_hint("init.rotary_buffers") if any(n.startswith("rotary_") for n in extra) else None
        raise CheckFailed(f"{what}: weights differ from the reference: " + "; ".join(parts), hint=hint)
    merged = [(n, first_of[n]) for n in expected if first_of[n] != n and first_of[n] in expected]
    if merged:
        name, same_as = merged[0]
        message = f"{what}: your {name} is the same tensor as your {same_as}; the reference has two separate ones"
        if {name, same_as} == {"lm_head.weight", "wte.weight"}:
            raise mistake_failure(message, "weights_tied")
        raise CheckFailed(message, hint=grader_hint("init.parameter_count"))
    state = copy.deepcopy(expected)
    state.update({n: state[first] for n, first in second_names.items()})
    learner_module.load_state_dict(state, strict=True)


def fail_unless(comparison: Comparison, component: str | None = None, diagnose_args: tuple = (), got=None,
                hint: str | None = None, properties: tuple[Callable[[], None], ...] = ()) -> None:
    """Raise CheckFailed unless `comparison` passed, naming the mistake `got` matches if any.

    When no catalogued mistake matches, each property check runs in turn; the first that fails
    explains the difference (its message, with the comparison kept for the details)."""
    if comparison.ok:
        return
    mistake = mistakes.diagnose(component, got, *diagnose_args) if component and got is not None else None
    if mistake is not None:
        raise mistake_failure(comparison.summary(), mistake.id, comparison)
    for check_property in properties:
        try:
            check_property()
        except CheckFailed as failure:
            failure.comparison = failure.comparison or comparison
            raise
        except Exception:  # the learner's code fails on the property's input: say what was compared
            break
    raise CheckFailed(comparison.summary(), comparison, None, hint)


def upstream_gradient(shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(7))


def compare_gradients(ctx: Context, what: str, reference: torch.nn.Module, learner: torch.nn.Module, x_ref,
                      x_learn, component: str, outputs: tuple, diagnose_args: tuple) -> None:
    """Input gradient, then every weight's gradient, for the same upstream gradient. A gradient
    that differs while the output matched is diagnosed from the (slightly different) output."""
    tolerance = TOLERANCES[component]["gradient"]
    try:
        if x_learn.grad is None:
            raise CheckFailed(f"{what}: no gradient reached the input", hint=grader_hint("gradient.missing"))
        fail_unless(ctx.compare(f"{what}: gradient of the input", x_ref.grad, x_learn.grad, tolerance))
        learner_params = dict(learner.named_parameters(remove_duplicate=False))
        for name, p in reference.named_parameters():
            got = learner_params[name].grad
            if got is None:
                raise CheckFailed(f"{what}: {name} got no gradient", hint=grader_hint("gradient.missing"))
            fail_unless(ctx.compare(f"{what}: gradient of {name}", p.grad, got, tolerance))
    except CheckFailed as failure:
        correct, got = outputs
        mistake = mistakes.diagnose(component, got, *diagnose_args, correct=correct)
        if mistake is not None and failure.mistake is None:
            failure.mistake, failure.hint = mistake.id, mistake.hint
        elif failure.hint is None:
            failure.hint = grader_hint("gradient.only")
        raise


def run_component(ref_module, learner_module, inputs: list[torch.Tensor], extra=()):
    """Forward both with inputs that require grad; backward the same upstream gradient."""
    ref_module.zero_grad(set_to_none=True)
    learner_module.zero_grad(set_to_none=True)
    ref_inputs = [x.clone().requires_grad_(True) for x in inputs]
    learn_inputs = [x.clone().requires_grad_(True) for x in inputs]
    ref_out = ref_module(*ref_inputs, *extra)
    got = learner_module(*learn_inputs, *extra)
    return ref_inputs, learn_inputs, ref_out, got


def backward_both(ref_out: torch.Tensor, got: torch.Tensor) -> None:
    grad = upstream_gradient(ref_out.shape)
    ref_out.backward(grad)
    got.backward(grad)


def learner_model(ctx: Context, load: bool = True):
    model = ctx.learner.GPT(ctx.config)
    if load:
        load_into(model, ctx.reference, "GPT")
    return model


# -- phase: initialisation --------------------------------------------------------------------------


def check_init_attention(ctx: Context):
    load_into(ctx.learner.CausalSelfAttention(ctx.config, 0), ctx.reference.blocks[0].attn, "CausalSelfAttention")


def check_init_mlp(ctx: Context):
    load_into(ctx.learner.MLP(ctx.config, 0), ctx.reference.blocks[0].mlp, "MLP")


def check_init_block(ctx: Context):
    load_into(ctx.learner.Block(ctx.config, 0), ctx.reference.blocks[0], "Block")


def check_init_gpt(ctx: Context):
    model = ctx.learner.GPT(ctx.config)
    if getattr(model, "config", None) is None:
        raise CheckFailed("GPT has no .config attribute", hint=grader_hint("init.config"))
    tied, should_tie = head_is_tied(model), head_is_tied(ctx.reference)
    if tied and not should_tie:
        how = ("your lm_head.weight is wte.weight (tied nanoGPT's way)" if "lm_head.weight" in tensor_names(model)
               else "your GPT has no lm_head.weight")
        raise mistake_failure(f"the head is tied to the embedding: {how}; this family keeps a separate head",
                              "weights_tied")
    if should_tie and not tied:
        raise mistake_failure("your GPT has its own lm_head.weight, a tensor separate from wte.weight; this family "
                              "ties the head to the embedding", "weights_not_tied")
    load_into(model, ctx.reference, "GPT")
    learned = sum(p.numel() for p in model.parameters())
    expected = sum(p.numel() for p in ctx.reference.parameters())
    if learned != expected:
        raise CheckFailed(f"GPT has {learned:,} parameters, the reference {expected:,}",
                          hint=grader_hint("init.parameter_count"))


def check_init_weights(ctx: Context):
    torch.manual_seed(0)
    model = ctx.learner.GPT(ctx.config)
    model.init_weights()
    reference = GPT.build(ctx.config)
    learned = dict(model.named_parameters(remove_duplicate=False))
    std_tolerance, mean_tolerance = TOLERANCES["init.weights"]["std"][1], TOLERANCES["init.weights"]["mean_in_stds"][0]
    for name, p in reference.named_parameters():
        got = learned[name].detach()
        if (p == 0).all():
            if not (got == 0).all():
                raise CheckFailed(f"{name} should start at zero, its std is {got.std().item():.4g}",
                                  hint=grader_hint("init.zero"))
            continue
        if (p == 1).all():
            if not (got == 1).all():
                raise CheckFailed(f"{name} should start at one (a norm gain)", hint=grader_hint("init.one"))
            continue
        expected_std, got_std, got_mean = p.std().item(), got.std().item(), got.mean().item()
        off_centre = abs(got_mean) > mean_tolerance * expected_std + 1e-6
        if off_centre or abs(got_std - expected_std) > std_tolerance * expected_std:
            raise CheckFailed(f"{name}: mean {got_mean:.3g}, std {got_std:.4g}; expected mean 0, std "
                              f"{expected_std:.4g}", hint=_init_hint(ctx, name))


def _init_hint(ctx: Context, name: str) -> str:
    if ctx.family == "gpt2":
        return grader_hint("init.gpt2")
    return grader_hint("init.nanochat.wte" if name == "wte.weight" else "init.nanochat")


# -- phase: forward components ---------------------------------------------------------------------


def check_norm(ctx: Context):
    tolerance = TOLERANCES["forward.norm"]
    reference = ctx.reference.blocks[0].norm_1
    learner = ctx.learner.Norm(ctx.config.n_embd, ctx.config.norm, ctx.config.norm_affine, ctx.config.bias)
    load_into(learner, reference, "Norm")
    x = ctx.cached("blocks.0.resid.pre")
    for label, inputs in (("the reference's input at blocks.0.attn.norm", x),
                          ("a tiny input (x · 1e-3, where eps matters)", x * 1e-3)):
        ref_in, learn_in, ref_out, got = run_component(reference, learner, [inputs])
        # RMS 1 per vector is what RMSNorm is for (not on the tiny input, which eps damps on purpose)
        unit_rms = (functools.partial(_check_unit_rms, got),) if ctx.family == "nanochat" and inputs is x else ()
        fail_unless(ctx.compare(f"Norm output for {label}", ref_out, got, tolerance["output"]), "forward.norm",
                    (reference, inputs), got, properties=unit_rms)
        for check_property in unit_rms:
            check_property()
        backward_both(ref_out, got)
        compare_gradients(ctx, "Norm", reference, learner, ref_in[0], learn_in[0], "forward.norm", (ref_out, got),
                          (reference, inputs))


def _check_unit_rms(got: torch.Tensor) -> None:
    atol = TOLERANCES["forward.norm"]["unit_rms"][0]
    rms = got.detach().square().mean(-1).sqrt()
    if not torch.allclose(rms, torch.ones_like(rms), atol=atol, rtol=0.0):
        raise CheckFailed(f"RMSNorm output should have RMS 1 per vector; yours has {rms.min():.4g}…{rms.max():.4g}",
                          hint=grader_hint("property.unit_rms"))


def check_rotary_tables(ctx: Context):
    T, D, base = 16, ctx.config.head_dim, ctx.config.rope_base
    expected = rotary_tables(T, D, base)
    got = ctx.learner.rotary_tables(T, D, base)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise CheckFailed(f"rotary_tables should return (cos, sin), got {type(got).__name__}")
    for label, e, g in (("cos", expected[0], got[0]), ("sin", expected[1], got[1])):
        comparison = ctx.compare(f"rotary_tables {label}", e, g, TOLERANCES["forward.rotary_tables"]["output"])
        if not comparison.ok:
            mistake = mistakes.diagnose("forward.rotary_tables", got, None, T, D, base)
            raise CheckFailed(comparison.summary(), comparison, mistake and mistake.id, mistake and mistake.hint)


def check_apply_rotary(ctx: Context):
    q = ctx.cached("blocks.0.attn.q")  # (B, T, H, D), the reference's query before rotation
    expected = ctx.cached("blocks.0.attn.q_rot")
    got = ctx.learner.apply_rotary(q.clone(), ctx.cos, ctx.sin)
    relative = functools.partial(_check_rope_is_relative, ctx)
    fail_unless(ctx.compare("apply_rotary on the reference's queries", expected, got,
                            TOLERANCES["forward.apply_rotary"]["output"]),
                "forward.apply_rotary", (None, q, ctx.cos, ctx.sin), got, properties=(relative,))
    relative()


def _check_rope_is_relative(ctx: Context) -> None:
    """After rotating q at position i and k at position j, q·k depends on i - j only."""
    D = ctx.config.head_dim
    cos, sin = rotary_tables(64, D)
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(1, 1, 1, D, generator=generator), torch.randn(1, 1, 1, D, generator=generator)

    def score(i: int, j: int) -> float:
        qi = ctx.learner.apply_rotary(a, cos[i:i + 1], sin[i:i + 1])
        kj = ctx.learner.apply_rotary(b, cos[j:j + 1], sin[j:j + 1])
        return (qi * kj).sum().item()

    atol, rtol = TOLERANCES["forward.apply_rotary"]["relative"]
    near, far = score(7, 3), score(40, 36)
    if not math.isclose(near, far, rel_tol=rtol, abs_tol=atol):
        raise CheckFailed(f"apply_rotary: q·k should depend on the distance only, but positions (7, 3) give "
                          f"{near:.5g} and (40, 36) give {far:.5g}", hint=grader_hint("property.rope_relative"))


def check_mlp(ctx: Context):
    reference = ctx.reference.blocks[0].mlp
    learner = ctx.learner.MLP(ctx.config, 0)
    load_into(learner, reference, "MLP")
    x = ctx.cached("blocks.0.mlp.norm")
    ref_in, learn_in, ref_out, got = run_component(reference, learner, [x])
    fail_unless(ctx.compare("MLP output for the reference's input at blocks.0.mlp.norm", ref_out, got,
                            TOLERANCES["forward.mlp"]["output"]), "forward.mlp", (reference, x), got)
    backward_both(ref_out, got)
    compare_gradients(ctx, "MLP", reference, learner, ref_in[0], learn_in[0], "forward.mlp", (ref_out, got),
                      (reference, x))


def check_attention(ctx: Context):
    reference = ctx.reference.blocks[0].attn
    learner = ctx.learner.CausalSelfAttention(ctx.config, 0)
    load_into(learner, reference, "CausalSelfAttention")
    x = ctx.cached("blocks.0.attn.norm")
    ref_in, learn_in, ref_out, got = run_component(reference, learner, [x], (ctx.cos, ctx.sin))
    properties = (functools.partial(_check_rows_sum_to_one, ctx), functools.partial(_check_causality, ctx, learner, x),
                  functools.partial(_check_gqa, ctx, learner, x))
    fail_unless(ctx.compare("attention output for the reference's input at blocks.0.attn.norm", ref_out, got,
                            TOLERANCES["forward.attention"]["output"]),
                "forward.attention", (reference, x, ctx.cos, ctx.sin), got, properties=properties)
    backward_both(ref_out, got)
    compare_gradients(ctx, "attention", reference, learner, ref_in[0], learn_in[0], "forward.attention",
                      (ref_out, got), (reference, x, ctx.cos, ctx.sin))
    for check_property in properties:
        check_property()


def _check_rows_sum_to_one(ctx: Context) -> None:
    """Make the learner's attention output its own pattern, without any tap: one-hot inputs, values
    that copy the key's position (v_j = e_j) and an output projection that copies head 0. Then
    output[i, :T] is head 0's attention row i: it must sum to 1 and be 0 beyond position i."""
    config, T = ctx.config, ctx.idx.shape[1]
    atol = TOLERANCES["forward.attention"]["property"][0]
    attention = ctx.learner.CausalSelfAttention(config, 0)
    load_into(attention, ctx.reference.blocks[0].attn, "CausalSelfAttention")
    with torch.no_grad():
        attention.c_v.weight.zero_()
        attention.c_proj.weight.zero_()
        for t in range(T):
            attention.c_v.weight[t, t] = 1.0  # kv head 0, dimension t ← input channel t
            attention.c_proj.weight[t, t] = 1.0  # output channel t ← head 0, dimension t
        for layer in (attention.c_v, attention.c_proj):
            if getattr(layer, "bias", None) is not None:
                layer.bias.zero_()
        x = torch.eye(config.n_embd)[:T].unsqueeze(0)  # (1, T, C): position t holds channel t
        rows = attention(x, ctx.cos, ctx.sin)[0, :, :T]  # (T queries, T keys)
    if not torch.allclose(rows.sum(-1), torch.ones(T), atol=10 * atol):
        raise CheckFailed(f"attention weights should sum to 1 over the keys for every query; row sums are "
                          f"{rows.sum(-1).min():.4f}…{rows.sum(-1).max():.4f}",
                          hint=explain("blocks.*.attn.pattern").common_bug)
    if rows.triu(diagonal=1).abs().max() > atol:
        raise mistake_failure("a query attends to later positions (weights above the diagonal are not 0)",
                              "no_causal_mask")


def _check_causality(ctx: Context, learner, x: torch.Tensor) -> None:
    """Changing tokens 8 onwards must leave the outputs at positions 0…7 unchanged (every head)."""
    atol = TOLERANCES["forward.attention"]["property"][0]
    changed = x.clone()
    changed[:, 8:] = torch.randn(changed[:, 8:].shape, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        before, after = learner(x, ctx.cos, ctx.sin), learner(changed, ctx.cos, ctx.sin)
    if not torch.allclose(before[:, :8], after[:, :8], atol=atol):
        raise mistake_failure("attention is not causal: changing tokens 8… changed the outputs at positions 0…7",
                              "no_causal_mask")


def _check_gqa(ctx: Context, learner, x: torch.Tensor) -> None:
    """Grouped-query attention equals full attention whose key/value heads are duplicated."""
    config = ctx.config
    atol, rtol = TOLERANCES["forward.attention"]["property"]
    group = config.n_head // config.n_kv_head
    full_config = copy.deepcopy(config)
    full_config.n_kv_head = config.n_head
    full = ctx.learner.CausalSelfAttention(full_config, 0)
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    for name in ("c_k", "c_v"):
        for suffix in ("weight", "bias"):
            key = f"{name}.{suffix}"
            if key in state:
                heads = state[key].view(config.n_kv_head, config.head_dim, *state[key].shape[1:])
                state[key] = heads.repeat_interleave(group, dim=0).reshape(-1, *state[key].shape[1:])
    full.load_state_dict(state)
    with torch.no_grad():
        grouped, duplicated = learner(x, ctx.cos, ctx.sin), full(x, ctx.cos, ctx.sin)
    if not torch.allclose(grouped, duplicated, atol=atol, rtol=rtol):
        raise CheckFailed(f"grouped-query attention ({config.n_head} query heads, {config.n_kv_head} key/value heads) "
                          "should equal full attention with each key/value head duplicated for its group; yours "
                          f"differs by up to {(grouped - duplicated).abs().max():.3g}", hint=grader_hint("property.gqa"))


def check_block(ctx: Context):
    reference = ctx.reference.blocks[0]
    learner = ctx.learner.Block(ctx.config, 0)
    load_into(learner, reference, "Block")
    x = ctx.cached("blocks.0.resid.pre")
    ref_in, learn_in, ref_out, got = run_component(reference, learner, [x], (ctx.cos, ctx.sin))
    fail_unless(ctx.compare("Block output for the reference's input at blocks.0.resid.pre", ref_out, got,
                            TOLERANCES["forward.block"]["output"]),
                "forward.block", (reference, x, ctx.cos, ctx.sin), got)
    backward_both(ref_out, got)
    compare_gradients(ctx, "Block", reference, learner, ref_in[0], learn_in[0], "forward.block", (ref_out, got),
                      (reference, x, ctx.cos, ctx.sin))


# -- phase: full forward -----------------------------------------------------------------------------


def check_forward(ctx: Context):
    tolerance = TOLERANCES["forward.gpt"]
    model = learner_model(ctx).eval()
    with taps.RecordingTracer("*") as tracer, watch_modules(model, tracer) as never_ran:
        logits = model(ctx.idx)
    if isinstance(logits, torch.Tensor) and logits.shape == ctx.ref_logits.shape:
        ctx.reach("forward works")
    comparison = ctx.compare("GPT logits", ctx.ref_logits, logits, tolerance["logits"])
    if not comparison.ok:
        if isinstance(logits, torch.Tensor) and logits.dim() == 3 and logits.shape[1] == 1:
            raise mistake_failure(comparison.summary(), "last_position_only", comparison)
        if isinstance(logits, torch.Tensor) and "lm_head.logits" not in tracer.tensors:
            _record(tracer, "lm_head.logits", logits)
        mistake = mistakes.diagnose("forward.gpt", logits, ctx.reference, ctx.idx)
        where = first_divergence(ctx, tracer, never_ran)
        raise CheckFailed(comparison.summary() + (f"; {where}" if where else ""), comparison,
                          mistake and mistake.id, mistake and mistake.hint)
    loss = model(ctx.idx, ctx.targets)
    comparison = ctx.compare("GPT loss (some targets are -1)", ctx.ref_loss, loss, tolerance["loss"])
    if not comparison.ok:
        mistake = mistakes.diagnose("forward.gpt.loss", loss, ctx.ref_logits, ctx.idx, ctx.targets)
        raise CheckFailed(comparison.summary(), comparison, mistake and mistake.id,
                          mistake.hint if mistake else grader_hint("loss"))
    all_ignored = model(ctx.idx, torch.full_like(ctx.targets, -1))
    if not torch.isfinite(all_ignored):
        raise CheckFailed(f"the loss of a batch whose targets are all -1 is {all_ignored.item()}, not 0",
                          hint=grader_hint("loss.all_ignored"))


def _watched_points(model: torch.nn.Module) -> list[tuple[str, str, str]]:
    """(module path in the learner's GPT, "input" or "output", the reference's trace point for that
    tensor), in forward order, for the modules the skeleton names: comparing these needs no tap() of
    the learner's. (A pre-norm block's norms read the residual stream: their inputs are resid.pre
    and resid.mid.)"""
    points = [("wte", "output", "embed.tok"), ("wpe", "output", "embed.pos"), ("embed_norm", "output", "embed.norm")]
    for i in range(len(getattr(model, "blocks", None) or [])):
        points += [(f"blocks.{i}.norm_1", "input", f"blocks.{i}.resid.pre"),
                   (f"blocks.{i}.norm_1", "output", f"blocks.{i}.attn.norm"),
                   (f"blocks.{i}.attn", "output", f"blocks.{i}.attn.out"),
                   (f"blocks.{i}.norm_2", "input", f"blocks.{i}.resid.mid"),
                   (f"blocks.{i}.norm_2", "output", f"blocks.{i}.mlp.norm"),
                   (f"blocks.{i}.mlp", "output", f"blocks.{i}.mlp.out"),
                   (f"blocks.{i}", "output", f"blocks.{i}.resid.post")]
    return points + [("final_norm", "output", "final.norm"), ("lm_head", "output", "lm_head.logits_raw")]


def _record(tracer: taps.RecordingTracer, name: str, tensor: torch.Tensor) -> None:
    if name not in tracer.tensors:  # a tap() of the learner's under the same name came first
        tracer.tensors[name] = tensor.detach().clone()
        tracer.order.append(name)


@contextlib.contextmanager
def watch_modules(model: torch.nn.Module, tracer: taps.RecordingTracer):
    """Forward hooks on the learner's embedding, norms, attention, MLP, blocks and head: the first
    input or output of each (see `_watched_points`) goes into `tracer` under the reference's
    trace-point name, in the order the model computes them. Yields the paths of watched modules
    that never ran (filled in on exit)."""
    modules: dict[str, torch.nn.Module] = {}
    for path, _, _ in _watched_points(model):
        with contextlib.suppress(AttributeError):
            module = model.get_submodule(path)
            if isinstance(module, torch.nn.Module):
                modules[path] = module
    # one module at two places (a norm reused) cannot say which of its calls is which
    shared = {id(m) for m in modules.values() if sum(m is other for other in modules.values()) > 1}
    ran: set[str] = set()
    handles, never_ran = [], []

    def record(path: str, name: str, tensor) -> None:
        ran.add(path)
        if isinstance(tensor, torch.Tensor):
            _record(tracer, name, tensor)

    for path, side, name in _watched_points(model):
        module = modules.get(path)
        if module is None or id(module) in shared:
            continue
        if side == "input":
            handles.append(module.register_forward_pre_hook(
                lambda m, inputs, path=path, name=name: record(path, name, inputs[0] if inputs else None)))
        else:
            handles.append(module.register_forward_hook(
                lambda m, inputs, output, path=path, name=name: record(path, name, output)))
    try:
        yield never_ran
    finally:
        for handle in handles:
            handle.remove()
        never_ran.extend(p for p in modules if p not in ran and id(modules[p]) not in shared)


def first_divergence(ctx: Context, tracer: taps.RecordingTracer, never_ran: list[str] = ()) -> str:
    """The first trace point (in the order the learner's model computed it) whose tensor differs from
    the reference's: from the learner's own taps and from the modules the skeleton names."""
    tolerance = TOLERANCES["forward.gpt"]["trace_point"]
    reference_paths = {path for path, _, name in _watched_points(ctx.reference) if name in ctx.trace}
    skipped = [p for p in never_ran if p in reference_paths]
    note = f"; never called: {', '.join(skipped)}" if skipped else ""
    for name in tracer.order:
        if name in ctx.trace:
            comparison = compare(name, ctx.trace[name], tracer.tensors[name], *tolerance)
            if not comparison.ok:
                return f"first difference at trace point {name} ({comparison.summary().split(': ', 1)[1]}){note}"
    return note.removeprefix("; ")


# -- phase: backward, optimiser, training, generation -------------------------------------------------


def check_backward(ctx: Context):
    model = learner_model(ctx)
    reference = copy.deepcopy(ctx.reference)
    model.train(), reference.train()
    model(ctx.idx, ctx.targets).backward()
    reference(ctx.idx, ctx.targets).backward()
    learned = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n, p in learned.items() if p.grad is None]
    if missing:
        raise CheckFailed(f"no gradient reached {', '.join(missing[:4])}", hint=grader_hint("gradient.missing"))
    ctx.reach("backward works")
    for name, p in reference.named_parameters():
        fail_unless(ctx.compare(f"gradient of {name}", p.grad, learned[name].grad,
                                TOLERANCES["backward.gpt"]["gradient"]), hint=grader_hint("gradient.only"))


# AdamW at GPT-2's 1e-3 barely moves a tiny model in 10 steps; the training check asks for 1e-2.
TRAINING_ADAMW_LR = 1e-2


def _settings(ctx: Context, adamw_lr: float = 1e-3) -> OptimizerSettings:
    """The training defaults, which are also the defaults of the skeleton's setup_optimizers (GPT-2's
    AdamW uses beta1 0.9, as in the cpu-tiny-gpt2 preset)."""
    if ctx.family == "nanochat":
        return TrainConfig(adamw_lr=adamw_lr).optimizer_settings()
    return TrainConfig(family="gpt2", adamw_lr=adamw_lr, beta1=0.9).optimizer_settings()


def _learner_optimizers(ctx: Context, model, **kwargs):
    optimizers = ctx.learner.setup_optimizers(model, **kwargs)
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers = [optimizers]
    grouped = [p for o in optimizers for g in o.param_groups for p in g["params"]]
    hint = grader_hint(f"optimizer.{ctx.family}")
    if len(grouped) != len(set(map(id, grouped))):
        raise CheckFailed("a parameter is in two optimiser groups", hint=hint)
    if len(grouped) != len(list(model.parameters())):
        raise CheckFailed(f"{len(list(model.parameters())) - len(grouped)} parameter(s) are in no optimiser group",
                          hint=hint)
    if any("initial_lr" not in g for o in optimizers for g in o.param_groups):
        raise CheckFailed('every param group needs "initial_lr" (the training loop schedules from it)', hint=hint)
    return optimizers


def check_optimizer(ctx: Context):
    """Two steps, from two different batches' gradients: the first AdamW step moves every entry by
    about lr whatever its betas, and the first Muon step is orthogonalised whatever its momentum;
    the second step shows both."""
    model = learner_model(ctx)
    reference = copy.deepcopy(ctx.reference)
    optimizers = _learner_optimizers(ctx, model)
    ref_optimizers = build_optimizers(reference, _settings(ctx))
    reference.train()
    learned = dict(model.named_parameters(remove_duplicate=False))
    batches = [(ctx.idx, ctx.targets), (ctx.idx.flip(1), ctx.targets.flip(0))]
    for step, (idx, targets) in enumerate(batches, start=1):
        reference.zero_grad(set_to_none=True)
        reference(idx, targets).backward()
        # The same gradients for both, so that only the optimisers are compared. (Gradients that are
        # zero in exact arithmetic, such as a key bias's, are float noise that AdamW would amplify.)
        for name, p in reference.named_parameters():
            learned[name].grad = p.grad.clone()
        for o in optimizers + ref_optimizers:
            o.step()
        ctx.reach("a training step completes")
        for name, p in reference.named_parameters():
            fail_unless(ctx.compare(f"{name} after optimiser step {step}", p, learned[name],
                                    TOLERANCES["optimizer.step"]["parameter"]),
                        hint=grader_hint(f"optimizer.{ctx.family}"))


def training_batches(config: GPTConfig, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A learnable toy language: each token is (3 · previous + 1) mod V, from random starts."""
    generator = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(steps):
        start = torch.randint(0, config.vocab_size, (4, 1), generator=generator)
        sequence = [start]
        for _ in range(config.sequence_len):
            sequence.append((sequence[-1] * 3 + 1) % config.vocab_size)
        tokens = torch.cat(sequence, dim=1)
        batches.append((tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()))
    return batches


def check_training(ctx: Context, steps: int = 10):
    model = learner_model(ctx)
    reference = copy.deepcopy(ctx.reference)
    lr = {"lr": TRAINING_ADAMW_LR} if ctx.family == "gpt2" else {}
    optimizers = _learner_optimizers(ctx, model, **lr)
    ref_optimizers = build_optimizers(reference, _settings(ctx, TRAINING_ADAMW_LR))
    model.train(), reference.train()
    losses, ref_losses = [], []
    for x, y in training_batches(ctx.config, steps):
        for m, opts, record in ((model, optimizers, losses), (reference, ref_optimizers, ref_losses)):
            record.append(train_step(m, opts, [(x, y)]).loss)  # the step glassgpt train takes, at the peak lr
    if losses[-1] < losses[0]:
        ctx.reach("loss decreases")
    comparison = ctx.compare(f"loss over {steps} training steps", torch.tensor(ref_losses), torch.tensor(losses),
                             TOLERANCES["training.loss_curve"]["loss"])
    if not comparison.ok:
        step = comparison.first_difference["index"][0] + 1
        raise CheckFailed(f"the loss curve leaves the reference's at step {step}: "
                          f"{', '.join(f'{v:.4f}' for v in losses)} vs {', '.join(f'{v:.4f}' for v in ref_losses)}",
                          comparison, hint=grader_hint("training.curve"))
    if losses[-1] >= losses[0]:
        raise CheckFailed(f"the loss did not decrease over {steps} steps: {losses[0]:.4f} → {losses[-1]:.4f}",
                          hint=grader_hint("training.curve"))


@torch.no_grad()
def reference_greedy(model: GPT, prompt: torch.Tensor, max_new_tokens: int) -> list[int]:
    """What the skeleton's generate asks for, computed by the real GPT: argmax of the last position,
    with the context cropped to the last sequence_len tokens."""
    idx = prompt.clone()
    for _ in range(max_new_tokens):
        logits = model(idx[:, -model.config.sequence_len:])  # (1, T, V)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0, prompt.shape[1]:].tolist()


def check_generation(ctx: Context):
    model = learner_model(ctx).eval()
    prompt, new_tokens = ctx.idx[:1, :5], 20
    out = ctx.learner.generate(model, prompt.clone(), new_tokens, temperature=0.0)
    expected_shape = (1, prompt.shape[1] + new_tokens)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected_shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckFailed(f"generate should return {expected_shape} for a {tuple(prompt.shape)} prompt and "
                          f"{new_tokens} new tokens, got {shape}")
    ctx.reach("generation works")
    expected = reference_greedy(ctx.reference, prompt, new_tokens)
    got = out[0, prompt.shape[1]:].tolist()
    if got != expected:
        first = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
        full_at = ctx.config.sequence_len - prompt.shape[1]  # from this new token on, the context is cropped
        raise CheckFailed(f"greedy generation differs from the reference's at new token {first}: got {got[first]}, "
                          f"expected {expected[first]}" + (f" (the context is longer than sequence_len "
                                                           f"{ctx.config.sequence_len} from new token {full_at} on)"
                                                           if first >= full_at else ""),
                          hint=grader_hint("generation.crop" if first >= full_at else "generation.greedy"))


CHECKS: list[Check] = [
    Check("init.attention", "initialisation", check_init_attention),
    Check("init.mlp", "initialisation", check_init_mlp),
    Check("init.block", "initialisation", check_init_block, ("init.attention", "init.mlp")),
    Check("init.gpt", "initialisation", check_init_gpt, ("init.block",), milestones=("model initialises",)),
    Check("init.weights", "weight init", check_init_weights, ("init.gpt",)),
    Check("forward.norm", "forward components", check_norm),
    Check("forward.rotary_tables", "forward components", check_rotary_tables, families=("nanochat",)),
    Check("forward.apply_rotary", "forward components", check_apply_rotary, families=("nanochat",)),
    Check("forward.mlp", "forward components", check_mlp, ("init.mlp",)),
    Check("forward.attention", "forward components", check_attention, ("init.attention",)),
    Check("forward.block", "forward components", check_block, ("init.block", "forward.norm", "forward.attention",
                                                               "forward.mlp")),
    Check("forward.gpt", "full forward", check_forward, ("init.gpt", "forward.block")),
    Check("backward.gpt", "backward", check_backward, ("forward.gpt",)),
    Check("optimizer.step", "optimizer step", check_optimizer, ("backward.gpt",)),
    Check("training.loss_curve", "training", check_training, ("optimizer.step",)),
    Check("generation.greedy", "generation", check_generation, ("forward.gpt",)),
]
