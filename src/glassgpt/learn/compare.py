"""Comparing a learner's tensor with the reference's, in words a learner can act on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from glassgpt.learn import describe


@dataclass
class Comparison:
    what: str
    expected_shape: list[int]
    got_shape: list[int]
    max_abs_error: float | None = None  # inf when the learner's tensor has NaN or inf where the reference's has not
    max_rel_error: float | None = None
    within_tolerance: float | None = None  # fraction of values within tolerance
    first_difference: dict | None = None  # {"index": [...], "expected": x, "got": y}
    ok: bool = False
    nonfinite: dict | None = None  # describe.nonfinite: NaN/inf the reference does not have, and where
    relation: str | None = None  # how the two differ, in words (describe.relation), when it can be said

    def summary(self) -> str:
        if self.expected_shape != self.got_shape:
            shape = f"{self.what}: shape {tuple(self.got_shape)}, expected {tuple(self.expected_shape)}"
            return shape + (f"; {self.relation}" if self.relation else "")
        if self.ok:
            return f"{self.what}: matches (max abs error {self.max_abs_error:.1e})"
        if self.nonfinite:
            return f"{self.what}: {describe.describe_nonfinite(self.nonfinite)}"
        first = self.first_difference
        where = f"; first difference at {tuple(first['index'])}: got {first['got']:.6g}, expected {first['expected']:.6g}" if first else ""
        words = f"; {self.relation}" if self.relation else ""
        return (f"{self.what}: max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}, "
                f"{100 * self.within_tolerance:.1f}% of values within tolerance{where}{words}")


def compare(what: str, expected: torch.Tensor, got, atol: float = 1e-5, rtol: float = 1e-4,
            axes: tuple[str, ...] = (), quantities: dict[str, float] | None = None, explain: bool = True) -> Comparison:
    """Compare `got` with `expected` elementwise (|got - expected| ≤ atol + rtol·|expected|).

    A failing comparison also says where the learner's tensor is NaN or inf (and the reference's is
    not), or how the two relate in words; `axes` names the dimensions for that (e.g. ("sequence",
    "position", "channel")), `quantities` the sizes a constant factor may be named after.
    `explain=False` skips those words (and the first difference), for a bare yes or no."""
    if not isinstance(got, torch.Tensor):
        return Comparison(what, list(expected.shape), [f"not a tensor: {type(got).__name__}"])  # type: ignore[list-item]
    expected, got = expected.detach().float().cpu(), got.detach().float().cpu()
    result = Comparison(what, list(expected.shape), list(got.shape))
    if expected.shape != got.shape:
        result.relation = describe.relation(got, expected, axes, quantities) if explain else None
        return result
    if expected.numel() == 0:
        result.ok, result.max_abs_error, result.max_rel_error, result.within_tolerance = True, 0.0, 0.0, 1.0
        return result
    both_inf = torch.isinf(expected) & torch.isinf(got) & (torch.sign(expected) == torch.sign(got))
    error = torch.where(both_inf, torch.zeros_like(expected), (got - expected).abs())
    error = torch.nan_to_num(error, nan=float("inf"))
    scale = torch.where(both_inf, torch.ones_like(expected), expected.abs())
    relative = error / scale.clamp(min=1e-12)
    bad = error > atol + rtol * scale
    result.max_abs_error = error.max().item()
    result.max_rel_error = min(relative.max().item(), 1e30)
    result.within_tolerance = 1.0 - bad.float().mean().item()
    result.ok = not bool(bad.any())
    if not result.ok and explain:
        index = [int(i) for i in torch.nonzero(bad)[0].tolist()]
        result.first_difference = {"index": index, "expected": expected[tuple(index)].item(),
                                   "got": got[tuple(index)].item()}
        result.nonfinite = describe.nonfinite(got, expected, axes)
        if result.nonfinite is None:
            result.relation = describe.relation(got, expected, axes, quantities)
    return result


def matches(expected: torch.Tensor, got, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    return compare("", expected, got, atol, rtol, explain=False).ok


def finite_or_none(value):
    """`value` (nested dicts and lists) with every NaN or ±inf float replaced by None: strict JSON
    has no literal for them, so whoever writes one says in another field that it was non-finite."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value
