"""Import a learner's file, turning every way it can go wrong into one clear line about *their* code.

Errors point at the learner's file and line (never at glassgpt's own frames): a syntax error shows
the offending line, an exception at import shows where in their file it was raised, a missing
class lists what the grader needs. `build_learner_model` does the same for training with the
learner's GPT: building it, initialising it and its first forward and backward pass.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from glassgpt.errors import GlassError

REQUIRED = ("Norm", "rotary_tables", "apply_rotary", "CausalSelfAttention", "MLP", "Block", "GPT",
            "setup_optimizers", "generate")


def import_learner(path: str | Path) -> ModuleType:
    """Import the file as a module named `learner_gpt`, or raise GlassError with one line."""
    path = Path(path).resolve()
    if not path.is_file():
        raise GlassError(f"{path} does not exist; create it with: glassgpt learn init {path.name}")
    spec = importlib.util.spec_from_file_location("learner_gpt", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["learner_gpt"] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        line = (error.text or "").strip()
        raise GlassError(f"{path.name} line {error.lineno}: {error.msg}" + (f": {line}" if line else "")) from None
    except BaseException as error:  # anything the learner's top level raises, even SystemExit
        raise GlassError(f"importing {path.name} failed: {where_in(error, path)}") from None
    return module


def check_names(module: ModuleType, path: Path) -> None:
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    if missing:
        raise GlassError(f"{Path(path).name} has no {', '.join(missing)}; the grader needs {', '.join(REQUIRED)} "
                         "(the names `glassgpt learn init` writes)")


def check_family(module: ModuleType, path: Path) -> str:
    """The file's FAMILY (nanochat when it has none), or GlassError when the grader has no such reference."""
    from glassgpt.model.config import FAMILIES

    family = getattr(module, "FAMILY", "nanochat")
    if family not in FAMILIES:
        raise GlassError(f"{Path(path).name} sets FAMILY = {family!r}, but the reference comes in "
                         f"{' and '.join(repr(f) for f in FAMILIES)} only: set FAMILY to the family of your "
                         "skeleton (glassgpt learn init --family F writes it)")
    return family


def frame_in(error: BaseException, path: Path) -> traceback.FrameSummary | None:
    """The deepest frame of `error`'s traceback that is in the learner's file."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == Path(path).resolve()]
    return frames[-1] if frames else None


def where_in(error: BaseException, path: Path) -> str:
    """'my_gpt.py line 42 in forward: RuntimeError: …' — the deepest frame in the learner's file."""
    message = f"{type(error).__name__}: {error}".strip().splitlines()
    text = message[0] if message else type(error).__name__
    frame = frame_in(error, path)
    if frame:
        code = f" ({frame.line.strip()})" if frame.line else ""
        return f"{Path(path).name} line {frame.lineno} in {frame.name}{code}: {text}"
    return text


def learner_gpt_class(path: str | Path):
    """The GPT class of a learner's file (for `glassgpt train --model`)."""
    module = import_learner(path)
    check_names(module, Path(path))
    return module.GPT


def learner_failure(path: Path, call: str, error: BaseException) -> GlassError:
    """One line about an exception the learner's code raised in `call` (e.g. "GPT(config)")."""
    name, check = path.name, f"glassgpt learn check {path.name} shows what to fix"
    frame = frame_in(error, path)
    if isinstance(error, NotImplementedError):  # the learner is not done yet: name the TODO
        at = f", at {name} line {frame.lineno}" if frame else ""
        return GlassError(f"your GPT ({name}) is not finished: {call} reached {error or 'a TODO'}{at} ({check})")
    return GlassError(f"your GPT ({name}) failed in {call}: {where_in(error, path)} ({check})")


def construct_learner_model(path: str | Path, config, device):
    """The learner's GPT(config) on `device`, or one GlassError naming their file and line (for
    `glassgpt train --model`, and for reopening a run trained with it)."""
    path = Path(path)
    gpt_class = learner_gpt_class(path)
    try:
        return gpt_class(config).to(device)
    except Exception as error:
        raise learner_failure(path, "GPT(config)", error) from None


def build_learner_model(path: str | Path, config, device, reference=None):
    """The learner's GPT for training: built, initialised (with `reference`'s weights when given,
    else by its own init_weights) and shown to work, by one forward and backward with targets.

    Returns (model, emitted, missing): the trace-point patterns that forward did and did not emit.
    Every failure is one GlassError naming the learner's file and line, before anything is written.
    """
    import torch

    from glassgpt.learn.checks import CheckFailed, load_into
    from glassgpt.model import taps

    path = Path(path)
    name, check = path.name, f"glassgpt learn check {path.name} shows what to fix"
    model = construct_learner_model(path, config, device)
    for attribute, why in (("config", "self.config = config"),
                           ("lm_head", "self.lm_head (None when the head is tied)")):
        if not hasattr(model, attribute):
            raise GlassError(f"your GPT ({name}) has no .{attribute}: keep {why}, the training loop reads it ({check})")
    try:
        if reference is not None:
            load_into(model, reference, "your GPT")
        else:
            model.init_weights()
    except CheckFailed as error:
        raise GlassError(f"{name}: {error} ({check})") from None
    except Exception as error:
        raise learner_failure(path, "init_weights()", error) from None

    T = config.sequence_len
    idx = torch.randint(0, config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with taps.RecordingTracer("*") as tracer:
            loss = model(idx, idx)
    except Exception as error:
        raise learner_failure(path, f"its first forward pass, forward(idx, targets) with idx of shape (1, {T})",
                              error) from None
    if not (isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.requires_grad):
        got = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) and loss.dim()
               else "a tensor that does not require grad" if isinstance(loss, torch.Tensor) else type(loss).__name__)
        raise GlassError(f"your GPT ({name}) returned {got} from forward(idx, targets); with targets it should return "
                         f"the mean loss, one number that backward can start from ({check})")
    try:
        loss.backward()
    except Exception as error:
        from glassgpt.learn.backward import locate_inplace

        located = locate_inplace(error, lambda: model(idx, idx).backward(), path)  # an in-place edit: its line
        if located:
            raise GlassError(f"your GPT ({name}) failed in its first backward pass, loss.backward(): {located} "
                             f"({check})") from None
        raise learner_failure(path, "its first backward pass, loss.backward()", error) from None
    model.zero_grad(set_to_none=True)
    emitted, missing = trace_coverage(tracer.order, config)
    return model, emitted, missing


def trace_coverage(emitted_names: list[str], config) -> tuple[list[str], list[str]]:
    """(emitted, missing): which of the trace-point patterns documented for `config` a forward pass
    emitted (`emitted_names`, e.g. a RecordingTracer's order)."""
    from glassgpt.see.registry import names_for, pattern_of

    emitted = {pattern_of(name) for name in emitted_names}
    documented = list(dict.fromkeys(pattern_of(name) for name in names_for(config)))
    return [p for p in documented if p in emitted], [p for p in documented if p not in emitted]
