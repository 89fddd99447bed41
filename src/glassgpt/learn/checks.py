"""The grader's checks, in the order a learner builds a GPT.

Every component is tested in isolation against the reference: the reference's weights are loaded
into the learner's module by name (strictly: a readable diff of missing, extra or misshaped
weights), both get the same input (the reference's own input at that trace point), and outputs,
input gradients and weight gradients are compared. Failing outputs are matched against the
catalogue of common mistakes (`mistakes.py`).

A check returns a `CheckResult`; the learner's `NotImplementedError` becomes the TODO to do next.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from glassgpt.config import TrainConfig
from glassgpt.engine import Engine
from glassgpt.learn import mistakes
from glassgpt.learn.compare import Comparison, compare
from glassgpt.model import taps
from glassgpt.model.config import GPTConfig
from glassgpt.model.gpt import GPT, rotary_tables
from glassgpt.see.registry import explain
from glassgpt.train.optim import OptimizerSettings, build_optimizers


class CheckFailed(Exception):
    """A check's verdict: what was compared, and (when known) the mistake and a hint."""

    def __init__(self, message: str, comparison: Comparison | None = None, mistake: str | None = None,
                 hint: str | None = None):
        super().__init__(message)
        self.comparison, self.mistake, self.hint = comparison, mistake, hint


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
        with taps.RecordingTracer("*") as tracer:
            self.ref_logits = self.reference(self.idx)
        self.trace = tracer.tensors
        self.ref_loss = self.reference(self.idx, self.targets)
        T, D = self.idx.shape[1], self.config.head_dim
        self.cos, self.sin = rotary_tables(T, D, self.config.rope_base)

        self.reached: list[str] = []

    def reach(self, milestone: str) -> None:
        if milestone not in self.reached:
            self.reached.append(milestone)

    def cached(self, name: str) -> torch.Tensor:
        return self.trace[name].clone()


# -- helpers -----------------------------------------------------------------------------------


def load_into(learner_module: torch.nn.Module, reference_module: torch.nn.Module, what: str) -> None:
    """Load the reference's weights by name, strictly, or fail with a readable diff."""
    expected = reference_module.state_dict()
    got = learner_module.state_dict()
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
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
        hint = None
        if any(n.startswith("rotary_") for n in extra):
            hint = "register the rotary tables with persistent=False: they are computed, not learned, so they are not saved"
        raise CheckFailed(f"{what}: weights differ from the reference: " + "; ".join(parts), hint=hint)
    learner_module.load_state_dict(copy.deepcopy(expected), strict=True)


def expect(comparison: Comparison, component: str | None = None, diagnose_args: tuple = (), got=None,
           hint: str | None = None) -> None:
    if comparison.ok:
        return
    mistake = mistakes.diagnose(component, got, *diagnose_args) if component and got is not None else None
    raise CheckFailed(comparison.summary(), comparison, mistake.id if mistake else None,
                      mistake.hint if mistake else hint)


def upstream_gradient(shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(7))


def compare_gradients(what: str, reference: torch.nn.Module, learner: torch.nn.Module, x_ref, x_learn,
                      component: str, outputs: tuple, diagnose_args: tuple) -> None:
    """Input gradient, then every weight's gradient, for the same upstream gradient. A gradient
    that differs while the output matched is diagnosed from the (slightly different) output."""
    try:
        expect(compare(f"{what}: gradient of the input", x_ref.grad, x_learn.grad, atol=1e-4, rtol=1e-3))
        learner_params = dict(learner.named_parameters())
        for name, p in reference.named_parameters():
            got = learner_params[name].grad
            if got is None:
                raise CheckFailed(f"{what}: {name} got no gradient (is it used in forward, without .detach()?)")
            expect(compare(f"{what}: gradient of {name}", p.grad, got, atol=1e-4, rtol=1e-3))
    except CheckFailed as failure:
        correct, got = outputs
        mistake = mistakes.diagnose(component, got, *diagnose_args, correct=correct)
        if mistake is not None and failure.mistake is None:
            failure.mistake, failure.hint = mistake.id, mistake.hint
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
    names = set(model.state_dict())
    if ctx.family == "nanochat" and "lm_head.weight" not in names and "wte.weight" in names:
        raise CheckFailed("GPT has no lm_head.weight", mistake="weights_tied", hint=mistakes.BY_ID["weights_tied"].hint)
    if ctx.family == "gpt2" and "lm_head.weight" in names:
        raise CheckFailed("GPT has its own lm_head.weight", mistake="weights_not_tied",
                          hint=mistakes.BY_ID["weights_not_tied"].hint)
    if getattr(model, "config", None) is None:
        raise CheckFailed("GPT has no .config attribute: keep self.config = config (training reads it)")
    load_into(model, ctx.reference, "GPT")
    learned = sum(p.numel() for p in model.parameters())
    expected = sum(p.numel() for p in ctx.reference.parameters())
    if learned != expected:
        raise CheckFailed(f"GPT has {learned:,} parameters, the reference {expected:,} (a weight is counted twice?)")


