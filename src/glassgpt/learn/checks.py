"""The grader's checks, in the order a learner builds a GPT.

Every component is tested in isolation against the reference: the reference's weights are loaded
into the learner's module by name (strictly: a readable diff of missing, extra or misshaped
weights), both get the same input (the reference's own input at that trace point), and outputs,
input gradients and weight gradients are compared, each within the tolerance `TOLERANCES` gives
that check. Each component runs under two settings (`settings.py`): the family's defaults, and one
in which every config field the learner's code should read is changed (dropout on, another RoPE
base and softcap, other sizes); a failure under the second alone is traced to the field(s) the
learner's code does not follow. With dropout on, a component must equal the reference in eval mode
and drop like it in training mode (`dropout.py`).

A failing output is explained, in this order: NaN or inf where the reference is finite (where,
and the likely cause); a catalogued common mistake (`mistakes.py`); a constant with another value,
fitted from the output (the attention scale, the RoPE base, the softcap, the norm's eps); the
properties the component must have (unit RMS, relative-only RoPE, causal and grouped-query
attention); and last how the output relates to the reference's in words (a constant factor, an
offset, a shift, another order: `describe.py`). The whole model is compared trace point by trace
point, so a failure names the first place where the learner's model leaves the reference's. An
error raised in backward by an in-place operation is traced to the learner's line (`backward.py`).

A check returns a `CheckResult`; the learner's `NotImplementedError` becomes the TODO to do next.
Every hint comes from the explanation registry (`glassgpt.see.registry`), like the trace view's text.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from glassgpt.config import TrainConfig
from glassgpt.learn import describe, dropout, fits, mistakes
from glassgpt.learn.backward import locate_inplace
from glassgpt.learn.compare import Comparison, compare
from glassgpt.learn.loader import where_in
from glassgpt.learn.settings import (Setting, default_config, describe_change, setting_for, varied_config,
                                     varied_fields)
from glassgpt.model import taps
from glassgpt.model.config import GPTConfig
from glassgpt.model.gpt import GPT, head_is_tied, rotary_tables
from glassgpt.see.registry import explain, grader_hint
from glassgpt.train.optim import Optimizer, OptimizerSettings, build_optimizers
from glassgpt.train.step import train_step

# How close is close enough, per check and per quantity, as (atol, rtol): a value passes when
# |got - expected| ≤ atol + rtol · |expected|. Each fits its numerics in fp32 and sits 10x or more
# above the largest error of a correct implementation written differently from the reference (the
# test fixtures, under both settings; docs/reference/learn.md lists the measurements). Outputs of
# closed-form pieces (norm, rotary) are tight, so that an epsilon in the wrong place cannot hide;
# softmax-and-matmul pieces and compositions accumulate rounding and get more room; gradients,
# which sum over batch and time and pass through the norms' cancellations, more again; the loss
# curve compounds 10 optimiser steps.
TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "forward.norm": {"output": (1e-6, 1e-5), "gradient": (1e-4, 1e-3), "unit_rms": (1e-3, 0.0)},
    "forward.rotary_tables": {"output": (1e-5, 1e-5)},
    "forward.apply_rotary": {"output": (1e-6, 1e-5), "gradient": (1e-5, 1e-4), "relative": (1e-5, 1e-4)},
    "forward.mlp": {"output": (1e-5, 1e-4), "gradient": (1e-4, 1e-3)},
    "forward.attention": {"output": (1e-5, 1e-4), "gradient": (1e-4, 1e-3), "property": (1e-5, 1e-4)},
    "forward.block": {"output": (5e-5, 2e-4), "gradient": (1e-3, 2e-3)},
    "forward.gpt": {"logits": (1e-4, 1e-4), "loss": (1e-5, 1e-5), "trace_point": (1e-4, 1e-3)},
    "backward.gpt": {"gradient": (1e-4, 1e-3)},
    "optimizer.step": {"parameter": (1e-5, 1e-4)},
    "training.loss_curve": {"loss": (1e-4, 1e-4)},
    # initialisation is random, so its statistics are compared: the standard deviation within 15% of
    # the reference's, the mean within 0.1 standard deviations of 0
    "init.weights": {"std": (0.0, 0.15), "mean_in_stds": (0.1, 0.0)},
}

# What the axes of each compared tensor are, so that a difference can be said in words.
STREAM = ("sequence", "position", "channel")  # (B, T, C)
HEADS = ("sequence", "position", "head", "dimension")  # (B, T, H, D)
LOGITS = ("sequence", "position", "vocabulary entry")


class CheckFailed(Exception):
    """A check's verdict: what was compared, and (when known) the mistake, a hint and the config
    fields the failure depends on."""

    def __init__(self, message: str, comparison: Comparison | None = None, mistake: str | None = None,
                 hint: str | None = None, fields: list[str] | None = None):
        super().__init__(message)
        self.comparison, self.mistake, self.hint, self.fields = comparison, mistake, hint, fields


class LearnerError(Exception):
    """An exception of the learner's code, already described in one line (their file and line):
    reported with status `error`, like any exception of theirs."""

    def __init__(self, message: str, hint: str | None = None, fields: list[str] | None = None):
        super().__init__(message)
        self.hint, self.fields = hint, fields


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
    config_fields: list[str] | None = None  # the config fields the failure depends on (e.g. ["rope_base"])
    nonfinite: dict | None = None  # NaN/inf in the learner's output where the reference's is finite


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


# -- the shared settings: a tiny reference model per config and its traced forward pass -------------


def grading_config(family: str) -> GPTConfig:
    """The default setting's config (see `settings.default_config`)."""
    return default_config(family)


