"""A run's folder: the one place that knows what is in it and how each file is written.

    $GLASSGPT_HOME/runs/<run>/
      config.json       what the run is: training fields, the model as built, tokenizer, data, stage
      tokenizer.json    the run's own copy of its tokenizer
      metrics.jsonl     one JSON object per line: {"step", "loss", ...} or {"step", "val_loss", "val_bpb"}
      samples.txt       "=== step N ===" sections of samples
      plots/loss.png    training loss and validation curves
      checkpoints/step-NNNNNN/   (see train/checkpoint.py)

Training writes through `RunFolder`; everything that reads a run (`sample`, `trace --run`,
`attention`, `chat`, `serve`, the next stage's `--from`) opens it with `load_run` or
`read_run_config`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from glassgpt import atomic, paths
from glassgpt.errors import GlassError
from glassgpt.model.config import GPTConfig
from glassgpt.model.gpt import GPT
from glassgpt.tokenizer import Tokenizer
from glassgpt.train import checkpoint


def read_run_config(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    if not path.exists():
        runs = sorted(p.name for p in paths.runs_dir().glob("*") if (p / "config.json").exists())
        listing = f"; existing runs: {', '.join(runs[:10])}" if runs else "; no runs yet (glassgpt train --run NAME)"
        raise GlassError(f"no run named {run_dir.name!r} in {paths.runs_dir()}{listing}")
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise GlassError(f"{path} is damaged ({error})") from None


def check_writable(path: Path) -> None:
    """Fail before doing any work if `path` could not be created or written."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise GlassError(f"cannot write to {path}: {probe} is not a writable folder "
                         "(set GLASSGPT_HOME to a folder you can write to)")


class RunFolder:
    """Writes the files of one run. Every append is one whole record, so a reader (or a crash)
    never sees half a line; whole files are written atomically."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.config_path = run_dir / "config.json"
        self.metrics_path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.txt"
        self.plot_path = run_dir / "plots" / "loss.png"

    def start(self, config: dict, tokenizer: Tokenizer, resume_step: int | None) -> None:
        """Write config.json and tokenizer.json. A new run starts with no metrics or samples; a
        resumed one drops what was logged after the checkpoint it continues from (it is logged
        again, so no step appears twice)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.config_path, json.dumps(config, indent=2))
        tokenizer.save(self.dir / "tokenizer.json")
        if resume_step is None:
            self.metrics_path.unlink(missing_ok=True)
            self.samples_path.unlink(missing_ok=True)
            return
        if self.metrics_path.exists():
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line and json.loads(line)["step"] <= resume_step]
            atomic.write_text(self.metrics_path, "".join(line + "\n" for line in kept))
        if self.samples_path.exists():
            atomic.write_text(self.samples_path, samples_up_to(self.samples_path.read_text(encoding="utf-8"), resume_step))

    def append_metrics(self, record: dict) -> None:
        self._append(self.metrics_path, json.dumps(record) + "\n")

    def append_samples(self, step: int, samples: list[tuple[str, str]]) -> None:
        self._append(self.samples_path, f"=== step {step} ===\n" +
                     "".join(f"{prompt}{text}\n---\n" for prompt, text in samples))

    def metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def _append(self, path: Path, text: str) -> None:
        try:
            with open(path, "a", encoding="utf-8") as file:
                file.write(text)
        except OSError as error:
            raise GlassError(f"cannot write {path}: {error.strerror or error} (is the disk full?)") from None

    def plot(self) -> None:
        """plots/loss.png: training loss per step, and the validation loss and bits per byte."""
        from matplotlib.figure import Figure  # not pyplot: no GUI backend, no global figure state

        records = self.metrics()
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        val = [(r["step"], r["val_bpb"]) for r in records if r.get("val_bpb") is not None]
        val_loss = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
        figure = Figure(figsize=(11, 4))
        left, right = figure.subplots(1, 2)
        if train:
            steps, losses = zip(*train)
            left.plot(steps, losses, lw=0.8, color="tab:blue", label="train")
        if val_loss:
            steps, losses = zip(*val_loss)
            left.plot(steps, losses, "o-", color="tab:orange", label="val")
        left.set(xlabel="step", ylabel="loss (nats per counted token)", title="loss")
        left.legend()
        if val:
            steps, bpbs = zip(*val)
            right.plot(steps, bpbs, "o-", color="tab:green")
        right.set(xlabel="step", ylabel="val bits per byte", title="validation bits per byte")
        for axis in (left, right):
            axis.grid(alpha=0.3)
        figure.suptitle(self.dir.name)
        figure.tight_layout()
        with atomic.atomic_path(self.plot_path) as tmp:
            figure.savefig(tmp, format="png", dpi=110)


def samples_up_to(text: str, step: int) -> str:
    """samples.txt without the evaluations after `step` (a resumed run writes them again)."""
    sections = re.split(r"(?m)^(?==== step \d+ ===$)", text)
    return "".join(s for s in sections if s and int(re.match(r"=== step (\d+) ===", s).group(1)) <= step)


# -- reading a run -----------------------------------------------------------------------------------


@dataclass
class LoadedRun:
    name: str
    folder: Path
    config: dict  # config.json as saved: {"train": ..., "model": ..., "tokenizer": ..., "data": ...}
    model: GPT
    tokenizer: Tokenizer
    step: int

    @property
    def stage(self) -> str:
        return self.config["train"].get("stage", "base")


def checkpoint_of(name: str, step: int | None = None) -> Path:
    """The folder of run `name`'s checkpoint at `step` (default: the newest)."""
    folder = paths.run_dir(name)
    read_run_config(folder)  # "no run named …" before "no checkpoint"
    found = checkpoint.list_checkpoints(folder)
    if not found:
        raise GlassError(f"run {name!r} has no checkpoint yet; train it first (glassgpt train --run {name})")
    if step is None:
        return found[-1]
    matching = [p for p in found if int(p.name.split("-")[1]) == step]
    if not matching:
        steps = ", ".join(str(int(p.name.split("-")[1])) for p in found)
        raise GlassError(f"run {name!r} has no checkpoint at step {step}; it has: {steps}")
    return matching[0]


def load_run(name: str, step: int | None = None, device: str | torch.device = "cpu") -> LoadedRun:
    """The run's model at checkpoint `step` (default: the newest), in eval mode."""
    chosen = checkpoint_of(name, step)
    folder = paths.run_dir(name)
    saved = read_run_config(folder)
    state = checkpoint.read_state(chosen)
    model = build_saved_model(name, saved, device)
    checkpoint.load_weights(chosen, model)
    model.eval()
    tokenizer = Tokenizer.load(folder / "tokenizer.json")
    return LoadedRun(name, folder, saved, model, tokenizer, state["step"])


def build_saved_model(name: str, saved: dict, device, sequence_len: int | None = None) -> torch.nn.Module:
    """The (uninitialised) model a run's config.json describes, optionally with a longer context."""
    fields = dict(saved["model"])
    if sequence_len is not None:
        fields["sequence_len"] = sequence_len
    model_config = GPTConfig.from_dict(fields)
    model_file = saved["train"].get("model_file")
    if model_file:  # a learner's own GPT (glassgpt train --model)
        return _learner_model(name, model_file, saved.get("model_file_sha256"), model_config, device)
    return GPT.build(model_config, device, init=False)


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