def check_init_weights(ctx: Context):
    torch.manual_seed(0)
    model = ctx.learner.GPT(ctx.config)
    model.init_weights()
    reference = GPT.build(ctx.config)
    learned = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        got = learned[name].detach()
        if (p == 0).all():
            if not (got == 0).all():
                raise CheckFailed(f"{name} should start at zero, its std is {got.std().item():.4g}",
                                  hint="zero-initialised output projections make each block start as the identity")
            continue
        if (p == 1).all():
            if not (got == 1).all():
                raise CheckFailed(f"{name} should start at one (a norm gain)")
            continue
        expected_std, got_std = p.std().item(), got.std().item()
        if abs(got.mean().item()) > 0.1 * expected_std + 1e-6 or not 0.85 < got_std / expected_std < 1.15:
            raise CheckFailed(f"{name}: mean {got.mean().item():.3g}, std {got_std:.4g}; expected mean 0, std "
                              f"{expected_std:.4g}", hint=_init_hint(ctx, name))


def _init_hint(ctx: Context, name: str) -> str:
    if ctx.family == "gpt2":
        return "normal(0, 0.02), and 0.02 / sqrt(2 · n_layer) for the c_proj layers"
    if name == "wte.weight":
        return "the embedding starts as normal(0, 1): the embedding norm rescales it"
    return "normal(0, s) with s = min(1, sqrt(fan_out / fan_in)) / sqrt(fan_in), fan_in = in_features"


# -- phase: forward components ---------------------------------------------------------------------


def check_norm(ctx: Context):
    reference = ctx.reference.blocks[0].norm_1
    learner = ctx.learner.Norm(ctx.config.n_embd, ctx.config.norm, ctx.config.norm_affine, ctx.config.bias)
    load_into(learner, reference, "Norm")
    x = ctx.cached("blocks.0.resid.pre")
    for label, inputs in (("the reference's input at blocks.0.attn.norm", x),
                          ("a tiny input (x · 1e-3, where eps matters)", x * 1e-3)):
        ref_in, learn_in, ref_out, got = run_component(reference, learner, [inputs])
        expect(compare(f"Norm output for {label}", ref_out, got), "forward.norm", (reference, inputs), got)
        grad = upstream_gradient(ref_out.shape)
        ref_out.backward(grad)
        got.backward(grad)
        compare_gradients("Norm", reference, learner, ref_in[0], learn_in[0], "forward.norm", (ref_out, got),
                          (reference, inputs))
        if ctx.family == "nanochat" and inputs is x:  # a property worth seeing: unit RMS per vector
            rms = got.detach().square().mean(-1).sqrt()
            if not torch.allclose(rms, torch.ones_like(rms), atol=1e-3):
                raise CheckFailed(f"RMSNorm output should have RMS 1 per vector; got {rms.min():.4f}…{rms.max():.4f}")


def check_rotary_tables(ctx: Context):
    T, D, base = 16, ctx.config.head_dim, ctx.config.rope_base
    expected = rotary_tables(T, D, base)
    got = ctx.learner.rotary_tables(T, D, base)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise CheckFailed(f"rotary_tables should return (cos, sin), got {type(got).__name__}")
    for label, e, g in (("cos", expected[0], got[0]), ("sin", expected[1], got[1])):
        comparison = compare(f"rotary_tables {label}", e, g, atol=1e-5)
        if not comparison.ok:
            mistake = mistakes.diagnose("forward.rotary_tables", got, None, T, D, base)
            raise CheckFailed(comparison.summary(), comparison, mistake and mistake.id, mistake and mistake.hint)