class Context:
    """What every check of one learner's file shares: the file, and the settings it is checked
    under (built once per process, see `settings.setting_for`). The default setting's objects are
    also reachable directly (`ctx.reference`, `ctx.cached(...)`...)."""

    def __init__(self, learner, family: str):
        self.learner, self.family = learner, family
        self.path = Path(learner.__file__) if getattr(learner, "__file__", None) else None
        self.default = setting_for(default_config(family), "the default setting")
        s = self.default
        self.config, self.reference, self.idx, self.targets = s.config, s.reference, s.idx, s.targets
        self.ref_logits, self.ref_loss, self.trace, self.cos, self.sin = s.ref_logits, s.ref_loss, s.trace, s.cos, s.sin
        self.reached: list[str] = []
        self.max_abs_error: float | None = None  # the largest error of the running check's comparisons

    @property
    def varied(self) -> Setting:
        return setting_for(varied_config(self.family), "the varied setting")

    def single_change(self, name: str) -> Setting:
        """The default setting with one field set as in the varied one."""
        value = varied_fields(self.family)[name]
        return setting_for(dataclasses.replace(self.default.config, **{name: value}).validate(),
                           f"the default setting with config.{name} = {value}")

    def reach(self, milestone: str) -> None:
        if milestone not in self.reached:
            self.reached.append(milestone)

    def cached(self, name: str) -> torch.Tensor:
        return self.trace[name].clone()

    def compare(self, what: str, expected: torch.Tensor, got, tolerance: tuple[float, float],
                axes: tuple[str, ...] = (), setting: Setting | None = None) -> Comparison:
        """`compare`, remembering the largest error seen, which a passing check reports."""
        quantities = (setting or self.default).quantities()
        comparison = compare(what, expected, got, *tolerance, axes=axes, quantities=quantities, explain=explaining())
        if comparison.max_abs_error is not None:
            self.max_abs_error = max(self.max_abs_error or 0.0, comparison.max_abs_error)
        return comparison


_EXPLAINING = [True]  # False while a failure is run again only to find which fields it depends on


@contextlib.contextmanager
def _pass_or_fail_only():
    """Checks say only pass or fail inside: no catalogue, fits, properties or words (for speed)."""
    _EXPLAINING.append(False)
    try:
        yield
    finally:
        _EXPLAINING.pop()


def explaining() -> bool:
    return _EXPLAINING[-1]


def under_both_settings(body: Callable[[Context, Setting], None]) -> Callable[[Context], None]:
    """Run a check's body under the default setting, then the varied one. A failure under the
    varied setting alone is run again with each changed field alone, to name the field(s) it
    depends on (a learner's code that reads a constant instead of the config passes the first)."""

    @functools.wraps(body)
    def run(ctx: Context) -> None:
        try:
            body(ctx, ctx.default)
        except (RuntimeError, ValueError, IndexError) as error:  # e.g. a shape error: name its sizes
            described = _with_sizes(ctx, ctx.default, error)
            if described is None:
                raise
            raise described from None
        try:
            body(ctx, ctx.varied)
        except Exception as failure:  # noqa: BLE001 (whatever the learner's code raised)
            raise _explain_varied_failure(ctx, body, failure) from None

    run.body = body  # type: ignore[attr-defined]
    return run


def _with_sizes(ctx: Context, s: Setting, error: BaseException) -> LearnerError | None:
    """The learner's error, with the numbers in its message named after the sizes of setting `s`."""
    if isinstance(error, (CheckFailed, LearnerError)):
        return None
    named = describe.name_sizes(str(error), s.sizes())
    if named is None:
        return None
    words, fields = named
    return LearnerError(f"{where_in(error, ctx.path or Path('?'))} (sizes in this error: {words})",
                        grader_hint("error.sizes"), fields or None)


def _explain_varied_failure(ctx: Context, body, failure: Exception) -> Exception:
    default, varied = ctx.default.config, ctx.varied.config
    changed = [f for f in varied_fields(ctx.family) if getattr(default, f) != getattr(varied, f)]
    fields = list(getattr(failure, "fields", None) or [])
    if not fields:
        for name in changed:
            try:
                with _pass_or_fail_only():
                    body(ctx, ctx.single_change(name))
            except Exception:  # noqa: BLE001
                fields.append(name)
    if fields:
        prefix = "fails with " + " and with ".join(describe_change(f, varied, default) for f in fields)
    else:
        prefix = ("fails with the varied setting (" + ", ".join(f"{f} {getattr(varied, f)}" for f in changed)
                  + "), though with none of its changes alone")
    own_hint = getattr(failure, "hint", None)
    if getattr(failure, "fields", None):  # the failure named its field itself, with a hint of its own
        hint = own_hint
    elif len(fields) == 1:
        hint = grader_hint(f"config.{fields[0]}")
    elif set(fields) == {"n_embd", "n_head"}:  # both change head_dim, and nothing else they share
        hint = grader_hint("config.head_dim")
    else:
        hint = own_hint or grader_hint("config.several")
    if isinstance(failure, CheckFailed):
        return CheckFailed(f"{prefix}: {failure}", failure.comparison, failure.mistake, hint, fields or changed)
    sized = _with_sizes(ctx, ctx.varied, failure)
    text = str(failure) if isinstance(failure, LearnerError) else str(sized) if sized else where_in(
        failure, ctx.path or Path("?"))
    return LearnerError(f"{prefix}: {text}", hint, fields or changed)


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


def load_for(ctx: Context, s: Setting, learner_module: torch.nn.Module, part: Callable[[GPT], torch.nn.Module],
             what: str) -> None:
    """`load_into` the reference's `part` of setting `s`; when shapes differ, say which config field
    the learner's module was built as if it had another value (n_kv_head as n_head, a hard-coded
    mlp_ratio...)."""
    try:
        load_into(learner_module, part(s.reference), what)
    except CheckFailed as failure:
        if "wrong shape" not in str(failure):
            raise
        found = _shape_culprit(ctx, s, learner_module, part)
        if found is None:
            raise
        name, value = found
        raise CheckFailed(f"{failure}: your {what} is built as if config.{name} were {value} (it is "
                          f"{getattr(s.config, name)})", hint=grader_hint(f"config.{name}"), fields=[name]) from None


