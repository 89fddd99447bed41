"""The common mistakes the grader can recognise, each as the output the mistake would produce.

When a learner's component disagrees with the reference, the grader computes, from the same
weights and inputs, what each known wrong version of that component outputs. If the learner's
output matches one of them, the grader names the mistake (a stable id such as
`eps_outside_sqrt`) and gives its hint.

The wrong versions are built from the reference's own weights and helper functions; with every
option at its default, `attention_variant` and `block_variant` reproduce the reference exactly
(a test checks it), so each mistake differs from the truth in exactly one way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glassgpt.model.gpt import NORM_EPS, activate, apply_rotary
from glassgpt.see.registry import KNOWN_MISTAKES


@dataclass(frozen=True)
class Mistake:
    """A wrong version of a component. Its words (description, hint) live in the explanation
    registry, under the trace point the mistake corrupts, like every other explanation."""

    id: str
    component: str  # the check that recognises it
    produce: Callable | None  # (reference objects, inputs) → the wrong output

    @property
    def registry_key(self) -> str:
        return KNOWN_MISTAKES[self.id][0]

    @property
    def description(self) -> str:
        return KNOWN_MISTAKES[self.id][1].description

    @property
    def hint(self) -> str:
        return KNOWN_MISTAKES[self.id][1].hint


# -- wrong versions of each component -------------------------------------------------------------


def rms_eps_outside(x):
    return x / (x.square().mean(-1, keepdim=True).sqrt() + NORM_EPS)


def rms_over_time(x):
    return x / torch.sqrt(x.square().mean(-2, keepdim=True) + NORM_EPS)


def layernorm_instead_of_rms(x):
    return F.layer_norm(x, (x.shape[-1],), eps=NORM_EPS)


def rms_instead_of_layernorm(x, weight, bias):
    return F.rms_norm(x, (x.shape[-1],), weight, NORM_EPS) + (bias if bias is not None else 0)


def layernorm_unbiased_variance(x, weight, bias):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=True)
    out = (x - mean) / torch.sqrt(var + NORM_EPS)
    return out * weight + bias if weight is not None else out


def rotary_tables_variant(seq_len, head_dim, base=10000.0, exponent_step=2, swap=False):
    frequencies = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) * (exponent_step / 2) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), frequencies)
    cos, sin = angles.cos(), angles.sin()
    return (sin, cos) if swap else (cos, sin)


def apply_rotary_adjacent(x, cos, sin):
    """Pairs (0, 1), (2, 3)… instead of (i, i + D/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[:, None, :], sin[:, None, :]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2)


def apply_rotary_opposite(x, cos, sin):
    return apply_rotary(x, cos, -sin)


def attention_variant(attn, x, cos, sin, *, scale="sqrt", mask="before", softmax_dim=-1, rope_v=False,
                      qk_norm=None, repeat="interleave", merge="transpose", rotate=apply_rotary,
                      factor: float | None = None):
    """The reference attention computed step by step from `attn`'s weights, with one thing changed.
    `factor` multiplies q·kᵀ instead of the scale (to fit the learner's scale from its output)."""
    B, T, C = x.shape
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    q = attn.c_q(x).view(B, T, H, D)
    k = attn.c_k(x).view(B, T, Hkv, D)
    v = attn.c_v(x).view(B, T, Hkv, D)
    if attn.use_rope:
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if rope_v:
            v = rotate(v, cos, sin)
    use_qk_norm = attn.q_norm is not None if qk_norm is None else qk_norm
    if use_qk_norm:
        q, k = F.rms_norm(q, (D,), eps=NORM_EPS), F.rms_norm(k, (D,), eps=NORM_EPS)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|Hkv, T, D)
    group = H // Hkv
    if repeat == "interleave":
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    else:  # tile: head h reads kv head h % Hkv
        k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)
    temperature = attn.scale * math.sqrt(D)  # = 1 / temperature of the config
    if factor is None:
        factor = {"sqrt": attn.scale, "none": temperature, "d": temperature / D}[scale]
    scores = (q @ k.transpose(-2, -1)) * factor
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    if attn.causal and mask == "before":
        scores = scores.masked_fill(~allowed, float("-inf"))
    pattern = scores.softmax(dim=softmax_dim)
    if attn.causal and mask == "after":
        pattern = pattern.masked_fill(~allowed, 0.0)
    z = pattern @ v  # (B, H, T, D)
    z = z.transpose(1, 2).reshape(B, T, H * D) if merge == "transpose" else z.reshape(B, T, H * D)
    return attn.c_proj(z)


