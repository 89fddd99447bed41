"""A run's folder: the one place that knows what is in it and how each file is written.

    $GLASSGPT_HOME/runs/<run>/
      config.json       what the run is: training fields, the model as built, tokenizer, data, stage
      tokenizer.json    the run's own copy of its tokenizer
      metrics.jsonl     one JSON object per line: {"step", "loss", ...} or {"step", "val_loss", "val_bpb"}
      samples.txt       "=== step N ===" sections of samples
      plots/loss.svg    training loss and validation curves
      checkpoints/step-NNNNNN/   (see train/checkpoint.py)
      .lock             held (flock) by the process training the run; empty

Training writes through `RunFolder`, under `run_lock`; everything that reads a run (`sample`, `trace --run`,
`attention`, `chat`, `serve`, the next stage's `--from`) opens it with `load_run` or
`read_run_config`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
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


# -- one writer per run ------------------------------------------------------------------------------

LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Path, run: str) -> Iterator[None]:
    """Hold the run's lock while training it: a second process training the same run is refused.

    The lock is the kernel's (flock on `.lock` in the run folder), not the file's existence: the
    kernel releases it when the process ends in any way, kill -9 and power loss included, so a
    crash never leaves a stale lock in the way of `--resume`. A run folder that holds nothing
    but the lock when it is released (a run that failed before writing anything) is removed.
    """
    import fcntl

    lock_path = run_dir / LOCK_NAME
    while True:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as error:
            raise GlassError(f"cannot write to {run_dir}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GlassError(f"run {run!r} is being trained by another process (it holds {lock_path}); wait for it "
                             "to finish or stop it, or choose another --run") from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            # Some network filesystems have no locks: train unguarded rather than not at all.
            from glassgpt import ui

            ui.err_console().print(f"[yellow]note[/]: {run_dir.parent} does not support file locks "
                                   f"({error.strerror}); nothing stops a second process from training {run!r} too")
        # The holder before us may have removed the folder (and this file) while we waited to
        # open it: a lock on a deleted file guards nothing, so try again on the new one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            if {p.name for p in run_dir.iterdir()} <= {LOCK_NAME}:
                lock_path.unlink(missing_ok=True)  # unlinked while still held: see the samestat check
                run_dir.rmdir()
        except OSError:
            pass
        os.close(fd)


def remove_run_files(run_dir: Path) -> None:
    """Delete everything in the run folder but its lock (which the caller holds)."""
    for entry in run_dir.iterdir() if run_dir.is_dir() else ():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def remove_leftovers(run_dir: Path) -> list[str]:
    """Clear what a process killed mid-write left in the run folder (the caller holds the lock,
    so nobody is writing them): temp files of atomic writes, and half-written or half-deleted
    checkpoint folders (see `checkpoint.remove_leftovers`). Returns what was removed."""
    removed = []
    for folder in (run_dir, run_dir / "plots"):
        for path in folder.glob(".*.tmp") if folder.is_dir() else ():
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path.name)
    return removed + checkpoint.remove_leftovers(run_dir)


class RunFolder:
    """Writes the files of one run. Every append is one whole record, so a reader (or a crash)
    never sees half a line; whole files are written atomically."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.config_path = run_dir / "config.json"
        self.metrics_path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.txt"
        self.plot_path = run_dir / "plots" / "loss.svg"

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
            kept = [json.dumps(record) for record in self.metrics() if record["step"] <= resume_step]
            atomic.write_text(self.metrics_path, "".join(line + "\n" for line in kept))
        if self.samples_path.exists():
            atomic.write_text(self.samples_path, samples_up_to(self.samples_path.read_text(encoding="utf-8"), resume_step))

    def append_metrics(self, record: dict) -> None:
        self._append(self.metrics_path, json.dumps(record) + "\n")

    def append_samples(self, step: int, samples: list[tuple[str, str]]) -> None:
        self._append(self.samples_path, f"=== step {step} ===\n" +
                     "".join(f"{prompt}{text}\n---\n" for prompt, text in samples))

    def metrics(self) -> list[dict]:
        """The records of metrics.jsonl; a last line cut short (the process was killed while
        appending it) is left out: it belongs to a step that the resume computes again."""
        if not self.metrics_path.exists():
            return []
        return read_metrics(self.metrics_path.read_text())

    def _append(self, path: Path, text: str) -> None:
        try:
            with open(path, "a", encoding="utf-8") as file:
                file.write(text)
        except OSError as error:
            raise GlassError(f"cannot write {path}: {error.strerror or error} (is the disk full?)") from None

    def plot(self) -> None:
        """plots/loss.svg: training loss per step, and the validation loss and bits per byte."""
        from glassgpt.svg_chart import BLUE, GREEN, ORANGE, Panel, Series, chart_svg

        records = self.metrics()
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        val_loss = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
        val_bpb = [(r["step"], r["val_bpb"]) for r in records if r.get("val_bpb") is not None]
        loss = Panel("loss", "step", "loss (nats per counted token)",
                     [Series("train", train, BLUE), Series("val", val_loss, ORANGE, markers=True)], whole_x=True)
        bpb = Panel("validation bits per byte", "step", "val bits per byte",
                    [Series("val bpb", val_bpb, GREEN, markers=True)], whole_x=True)
        atomic.write_text(self.plot_path, chart_svg(self.dir.name, [loss, bpb]))


def read_metrics(text: str) -> list[dict]:
    records = []
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):  # the unfinished last line of a killed writer
                break
            raise GlassError(f"metrics.jsonl is damaged at line {number}: {line[:60]!r}") from None
    return records


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


def resume_state(name: str) -> tuple[str, int]:
    """(what a scheduler's job script should do with run `name`, its newest checkpoint's step):
    "new" (no checkpoint: train it without --resume), "resume" (continue it with --resume) or
    "done" (the newest checkpoint reached the run's max_steps). Used by scripts/slurm/."""
    folder = paths.run_dir(name)
    newest = checkpoint.latest(folder)
    if newest is None or not (folder / "config.json").exists():
        return "new", 0
    step = checkpoint.read_state(newest, verify=False)["step"]
    return ("done" if step >= read_run_config(folder)["train"]["max_steps"] else "resume"), step


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