def _shape_culprit(ctx: Context, s: Setting, learner_module, part) -> tuple[str, object] | None:
    """(field, value) such that the reference built with that one field changed has exactly the
    learner's weight shapes, or None. The values tried are the other setting's, n_head for
    n_kv_head, and every size (and size / head_dim, size / n_embd) the learner's weights have."""
    shapes = {n: tuple(t.shape) for n, t in learner_module.state_dict().items()}
    other = ctx.varied.config if s.config == ctx.default.config else ctx.default.config
    sizes = {d for shape in shapes.values() for d in shape}
    sizes |= {d // unit for d in set(sizes) for unit in (s.config.head_dim, s.config.n_embd) if d % unit == 0}
    candidates = [(f, getattr(other, f)) for f in varied_fields(ctx.family)] + [("n_kv_head", s.config.n_head)]
    candidates += [(f, v) for f in ("n_kv_head", "n_head", "mlp_ratio", "n_embd", "vocab_size", "sequence_len",
                                    "n_layer") for v in sorted(sizes) if 0 < v <= (12 if f == "n_layer" else 10 ** 6)]
    for name, value in dict.fromkeys(candidates):
        if getattr(s.config, name) == value:
            continue
        try:
            config = dataclasses.replace(s.config, **{name: value}).validate()
        except Exception:  # noqa: BLE001 (not a valid model with that change)
            continue
        reference = part(GPT.build(config, device="meta"))
        if {n: tuple(t.shape) for n, t in reference.state_dict().items()} == shapes:
            return name, value
    return None


def fail_unless(comparison: Comparison, component: str | None = None, diagnose_args: tuple = (), got=None,
                hint: str | None = None, properties: tuple[Callable[[], None], ...] = (),
                constants: tuple[Callable[[], "fits.Fitted | None"], ...] = ()) -> None:
    """Raise CheckFailed unless `comparison` passed, saying why as well as can be said.

    In order: NaN or inf where the reference is finite (where, and the likely cause); the
    catalogued mistake `got` matches; a constant fitted from the output (`constants`, see fits.py); the first
    property check that fails (its message, with the comparison kept for the details); else the
    comparison, whose summary ends with the relation in words when one was found."""
    if comparison.ok:
        return
    if not explaining():
        raise CheckFailed(comparison.summary(), comparison)
    if comparison.nonfinite:
        cause = describe.nonfinite_cause(comparison.nonfinite, component or "")
        raise CheckFailed(comparison.summary(), comparison, None, grader_hint(cause))
    mistake = mistakes.diagnose(component, got, *diagnose_args) if component and got is not None else None
    if mistake is not None:
        comparison.relation = None  # the catalogue's name says it better
        raise mistake_failure(comparison.summary(), mistake.id, comparison)
    for fit in constants:
        try:
            fitted = fit()
        except Exception:  # noqa: BLE001 (the fit does not apply to what the learner returned)
            fitted = None
        if fitted is not None:
            comparison.relation = None  # the fit says it better
            raise CheckFailed(f"{comparison.summary()}; {fitted.words}", comparison, None, grader_hint(fitted.hint),
                              fitted.fields)
    for check_property in properties:
        try:
            check_property()
        except CheckFailed as failure:
            failure.comparison = failure.comparison or comparison
            raise
        except Exception:  # the learner's code fails on the property's input: say what was compared
            break
    if hint is None and comparison.relation:
        hint = grader_hint("words")
    raise CheckFailed(comparison.summary(), comparison, None, hint)


def fail_if_nonfinite(tensor, what: str, component: str, axes: tuple[str, ...]) -> None:
    """For a property check's own probe: NaN or inf in the learner's output is said as such (a
    row sum of NaN is not a softmax over the wrong dimension)."""
    if isinstance(tensor, torch.Tensor) and not torch.isfinite(tensor).all():
        info = describe.nonfinite(tensor, torch.zeros_like(tensor), axes)
        raise CheckFailed(f"{what}: {describe.describe_nonfinite(info)}", hint=grader_hint(
            describe.nonfinite_cause(info, component)))


def upstream_gradient(shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(7))


def compare_gradients(ctx: Context, what: str, reference: torch.nn.Module, learner: torch.nn.Module, x_ref,
                      x_learn, component: str, outputs: tuple, diagnose_args: tuple, s: Setting | None = None) -> None:
    """Input gradient, then every weight's gradient, for the same upstream gradient. A gradient
    that differs while the output matched is diagnosed from the (slightly different) output."""
    tolerance = TOLERANCES[component]["gradient"]
    try:
        if x_learn.grad is None:
            raise CheckFailed(f"{what}: no gradient reached the input", hint=grader_hint("gradient.missing"))
        fail_unless(ctx.compare(f"{what}: gradient of the input", x_ref.grad, x_learn.grad, tolerance,
                                tuple(STREAM[:x_ref.dim()]) if x_ref.dim() == 3 else HEADS, s))
        learner_params = dict(learner.named_parameters(remove_duplicate=False))
        for name, p in reference.named_parameters():
            got = learner_params[name].grad
            if got is None:
                raise CheckFailed(f"{what}: {name} got no gradient", hint=grader_hint("gradient.missing"))
            fail_unless(ctx.compare(f"{what}: gradient of {name}", p.grad, got, tolerance,
                                    ("row", "column")[:p.dim()], s))
    except CheckFailed as failure:
        correct, got = outputs
        mistake = mistakes.diagnose(component, got, *diagnose_args, correct=correct)
        if mistake is not None and failure.mistake is None:
            failure.mistake, failure.hint = mistake.id, mistake.hint
        elif failure.hint is None or failure.hint == grader_hint("words"):
            failure.hint = grader_hint("gradient.only")
        raise


def run_component(ctx: Context, what: str, ref_module, learner_module, inputs: list[torch.Tensor], extra=()):
    """Forward both with the same inputs; returns the leaves whose .grad backward fills, both outputs.

    The modules get a copy made from each leaf, not the leaf: in training a component's input is an
    intermediate result, on which an in-place operation is allowed forward and fails in backward
    when autograd needed the old values; on a leaf it would fail at once, with another message.
    A module that changes its input in place fails: its caller still reads it (the residual stream
    a norm reads is added to afterwards)."""
    ref_module.zero_grad(set_to_none=True)
    learner_module.zero_grad(set_to_none=True)
    ref_inputs = [x.clone().requires_grad_(True) for x in inputs]
    learn_inputs = [x.clone().requires_grad_(True) for x in inputs]
    ref_out = ref_module(*[x.clone() for x in ref_inputs], *extra)
    given = [x.clone() for x in learn_inputs]
    got = learner_module(*given, *extra)
    if any(x._version for x in given):
        _fail_input_changed(ctx, what, learner_module, inputs, extra)
    return ref_inputs, learn_inputs, ref_out, got


def _fail_input_changed(ctx: Context, what: str, learner_module, inputs: list[torch.Tensor], extra=()) -> None:
    from glassgpt.learn.backward import InplaceRecorder

    recorder = InplaceRecorder(ctx.path) if ctx.path else None
    given = [x.clone() for x in inputs]
    if recorder is not None:
        with recorder:
            learner_module(*given, *extra)
    shapes = {tuple(x.shape) for x in inputs}
    calls = [c for c in (recorder.calls if recorder else []) if c.shape in shapes]
    where = ""
    if calls:
        frame = calls[0].frame
        code = f" ({frame.line.strip()})" if frame.line else ""
        where = (f": {ctx.path.name} line {frame.lineno} in {frame.name}{code}, the in-place operation "
                 f"{calls[0].operation}")
    raise CheckFailed(f"your {what} changes its input in place{where}; the caller still reads that tensor (a norm's "
                      "input is the residual stream, which is added to afterwards)", hint=grader_hint("inplace.input"))


def learner_backward(ctx: Context, what: str, output, gradient, rerun: Callable[[], None]) -> None:
    """output.backward(gradient) for the learner's output; an in-place operation that breaks it is
    named with the learner's line (`rerun` repeats the learner's forward and backward)."""
    if not isinstance(output, torch.Tensor) or not output.requires_grad:
        raise CheckFailed(f"{what}: the output does not require grad, so no gradient can flow back through it",
                          hint=grader_hint("gradient.missing"))
    try:
        output.backward(gradient)
    except RuntimeError as error:
        located = locate_inplace(error, rerun, ctx.path) if ctx.path else None
        if located is None:
            raise
        raise LearnerError(f"{what}: backward failed: {located}", hint=grader_hint("gradient.inplace")) from None


def backward_both(ctx: Context, what: str, ref_out: torch.Tensor, got, rerun: Callable[[torch.Tensor], None]) -> None:
    grad = upstream_gradient(ref_out.shape)
    ref_out.backward(grad)
    learner_backward(ctx, what, got, grad, lambda: rerun(grad))


def rerun_component(learner_module, inputs: list[torch.Tensor], extra=()) -> Callable[[torch.Tensor], None]:
    """Repeat the learner's forward (on fresh non-leaf inputs) and backward with `grad`."""
    def rerun(grad: torch.Tensor) -> None:
        leaves = [x.clone().requires_grad_(True) for x in inputs]
        learner_module(*[x.clone() for x in leaves], *extra).backward(grad)
    return rerun


def learner_model(ctx: Context, s: Setting | None = None, load: bool = True):
    s = s or ctx.default
    model = ctx.learner.GPT(s.config)
    if load:
        load_for(ctx, s, model, lambda reference: reference, "GPT")
    return model


def check_dropout(ctx: Context, s: Setting, what: str, reference: torch.nn.Module, learner: torch.nn.Module,
                  inputs: list[torch.Tensor], extra=(), tolerance: tuple[float, float] = (1e-5, 1e-4)) -> None:
    """With config.dropout > 0: the learner's module in training mode drops like the reference's."""
    with dropout.training(reference, learner):
        finding = dropout.compare_training_mode(
            what, s.config.dropout, lambda: reference(*inputs, *extra), lambda: learner(*inputs, *extra),
            _eval_output(reference, inputs, extra), lambda a, b: compare("", a, b, *tolerance, explain=False).ok)
    if finding is not None:
        raise CheckFailed(finding.message, hint=grader_hint(finding.hint), fields=["dropout"])


def _eval_output(module, inputs, extra=()) -> torch.Tensor:
    with torch.no_grad():
        was = module.training
        module.eval()
        try:
            return module(*inputs, *extra)
        finally:
            module.train(was)


def fail_if_random_in_eval(s: Setting, what: str, learner: torch.nn.Module, inputs: list[torch.Tensor],
                           extra=()) -> None:
    """A module that differs from the reference in eval mode with dropout on, and gives different
    outputs on two calls: its dropout does not look at self.training."""
    if s.config.dropout and dropout.random_in_eval(lambda: learner(*inputs, *extra)):
        raise CheckFailed(f"{what} in eval mode gives different outputs on two calls with the same input: dropout "
                          f"(config.dropout = {s.config.dropout:g}) must be off in eval mode",
                          hint=grader_hint("dropout.eval"), fields=["dropout"])


# -- phase: initialisation --------------------------------------------------------------------------


def check_init_attention(ctx: Context, s: Setting):
    load_for(ctx, s, ctx.learner.CausalSelfAttention(s.config, 0), lambda r: r.blocks[0].attn, "CausalSelfAttention")


def check_init_mlp(ctx: Context, s: Setting):
    load_for(ctx, s, ctx.learner.MLP(s.config, 0), lambda r: r.blocks[0].mlp, "MLP")


def check_init_block(ctx: Context, s: Setting):
    load_for(ctx, s, ctx.learner.Block(s.config, 0), lambda r: r.blocks[0], "Block")


def check_init_gpt(ctx: Context, s: Setting):
    model = ctx.learner.GPT(s.config)
    if getattr(model, "config", None) is None:
        raise CheckFailed("GPT has no .config attribute", hint=grader_hint("init.config"))
    tied, should_tie = head_is_tied(model), head_is_tied(s.reference)
    if tied and not should_tie:
        how = ("your lm_head.weight is wte.weight (tied nanoGPT's way)" if "lm_head.weight" in tensor_names(model)
               else "your GPT has no lm_head.weight")
        raise mistake_failure(f"the head is tied to the embedding: {how}; this family keeps a separate head",
                              "weights_tied")
    if should_tie and not tied:
        raise mistake_failure("your GPT has its own lm_head.weight, a tensor separate from wte.weight; this family "
                              "ties the head to the embedding", "weights_not_tied")
    load_for(ctx, s, model, lambda reference: reference, "GPT")
    learned = sum(p.numel() for p in model.parameters())
    expected = sum(p.numel() for p in s.reference.parameters())
    if learned != expected:
        raise CheckFailed(f"GPT has {learned:,} parameters, the reference {expected:,}",
                          hint=grader_hint("init.parameter_count"))


def check_init_weights(ctx: Context, s: Setting):
    torch.manual_seed(0)
    model = ctx.learner.GPT(s.config)
    model.init_weights()
    reference = GPT.build(s.config)
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


def check_norm(ctx: Context, s: Setting):
    tolerance = TOLERANCES["forward.norm"]
    reference = s.reference.blocks[0].norm_1
    learner = ctx.learner.Norm(s.config.n_embd, s.config.norm, s.config.norm_affine, s.config.bias)
    load_into(learner, reference, "Norm")
    x = s.cached("blocks.0.resid.pre")
    with_zero = x.clone()
    with_zero[0, 0] = 0.0
    for label, inputs in (("the reference's input at blocks.0.attn.norm", x),
                          ("an input whose first vector is all zeros (where eps keeps 0 / 0 away)", with_zero),
                          ("a tiny input (x · 1e-3, where eps matters)", x * 1e-3)):
        ref_in, learn_in, ref_out, got = run_component(ctx, "Norm", reference, learner, [inputs])
        # RMS 1 per vector is what RMSNorm is for (not on the tiny input, which eps damps on purpose)
        unit_rms = (functools.partial(_check_unit_rms, got),) if ctx.family == "nanochat" and inputs is x else ()
        fail_unless(ctx.compare(f"Norm output for {label}", ref_out, got, tolerance["output"], STREAM, s),
                    "forward.norm", (reference, inputs), got, properties=unit_rms,
                    constants=(functools.partial(fits.norm_eps, reference, inputs, got),))
        for check_property in unit_rms:
            check_property()
        if inputs is with_zero:  # at a zero vector the gradient is 1/sqrt(eps): it says nothing more
            continue
        backward_both(ctx, "Norm", ref_out, got, rerun_component(learner, [inputs]))
        compare_gradients(ctx, "Norm", reference, learner, ref_in[0], learn_in[0], "forward.norm", (ref_out, got),
                          (reference, inputs), s)


def _check_unit_rms(got: torch.Tensor) -> None:
    atol = TOLERANCES["forward.norm"]["unit_rms"][0]
    fail_if_nonfinite(got, "RMSNorm output", "forward.norm", STREAM)
    rms = got.detach().square().mean(-1).sqrt()
    if not torch.allclose(rms, torch.ones_like(rms), atol=atol, rtol=0.0):
        raise CheckFailed(f"RMSNorm output should have RMS 1 per vector; yours has {rms.min():.4g}…{rms.max():.4g}",
                          hint=grader_hint("property.unit_rms"))


def check_rotary_tables(ctx: Context, s: Setting):
    T, D, base = s.config.sequence_len, s.config.head_dim, s.config.rope_base
    expected = rotary_tables(T, D, base)
    got = ctx.learner.rotary_tables(T, D, base)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise CheckFailed(f"rotary_tables should return (cos, sin), got {type(got).__name__}")
    for label, e, g in (("cos", expected[0], got[0]), ("sin", expected[1], got[1])):
        comparison = ctx.compare(f"rotary_tables({T}, {D}, base={base:g}) {label}", e, g,
                                 TOLERANCES["forward.rotary_tables"]["output"], ("position", "frequency pair"), s)
        if not comparison.ok:
            fail_unless(comparison, "forward.rotary_tables", (None, T, D, base), got,
                        constants=(functools.partial(fits.rope_base, got, T, D, base, ctx.default.config.rope_base),))


def check_apply_rotary(ctx: Context, s: Setting):
    q = s.cached("blocks.0.attn.q")  # (B, T, H, D), the reference's query before rotation
    expected = s.cached("blocks.0.attn.q_rot")
    leaf = q.clone().requires_grad_(True)
    got = ctx.learner.apply_rotary(leaf.clone(), s.cos, s.sin)
    relative = (functools.partial(_check_rope_is_relative, ctx),) if s is ctx.default else ()
    fail_unless(ctx.compare("apply_rotary on the reference's queries", expected, got,
                            TOLERANCES["forward.apply_rotary"]["output"], HEADS, s),
                "forward.apply_rotary", (None, q, s.cos, s.sin), got, properties=relative)
    for check_property in relative:
        check_property()
    # the rotation is part of attention's backward: its gradient too (an in-place edit of x breaks it)
    reference_leaf = q.clone().requires_grad_(True)
    from glassgpt.model.gpt import apply_rotary

    apply_rotary(reference_leaf.clone(), s.cos, s.sin).backward(upstream_gradient(q.shape))

    def rerun(grad):
        fresh = q.clone().requires_grad_(True)
        ctx.learner.apply_rotary(fresh.clone(), s.cos, s.sin).backward(grad)

    learner_backward(ctx, "apply_rotary", got, upstream_gradient(q.shape), lambda: rerun(upstream_gradient(q.shape)))
    if leaf.grad is None:
        raise CheckFailed("apply_rotary: no gradient reached the input", hint=grader_hint("gradient.missing"))
    fail_unless(ctx.compare("apply_rotary: gradient of the input", reference_leaf.grad, leaf.grad,
                            TOLERANCES["forward.apply_rotary"]["gradient"], HEADS, s),
                hint=grader_hint("gradient.only"))


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
    if not (math.isfinite(near) and math.isfinite(far)):
        raise CheckFailed(f"apply_rotary: q·k at positions (7, 3) is {near}, at (40, 36) {far}",
                          hint=grader_hint("nonfinite.other"))
    if not math.isclose(near, far, rel_tol=rtol, abs_tol=atol):
        raise CheckFailed(f"apply_rotary: q·k should depend on the distance only, but positions (7, 3) give "
                          f"{near:.5g} and (40, 36) give {far:.5g}", hint=grader_hint("property.rope_relative"))


def check_mlp(ctx: Context, s: Setting):
    reference = s.reference.blocks[0].mlp
    learner = ctx.learner.MLP(s.config, 0)
    load_for(ctx, s, learner, lambda r: r.blocks[0].mlp, "MLP")
    learner.eval()
    x = s.cached("blocks.0.mlp.norm")
    ref_in, learn_in, ref_out, got = run_component(ctx, "MLP", reference, learner, [x])
    comparison = ctx.compare("MLP output for the reference's input at blocks.0.mlp.norm", ref_out, got,
                             TOLERANCES["forward.mlp"]["output"], STREAM, s)
    if not comparison.ok:
        fail_if_random_in_eval(s, "your MLP", learner, [x])
    fail_unless(comparison, "forward.mlp", (reference, x), got)
    backward_both(ctx, "MLP", ref_out, got, rerun_component(learner, [x]))
    compare_gradients(ctx, "MLP", reference, learner, ref_in[0], learn_in[0], "forward.mlp", (ref_out, got),
                      (reference, x), s)
    if s.config.dropout:
        check_dropout(ctx, s, "your MLP's output", reference, learner, [x],
                      tolerance=TOLERANCES["forward.mlp"]["output"])


def check_attention(ctx: Context, s: Setting):
    reference = s.reference.blocks[0].attn
    learner = ctx.learner.CausalSelfAttention(s.config, 0)
    load_for(ctx, s, learner, lambda r: r.blocks[0].attn, "CausalSelfAttention")
    learner.eval()
    x = s.cached("blocks.0.attn.norm")
    ref_in, learn_in, ref_out, got = run_component(ctx, "attention", reference, learner, [x], (s.cos, s.sin))
    properties = (functools.partial(_check_rows_sum_to_one, ctx), functools.partial(_check_causality, ctx, learner, x),
                  functools.partial(_check_gqa, ctx, learner, x)) if s is ctx.default else ()
    comparison = ctx.compare("attention output for the reference's input at blocks.0.attn.norm", ref_out, got,
                             TOLERANCES["forward.attention"]["output"], STREAM, s)
    if not comparison.ok:
        fail_if_random_in_eval(s, "your attention", learner, [x], (s.cos, s.sin))
    fail_unless(comparison, "forward.attention", (reference, x, s.cos, s.sin), got, properties=properties,
                constants=(functools.partial(fits.attention_scale, s, reference, x, got),))
    backward_both(ctx, "attention", ref_out, got, rerun_component(learner, [x], (s.cos, s.sin)))
    compare_gradients(ctx, "attention", reference, learner, ref_in[0], learn_in[0], "forward.attention",
                      (ref_out, got), (reference, x, s.cos, s.sin), s)
    for check_property in properties:
        check_property()
    if s.config.dropout:
        check_dropout(ctx, s, "your attention's output", reference, learner, [x], (s.cos, s.sin),
                      TOLERANCES["forward.attention"]["output"])


def _check_rows_sum_to_one(ctx: Context) -> None:
    """Make the learner's attention output its own pattern, without any tap: one-hot inputs, values
    that copy the key's position (v_j = e_j) and an output projection that copies head 0. Then
    output[i, :T] is head 0's attention row i: it must sum to 1 and be 0 beyond position i."""
    config, T = ctx.config, ctx.idx.shape[1]
    atol = TOLERANCES["forward.attention"]["property"][0]
    attention = ctx.learner.CausalSelfAttention(config, 0)
    load_into(attention, ctx.reference.blocks[0].attn, "CausalSelfAttention")
    attention.eval()
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
    fail_if_nonfinite(rows.unsqueeze(0), "attention weights (read with one-hot inputs)", "forward.attention",
                      ("sequence", "position", "key"))
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
    fail_if_nonfinite(before, "attention output", "forward.attention", STREAM)
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
    full.eval()
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    for name in ("c_k", "c_v"):
        for suffix in ("weight", "bias"):
            key = f"{name}.{suffix}"
            if key in state:
                heads = state[key].view(config.n_kv_head, config.head_dim, *state[key].shape[1:])
                state[key] = heads.repeat_interleave(group, dim=0).reshape(-1, *state[key].shape[1:])
    full.load_state_dict(state)
    with torch.no_grad():
        grouped = learner(x, ctx.cos, ctx.sin)
        try:
            duplicated = full(x, ctx.cos, ctx.sin)
        except Exception as error:  # noqa: BLE001 (the learner's code, with another config)
            raise LearnerError(f"fails with config.n_kv_head = {config.n_head} (full attention, which grouped-query "
                               f"attention is compared with; the default setting's is {config.n_kv_head}): "
                               f"{where_in(error, ctx.path or Path('?'))}", grader_hint("config.n_kv_head"),
                               ["n_kv_head"]) from None
    fail_if_nonfinite(grouped, "attention output", "forward.attention", STREAM)
    if not torch.allclose(grouped, duplicated, atol=atol, rtol=rtol):
        raise CheckFailed(f"grouped-query attention ({config.n_head} query heads, {config.n_kv_head} key/value heads) "
                          "should equal full attention with each key/value head duplicated for its group; yours "
                          f"differs by up to {(grouped - duplicated).abs().max():.3g}",
                          hint=grader_hint("property.gqa"))


def check_block(ctx: Context, s: Setting):
    reference = s.reference.blocks[0]
    learner = ctx.learner.Block(s.config, 0)
    load_for(ctx, s, learner, lambda r: r.blocks[0], "Block")
    learner.eval()
    x = s.cached("blocks.0.resid.pre")
    ref_in, learn_in, ref_out, got = run_component(ctx, "Block", reference, learner, [x], (s.cos, s.sin))
    comparison = ctx.compare("Block output for the reference's input at blocks.0.resid.pre", ref_out, got,
                             TOLERANCES["forward.block"]["output"], STREAM, s)
    if not comparison.ok:
        fail_if_random_in_eval(s, "your Block", learner, [x], (s.cos, s.sin))
    fail_unless(comparison, "forward.block", (reference, x, s.cos, s.sin), got)
    backward_both(ctx, "Block", ref_out, got, rerun_component(learner, [x], (s.cos, s.sin)))
    compare_gradients(ctx, "Block", reference, learner, ref_in[0], learn_in[0], "forward.block", (ref_out, got),
                      (reference, x, s.cos, s.sin), s)
    if s.config.dropout:
        check_dropout(ctx, s, "your Block's output", reference, learner, [x], (s.cos, s.sin),
                      TOLERANCES["forward.block"]["output"])


# -- phase: full forward -----------------------------------------------------------------------------


def check_forward(ctx: Context, s: Setting):
    tolerance = TOLERANCES["forward.gpt"]
    model = learner_model(ctx, s).eval()
    with taps.RecordingTracer("*") as tracer, watch_modules(model, tracer) as never_ran:
        logits = model(s.idx)
    if isinstance(logits, torch.Tensor) and logits.shape == s.ref_logits.shape:
        ctx.reach("forward works")
    comparison = ctx.compare("GPT logits", s.ref_logits, logits, tolerance["logits"], LOGITS, s)
    if not comparison.ok:
        if not explaining():
            raise CheckFailed(comparison.summary(), comparison)
        if isinstance(logits, torch.Tensor) and logits.dim() == 3 and logits.shape[1] == 1:
            raise mistake_failure(comparison.summary(), "last_position_only", comparison)
        fail_if_random_in_eval(s, "your GPT", model, [s.idx])
        if isinstance(logits, torch.Tensor) and "lm_head.logits" not in tracer.tensors:
            _record(tracer, "lm_head.logits", logits)
        where, relation_there = first_divergence(ctx, s, tracer, never_ran)
        if comparison.nonfinite:
            cause = describe.nonfinite_cause(comparison.nonfinite, "forward.gpt")
            raise CheckFailed(comparison.summary() + (f"; {where}" if where else ""), comparison,
                              hint=grader_hint(cause))
        mistake = mistakes.diagnose("forward.gpt", logits, s.reference, s.idx)
        fitted = None if mistake else fits.softcap(s, logits, ctx.default.config.softcap)
        if mistake or fitted:  # their words say it better
            comparison.relation = None
        hint = mistake.hint if mistake else grader_hint(fitted.hint) if fitted else (
            grader_hint("words") if comparison.relation or relation_there else None)
        words = "".join(f"; {part}" for part in (fitted and fitted.words, where) if part)
        raise CheckFailed(comparison.summary() + words, comparison, mistake and mistake.id, hint,
                          fitted.fields if fitted else None)
    loss = model(s.idx, s.targets)
    comparison = ctx.compare("GPT loss (some targets are -1)", s.ref_loss, loss, tolerance["loss"], (), s)
    if not comparison.ok:
        if comparison.nonfinite:
            raise CheckFailed(comparison.summary(), comparison, hint=grader_hint(
                describe.nonfinite_cause(comparison.nonfinite, "forward.gpt.loss")))
        mistake = mistakes.diagnose("forward.gpt.loss", loss, s.ref_logits, s.idx, s.targets)
        if mistake:
            comparison.relation = None
        raise CheckFailed(comparison.summary(), comparison, mistake and mistake.id,
                          mistake.hint if mistake else grader_hint("loss"))
    all_ignored = model(s.idx, torch.full_like(s.targets, -1))
    if not torch.isfinite(all_ignored):
        raise CheckFailed(f"the loss of a batch whose targets are all -1 is {all_ignored.item()}, not 0",
                          hint=grader_hint("loss.all_ignored"))
    if s.config.dropout:
        _check_gpt_dropout(ctx, s, model)


def _check_gpt_dropout(ctx: Context, s: Setting, model) -> None:
    """With config.dropout > 0, the whole model in training mode drops like the reference; a
    difference names the first trace point where the share of zeroed values differs."""
    reference = s.reference
    same = lambda a, b: compare("", a, b, *TOLERANCES["forward.gpt"]["logits"], explain=False).ok  # noqa: E731
    with dropout.training(reference, model):
        finding = dropout.compare_training_mode("the output of your GPT (its logits)", s.config.dropout,
                                                lambda: reference(s.idx), lambda: model(s.idx), s.ref_logits, same)
        if finding is None:
            return
        site = _dropout_site(s, model)
    raise CheckFailed(finding.message + (f"; {site}" if site else ""), hint=grader_hint(finding.hint),
                      fields=["dropout"])


def _dropout_site(s: Setting, model) -> str | None:
    """In training mode, the first trace point at which the share of values dropout zeroed differs
    from the reference's (the embedding's, an attention's or an MLP's output)."""
    names = ["blocks.0.resid.pre"] + [f"blocks.{i}.{part}.out" for i in range(s.config.n_layer)
                                      for part in ("attn", "mlp")]
    torch.manual_seed(dropout.SEED)
    with torch.no_grad(), taps.RecordingTracer(names) as theirs:
        s.reference(s.idx)
    torch.manual_seed(dropout.SEED)
    with torch.no_grad(), taps.RecordingTracer(names) as mine, watch_modules(model, mine):
        model(s.idx)
    for name in names:
        if name not in theirs.tensors or name not in mine.tensors:
            continue
        share_ref = float((theirs.tensors[name] == 0).float().mean())
        share = float((mine.tensors[name] == 0).float().mean())
        if abs(share - share_ref) > 0.05:
            return (f"at trace point {name}, dropout zeroes {share:.0%} of your values and {share_ref:.0%} of the "
                    "reference's")
    return None


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


def _axes_of(name: str, tensor: torch.Tensor) -> tuple[str, ...]:
    """The axes of a trace point's tensor, for saying a difference in words."""
    if tensor.dim() == 4:
        return ("sequence", "head", "position", "key") if name.rsplit(".", 1)[-1] in (
            "scores", "scores_masked", "pattern", "k_rep", "v_rep") else HEADS
    return {3: LOGITS if name.startswith("lm_head") else STREAM, 2: ("position", "channel")}.get(tensor.dim(), ())


def first_divergence(ctx: Context, s: Setting, tracer: taps.RecordingTracer,
                     never_ran: list[str] = ()) -> tuple[str, str | None]:
    """The first trace point (in the order the learner's model computed it) whose tensor differs from
    the reference's: from the learner's own taps and from the modules the skeleton names. Returns
    the words and the relation found there, if any."""
    tolerance = TOLERANCES["forward.gpt"]["trace_point"]
    reference_paths = {path for path, _, name in _watched_points(s.reference) if name in s.trace}
    skipped = [p for p in never_ran if p in reference_paths]
    note = f"; never called: {', '.join(skipped)}" if skipped else ""
    for name in tracer.order:
        if name in s.trace:
            comparison = compare(name, s.trace[name], tracer.tensors[name], *tolerance,
                                 axes=_axes_of(name, s.trace[name]), quantities=s.quantities())
            if not comparison.ok:
                return (f"first difference at trace point {name} ({comparison.summary().split(': ', 1)[1]}){note}",
                        comparison.relation)
    return note.removeprefix("; "), None


# -- phase: backward, optimiser, training, generation -------------------------------------------------


def check_backward(ctx: Context, s: Setting):
    model = learner_model(ctx, s)
    reference = copy.deepcopy(s.reference)
    # with dropout on, training mode is random: the gradients are compared in eval mode
    model.train(not s.config.dropout), reference.train(not s.config.dropout)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        learner_backward(ctx, "GPT", model(s.idx, s.targets), None, lambda: model(s.idx, s.targets).backward())

    forward_backward()
    reference(s.idx, s.targets).backward()
    learned = dict(model.named_parameters(remove_duplicate=False))
    missing = [n for n, p in learned.items() if p.grad is None]
    if missing:
        raise CheckFailed(f"no gradient reached {', '.join(missing[:4])}", hint=grader_hint("gradient.missing"))
    ctx.reach("backward works")
    for name, p in reference.named_parameters():
        fail_unless(ctx.compare(f"gradient of {name}", p.grad, learned[name].grad,
                                TOLERANCES["backward.gpt"]["gradient"], ("row", "column")[:p.dim()], s),
                    hint=grader_hint("gradient.only"))


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
    if isinstance(optimizers, (torch.optim.Optimizer, Optimizer)):
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


def check_optimizer(ctx: Context, s: Setting):
    """Two steps, from two different batches' gradients: the first AdamW step moves every entry by
    about lr whatever its betas, and the first Muon step is orthogonalised whatever its momentum;
    the second step shows both."""
    model = learner_model(ctx, s)
    reference = copy.deepcopy(s.reference)
    optimizers = _learner_optimizers(ctx, model)
    ref_optimizers = build_optimizers(reference, _settings(ctx))
    reference.train()
    learned = dict(model.named_parameters(remove_duplicate=False))
    batches = [(s.idx, s.targets), (s.idx.flip(1), s.targets.flip(0))]
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
                                    TOLERANCES["optimizer.step"]["parameter"], ("row", "column")[:p.dim()], s),
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
    """Under the default setting only: 10 real training steps are the slowest check by far."""
    s = ctx.default
    model = learner_model(ctx, s)
    reference = copy.deepcopy(s.reference)
    lr = {"lr": TRAINING_ADAMW_LR} if ctx.family == "gpt2" else {}
    optimizers = _learner_optimizers(ctx, model, **lr)
    ref_optimizers = build_optimizers(reference, _settings(ctx, TRAINING_ADAMW_LR))
    model.train(), reference.train()
    losses, ref_losses = [], []
    for x, y in training_batches(s.config, steps):
        try:
            losses.append(train_step(model, optimizers, [(x, y)]).loss)  # the step glassgpt train takes, at the peak lr
        except RuntimeError as error:
            located = locate_inplace(error, lambda: model(x, y).backward(), ctx.path) if ctx.path else None
            if located is None:
                raise
            raise LearnerError(f"training step {len(losses) + 1}: backward failed: {located}",
                               hint=grader_hint("gradient.inplace")) from None
        ref_losses.append(train_step(reference, ref_optimizers, [(x, y)]).loss)
    if losses[-1] < losses[0]:
        ctx.reach("loss decreases")
    comparison = ctx.compare(f"loss over {steps} training steps", torch.tensor(ref_losses), torch.tensor(losses),
                             TOLERANCES["training.loss_curve"]["loss"], ("step",), s)
    if not comparison.ok:
        if comparison.nonfinite:
            raise CheckFailed(f"the loss becomes non-finite during training: {', '.join(f'{v:.4f}' for v in losses)}",
                              comparison, hint=grader_hint("nonfinite.training"))
        step = comparison.first_difference["index"][0] + 1
        raise CheckFailed(f"the loss curve leaves the reference's at step {step}: "
                          f"{', '.join(f'{v:.4f}' for v in losses)} vs {', '.join(f'{v:.4f}' for v in ref_losses)}",
                          comparison, hint=grader_hint("training.curve"))
    if losses[-1] >= losses[0]:
        raise CheckFailed(f"the loss did not decrease over {steps} steps: {losses[0]:.4f} → {losses[-1]:.4f}",
                          hint=grader_hint("training.curve"))