def check_apply_rotary(ctx: Context):
    q = ctx.cached("blocks.0.attn.q")  # (B, T, H, D), the reference's query before rotation
    expected = ctx.cached("blocks.0.attn.q_rot")
    got = ctx.learner.apply_rotary(q.clone(), ctx.cos, ctx.sin)
    expect(compare("apply_rotary on the reference's queries", expected, got), "forward.apply_rotary",
           (None, q, ctx.cos, ctx.sin), got)
    # property: after rotating q at i and k at j, q·k depends on i - j only
    D = ctx.config.head_dim
    cos, sin = rotary_tables(64, D)
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(1, 1, 1, D, generator=generator), torch.randn(1, 1, 1, D, generator=generator)

    def score(i: int, j: int) -> float:
        qi = ctx.learner.apply_rotary(a, cos[i:i + 1], sin[i:i + 1])
        kj = ctx.learner.apply_rotary(b, cos[j:j + 1], sin[j:j + 1])
        return (qi * kj).sum().item()

    if not math.isclose(score(7, 3), score(40, 36), rel_tol=1e-4, abs_tol=1e-5):
        raise CheckFailed("apply_rotary: q·k should depend on the distance only, but (7, 3) and (40, 36) differ")


def check_mlp(ctx: Context):
    reference = ctx.reference.blocks[0].mlp
    learner = ctx.learner.MLP(ctx.config, 0)
    load_into(learner, reference, "MLP")
    x = ctx.cached("blocks.0.mlp.norm")
    ref_in, learn_in, ref_out, got = run_component(reference, learner, [x])
    expect(compare("MLP output for the reference's input at blocks.0.mlp.norm", ref_out, got), "forward.mlp",
           (reference, x), got)
    grad = upstream_gradient(ref_out.shape)
    ref_out.backward(grad)
    got.backward(grad)
    compare_gradients("MLP", reference, learner, ref_in[0], learn_in[0], "forward.mlp", (ref_out, got), (reference, x))


def check_attention(ctx: Context):
    reference = ctx.reference.blocks[0].attn
    learner = ctx.learner.CausalSelfAttention(ctx.config, 0)
    load_into(learner, reference, "CausalSelfAttention")
    x = ctx.cached("blocks.0.attn.norm")
    ref_in, learn_in, ref_out, got = run_component(reference, learner, [x], (ctx.cos, ctx.sin))
    comparison = compare("attention output for the reference's input at blocks.0.attn.norm", ref_out, got)
    if not comparison.ok:
        mistake = mistakes.diagnose("forward.attention", got, reference, x, ctx.cos, ctx.sin)
        if mistake is None:  # not a catalogued mistake: the properties may still say what is wrong
            _check_rows_sum_to_one(ctx)
            _check_causality(ctx, learner, x)
        expect(comparison, "forward.attention", (reference, x, ctx.cos, ctx.sin), got)
    grad = upstream_gradient(ref_out.shape)
    ref_out.backward(grad)
    got.backward(grad)
    compare_gradients("attention", reference, learner, ref_in[0], learn_in[0], "forward.attention", (ref_out, got),
                      (reference, x, ctx.cos, ctx.sin))
    _check_rows_sum_to_one(ctx)
    _check_causality(ctx, learner, x)
    _check_gqa(ctx, learner, x)


def _check_rows_sum_to_one(ctx: Context) -> None:
    """Make the learner's attention output its own pattern, without any tap: one-hot inputs, values
    that copy the key's position (v_j = e_j) and an output projection that copies head 0. Then
    output[i, :T] is head 0's attention row i: it must sum to 1 and be 0 beyond position i."""
    config, T = ctx.config, ctx.idx.shape[1]
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
    if not torch.allclose(rows.sum(-1), torch.ones(T), atol=1e-4):
        raise CheckFailed(f"attention weights should sum to 1 over the keys for every query; row sums are "
                          f"{rows.sum(-1).min():.4f}…{rows.sum(-1).max():.4f}",
                          hint=explain("blocks.*.attn.pattern").common_bug)
    if rows.triu(diagonal=1).abs().max() > 1e-5:
        raise CheckFailed("a query attends to later positions (weights above the diagonal are not 0)",
                          mistake="no_causal_mask", hint=mistakes.BY_ID["no_causal_mask"].hint)


