"""`glassgpt speedrun`: your own ChatGPT in one command, stage by stage, resumable at any point.

    tokenizer   a BPE tokenizer on the base corpus
    base        pretraining                         → run NAME-base
    base-eval   CORE-style tasks on the base model
    mid         midtraining from NAME-base          → run NAME-mid
    mid-eval    chat tasks on the midtrained model
    sft         supervised finetuning from NAME-mid → run NAME (the model you talk to)
    sft-eval    chat tasks on the final model
    report      NAME/report.md and report.html

Every stage is the ordinary command's code (`train.loop.train`, `evals.runner.evaluate`,
`report.write`), so a speedrun is exactly the commands a reader could type one by one. A stage
that finished is skipped; a training stage that was stopped (Ctrl-C, a crash, kill -9) resumes
from its last checkpoint; an evaluation keeps the tasks it finished. So after any interruption
the same command continues where it stopped. The speedrun's own record (options, and the wall
time and peak memory of each stage) is $GLASSGPT_HOME/speedruns/NAME.json.

Presets size everything for a kind of machine: `cpu` (a 2-core laptop, about 30 minutes,
offline-capable), `gpu` (nanochat's d20 on one node of GPUs under torchrun) and `tiny` (a minute:
checks the pipeline runs; the model learns nothing worth talking to).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from glassgpt import atomic, paths, ui
from glassgpt.allocator import release_free_memory
from glassgpt.errors import UsageError

STAGES = ("tokenizer", "base", "base-eval", "mid", "mid-eval", "sft", "sft-eval", "report")


@dataclass(frozen=True)
class Preset:
    description: str
    base: dict
    """Training fields of the base stage (data, tokenizer, model size, steps)."""
    mid: dict = field(default_factory=dict)
    """Fields of the mid stage over its own defaults (config.STAGE_DEFAULTS['mid'])."""
    sft: dict = field(default_factory=dict)
    """Fields of the SFT stage over its own defaults."""
    base_eval: dict = field(default_factory=dict)
    """Items per CORE task (task name: N; "*": every other task)."""
    chat_eval: dict = field(default_factory=dict)
    """Items per chat task."""
    estimates: dict = field(default_factory=dict)
    """Seconds each stage takes on the machine the preset is sized for (the first ETA)."""
    tokenizer_chars: int | None = None
    """Train the tokenizer on the first this many characters of the corpus (None: all of it)."""
    launch: str = "glassgpt speedrun --run NAME"


PRESETS: dict[str, Preset] = {
    # Sized for 2 CPU cores with bf16 matmuls (measured on this project's machine), offline with the
    # data mirror: Brown + Shakespeare for pretraining, the offline chat tasks for mid and SFT.
    "cpu": Preset(
        description="2 CPU cores, about 30 minutes: Brown + Shakespeare, then the offline chat data",
        base=dict(data="brown+tinyshakespeare", vocab_size=4096, family="nanochat", depth=4, head_dim=64,
                  seq_len=256, device_batch_size=16, max_steps=900, eval_every=300, checkpoint_every=100,
                  warmdown_ratio=0.3),
        # The named mixtures, with more of what a small model learns slowly: answering questions
        # about itself in words it has not seen, and copying a word into the calculator call.
        mid=dict(mixture="mid,identity:2,spelling:3,arithmetic:1", max_steps=1000, device_batch_size=8,
                 checkpoint_every=100),
        sft=dict(mixture="sft,identity:2,spelling:2,arithmetic:0.5", max_steps=300, device_batch_size=8,
                 checkpoint_every=50),
        base_eval={"*": 100},
        chat_eval={"arc-easy": 300, "arc-challenge": 300, "mmlu": 300, "gsm8k": 50, "humaneval": 40, "spelling": 150,
                   "arithmetic": 200, "identity": 1000},
        estimates={"tokenizer": 10, "base": 460, "base-eval": 25, "mid": 520, "mid-eval": 120, "sft": 170,
                   "sft-eval": 125, "report": 5},
    ),
    # nanochat's d20 speedrun on one node of 8 GPUs: FineWeb-Edu for pretraining (about 20 tokens per
    # parameter), SmolTalk in mid and SFT. Written for real; not run on this project's CPU machine.
    "gpu": Preset(
        description="one node of GPUs under torchrun (nanochat's d20): FineWeb-Edu, then SmolTalk",
        base=dict(data="fineweb-edu:240", vocab_size=65536, family="nanochat", depth=20, seq_len=2048,
                  device_batch_size=32, total_batch_size=524288, max_steps=21400, eval_every=1000,
                  checkpoint_every=2000, sample_tokens=32),
        mid=dict(mixture="mid-smoltalk", seq_len=2048, device_batch_size=32, total_batch_size=524288, max_steps=800,
                 checkpoint_every=200, eval_every=200),
        sft=dict(mixture="sft-smoltalk", seq_len=2048, device_batch_size=4, max_steps=700, checkpoint_every=100,
                 eval_every=100),
        base_eval={"*": 500},
        chat_eval={"*": None},
        estimates={"tokenizer": 120, "base": 3 * 3600, "base-eval": 600, "mid": 1200, "mid-eval": 900, "sft": 600,
                   "sft-eval": 900, "report": 10},
        tokenizer_chars=2_000_000_000,  # as nanochat: enough text for a 65k vocabulary, minutes not hours
        launch="torchrun --standalone --nproc-per-node 8 -m glassgpt speedrun --run-name NAME --preset gpu",
    ),
    # The pipeline in about a minute on a CPU: a model too small and too briefly trained to learn
    # anything, to check that every stage runs (the project's CI runs it).
    "tiny": Preset(
        description="about a minute: checks every stage runs; the model learns nothing useful",
        base=dict(data="tinyshakespeare", vocab_size=512, family="nanochat", depth=1, n_embd=32, n_head=2,
                  seq_len=64, device_batch_size=4, max_steps=12, eval_every=0, checkpoint_every=4,
                  sample_tokens=8, eval_batch_size=16),
        mid=dict(mixture="identity,arithmetic:0.1", seq_len=128, device_batch_size=4, max_steps=40, checkpoint_every=10,
                 eval_every=0, sample_tokens=8),
        sft=dict(mixture="identity:0.5,arithmetic:0.05", seq_len=128, device_batch_size=4, max_steps=6,
                 checkpoint_every=2, eval_every=0, sample_tokens=8),
        base_eval={"*": 2},
        chat_eval={"*": 2},
        estimates={"tokenizer": 1, "base": 5, "base-eval": 10, "mid": 8, "mid-eval": 10, "sft": 5, "sft-eval": 10,
                   "report": 2},
    ),
}


@dataclass(frozen=True)
class Options:
    run: str
    preset: str = "cpu"
    max_steps: int | None = None
    """Cap every training stage at this many steps (a quick trial of the whole pipeline)."""
    max_per_task: int | None = None
    """Cap every evaluation task at this many items."""
    identity_name: str = ""
    device: str = "auto"

    def recorded(self) -> dict:
        return {"preset": self.preset, "max_steps": self.max_steps, "max_per_task": self.max_per_task,
                "identity_name": self.identity_name}


def stage_runs(name: str) -> dict[str, str]:
    """The runs a speedrun makes: the chat model you talk to is NAME itself."""
    return {"base": f"{name}-base", "mid": f"{name}-mid", "sft": name}


def record_path(name: str) -> Path:
    return paths.home() / "speedruns" / f"{paths.check_name(name, 'run')}.json"


def read_record(name: str) -> dict | None:
    try:
        return json.loads(record_path(name).read_text())
    except (OSError, ValueError):
        return None


def _write_record(name: str, record: dict) -> None:
    atomic.write_text(record_path(name), json.dumps(record, indent=2))


# --- the stages' configs ----------------------------------------------------------------------

def train_flags(options: Options, stage: str) -> dict:
    """The flags `glassgpt train` would be given for a training stage of this speedrun."""
    preset = PRESETS[options.preset]
    runs = stage_runs(options.run)
    if stage == "base":
        flags = dict(preset.base, run=runs["base"])
    else:
        parent = runs["base" if stage == "mid" else "mid"]
        flags = dict(getattr(preset, stage), stage=stage, from_run=parent, run=runs[stage],
                     model_name=options.run, identity_name=options.identity_name)
        flags.setdefault("mixture", stage)
    if options.max_steps is not None:
        flags["max_steps"] = min(options.max_steps, flags.get("max_steps", options.max_steps))
        # A capped run is a quick look: evaluate at its start and end only (a base evaluation reads
        # the whole val split), and checkpoint halfway too, so that a kill still resumes.
        if flags.get("eval_every"):
            flags["eval_every"] = min(flags["eval_every"], flags["max_steps"])
        if flags.get("checkpoint_every"):
            flags["checkpoint_every"] = min(flags["checkpoint_every"], max(1, flags["max_steps"] // 2))
    flags["device"] = options.device
    return {key: value for key, value in flags.items() if value != ""}


def eval_limits(options: Options, stage: str) -> dict[str, int | None]:
    """Items per task for an evaluation stage: the preset's, capped by --max-per-task."""
    from glassgpt.evals import runner

    preset = PRESETS[options.preset]
    table, group = (preset.base_eval, "core") if stage == "base-eval" else (preset.chat_eval, "chat")
    limits = {}
    for name in runner.GROUPS[group]:
        limit = table.get(name, table.get("*"))
        if options.max_per_task is not None:
            limit = options.max_per_task if limit is None else min(limit, options.max_per_task)
        limits[name] = limit
    return limits