@torch.no_grad()
def reference_greedy(model: GPT, prompt: torch.Tensor, max_new_tokens: int, crop: int | None = None) -> list[int]:
    """What the skeleton's generate asks for, computed by the real GPT: argmax of the last position,
    with the context cropped to the last sequence_len tokens (or `crop`, to fit a learner's)."""
    idx = prompt.clone()
    for _ in range(max_new_tokens):
        logits = model(idx[:, -(crop or model.config.sequence_len):])  # (1, T, V)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx[0, prompt.shape[1]:].tolist()


def check_generation(ctx: Context, s: Setting):
    model = learner_model(ctx, s).eval()
    prompt, new_tokens = s.idx[:1, :5], 20
    out = ctx.learner.generate(model, prompt.clone(), new_tokens, temperature=0.0)
    expected_shape = (1, prompt.shape[1] + new_tokens)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected_shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CheckFailed(f"generate should return {expected_shape} for a {tuple(prompt.shape)} prompt and "
                          f"{new_tokens} new tokens, got {shape}")
    ctx.reach("generation works")
    expected = reference_greedy(s.reference, prompt, new_tokens)
    got = out[0, prompt.shape[1]:].tolist()
    if got != expected:
        first = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
        full_at = s.config.sequence_len - prompt.shape[1]  # from this new token on, the context is cropped
        # the context the learner's tokens follow from, when it is cropped shorter than sequence_len
        crops = [c for c in dict.fromkeys([ctx.default.config.sequence_len, *range(s.config.sequence_len - 1, 0, -1)])
                 if c < s.config.sequence_len] if explaining() else []
        crop = next((c for c in crops if reference_greedy(s.reference, prompt, new_tokens, c) == got), None)
        if crop is not None:  # the learner's tokens are the reference's with the context cropped shorter
            raise CheckFailed(f"greedy generation differs from the reference's at new token {first}: your tokens "
                              f"are the reference's with the context cropped to the last {crop} tokens; "
                              f"config.sequence_len is {s.config.sequence_len}", hint=grader_hint("generation.crop"),
                              fields=["sequence_len"] if crop == ctx.default.config.sequence_len else None)
        raise CheckFailed(f"greedy generation differs from the reference's at new token {first}: got {got[first]}, "
                          f"expected {expected[first]}" + (f" (the context is longer than sequence_len "
                                                           f"{s.config.sequence_len} from new token {full_at} on)"
                                                           if first >= full_at else ""),
                          hint=grader_hint("generation.crop" if first >= full_at else "generation.greedy"))


