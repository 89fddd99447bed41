"""What differs between a learner's tensor and the reference's, in words computed from the two.

When no catalogued mistake matches, numbers alone ("max abs error 0.8") leave the learner to guess.
Often the difference has a shape that can be said: the learner's values are the reference's times
a constant, or plus one; shifted by one position; the same values in another order; two axes
swapped; wrong only at some positions. `relation` looks for each of these, from the tensors only
(no list of known mistakes). `where_nonfinite` says where NaN and inf appeared, and
`nonfinite_cause` the likely reason, from where they are.
"""

from __future__ import annotations

import itertools
import math
import re

import torch

# A constant factor is named after a size of the model (the number of counted targets...) only
# from this far from 1: small factors such as 2 equal too many sizes to say which.
NAMED_FROM = 4.5
# Matching a relation is looser than passing a check (like recognising a catalogued mistake): the
# relation only has to be identified.
ATOL, RTOL = 1e-4, 1e-3


def close(got: torch.Tensor, expected: torch.Tensor, atol: float = ATOL, rtol: float = RTOL) -> bool:
    """Within the loose tolerance that identifies a relation (or a fitted constant)."""
    return got.shape == expected.shape and bool(((got - expected).abs() <= atol + rtol * expected.abs()).all())


def _join(indices: list[int]) -> str:
    """[0, 1, 2, 5] → '0–2, 5'."""
    parts, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}–{value}")
            start = None
    return ", ".join(parts)


def _plural(axis: str) -> str:
    return axis + ("es" if axis.endswith("s") else "s")


def where(mask: torch.Tensor, axes: tuple[str, ...]) -> str:
    """Where `mask` is True, per axis: 'position 0, every sequence, every channel'."""
    if mask.dim() == 0:
        return "the value"
    parts = []
    for dim, axis in enumerate(axes):
        others = [d for d in range(mask.dim()) if d != dim]
        hit = mask.any(dim=others) if others else mask
        indices = torch.nonzero(hit).flatten().tolist()
        if len(indices) == mask.shape[dim]:
            parts.append(f"every {axis}" if mask.shape[dim] > 1 else f"{axis} 0")
        else:
            parts.append(f"{axis if len(indices) == 1 else _plural(axis)} {_join(indices)}")
    return ", ".join(parts)


def nonfinite(got: torch.Tensor, expected: torch.Tensor, axes: tuple[str, ...]) -> dict | None:
    """{"nan": n, "inf": n, "values": n, "where": "..."} for the values of `got` that are NaN or
    ±inf where `expected` is finite; None when there are none."""
    got, expected = got.detach().float(), expected.detach().float()
    if got.shape != expected.shape:
        return None
    bad = ~torch.isfinite(got) & torch.isfinite(expected)
    if not bad.any():
        return None
    axes = axes if len(axes) == got.dim() else tuple(f"axis {d}" for d in range(got.dim()))
    return {"nan": int(torch.isnan(got).logical_and(bad).sum()), "inf": int(torch.isinf(got).logical_and(bad).sum()),
            "values": got.numel(), "where": where(bad, axes), "rows": _bad_rows(bad, axes)}


def _bad_rows(bad: torch.Tensor, axes: tuple[str, ...]) -> dict | None:
    """For a tensor with a position axis: which positions are non-finite, and whether whole rows are
    (every value of that position), which is what a query with no key left to attend to gives."""
    if "position" not in axes or bad.dim() < 2:
        return None
    dim = axes.index("position")
    moved = bad.movedim(dim, 0).reshape(bad.shape[dim], -1)  # (positions, everything else)
    positions = torch.nonzero(moved.any(1)).flatten().tolist()
    whole = bool(all(moved[p].all() for p in positions)) if positions else False
    # a whole row per sequence: the other axes but the channels are all hit at those positions
    return {"positions": positions, "count": bad.shape[dim], "whole": whole}


def describe_nonfinite(info: dict) -> str:
    kinds = " and ".join(f"{n} {label}" for n, label in ((info["nan"], "NaN"), (info["inf"], "inf")) if n)
    return f"{kinds} among {info['values']:,} values ({info['where']}), where the reference's values are finite"