# --- running ------------------------------------------------------------------------------------

def run(options: Options) -> int:
    if options.preset not in PRESETS:
        raise UsageError(f"unknown speedrun preset {options.preset!r}; presets: {', '.join(PRESETS)}")
    runs = stage_runs(options.run)
    for run_name in runs.values():
        paths.check_name(run_name, "run")
    record = read_record(options.run)
    if record is None:
        existing = [name for name in runs.values() if paths.run_dir(name).exists()]
        if existing:
            raise UsageError(f"run {existing[0]!r} already exists and is not part of a speedrun named "
                             f"{options.run!r}; choose another --run")
        record = {"run": options.run, "options": options.recorded(), "stages": {},
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    elif record.get("options") != options.recorded():
        was = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in record["options"].items() if v not in (None, ""))
        raise UsageError(f"speedrun {options.run!r} was started with {was}; give the same options to continue it, "
                         "or choose another --run")
    main = _is_main()
    out = ui.console() if main else _quiet()
    preset = PRESETS[options.preset]
    pipeline = ui.Pipeline("speedrun", [(stage, float(preset.estimates.get(stage, 60))) for stage in STAGES])
    if main:
        _write_record(options.run, record)
        out.print(f"[bold]speedrun {options.run}[/] (preset {options.preset}: {preset.description}); runs "
                  f"{runs['base']} → {runs['mid']} → {runs['sft']}; record: {record_path(options.run)}")
        _hint_torchrun(preset, out)
    started = time.perf_counter()
    ui.set_pipeline(pipeline)
    try:
        for number, stage in enumerate(STAGES, 1):
            done = _stage_done(options, stage)
            if done:
                pipeline.finish(stage, skipped=True)
                out.print(f"[dim]── {number}/{len(STAGES)} {stage}: {done}, skipped[/]")
                continue
            pipeline.start(stage)
            out.print(f"[bold cyan]── {number}/{len(STAGES)} {stage}[/]: {_what(options, stage)}   "
                      f"[dim]elapsed {ui.format_duration(time.perf_counter() - started)}, {pipeline.summary()}[/]")
            stage_started = time.perf_counter()
            release_free_memory()  # what the stage before kept in the heap (allocator.py)
            _reset_peak_rss()
            try:
                interrupted = _run_stage(options, stage, out)
            except KeyboardInterrupt:  # a second Ctrl-C, or one during an evaluation
                interrupted = True
            if interrupted:
                out.print(f"[yellow]stopped during {stage}[/]; run the same command again to continue: "
                          f"[bold]{_command(options)}[/]")
                return 130
            pipeline.finish(stage)
            record["stages"][stage] = {"seconds": round(time.perf_counter() - stage_started, 1),
                                       "peak_rss_mb": _peak_rss_mb(), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            if main:
                _write_record(options.run, record)
    finally:
        ui.set_pipeline(None)
    if main:
        from glassgpt import report

        total = sum(s["seconds"] for s in record["stages"].values())
        folder = paths.run_dir(runs["sft"])
        out.print(f"[bold green]speedrun finished[/]: {ui.format_duration(time.perf_counter() - started)} in this "
                  f"session ({ui.format_duration(total)} over all its stages, peak memory "
                  f"{max((s['peak_rss_mb'] for s in record['stages'].values()), default=0):,.0f} MB)")
        out.print(f"  report:   {folder / report.MARKDOWN} (and {report.HTML})\n"
                  f"  talk:     glassgpt chat --run {runs['sft']}\n"
                  f"  serve:    glassgpt serve --run {runs['sft']}   then open http://127.0.0.1:8000/")
    return 0


def _hint_torchrun(preset: Preset, out) -> None:
    """A preset made for several GPUs, started as one process on a machine that has several."""
    import os

    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if "torchrun" in preset.launch and "WORLD_SIZE" not in os.environ and gpus > 1:
        out.print(f"[yellow]note[/]: this runs on one of the {gpus} GPUs; to use them all: "
                  f"{preset.launch.replace('--nproc-per-node 8', f'--nproc-per-node {gpus}')}")


def _run_stage(options: Options, stage: str, out) -> bool:
    """Run one stage; True when it was interrupted (Ctrl-C) and the speedrun should stop."""
    runs = stage_runs(options.run)
    if stage == "tokenizer":
        _tokenizer(options, out)
        return False
    if stage in ("base", "mid", "sft"):
        return _train(options, stage, runs[stage])
    if stage.endswith("-eval"):
        from glassgpt.evals import runner

        trained = runs[stage.removesuffix("-eval")]
        limits = eval_limits(options, stage)
        group = "core" if stage == "base-eval" else "chat"
        runner.evaluate(runner.EvalOptions(trained, group, limits, device=options.device, skip_done=True))
        return False
    from glassgpt import report

    if _is_main():
        written = report.write(runs["sft"])
        out.print(f"wrote {written[0]} and {written[1]}")
    return False


def _tokenizer(options: Options, out) -> None:
    from glassgpt import config as cfg
    from glassgpt.data import sources
    from glassgpt.data.prepare import prepare_tokenizer

    # Rank 0 only: under torchrun the other ranks wait for it inside the base stage's data step.
    if not _is_main():
        return
    config = cfg.resolve(None, None, train_flags(options, "base"))
    corpus = sources.resolve(config.data)
    corpus.prepare()
    limit = PRESETS[options.preset].tokenizer_chars
    if limit is not None:
        whole = corpus.train
        corpus = dataclasses.replace(corpus, train=lambda: _first_chars(whole(), limit))
    prepare_tokenizer(config, corpus, out.print)


def _first_chars(documents, limit: int):
    """Documents until `limit` characters have been given (the last one cut to fit)."""
    for document in documents:
        if limit <= 0:
            return
        yield document[:limit]
        limit -= len(document)


def _train(options: Options, stage: str, run_name: str) -> bool:
    from glassgpt import config as cfg
    from glassgpt.train import checkpoint, loop

    if checkpoint.latest(paths.run_dir(run_name)) is not None:
        config = loop.resumed_config(run_name, {"device": options.device})
        result = loop.train(config, resume=True)
    else:
        result = loop.train(cfg.resolve(None, None, train_flags(options, stage)))
    return result.interrupted


def _stage_done(options: Options, stage: str) -> str:
    """Why the stage needs no work ('' when it does)."""
    from glassgpt.data.prepare import default_tokenizer_name
    from glassgpt.tokenizer import tokenizer_path
    from glassgpt.train import checkpoint

    runs = stage_runs(options.run)
    if stage == "tokenizer":
        flags = train_flags(options, "base")
        from glassgpt.data import sources

        name = flags.get("tokenizer") or default_tokenizer_name(sources.resolve(flags["data"]), flags["vocab_size"])
        return f"tokenizer {name} exists" if tokenizer_path(name).exists() else ""
    if stage in ("base", "mid", "sft"):
        folder = paths.run_dir(runs[stage])
        latest = checkpoint.latest(folder)
        if latest is None:
            return ""
        step = checkpoint.read_state(latest, verify=False)["step"]
        wanted = json.loads((folder / "config.json").read_text())["train"]["max_steps"]
        return f"{runs[stage]} trained ({step} steps)" if step >= wanted else ""
    if stage.endswith("-eval"):
        from glassgpt.evals import runner

        trained = runs[stage.removesuffix("-eval")]
        document = runner.read_results(trained) or {}
        limits = eval_limits(options, stage)
        latest = checkpoint.latest(paths.run_dir(trained))
        step = checkpoint.read_state(latest, verify=False)["step"] if latest else None
        tasks = document.get("tasks", {})
        complete = document.get("step") == step and all(
            name in tasks and tasks[name].get("max_per_task") == limit for name, limit in limits.items())
        return f"{trained} evaluated" if complete else ""
    return ""


def _what(options: Options, stage: str) -> str:
    runs = stage_runs(options.run)
    return {
        "tokenizer": "train the BPE tokenizer on the base corpus",
        "base": f"pretrain {runs['base']} on {PRESETS[options.preset].base['data']}",
        "base-eval": f"CORE-style tasks on {runs['base']}",
        "mid": f"midtrain {runs['mid']} from {runs['base']} (chat format, calculator, letters)",
        "mid-eval": f"chat tasks on {runs['mid']}",
        "sft": f"fine-tune {runs['sft']} from {runs['mid']} on whole conversations",
        "sft-eval": f"chat tasks on {runs['sft']}",
        "report": f"write the report of {runs['sft']}",
    }[stage]


def _command(options: Options) -> str:
    parts = [f"glassgpt speedrun --run {options.run}"]
    if options.preset != "cpu":
        parts.append(f"--preset {options.preset}")
    for key in ("max_steps", "max_per_task"):
        if getattr(options, key) is not None:
            parts.append(f"--{key.replace('_', '-')} {getattr(options, key)}")
    if options.identity_name:
        parts.append(f"--identity-name {json.dumps(options.identity_name)}")
    return " ".join(parts)


def _reset_peak_rss() -> None:
    """Start measuring a new peak of resident memory (Linux: writing 5 to clear_refs resets the
    VmHWM high-water mark), so each stage's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak is the process's so far


def _peak_rss_mb() -> float:
    """Peak resident memory since the last reset (VmHWM), or of the whole process (ru_maxrss:
    kB on Linux, bytes on macOS) where /proc has no VmHWM."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _quiet():
    from rich.console import Console

    return Console(quiet=True)
