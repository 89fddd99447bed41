"""Errors raised during backward, located in the learner's file.

An in-place operation (`x += …`, `h.square_()`, `w[:, 0] = 0`, `F.relu(h, inplace=True)`) on a
tensor that autograd saved for the backward pass runs fine forward and fails only in
`loss.backward()`, whose traceback is all PyTorch's: "one of the variables needed for gradient
computation has been modified by an inplace operation". To say where, the forward pass runs again
under a recorder that notes every call that changed a tensor in place (its version counter moved)
with the learner's file and line, and under anomaly detection, which tells where the tensor was
saved. The error's own words (the tensor's shape and version) pick the operation.
"""

from __future__ import annotations

import re
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

INPLACE_ERROR = "modified by an inplace operation"
_VERSION = re.compile(r"\[torch\.\w+ \[([\d, ]*)\]\].*?is at version (\d+); expected version (\d+)")


@dataclass
class InplaceCall:
    operation: str  # e.g. "add_ (x += …)"
    shape: tuple[int, ...]
    version: int  # the tensor's version after the call
    frame: traceback.FrameSummary


def _operation_name(func, kwargs: dict) -> str:
    name = getattr(func, "__name__", str(func))
    spelled = {"add_": "+=", "sub_": "-=", "mul_": "*=", "div_": "/=",
               "__setitem__": "an indexed assignment x[…] = …"}
    if name == "__setitem__":
        return spelled[name]
    if kwargs.get("inplace"):
        return f"{name}(…, inplace=True)"
    return f"{name} ({spelled[name]})" if name in spelled else name


class InplaceRecorder(TorchFunctionMode):
    """Notes every torch call made from the learner's file that changed one of its tensor
    arguments in place."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = str(Path(path).resolve())
        self.calls: list[InplaceCall] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        versions = [t._version for t in tensors]
        result = func(*args, **kwargs)
        for tensor, version in zip(tensors, versions):
            if tensor._version != version:
                frame = self._learner_frame()
                if frame is not None:
                    self.calls.append(InplaceCall(_operation_name(func, kwargs), tuple(tensor.shape),
                                                  tensor._version, frame))
                break
        return result

    def _learner_frame(self) -> traceback.FrameSummary | None:
        frames = [f for f in traceback.extract_stack() if str(Path(f.filename).resolve()) == self.path]
        return frames[-1] if frames else None


def _saved_at(messages: list[str], path: Path) -> traceback.FrameSummary | None:
    """From anomaly detection's warning, the learner's line that made the tensor autograd saved."""
    frame_line = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')
    for message in messages:
        if "Traceback of forward call" not in message:
            continue
        lines, found = message.splitlines(), None
        for i, line in enumerate(lines):
            m = frame_line.match(line)
            if m and Path(m.group(1)).resolve() == Path(path).resolve():
                code = lines[i + 1].strip() if i + 1 < len(lines) and not frame_line.match(lines[i + 1]) else ""
                found = traceback.FrameSummary(m.group(1), int(m.group(2)), m.group(3), line=code)
        if found:
            return found
    return None


def locate_inplace(error: BaseException, rerun: Callable[[], None], path: Path) -> str | None:
    """One line naming the learner's in-place operation that broke backward, or None when `error`
    is not that kind of error or the operation is not in the learner's file. `rerun` repeats the
    forward and backward pass that failed (on fresh inputs)."""
    if INPLACE_ERROR not in str(error):
        return None
    recorder = InplaceRecorder(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autograd.detect_anomaly(check_nan=False), recorder:
                rerun()
        except Exception:  # the same error again, now recorded
            pass
    if not recorder.calls:
        return None
    match = _VERSION.search(str(error))
    calls = recorder.calls
    if match:
        shape = tuple(int(n) for n in match.group(1).split(",") if n.strip())
        expected = int(match.group(3))
        same_shape = [c for c in calls if c.shape == shape]
        calls = [c for c in same_shape if c.version == expected + 1] or same_shape or calls
    call = calls[0]
    saved = _saved_at([str(w.message) for w in caught], path)
    code = f" ({call.frame.line.strip()})" if call.frame.line else ""
    where = f"{Path(path).name} line {call.frame.lineno} in {call.frame.name}{code}"
    if saved is not None and (saved.lineno, saved.name) != (call.frame.lineno, call.frame.name):
        kept = f"line {saved.lineno} ({saved.line})" if saved.line else f"line {saved.lineno}"
        saved_words = f", which autograd saved at {kept} to compute gradients"
    else:
        saved_words = ", which autograd had saved to compute gradients"
    return (f"{where}: the in-place operation {call.operation} changes a tensor of shape {tuple(call.shape)}"
            f"{saved_words}, so backward fails (RuntimeError: one of the variables needed for gradient "
            f"computation has been {INPLACE_ERROR})")
