"""Checkpoints: everything needed to continue a run exactly, written so a crash never leaves half.

    runs/<run>/checkpoints/step-000500/
        model.safetensors   weights (safetensors: plain tensors, no pickle, safe to share)
        optimizer.pt        optimiser state; tensors and numbers only, loaded with weights_only=True
        state.json          step, loader cursor, RNG states, timing, sha256 of the two files above

A checkpoint folder is written under a temp name and renamed when complete, and an old one is
renamed away before it is deleted, so a `step-N` folder is always whole, whenever the process is
killed; `state.json`'s checksums catch a file damaged later (a truncated copy, a disk error).
What a killed process leaves behind (a temp folder, one renamed for deletion) carries a temp name,
never listed as a checkpoint, and `remove_leftovers` clears it when the run is next trained.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from glassgpt import atomic
from glassgpt.errors import GlassError
from glassgpt.train.optim import OptimizerLike

_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save(run_dir: Path, step: int, model: torch.nn.Module, optimizers: list[OptimizerLike],
         state: dict, keep: int) -> Path:
    folder = checkpoints_dir(run_dir) / f"step-{step:06d}"
    try:
        with atomic.atomic_dir(folder, durable=True) as tmp:
            weights = _unshared(model.state_dict())
            save_file(weights, tmp / "model.safetensors", metadata={"step": str(step)})
            torch.save({"optimizers": [o.state_dict() for o in optimizers]}, tmp / "optimizer.pt")
            state = dict(state, step=step, rng=rng_state(), files={
                name: _sha256(tmp / name) for name in ("model.safetensors", "optimizer.pt")})
            (tmp / "state.json").write_text(json.dumps(state, indent=2))
    except (OSError, SafetensorError, RuntimeError) as error:  # torch.save reports a failed write as RuntimeError
        # The temp folder is gone (atomic_dir removed it); earlier checkpoints are untouched.
        raise GlassError(f"cannot write checkpoint {folder}: {_write_failure(error, folder, model, optimizers)}; "
                         "earlier checkpoints are kept") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        _delete(old)
    return folder


def _write_failure(error: Exception, folder: Path, model: torch.nn.Module,
                   optimizers: list[OptimizerLike]) -> str:
    """Why a checkpoint could not be written, in words. torch.save reports a full disk as
    "unexpected pos N vs M", so the free space is checked too: less than a checkpoint's tensors
    need is a full disk, whatever the writer said."""
    try:
        free = shutil.disk_usage(folder.parent).free
    except OSError:
        free = None
    tensors = [*model.state_dict().values(),
               *(t for o in optimizers for state in o.state.values() for t in state.values() if torch.is_tensor(t))]
    needed = sum(t.numel() * t.element_size() for t in tensors)
    if getattr(error, "errno", None) == errno.ENOSPC or (free is not None and free < needed):
        room = f" ({free / 1e6:,.2f} MB free; a checkpoint needs {needed / 1e6:,.2f} MB)" if free is not None else ""
        return f"no space left on the device{room}"
    text = str(error).strip()
    reason = getattr(error, "strerror", None) or (text.splitlines()[0] if text else type(error).__name__)
    return f"{reason} (is the disk full, or not writable?)"


def _delete(folder: Path) -> None:
    """Delete a checkpoint folder; it leaves the list of checkpoints at once (a rename) so that
    a process killed halfway through leaves no partial `step-N` folder that looks complete."""
    doomed = folder.with_name(f".{folder.name}.deleted.tmp")
    try:
        os.replace(folder, doomed)
    except OSError:
        doomed = folder
    shutil.rmtree(doomed, ignore_errors=True)


def remove_leftovers(run_dir: Path) -> list[str]:
    """Clear what a killed process left in checkpoints/ (call it only while holding the run's lock):
    temp folders of unfinished checkpoints and deletions. A complete checkpoint moved aside to be
    replaced (`atomic_dir`'s `.step-N.old`) goes back to its name if the new one never arrived."""
    folder = checkpoints_dir(run_dir)
    removed = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
        if not entry.name.startswith("."):
            continue
        original = folder / entry.name[1:-len(".old")] if entry.name.endswith(".old") else None
        if original is not None and _STEP_DIR.match(original.name) and not original.exists():
            os.replace(entry, original)
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies of the weights, one per name. safetensors refuses two names for one tensor, which
    is what a head tied by assignment (`lm_head.weight = wte.weight`) gives; loading then fills
    both names, and the model ties them again because its parameters are still one tensor."""
    seen: set[int] = set()
    weights = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.data_ptr())
        weights[name] = tensor
    return weights


def read_state(folder: Path, verify: bool = True) -> dict:
    """state.json of a checkpoint, after checking its files against the recorded checksums."""
    try:
        state = json.loads((folder / "state.json").read_text())
    except FileNotFoundError:
        raise GlassError(f"checkpoint {folder} is incomplete (no state.json); delete it to use an earlier one") from None
    except ValueError as error:
        raise GlassError(f"checkpoint {folder} is damaged (state.json: {error}); delete it to use an earlier one") from None
    if verify:
        for name, expected in state.get("files", {}).items():
            path = folder / name
            if not path.exists():
                raise GlassError(f"checkpoint {folder} is incomplete ({name} is missing); delete it to use an earlier one")
            if _sha256(path) != expected:
                raise GlassError(f"checkpoint {folder} is damaged ({name} does not match its checksum); "
                                 "delete it to use an earlier one")
    return state


def load_weights(folder: Path, model: torch.nn.Module) -> None:
    """Load model.safetensors into `model`, strictly: every weight present, every shape equal."""
    try:
        weights = load_file(folder / "model.safetensors", device=str(next(model.parameters()).device))
    except (SafetensorError, OSError, ValueError) as error:
        raise GlassError(f"cannot read {folder / 'model.safetensors'} ({error}); the checkpoint is damaged") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    misshaped = [n for n in expected if n in weights and weights[n].shape != expected[n].shape]
    if missing or unexpected or misshaped:
        parts = [f"missing {', '.join(missing[:4])}" if missing else "",
                 f"unexpected {', '.join(unexpected[:4])}" if unexpected else "",
                 f"wrong shape {', '.join(misshaped[:4])}" if misshaped else ""]
        raise GlassError(f"checkpoint {folder} does not fit this model ({'; '.join(p for p in parts if p)})")
    model.load_state_dict(weights, strict=True)


def load_optimizers(folder: Path, optimizers: list[OptimizerLike]) -> None:
    try:
        saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        states = saved["optimizers"]
        if len(states) != len(optimizers):
            raise ValueError(f"{len(states)} optimiser states for {len(optimizers)} optimisers")
        for optimizer, state in zip(optimizers, states):
            optimizer.load_state_dict(state)
    except (OSError, RuntimeError, ValueError, KeyError, EOFError) as error:
        raise GlassError(f"cannot restore the optimiser from {folder / 'optimizer.pt'} ({error})") from None


def restore_rng(state: dict, rank: int = 0) -> None:
    """Put back the random state this rank had when the checkpoint was saved."""
    by_rank = state.get("rng_by_rank")
    rng = by_rank[rank] if by_rank and rank < len(by_rank) else state.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(_tensor_of(rng["torch"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_tensor_of(s) for s in rng["cuda"]])
    if "mps" in rng and torch.backends.mps.is_available():
        torch.mps.set_rng_state(_tensor_of(rng["mps"]))


def rng_state() -> dict:
    """This process's random state (CPU, and each GPU's), as JSON-ready text."""
    state = {"torch": _text_of(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_text_of(s) for s in torch.cuda.get_rng_state_all()]
    if torch.backends.mps.is_available():
        state["mps"] = _text_of(torch.mps.get_rng_state())
    return state


def _text_of(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode()


def _tensor_of(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
