"""Name attention heads from their patterns: what does each head of a model look at?

A head's pattern (T, T) says, for every query position, how its attention is spread over the keys.
Averaged over the queries (and over several windows of text), a few numbers describe it:

    previous   mean attention on the token just before the query       (key = query - 1)
    current    mean attention on the query's own token                 (key = query)
    first      mean attention on the window's first token               (key = 0)
    delimiter  mean attention on delimiter tokens: punctuation and line breaks (',', ':\n', '\n')
    spread     mean entropy of the rows / entropy of uniform attention  (1 = evenly spread)

A head is named after the position that takes at least THRESHOLD of its attention: a
previous-token head, a current-token head, a first-token head (the "attention sink"). Otherwise, a
head that puts at least THRESHOLD of its attention on delimiters, and at least twice their share of
the keys it can see, is a delimiter head (it reads where the current line or clause began, a role
small models trained on verse learn early). A head whose rows are nearly uniform is broad; anything
else is mixed. The first queries are left out: query 0 can only
see itself, query 1 only itself and its predecessor, so they would look specialised in any model.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where patterns are scored, not by the registry that names experiments
    import torch

THRESHOLD = 0.5  # share of attention that names a head after one role
BROAD = 0.9  # spread at or above which attention counts as evenly spread
SKIP_QUERIES = 4  # the first queries see too few keys to tell roles apart
ROLES = ("previous-token", "current-token", "first-token", "delimiter")  # the named, specialised roles
DELIMITER_LIFT = 2.0  # a delimiter head attends to delimiters at least this many times their share of keys


@dataclass(frozen=True)
class HeadScores:
    layer: int
    head: int
    previous: float
    current: float
    first: float
    spread: float
    delimiter: float = 0.0
    delimiter_share: float = 0.0  # the share of the visible keys that are delimiters (what chance gives)

    @property
    def name(self) -> str:
        return name_head(self.previous, self.current, self.first, self.spread, self.delimiter, self.delimiter_share)

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "HeadScores":
        return cls(**data)


def name_head(previous: float, current: float, first: float, spread: float, delimiter: float = 0.0,
              delimiter_share: float = 0.0) -> str:
    """The role of a head from its scores (see the module docstring)."""
    roles = {"previous-token": previous, "current-token": current, "first-token": first}
    role, share = max(roles.items(), key=lambda item: item[1])
    if share >= THRESHOLD:
        return role
    if delimiter >= THRESHOLD and delimiter >= DELIMITER_LIFT * delimiter_share:
        return "delimiter"
    if spread >= BROAD:
        return "broad"
    return "mixed"


def is_delimiter(piece: str) -> bool:
    """Punctuation and line breaks, with or without spaces around them: ',', ':\n', ' \'', '\n\n'."""
    stripped = piece.strip(" ")
    return bool(stripped) and all(ch in DELIMITER_CHARS for ch in stripped)


DELIMITER_CHARS = set(string.punctuation) | {"\n", "\r", "\t"}


def score_heads(patterns: torch.Tensor, delimiters: torch.Tensor | None = None) -> list[HeadScores]:
    """Scores of every head from causal patterns (N, L, H, T, T): N windows, rows summing to 1.
    `delimiters` (N, T) bool marks the delimiter tokens of each window (None: no delimiter scores)."""
    import torch

    N, L, H, T, _ = patterns.shape
    if T <= SKIP_QUERIES + 1:
        raise ValueError(f"need more than {SKIP_QUERIES + 1} positions to score heads, got {T}")
    p = patterns.double()
    queries = torch.arange(SKIP_QUERIES, T)  # (Q,)
    previous = p[..., queries, queries - 1].mean(dim=(0, -1))  # (L, H)
    current = p[..., queries, queries].mean(dim=(0, -1))  # (L, H)
    first = p[..., queries, 0].mean(dim=(0, -1))  # (L, H)
    rows = p[..., queries, :]  # (N, L, H, Q, T)
    entropy = -torch.xlogy(rows, rows).sum(dim=-1)  # (N, L, H, Q)
    # The most a causal row can have: uniform over its query + 1 keys.
    ceiling = torch.log((queries + 1).double())  # (Q,)
    spread = (entropy / ceiling).mean(dim=(0, -1))  # (L, H)
    delimiter, share = torch.zeros(L, H, dtype=torch.float64), 0.0
    if delimiters is not None:
        keys = delimiters.double()  # (N, T)
        delimiter = (rows * keys[:, None, None, None, :]).sum(dim=-1).mean(dim=(0, -1))  # (L, H)
        # chance: a query at position i that spread its attention evenly over keys 0..i
        share = float((keys.cumsum(dim=-1)[:, queries] / (queries + 1)).mean())
    return [HeadScores(layer, head, float(previous[layer, head]), float(current[layer, head]),
                       float(first[layer, head]), float(spread[layer, head]), float(delimiter[layer, head]), share)
            for layer in range(L) for head in range(H)]


def specialised(heads: list[HeadScores]) -> list[HeadScores]:
    """The heads named after a role (previous-, current- or first-token)."""
    return [h for h in heads if h.name in ROLES]


def summary(heads: list[HeadScores]) -> str:
    """'previous-token: L0H1, L0H3; first-token: L2H0' (roles with no head are left out)."""
    by_role: dict[str, list[str]] = {}
    for h in heads:
        by_role.setdefault(h.name, []).append(f"L{h.layer}H{h.head}")
    parts = [f"{role}: {', '.join(by_role[role])}" for role in (*ROLES, "broad", "mixed") if role in by_role]
    return "; ".join(parts) if parts else "no heads"