both = under_both_settings
CHECKS: list[Check] = [
    Check("init.attention", "initialisation", both(check_init_attention)),
    Check("init.mlp", "initialisation", both(check_init_mlp)),
    Check("init.block", "initialisation", both(check_init_block), ("init.attention", "init.mlp")),
    Check("init.gpt", "initialisation", both(check_init_gpt), ("init.block",), milestones=("model initialises",)),
    Check("init.weights", "weight init", both(check_init_weights), ("init.gpt",)),
    Check("forward.norm", "forward components", both(check_norm)),
    Check("forward.rotary_tables", "forward components", both(check_rotary_tables), families=("nanochat",)),
    Check("forward.apply_rotary", "forward components", both(check_apply_rotary), families=("nanochat",)),
    Check("forward.mlp", "forward components", both(check_mlp), ("init.mlp",)),
    Check("forward.attention", "forward components", both(check_attention), ("init.attention",)),
    Check("forward.block", "forward components", both(check_block), ("init.block", "forward.norm", "forward.attention",
                                                                     "forward.mlp")),
    Check("forward.gpt", "full forward", both(check_forward), ("init.gpt", "forward.block")),
    Check("backward.gpt", "backward", both(check_backward), ("forward.gpt",)),
    Check("optimizer.step", "optimizer step", both(check_optimizer), ("backward.gpt",)),
    Check("training.loss_curve", "training", check_training, ("optimizer.step",)),
    Check("generation.greedy", "generation", both(check_generation), ("forward.gpt",)),
]