def block_variant(block, x, cos, sin, *, residual="once", placement=None):
    attn = lambda h: block.attn(h, cos, sin)  # noqa: E731
    pre = block.pre_norm if placement is None else placement == "pre"
    if not pre:
        x = block.norm_1(x + attn(x))
        return block.norm_2(x + block.mlp(x))
    if residual == "missing":
        x = attn(block.norm_1(x))
        return block.mlp(block.norm_2(x))
    if residual == "twice":
        x = x + x + attn(block.norm_1(x))
        return x + x + block.mlp(block.norm_2(x))
    if residual == "normed":  # adds the normalised stream instead of the stream
        h = block.norm_1(x)
        x = h + attn(h)
        h = block.norm_2(x)
        return h + block.mlp(h)
    x = x + attn(block.norm_1(x))
    return x + block.mlp(block.norm_2(x))


def logits_variant(model, idx, *, softcap="right"):
    """Reference logits with the softcap written differently."""
    with torch.no_grad():
        from glassgpt.model import taps

        with taps.RecordingTracer("lm_head.logits_raw") as tracer:
            model(idx)
    raw = tracer.tensors["lm_head.logits_raw"]
    cap = model.config.softcap or 15.0
    return {"none": raw, "no_divide": cap * torch.tanh(raw), "no_multiply": torch.tanh(raw / cap),
            "right": cap * torch.tanh(raw / cap)}[softcap]


def loss_variant(logits, idx, targets, *, kind):
    V = logits.shape[-1]
    if kind == "labels_not_shifted":
        return F.cross_entropy(logits.reshape(-1, V), idx.reshape(-1))
    if kind == "last_position_only":
        return F.cross_entropy(logits[:, -1], targets[:, -1], ignore_index=-1)
    if kind == "labels_shifted_twice":  # the targets are already shifted; slicing shifts them again
        return F.cross_entropy(logits[:, :-1].reshape(-1, V), targets[:, 1:].reshape(-1), ignore_index=-1)
    if kind == "ignored_targets_counted":
        losses = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1, reduction="none")
        return losses.sum() / targets.numel()
    raise ValueError(kind)


# -- the catalogue ------------------------------------------------------------------------------------


def _attn(**changes):
    return lambda ref, x, cos, sin: attention_variant(ref, x, cos, sin, **changes)


MISTAKES: list[Mistake] = [Mistake(id, component, produce) for id, component, produce in [
    ("eps_outside_sqrt", "forward.norm", lambda ref, x: rms_eps_outside(x)),
    ("norm_over_wrong_dim", "forward.norm", lambda ref, x: rms_over_time(x)),
    ("layernorm_instead_of_rmsnorm", "forward.norm", lambda ref, x: layernorm_instead_of_rms(x)),
    ("rmsnorm_instead_of_layernorm", "forward.norm", lambda ref, x: rms_instead_of_layernorm(x, ref.weight, ref.bias)),
    ("unbiased_variance", "forward.norm", lambda ref, x: layernorm_unbiased_variance(x, ref.weight, ref.bias)),
    ("rope_wrong_frequencies", "forward.rotary_tables",
     lambda ref, n, d, base: rotary_tables_variant(n, d, base, exponent_step=1)),
    ("rope_cos_sin_swapped", "forward.rotary_tables", lambda ref, n, d, base: rotary_tables_variant(n, d, base, swap=True)),
    ("rope_adjacent_pairs", "forward.apply_rotary", lambda ref, x, cos, sin: apply_rotary_adjacent(x, cos, sin)),
    ("rope_opposite_rotation", "forward.apply_rotary", lambda ref, x, cos, sin: apply_rotary_opposite(x, cos, sin)),
    ("no_attention_scaling", "forward.attention", _attn(scale="none")),
    ("scaled_by_d", "forward.attention", _attn(scale="d")),
    ("mask_after_softmax", "forward.attention", _attn(mask="after")),
    ("no_causal_mask", "forward.attention", _attn(mask="none")),
    ("softmax_wrong_dim", "forward.attention", _attn(softmax_dim=-2)),
    ("rope_on_values", "forward.attention", _attn(rope_v=True)),
    ("missing_qk_norm", "forward.attention", _attn(qk_norm=False)),
    ("kv_heads_tiled", "forward.attention", _attn(repeat="tile")),
    ("heads_merged_without_transpose", "forward.attention", _attn(merge="reshape")),
    ("relu_not_relu2", "forward.mlp", lambda ref, x: ref.c_proj(F.relu(ref.c_fc(x)))),
    ("gelu_exact_not_tanh", "forward.mlp", lambda ref, x: ref.c_proj(F.gelu(ref.c_fc(x)))),
    ("missing_activation", "forward.mlp", lambda ref, x: ref.c_proj(ref.c_fc(x))),
    ("wrong_activation", "forward.mlp",
     lambda ref, x: ref.c_proj(activate(ref.c_fc(x), "gelu" if ref.activation == "relu2" else "relu2"))),
    ("residual_missing", "forward.block", lambda ref, x, cos, sin: block_variant(ref, x, cos, sin, residual="missing")),
    ("residual_twice", "forward.block", lambda ref, x, cos, sin: block_variant(ref, x, cos, sin, residual="twice")),
    ("residual_adds_normed_input", "forward.block",
     lambda ref, x, cos, sin: block_variant(ref, x, cos, sin, residual="normed")),
    ("post_norm", "forward.block", lambda ref, x, cos, sin: block_variant(ref, x, cos, sin, placement="post")),
    ("softcap_missing_divide", "forward.gpt", lambda ref, idx: logits_variant(ref, idx, softcap="no_divide")),
    ("softcap_missing_multiply", "forward.gpt", lambda ref, idx: logits_variant(ref, idx, softcap="no_multiply")),
    ("softcap_missing", "forward.gpt", lambda ref, idx: logits_variant(ref, idx, softcap="none")),
    ("labels_not_shifted", "forward.gpt.loss",
     lambda logits, idx, targets: loss_variant(logits, idx, targets, kind="labels_not_shifted")),
    ("last_position_only", "forward.gpt.loss",
     lambda logits, idx, targets: loss_variant(logits, idx, targets, kind="last_position_only")),
    ("labels_shifted_twice", "forward.gpt.loss",
     lambda logits, idx, targets: loss_variant(logits, idx, targets, kind="labels_shifted_twice")),
    ("ignored_targets_counted", "forward.gpt.loss",
     lambda logits, idx, targets: loss_variant(logits, idx, targets, kind="ignored_targets_counted")),
    ("weights_tied", "init.gpt", None),  # found from which tensors the model holds, not from an output
    ("weights_not_tied", "init.gpt", None),
]]