def nonfinite_cause(info: dict, component: str) -> str:
    """The registry key of the likeliest cause: a query whose keys are all masked, an overflow,
    a division of zero by zero, a log of zero. From where the values are, not from a fixed list."""
    rows = info.get("rows")
    attention_like = component in ("forward.attention", "forward.block", "forward.gpt")
    if info["inf"] and not info["nan"]:
        return "nonfinite.log_zero" if component == "forward.gpt.loss" else "nonfinite.overflow"
    if attention_like and rows and rows["whole"] and 0 < len(rows["positions"]) < rows["count"]:
        if rows["positions"] == list(range(len(rows["positions"]))):
            return "nonfinite.masked_diagonal"  # the first position(s): it may see only itself
        if rows["positions"][-1] == rows["count"] - 1:
            return "nonfinite.masked_inverted"  # the last: it sees everything when the mask is right
        return "nonfinite.masked_row"
    if component == "forward.norm":
        return "nonfinite.zero_division"
    if component == "forward.gpt.loss":
        return "nonfinite.loss"
    return "nonfinite.other"


# -- relations ------------------------------------------------------------------------------------------


def name_factor(value: float, quantities: dict[str, float], smallest: float = 0.0) -> str:
    """' (= sqrt(n_embd))' when `value` is one of the setting's sizes, or its inverse; else ''.
    Values closer to 1 than `smallest` are not named (2 is sqrt(n_head) and many other things)."""
    if smallest > 1 and 1 / smallest < value < smallest:
        return ""
    for name, quantity in quantities.items():
        if quantity > 0 and math.isclose(value, quantity, rel_tol=5e-3):
            return f" (= {name})"
        if quantity > 0 and quantity != 1 and math.isclose(value, 1 / quantity, rel_tol=5e-3):
            return f" (= 1/{name})"
    return ""


def factor_words(k: float, quantities: dict[str, float] | None = None) -> str:
    quantities = quantities or {}
    if math.isclose(k, -1.0, rel_tol=1e-3):
        return "the reference's with the sign flipped (× -1)"
    if k < 0:
        return f"the reference's × {k:.3g} (the sign flipped and scaled)"
    if k > 1:
        return f"larger by a constant factor of {k:.3g}{name_factor(k, quantities, NAMED_FROM)}"
    return f"smaller by a constant factor of {1 / k:.3g}{name_factor(1 / k, quantities, NAMED_FROM)} (× {k:.3g})"


def relation(got, expected: torch.Tensor, axes: tuple[str, ...], quantities: dict[str, float] | None = None,
             atol: float = ATOL, rtol: float = RTOL) -> str | None:
    """How `got` relates to `expected`, in words, or None when no simple relation holds.

    Tried in order: two axes swapped (also when the shapes differ by it), a constant factor, a
    constant offset, a shift along an axis, another order along an axis, and last where the
    values differ (which positions, sequences...). `axes` names each dimension."""
    if not isinstance(got, torch.Tensor):
        return None
    got, expected = got.detach().float(), expected.detach().float()
    if not (torch.isfinite(got).all() and torch.isfinite(expected).all()):
        return None
    axes = axes if len(axes) == expected.dim() else tuple(f"axis {d}" for d in range(expected.dim()))
    near = lambda a, b: close(a, b, atol, rtol)  # noqa: E731
    if got.shape != expected.shape:
        if got.numel() != expected.numel() or sorted(got.shape) != sorted(expected.shape):
            return None
        for order in itertools.permutations(range(expected.dim())):
            if expected.permute(order).shape == got.shape and near(got, expected.permute(order)):
                moved = [axes[d] for d in order]
                return (f"yours is the reference's with its axes in the order ({', '.join(moved)}) instead of "
                        f"({', '.join(axes)}): transposed")
        return None
    if near(got, expected):
        return None
    if expected.numel() == 1:  # one number: any two differ by a factor; say it only when the factor is a size
        k = float(got.flatten()[0] / expected.flatten()[0]) if float(expected.flatten()[0]) else 0.0
        named = name_factor(abs(k), quantities or {}, NAMED_FROM) if k > 0 else ""
        return f"yours is {factor_words(k, quantities)}" if named else None
    for i, j in itertools.combinations(range(expected.dim()), 2):
        if expected.shape[i] == expected.shape[j] > 1 and near(got, expected.transpose(i, j)):
            return f"yours is the reference's with the {axes[i]} and {axes[j]} axes swapped: transposed"
    norm = (expected * expected).sum()
    if norm > 0:
        k = float((got * expected).sum() / norm)
        if near(got, k * expected):
            return f"yours is {factor_words(k, quantities)} everywhere"
    offset = float((got - expected).mean())
    if abs(offset) > atol and near(got, expected + offset):
        return f"yours is the reference's {'+' if offset > 0 else '-'} {abs(offset):.3g} everywhere: a constant offset"
    for dim, axis in enumerate(axes):
        words = _shift(got, expected, dim, axis, near) or _order(got, expected, dim, axis, atol, rtol)
        if words:
            return words
    return _where_different(got, expected, axes, atol, rtol)