def _check_causality(ctx: Context, learner, x: torch.Tensor) -> None:
    changed = x.clone()
    changed[:, 8:] = torch.randn_like(changed[:, 8:])
    with torch.no_grad():
        before, after = learner(x, ctx.cos, ctx.sin), learner(changed, ctx.cos, ctx.sin)
    if not torch.allclose(before[:, :8], after[:, :8], atol=1e-5):
        raise CheckFailed("attention is not causal: changing tokens 8… changed the outputs at positions 0…7",
                          mistake="no_causal_mask", hint=mistakes.BY_ID["no_causal_mask"].hint)


def _check_gqa(ctx: Context, learner, x: torch.Tensor) -> None:
    """Grouped-query attention equals full attention whose key/value heads are duplicated."""
    config = ctx.config
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
        if not torch.allclose(learner(x, ctx.cos, ctx.sin), full(x, ctx.cos, ctx.sin), atol=1e-5):
            raise CheckFailed("grouped-query attention should equal full attention with each key/value head "
                              "duplicated for its group", mistake="kv_heads_tiled",
                              hint=mistakes.BY_ID["kv_heads_tiled"].hint)


def check_block(ctx: Context):
    reference = ctx.reference.blocks[0]
    learner = ctx.learner.Block(ctx.config, 0)
    load_into(learner, reference, "Block")
    x = ctx.cached("blocks.0.resid.pre")
    ref_in, learn_in, ref_out, got = run_component(reference, learner, [x], (ctx.cos, ctx.sin))
    expect(compare("Block output for the reference's input at blocks.0.resid.pre", ref_out, got), "forward.block",
           (reference, x, ctx.cos, ctx.sin), got)
    grad = upstream_gradient(ref_out.shape)
    ref_out.backward(grad)
    got.backward(grad)
    compare_gradients("Block", reference, learner, ref_in[0], learn_in[0], "forward.block", (ref_out, got),
                      (reference, x, ctx.cos, ctx.sin))


# -- phase: full forward -----------------------------------------------------------------------------


def check_forward(ctx: Context):
    model = learner_model(ctx).eval()
    with taps.RecordingTracer("*") as tracer:
        logits = model(ctx.idx)
    if isinstance(logits, torch.Tensor) and logits.shape == ctx.ref_logits.shape:
        ctx.reach("forward works")
    comparison = compare("GPT logits", ctx.ref_logits, logits)
    if not comparison.ok:
        if isinstance(logits, torch.Tensor) and logits.dim() == 3 and logits.shape[1] == 1:
            raise CheckFailed(comparison.summary(), comparison, "last_position_only",
                              mistakes.BY_ID["last_position_only"].hint)
        mistake = mistakes.diagnose("forward.gpt", logits, ctx.reference, ctx.idx)
        where = first_divergence(ctx, tracer)
        raise CheckFailed(comparison.summary() + (f"; {where}" if where else ""), comparison,
                          mistake and mistake.id, mistake and mistake.hint)
    loss = model(ctx.idx, ctx.targets)
    comparison = compare("GPT loss (some targets are -1)", ctx.ref_loss, loss)
    if not comparison.ok:
        mistake = mistakes.diagnose("forward.gpt.loss", loss, ctx.ref_logits, ctx.idx, ctx.targets)
        raise CheckFailed(comparison.summary(), comparison, mistake and mistake.id,
                          mistake.hint if mistake else explain("loss").common_bug)
    all_ignored = model(ctx.idx, torch.full_like(ctx.targets, -1))
    if not torch.isfinite(all_ignored):
        raise CheckFailed("the loss of a batch whose targets are all -1 is NaN; divide by max(count, 1)")


