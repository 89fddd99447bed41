"""Constants of the learner's, fitted from its output: "your eps is 1e-06", "your tables turn at base 10000".

A learner's component often differs from the reference only in a constant: the attention scale,
the RoPE base, the softcap, the norm's eps. Each function here finds the value that makes the
reference's computation reproduce the learner's output (by a search over that one number), and
says it in words when one does; None otherwise. A value equal to the default setting's is a
hard-coded default, and the config field is named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glassgpt.learn import describe, mistakes
from glassgpt.learn.describe import close
from glassgpt.learn.settings import Setting
from glassgpt.model.gpt import NORM_EPS, rotary_tables


@dataclass
class Fitted:
    """A constant of the learner's, fitted from its output, that differs from the reference's."""

    words: str
    hint: str  # registry key
    fields: list[str] | None = None


def _smallest(error, lo: float, hi: float, steps: int = 40) -> float:
    """The argument in [lo, hi] where `error` (unimodal there) is smallest: a ternary search."""
    for _ in range(steps):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if error(a) < error(b):
            hi = b
        else:
            lo = a
    return (lo + hi) / 2


def norm_eps(reference, x: torch.Tensor, got: torch.Tensor) -> Fitted | None:
    """The eps with which the reference's norm outputs what the learner's did, when one does."""
    got = got.detach()

    def norm(eps: float) -> torch.Tensor:
        if reference.kind == "layer":
            return F.layer_norm(x, (x.shape[-1],), reference.weight, reference.bias, eps)
        return F.rms_norm(x, (x.shape[-1],), reference.weight, eps)

    def error(log_eps: float) -> float:
        return (norm(10 ** log_eps) - got).abs().max().item()

    grid = [None] + [e / 4 for e in range(-64, 1)]  # no eps, then 1e-16 … 1 in quarter decades
    best = min(grid, key=lambda e: (norm(0.0) - got).abs().max().item() if e is None else error(e))
    eps = 0.0 if best is None else 10 ** _smallest(error, best - 0.25, best + 0.25)
    if not close(got, norm(eps)) or math.isclose(eps, NORM_EPS, rel_tol=0.05):
        return None
    if eps == 0:
        return Fitted(f"your norm's output is the reference's with no eps at all (NORM_EPS is {NORM_EPS:g})",
                      "words.norm_eps")
    return Fitted(f"your norm's output is the reference's with eps {eps:.2g} instead of NORM_EPS = {NORM_EPS:g}",
                  "words.norm_eps")


def rope_base(got, T: int, D: int, base: float, default_base: float) -> Fitted | None:
    """The base the learner's tables turn at, read from the angle of pair 1 at position 1. Only the
    default setting's base (a hard-coded default) is said to be config.rope_base's fault: another
    base can come from another mistake (a hard-coded head_dim turns at base^(12/16))."""
    cos, sin = got
    if D < 4 or T < 2:
        return None
    angle = math.atan2(float(sin[1, 1]), float(cos[1, 1]))  # base^(-2/D) radians per token
    if not 0 < angle < 1:
        return None
    fitted = angle ** (-D / 2)
    # a round base read back from float32 angles is off in its last digits: try the round one first
    candidates = [b for b in (10000.0, 500.0, 1e5, 1e6) if math.isclose(b, fitted, rel_tol=0.01)] + [fitted]
    for candidate in candidates:
        cos_fitted, sin_fitted = rotary_tables(T, D, candidate)
        if close(cos, cos_fitted) and close(sin, sin_fitted):
            hard_coded = math.isclose(candidate, default_base, rel_tol=1e-3)
            return Fitted(f"your tables turn at base {candidate:.6g} (pair i by {candidate:.6g}^(-2i/head_dim) per "
                          f"token), the grader asked for base {base:g}", "words.rope_base",
                          ["rope_base"] if hard_coded else None)
    return None


def attention_scale(s: Setting, reference, x: torch.Tensor, got) -> Fitted | None:
    """The factor the learner's q·kᵀ is multiplied by, when the reference attention with that factor
    reproduces its output: said as a factor of the reference's scores, and named when it is one
    of the setting's sizes (1/sqrt(n_embd), 1/head_dim...)."""
    right = reference.scale

    def attention(factor: float) -> torch.Tensor:
        with torch.no_grad():
            return mistakes.attention_variant(reference, x, s.cos, s.sin, factor=factor)

    def error(log_factor: float) -> float:
        return (attention(math.exp(log_factor)) - got).abs().max().item()

    eighth = math.log(10) / 8
    best = min((math.log(right) + e * eighth for e in range(-24, 25)), key=error)  # 1/1000 … 1000 x the right one
    factor = math.exp(_smallest(error, best - eighth, best + eighth))
    if not close(got.detach(), attention(factor)) or math.isclose(factor, right, rel_tol=1e-3):
        return None
    named = describe.name_factor(factor, s.quantities())
    return Fitted(f"the attention scores are {describe.factor_words(factor / right, s.quantities())}: q·kᵀ is "
                  f"multiplied by {factor:.4g}{named} where the reference multiplies by {right:.4g} "
                  f"(= 1/sqrt(head_dim)): check the scale", "words.attention_scale")


def softcap(s: Setting, logits, default_cap: float | None) -> Fitted | None:
    """The cap c of the learner's c · tanh(raw / c), when one reproduces its logits from the
    reference's raw logits (config.softcap's fault when c is the default setting's cap)."""
    if not isinstance(logits, torch.Tensor) or logits.shape != s.ref_logits.shape:
        return None
    raw, got = s.trace["lm_head.logits_raw"], logits.detach().float()
    limit = got.abs().max().item()
    if not 0 < limit < raw.abs().max().item():
        return None

    def capped(log_cap: float) -> torch.Tensor:
        return math.exp(log_cap) * torch.tanh(raw / math.exp(log_cap))

    cap = math.exp(_smallest(lambda c: (capped(c) - got).abs().max().item(), math.log(limit), math.log(1e4), 60))
    if not close(got, cap * torch.tanh(raw / cap)):
        return None
    wanted = s.config.softcap
    if wanted is not None and math.isclose(cap, wanted, rel_tol=1e-3):
        return None
    asked = (f"config.softcap is {wanted:g}" if wanted is not None
             else "this family has no softcap (config.softcap is None)")
    hard_coded = default_cap is not None and math.isclose(cap, default_cap, rel_tol=1e-3)
    return Fitted(f"your logits are capped at ±{cap:.4g} (c · tanh(logits / c) with c = {cap:.4g}); {asked}",
                  "words.softcap", ["softcap"] if hard_coded else None)
