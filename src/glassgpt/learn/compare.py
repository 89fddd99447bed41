"""Comparing a learner's tensor with the reference's, in words a learner can act on."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Comparison:
    what: str
    expected_shape: list[int]
    got_shape: list[int]
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    within_tolerance: float | None = None  # fraction of values within tolerance
    first_difference: dict | None = None  # {"index": [...], "expected": x, "got": y}
    ok: bool = False

    def summary(self) -> str:
        if self.expected_shape != self.got_shape:
            return f"{self.what}: shape {tuple(self.got_shape)}, expected {tuple(self.expected_shape)}"
        if self.ok:
            return f"{self.what}: matches (max abs error {self.max_abs_error:.1e})"
        first = self.first_difference
        where = f"; first difference at {tuple(first['index'])}: got {first['got']:.6g}, expected {first['expected']:.6g}" if first else ""
        return (f"{self.what}: max abs error {self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g}, "
                f"{100 * self.within_tolerance:.1f}% of values within tolerance{where}")


def compare(what: str, expected: torch.Tensor, got, atol: float = 1e-5, rtol: float = 1e-4) -> Comparison:
    """Compare `got` with `expected` elementwise (|got - expected| ≤ atol + rtol·|expected|)."""
    if not isinstance(got, torch.Tensor):
        return Comparison(what, list(expected.shape), [f"not a tensor: {type(got).__name__}"])  # type: ignore[list-item]
    expected, got = expected.detach().float().cpu(), got.detach().float().cpu()
    result = Comparison(what, list(expected.shape), list(got.shape))
    if expected.shape != got.shape:
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
    if not result.ok:
        index = [int(i) for i in torch.nonzero(bad)[0].tolist()]
        result.first_difference = {"index": index, "expected": expected[tuple(index)].item(),
                                   "got": got[tuple(index)].item()}
    return result


def matches(expected: torch.Tensor, got, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    return compare("", expected, got, atol, rtol).ok