def first_divergence(ctx: Context, tracer: taps.RecordingTracer) -> str:
    """The first trace point (in the learner's order) whose tensor differs from the reference's."""
    if not tracer.order:
        return "tap your tensors (tap('blocks.0.attn.q', q)…) to see where the first difference appears"
    for name in tracer.order:
        if name in ctx.trace:
            comparison = compare(name, ctx.trace[name], tracer.tensors[name])
            if not comparison.ok:
                return f"first difference at trace point {name} ({comparison.summary().split(': ', 1)[1]})"
    return ""


# -- phase: backward, optimiser, training, generation -------------------------------------------------


def check_backward(ctx: Context):
    model = learner_model(ctx)
    reference = copy.deepcopy(ctx.reference)
    model.train(), reference.train()
    model(ctx.idx, ctx.targets).backward()
    reference(ctx.idx, ctx.targets).backward()
    learned = dict(model.named_parameters())
    missing = [n for n, p in learned.items() if p.grad is None]
    if missing:
        raise CheckFailed(f"no gradient reached {', '.join(missing[:4])} (detached, or unused in forward?)")
    ctx.reach("backward works")
    for name, p in reference.named_parameters():
        expect(compare(f"gradient of {name}", p.grad, learned[name].grad, atol=1e-4, rtol=1e-3))


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
    if len(grouped) != len(set(map(id, grouped))):
        raise CheckFailed("a parameter is in two optimiser groups")
    if len(grouped) != len(list(model.parameters())):
        raise CheckFailed(f"{len(list(model.parameters())) - len(grouped)} parameter(s) are in no optimiser group")
    if any("initial_lr" not in g for o in optimizers for g in o.param_groups):
        raise CheckFailed('every param group needs "initial_lr" (the training loop schedules from it)')
    return optimizers


def check_optimizer(ctx: Context):
    model = learner_model(ctx)
    reference = copy.deepcopy(ctx.reference)
    optimizers = _learner_optimizers(ctx, model)
    ref_optimizers = build_optimizers(reference, _settings(ctx))
    reference.train()
    reference(ctx.idx, ctx.targets).backward()
    # The same gradients for both, so that only the optimisers are compared. (Gradients that are
    # zero in exact arithmetic, such as a key bias's, are float noise that AdamW would amplify.)
    learned = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        learned[name].grad = p.grad.clone()
    for o in optimizers + ref_optimizers:
        o.step()
    ctx.reach("a training step completes")
    for name, p in reference.named_parameters():
        expect(compare(f"{name} after one optimiser step", p, learned[name], atol=1e-5, rtol=1e-4),
               hint="check this parameter's group: learning rate (with the (n_embd/768)^-0.5 scale), betas, eps, "
                    "weight decay and optimiser")


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
            loss = m(x, y)
            loss.backward()
            for o in opts:
                o.step()
            m.zero_grad(set_to_none=True)
            record.append(loss.item())
    if losses[-1] < losses[0]:
        ctx.reach("loss decreases")
    comparison = compare(f"loss over {steps} training steps", torch.tensor(ref_losses), torch.tensor(losses),
                         atol=1e-4, rtol=1e-3)
    if not comparison.ok:
        step = comparison.first_difference["index"][0] + 1
        raise CheckFailed(f"the loss curve leaves the reference's at step {step}: "
                          f"{', '.join(f'{v:.4f}' for v in losses)} vs {', '.join(f'{v:.4f}' for v in ref_losses)}",
                          comparison)
    if losses[-1] >= losses[0]:
        raise CheckFailed(f"the loss did not decrease over {steps} steps: {losses[0]:.4f} → {losses[-1]:.4f}")


def check_generation(ctx: Context):
    model = learner_model(ctx).eval()
    prompt = ctx.idx[:1, :5]
    out = ctx.learner.generate(model, prompt.clone(), 20, temperature=0.0)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, 25):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckFailed(f"generate should return (1, 25) for a (1, 5) prompt and 20 new tokens, got {shape}")
    ctx.reach("generation works")
    expected = list(Engine(ctx.reference).generate(prompt[0].tolist(), 20, temperature=0, use_cache=False))
    got = out[0, 5:].tolist()
    if got != expected:
        first = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
        raise CheckFailed(f"greedy generation differs from the reference's at new token {first}: got {got[first]}, "
                          f"expected {expected[first]} (the context passes sequence_len {ctx.config.sequence_len} "
                          "after 11 new tokens: crop it to the last sequence_len tokens)")


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