def _shift(got, expected, dim: int, axis: str, near) -> str | None:
    n = expected.shape[dim]
    for s in (1, -1, 2, -2):
        if n - abs(s) < 2:
            continue
        mine = got.narrow(dim, max(s, 0), n - abs(s))
        theirs = expected.narrow(dim, max(-s, 0), n - abs(s))
        # (values that do not change along the axis would match any shift)
        if near(mine, theirs) and not near(mine, expected.narrow(dim, max(s, 0), n - abs(s))):
            amount = "one" if abs(s) == 1 else str(abs(s))
            plural = axis if abs(s) == 1 else _plural(axis)
            sign = "-" if s > 0 else "+"
            return (f"your {axis} t holds the reference's {axis} t {sign} {abs(s)}: shifted by {amount} {plural} "
                    f"({'later' if s > 0 else 'earlier'})")
    return None


def _order(got, expected, dim: int, axis: str, atol: float, rtol: float) -> str | None:
    n = expected.shape[dim]
    if not 2 <= n <= 256:
        return None
    mine = got.movedim(dim, 0).reshape(n, -1)
    theirs = expected.movedim(dim, 0).reshape(n, -1)
    if theirs.unique(dim=0).shape[0] < n:  # repeated slices: an order cannot be read
        return None
    tolerance = atol + rtol * theirs.abs().unsqueeze(0)  # (1, n, values)
    fits = ((mine.unsqueeze(1) - theirs.unsqueeze(0)).abs() <= tolerance).all(-1)  # (mine, theirs)
    if not bool(fits.any(1).all()):
        return None
    order = fits.float().argmax(1).tolist()
    if sorted(order) != list(range(n)) or order == list(range(n)):
        return None
    if order == list(range(n))[::-1]:
        return f"yours has the reference's {_plural(axis)} in reverse order"
    shown = ", ".join(map(str, order[:12])) + (", …" if n > 12 else "")
    return f"yours has the reference's {_plural(axis)} in another order: your {axis} i is their {axis} ({shown})[i]"


def _where_different(got, expected, axes: tuple[str, ...], atol: float, rtol: float) -> str | None:
    """The axis along which some slices match and others do not, and which differ."""
    bad = (got - expected).abs() > atol + rtol * expected.abs()
    best = None
    for dim, axis in enumerate(axes):
        if expected.shape[dim] < 2:
            continue
        others = [d for d in range(bad.dim()) if d != dim]
        differs = bad.any(dim=others).tolist() if others else bad.tolist()
        if all(differs) or not any(differs):
            continue
        wrong = [i for i, d in enumerate(differs) if d]
        right = [i for i, d in enumerate(differs) if not d]
        candidate = (len(wrong) / len(differs), dim, axis, wrong, right)
        best = min(best, candidate) if best else candidate
    if best is None:
        return None
    _, dim, axis, wrong, right = best
    if len(right) < len(wrong):
        if len(right) == 1:
            return f"only {axis} {_join(right)} matches; the other {_plural(axis)} differ"
        return f"only {_plural(axis)} {_join(right)} match; the others differ"
    return f"the values differ at {axis if len(wrong) == 1 else _plural(axis)} {_join(wrong)} only"


# -- sizes in an error message ---------------------------------------------------------------------------

_SIZE_PATTERNS = [re.compile(p) for p in (
    r"size of tensor \w+ \((\d+)\) must match the size of tensor \w+ \((\d+)\)",
    r"shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)",
    r"Expected size (\d+) but got size (\d+)",
    r"shape '\[([-\d, ]+)\]' is invalid for input of size (\d+)",
    r"\[([\d, ]+)\]",  # a shape written out: torch.Size([2, 12, 64]), [torch.FloatTensor [2, 12, 64]]
)]


def name_sizes(text: str, sizes: dict[str, int]) -> tuple[str, list[str]] | None:
    """'4 = n_head; 2 = n_kv_head' for the numbers in an error message that are sizes of the model
    (`sizes`: name → value), and the config fields among those names; None when none is."""
    numbers: list[int] = []
    for pattern in _SIZE_PATTERNS:
        for match in pattern.finditer(text):
            for group in match.groups():
                numbers += [int(n) for n in re.findall(r"\d+", group)]
        if numbers:
            break
    parts, fields = [], []
    for number in dict.fromkeys(numbers):
        names = [name for name, value in sizes.items() if value == number]
        if number > 1 and names:
            parts.append(f"{number} = {' = '.join(names)}")
            fields += [n for n in names if re.fullmatch(r"[a-z_]+", n) and n not in fields]
    return ("; ".join(parts), fields) if parts else None
