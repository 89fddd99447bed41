"""Named trace points ("taps"): how the model lets a tracer watch every tensor without knowing about it.

The model calls `x = tap("blocks.3.attn.q", x)` at every operation. With no tracer active this is a
single global check that returns `x` unchanged: no hooks are registered, nothing is copied, and under
`torch.compile` the check is a guard, not a graph break. With a tracer active (`with tracer:`), the
tracer's `record` sees the tensor and returns it, or a replacement (experiments intervene this way).

Names are dotted and identical in the reference model and the learner's skeleton; the full list and
what each one means live in the explanation registry (`glassgpt.see.registry`).
"""

from __future__ import annotations

import fnmatch
from typing import Any

import torch

_active: "Tracer | None" = None


def tap(name: str, x: torch.Tensor) -> torch.Tensor:
    """Show `x` to the active tracer under `name`; returns `x` (or the tracer's replacement)."""
    if _active is None:
        return x
    return _active.record(name, x)


def wants(name: str) -> bool:
    """True when a tracer is active and wants `name`: lets the model materialise costly views
    (such as the attention pattern) only when somebody looks at them."""
    return _active is not None and _active.wants(name)


def active() -> "Tracer | None":
    return _active


class Tracer:
    """Base tracer: a context manager that receives every tap whose name matches `patterns`.

    Subclasses override `record`. `patterns` are shell-style globs (`blocks.*.attn.*`); a name
    matches when any pattern does. Only one tracer is active at a time, so nesting is an error.
    """

    def __init__(self, patterns: str | list[str] = "*"):
        self.patterns = [patterns] if isinstance(patterns, str) else list(patterns)

    def wants(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)

    def record(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x

    def __enter__(self) -> "Tracer":
        global _active
        if _active is not None:
            raise RuntimeError("a tracer is already active; tracers do not nest")
        _active = self
        return self

    def __exit__(self, *exc: Any) -> None:
        global _active
        _active = None


class RecordingTracer(Tracer):
    """Keeps a detached copy of every wanted tensor (and, with `grads=True`, of its gradient).

    `tensors[name]` and `grads[name]` hold the latest value, `order` the names in the order the
    model emitted them. Meant for tests and small models: it stores full tensors.
    """

    def __init__(self, patterns: str | list[str] = "*", grads: bool = False):
        super().__init__(patterns)
        self.grads_wanted = grads
        self.tensors: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.order: list[str] = []

    def record(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if not self.wants(name):
            return x
        self.tensors[name] = x.detach().clone()
        self.order.append(name)
        if self.grads_wanted and x.requires_grad:
            x.register_hook(lambda grad, name=name: self.grads.__setitem__(name, grad.detach().clone()))
        return x
