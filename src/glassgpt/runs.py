"""Open a finished (or interrupted) run: its config, tokenizer and the weights of a checkpoint.

Used by everything that reads a run rather than trains it: `sample`, `trace --run`, `attention`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from glassgpt import paths
from glassgpt.errors import GlassError
from glassgpt.model.config import GPTConfig
from glassgpt.model.gpt import GPT
from glassgpt.tokenizer import Tokenizer
from glassgpt.train import checkpoint
from glassgpt.train.loop import read_run_config


@dataclass
class LoadedRun:
    name: str
    folder: Path
    config: dict  # config.json as saved: {"train": ..., "model": ..., "tokenizer": ..., "data": ...}
    model: GPT
    tokenizer: Tokenizer
    step: int


def load_run(name: str, step: int | None = None, device: str | torch.device = "cpu") -> LoadedRun:
    """The run's model at checkpoint `step` (default: the newest), in eval mode."""
    folder = paths.run_dir(name)
    saved = read_run_config(folder)
    found = checkpoint.list_checkpoints(folder)
    if not found:
        raise GlassError(f"run {name!r} has no checkpoint yet; train it first (glassgpt train --run {name})")
    if step is None:
        chosen = found[-1]
    else:
        matching = [p for p in found if int(p.name.split("-")[1]) == step]
        if not matching:
            steps = ", ".join(str(int(p.name.split("-")[1])) for p in found)
            raise GlassError(f"run {name!r} has no checkpoint at step {step}; it has: {steps}")
        chosen = matching[0]
    state = checkpoint.read_state(chosen)
    model_config = GPTConfig.from_dict(saved["model"])
    model_file = saved["train"].get("model_file")
    if model_file:  # a learner's own GPT (glassgpt train --model)
        model = _learner_model(name, model_file, saved.get("model_file_sha256"), model_config, device)
    else:
        model = GPT.build(model_config, device, init=False)
    checkpoint.load_weights(chosen, model)
    model.eval()
    tokenizer = Tokenizer.load(folder / "tokenizer.json")
    return LoadedRun(name, folder, saved, model, tokenizer, state["step"])


def _learner_model(run: str, model_file: str, trained_sha256: str | None, model_config, device):
    import hashlib

    from glassgpt import ui
    from glassgpt.learn.loader import construct_learner_model

    path = Path(model_file)
    if not path.is_file():
        raise GlassError(f"run {run!r} was trained with your GPT in {path}, which no longer exists; "
                         "put the file back there to use this run")
    if trained_sha256 and hashlib.sha256(path.read_bytes()).hexdigest() != trained_sha256:
        ui.err_console().print(f"[yellow]note[/]: {path.name} changed since run {run!r} was trained; its saved "
                               "weights are loaded into the changed code")
    return construct_learner_model(path, model_config, device)
