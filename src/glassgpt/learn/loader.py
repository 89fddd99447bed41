"""Import a learner's file, turning every way it can go wrong into one clear line about *their* code.

Errors point at the learner's file and line (never at glassgpt's own frames): a syntax error shows
the offending line, an exception at import shows where in their file it was raised, and a missing
class lists what the grader needs.
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


def where_in(error: BaseException, path: Path) -> str:
    """'my_gpt.py line 42 in forward: RuntimeError: …' — the deepest frame in the learner's file."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == Path(path).resolve()]
    message = f"{type(error).__name__}: {error}".strip().splitlines()
    text = message[0] if message else type(error).__name__
    if frames:
        frame = frames[-1]
        code = f" ({frame.line.strip()})" if frame.line else ""
        return f"{Path(path).name} line {frame.lineno} in {frame.name}{code}: {text}"
    return text


def learner_gpt_class(path: str | Path):
    """The GPT class of a learner's file (for `glassgpt train --model`)."""
    module = import_learner(path)
    check_names(module, Path(path))
    return module.GPT


def trace_coverage(model, config, device="cpu") -> tuple[list[str], list[str]]:
    """(emitted, missing) trace-point patterns of a model, from one small forward and backward."""
    import torch

    from glassgpt.model import taps
    from glassgpt.see.registry import names_for, pattern_of

    idx = torch.randint(0, config.vocab_size, (1, min(8, config.sequence_len)), device=device)
    with taps.RecordingTracer("*") as tracer:
        model(idx, idx)
    emitted = {pattern_of(name) for name in tracer.order}
    documented = list(dict.fromkeys(pattern_of(name) for name in names_for(config)))
    return [p for p in documented if p in emitted], [p for p in documented if p not in emitted]