BY_COMPONENT: dict[str, list[Mistake]] = {}
for _mistake in MISTAKES:
    BY_COMPONENT.setdefault(_mistake.component, []).append(_mistake)
BY_ID = {m.id: m for m in MISTAKES}


def diagnose(component: str, got: torch.Tensor, *args, atol: float = 1e-4, rtol: float = 1e-3,
             correct: torch.Tensor | None = None) -> Mistake | None:
    """The known mistake of `component` whose output `got` matches, or None.

    With `correct` (the reference output), a mistake also counts when `got` is far closer to it
    than to the correct output: small differences (exact vs approximate GELU) can hide inside the
    output tolerance and only show in the gradients.
    """
    from glassgpt.learn.compare import matches

    if correct is not None and isinstance(got, torch.Tensor):
        distance_to_correct = (got.detach().float() - correct.detach().float()).abs().max().item()
        for mistake in BY_COMPONENT.get(component, []):
            try:
                with torch.no_grad():
                    wrong = mistake.produce(*args) if mistake.produce else None
            except Exception:
                continue
            if isinstance(wrong, torch.Tensor) and wrong.shape == got.shape:
                if (got.detach().float() - wrong.float()).abs().max().item() < 0.01 * distance_to_correct:
                    return mistake
    for mistake in BY_COMPONENT.get(component, []):
        if mistake.produce is None:
            continue
        try:
            with torch.no_grad():
                wrong = mistake.produce(*args)
        except Exception:  # a variant that does not apply to this configuration
            continue
        if isinstance(wrong, tuple):
            if isinstance(got, tuple) and len(got) == len(wrong) and all(
                    isinstance(g, torch.Tensor) and matches(w, g, atol, rtol) for w, g in zip(wrong, got)):
                return mistake
            continue
        if isinstance(got, torch.Tensor) and got.shape == wrong.shape and matches(wrong, got, atol, rtol):
            # a wrong version that is as close to the correct output is no explanation (exact and
            # tanh GELU agree within this tolerance: an output that equals the reference's is not
            # "exact GELU" because its gradient differs for another reason)
            if correct is not None and not _closer(got, wrong, correct):
                continue
            return mistake
    return None


def _closer(got: torch.Tensor, wrong: torch.Tensor, correct: torch.Tensor) -> bool:
    got = got.detach().float()
    return (got - wrong.float()).abs().max().item() < (got - correct.detach().float()).abs().max().item()
