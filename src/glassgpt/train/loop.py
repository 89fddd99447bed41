"""The training loop: data → tokenizer → shards → model → steps → evals → checkpoints.

    step k:  lr = initial_lr x lr_multiplier(k)
             accumulate gradients over grad_accum_steps micro-batches (= total_batch_size tokens)
             clip the global gradient norm, optimiser step, zero the gradients
             every eval_every steps: val bits per byte on the whole val split, and samples
             every checkpoint_every steps: an atomic checkpoint

Resuming restores the weights, optimiser state, loader cursor and RNG state of the newest
checkpoint, so the continued run computes exactly what an uninterrupted one would have. The first
Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint and returns; a second one stops
at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from glassgpt import __version__, atomic, device as devices, paths, ui
from glassgpt.config import TrainConfig
from glassgpt.data import shards as token_shards
from glassgpt.data import sources
from glassgpt.data.loader import TokenLoader
from glassgpt.engine import Engine, complete
from glassgpt.errors import GlassError, UsageError
from glassgpt.evals.bpb import evaluate_bpb
from glassgpt.model.gpt import GPT
from glassgpt.tokenizer import Tokenizer, tokenizer_path, train_and_save
from glassgpt.train import checkpoint
from glassgpt.train.optim import build_optimizers, lr_multiplier, muon_momentum, set_learning_rates

# Fields that may change when a run is resumed: they do not change what the run computes (except
# max_steps, which lengthens the schedule; the continuation is then exact only up to that change).
RESUME_OVERRIDABLE = {"max_steps", "device", "dtype", "compile", "eval_every", "eval_batch_size",
                      "sample_tokens", "checkpoint_every", "keep_checkpoints", "log_every"}


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_bpb: float | None
    interrupted: bool
    train_seconds: float


# -- configuration of a new or resumed run -------------------------------------------------------


def resumed_config(run: str, flags: dict, implied: dict | None = None, implied_by: str = "") -> TrainConfig:
    """The saved config of `run`, with the flags that may change on resume applied.

    `implied` holds what a --preset or --config given alongside --resume would set: it is only
    checked (a preset that disagrees with the run is an error), never applied, so that the
    saved run, not the preset, decides everything from its step count to its architecture.
    """
    from glassgpt.config import TRAIN_FIELDS, apply, canonical_key

    run_dir = paths.run_dir(run)
    saved = read_run_config(run_dir)
    config = TrainConfig(**{k: v for k, v in saved["train"].items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    built = saved.get("model", {})  # the whole architecture, derived fields included

    def value_of(candidate: TrainConfig, name: str):
        """What the run computes with: a training field, or the model field as built."""
        if name in TRAIN_FIELDS:
            return getattr(candidate, name)
        return candidate.model.get(name, built.get(name))

    changed = apply(config, flags)
    for key in flags:
        name = canonical_key(key)
        if name == "run":
            continue
        before, after = value_of(config, name), value_of(changed, name)
        if before != after and name not in RESUME_OVERRIDABLE:
            raise UsageError(
                f"--{name.replace('_', '-')} differs from the run's saved config ({before!r} → {after!r}); "
                f"--resume continues the run as it was: drop the flag, or start a new --run"
            )
    if implied:
        would_be = apply(apply(config, implied), flags)  # flags given with --resume win, as they would have
        given = {canonical_key(key) for key in flags}
        for key in implied:
            name = canonical_key(key) if key != "model" else None
            for field_name in ([name] if name else [canonical_key(k) for k in implied["model"]]):
                if field_name in RESUME_OVERRIDABLE or field_name in given or field_name == "run":
                    continue
                before, after = value_of(config, field_name), value_of(would_be, field_name)
                if before != after:
                    raise UsageError(
                        f"{implied_by} sets --{field_name.replace('_', '-')} {after!r}, but run {run!r} was trained "
                        f"with {before!r}; --resume continues the saved config: drop {implied_by.split()[0]}")
    return changed.validate()


def kept_dtype(run_dir: Path, config: TrainConfig) -> str | None:
    """The number format a resumed `--dtype auto` run keeps: what auto chose when the run started.

    Choosing again could pick the other format on a busy machine, and the continuation would then
    not be exact. It is not kept on another kind of device, nor as bf16 on a CPU without bf16
    instructions (the run moved to a machine where bf16 would be emulated, ~100x slower).
    """
    if config.dtype != "auto":
        return None
    started = read_run_config(run_dir).get("runtime", {})
    device = devices.resolve_device(config.device)
    if started.get("dtype") not in ("fp32", "bf16") or started.get("device") != device.type:
        return None
    if started["dtype"] == "bf16" and device.type == "cpu" and devices.cpu_has_native_bf16() is False:
        return None
    return started["dtype"]


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


# -- data and tokenizer --------------------------------------------------------------------------


def default_tokenizer_name(corpus: sources.Corpus, vocab_size: int) -> str:
    return f"{corpus.key}-{vocab_size}"


def prepare_tokenizer(config: TrainConfig, corpus: sources.Corpus, say=print) -> Tokenizer:
    """The run's tokenizer: the named one, or the corpus's default one (trained if missing)."""
    name = config.tokenizer or default_tokenizer_name(corpus, config.vocab_size)
    path = tokenizer_path(name)
    if path.exists():
        tokenizer = Tokenizer.load(path)
    elif config.tokenizer:
        raise GlassError(f"no tokenizer named {name!r}; train it with: glassgpt tokenizer train "
                         f"--data {config.data} --vocab-size {config.vocab_size} --name {name}")
    else:
        started = time.perf_counter()
        tokenizer = train_and_save(name, corpus.train(), config.vocab_size)
        say(f"trained tokenizer [bold]{name}[/] (vocab {tokenizer.vocab_size:,}) in "
            f"{time.perf_counter() - started:.1f}s → {path}")
    if tokenizer.vocab_size != config.vocab_size:
        raise UsageError(f"tokenizer {name!r} has {tokenizer.vocab_size:,} tokens but --vocab-size is "
                         f"{config.vocab_size:,}; make them agree")
    return tokenizer


def prepare_data(config: TrainConfig, runtime: devices.Runtime, say=print):
    """(corpus, tokenizer, shards). Rank 0 downloads and tokenises; the others wait, then read."""
    corpus = sources.resolve(config.data)
    if runtime.is_main:
        corpus.prepare()
        tokenizer = prepare_tokenizer(config, corpus, say)
        data = token_shards.load_or_build(corpus, tokenizer, on_build=lambda m: say(m + " …"))
    _barrier(runtime)
    if not runtime.is_main:
        tokenizer = prepare_tokenizer(config, corpus, say)
        data = token_shards.load_or_build(corpus, tokenizer)
    return corpus, tokenizer, data


def _barrier(runtime: devices.Runtime) -> None:
    if runtime.distributed:
        import torch.distributed as dist

        dist.barrier()


# -- stopping cleanly -------------------------------------------------------------------------------


class StopRequest:
    """First SIGINT/SIGTERM sets `requested`; the loop saves and returns after the current step.
    A second one raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# -- the loop ----------------------------------------------------------------------------------------


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Train (or continue training) the run described by `config`."""
    out = ui.console()
    run_dir = paths.run_dir(config.run)
    kept = kept_dtype(run_dir, config) if resume else None
    runtime = devices.setup(config.device, kept or config.dtype)
    if kept:
        runtime.dtype_reason = "kept from the run's start with --dtype auto; --dtype fp32 or bf16 changes it"
    say = out.print if runtime.is_main else (lambda *a, **k: None)
    try:
        if not resume and (run_dir / "config.json").exists():
            if checkpoint.latest(run_dir) is not None:
                raise UsageError(f"run {config.run!r} already exists in {run_dir.parent}; add --resume to continue "
                                 "it, or choose another --run")
            _barrier(runtime)  # every rank has looked before rank 0 clears the folder
            if runtime.is_main:  # an attempt that stopped before its first checkpoint holds nothing to keep
                say(f"[yellow]note[/]: run {config.run!r} has no checkpoint (an earlier attempt stopped before "
                    "saving one); starting it afresh")
                shutil.rmtree(run_dir)
        if resume and checkpoint.latest(run_dir) is None:
            raise GlassError(f"run {config.run!r} has no checkpoint to resume from; train it without --resume")
        check_writable(run_dir)
        try:
            return _train(config, resume, runtime, run_dir, say)
        except BaseException:
            # A new run that fails (or is stopped hard) before its first checkpoint leaves no folder
            # behind: nothing in it could be resumed, and its name stays free for the next attempt.
            if not resume and runtime.is_main and checkpoint.latest(run_dir) is None:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    finally:
        devices.teardown(runtime)


def _train(config: TrainConfig, resume: bool, runtime: devices.Runtime, run_dir: Path, say) -> TrainResult:
    """The run itself, once `train` has settled that the run folder may be written."""
    tokens_per_pass = config.device_batch_size * config.seq_len * runtime.world_size
    grad_accum_steps = grad_accumulation_steps(config.total_batch_size, tokens_per_pass)  # fail before any work
    corpus, tokenizer, data = prepare_data(config, runtime, say)
    model_config = config.model_config(tokenizer.vocab_size)
    model = build_model(config, model_config, runtime.device, say)
    torch.manual_seed(config.seed)  # the data order and dropout: the same whichever model was built
    optimizers = build_optimizers(model, config.optimizer_settings())
    loader = TokenLoader(data.train, config.device_batch_size, config.seq_len, config.seed,
                         runtime.rank, runtime.world_size, runtime.device)

    start_step, train_seconds, last_bpb = 0, 0.0, None
    if resume:
        folder = checkpoint.latest(run_dir)
        state = checkpoint.read_state(folder)
        checkpoint.load_weights(folder, model)
        checkpoint.load_optimizers(folder, optimizers)
        loader.load_state_dict(state["loader"])
        checkpoint.restore_rng(state, runtime.rank)
        start_step, train_seconds, last_bpb = state["step"], state.get("train_seconds", 0.0), state.get("val_bpb")
        if state.get("world_size", 1) != runtime.world_size:
            say(f"[yellow]note[/]: the run was trained on {state.get('world_size', 1)} process(es), now "
                f"{runtime.world_size}: it goes on, but batches are cut differently, so it is no longer an exact "
                "continuation")
        if start_step >= config.max_steps:
            raise UsageError(f"run {config.run!r} already reached step {start_step} of --max-steps "
                             f"{config.max_steps}; pass a larger --max-steps to train further")
        say(f"resuming [bold]{config.run}[/] from step {start_step} ({folder.name})")

    n_params = sum(p.numel() for p in model.parameters())
    if runtime.is_main:
        _write_run_files(run_dir, config, model_config, tokenizer, corpus, data, resume, start_step, runtime)
        say(f"model: {model_config.family} family, depth {model_config.n_layer}, width {model_config.n_embd}, "
            f"{model_config.n_head} heads ({model_config.n_kv_head} kv) of {model_config.head_dim}, "
            f"{n_params:,} parameters")
        say(f"data: {corpus.key}: {data.meta['train_tokens']:,} train / {data.meta['val_tokens']:,} val tokens "
            f"({data.meta['train_bytes'] / max(1, data.meta['train_tokens']):.2f} bytes/token)")
        say(f"steps: {config.max_steps} x {tokens_per_pass * grad_accum_steps:,} tokens "
            f"({config.device_batch_size} x {config.seq_len} x {runtime.world_size} device(s) x "
            f"{grad_accum_steps} accumulation); {runtime.device.type}, {runtime.dtype} ({runtime.dtype_reason})")

    trained_model = model
    if runtime.distributed:
        from torch.nn.parallel import DistributedDataParallel

        trained_model = DistributedDataParallel(model, device_ids=[runtime.local_rank] if runtime.device.type == "cuda" else None)
    if config.compile:
        trained_model = torch.compile(trained_model)

    token_bytes = tokenizer.token_bytes()
    eval_batch = config.eval_batch_size or 4 * config.device_batch_size
    metrics_path = run_dir / "metrics.jsonl"

    def evaluate(step: int) -> float:
        bpb = evaluate_bpb(model, data.val, token_bytes, config.seq_len, eval_batch, runtime.device,
                           runtime.autocast, runtime.rank, runtime.world_size)
        samples = write_samples(step) if runtime.is_main and config.sample_tokens else []
        if runtime.is_main:
            _append_metrics(metrics_path, {"step": step, "val_bpb": bpb})
            progress.print(f"[bold]step {step}[/]: val bits/byte [bold green]{bpb:.4f}[/]")
            for prompt, text in samples:
                progress.print(f"  [dim]{_one_line(prompt)}[/][italic]{_one_line(text)[:160]}[/]")
        return bpb

    def write_samples(step: int) -> list[tuple[str, str]]:
        engine = Engine(model, runtime.autocast)
        samples = [(prompt, complete(engine, tokenizer, prompt, config.sample_tokens, temperature=0.8,
                                     top_k=50, seed=config.seed + i))
                   for i, prompt in enumerate(corpus.sample_prompts)]
        _append_text(run_dir / "samples.txt", f"=== step {step} ===\n" +
                     "".join(f"{prompt}{text}\n---\n" for prompt, text in samples))
        return samples

    def save(step: int) -> None:
        # Every rank draws its own dropout masks, so every rank's random state is saved.
        rng_by_rank = _gather(checkpoint.rng_state(), runtime)
        if runtime.is_main:
            checkpoint.save(run_dir, step, model, optimizers, {
                "loader": loader.state_dict(), "train_seconds": train_seconds, "val_bpb": last_bpb,
                "world_size": runtime.world_size,
                **({"rng_by_rank": rng_by_rank} if runtime.distributed else {})}, keep=config.keep_checkpoints)
        _barrier(runtime)

    step, interrupted = start_step, False
    progress = ui.TrainingProgress(config.max_steps, start_step, config.log_every,
                                   ui.console() if runtime.is_main else _null_console())
    with StopRequest() as stop, progress:
        if step == 0 and config.eval_every:
            last_bpb = evaluate(0)
        while step < config.max_steps:
            started = time.perf_counter()
            multiplier = lr_multiplier(step, config.max_steps, config.warmup_steps, config.warmdown_ratio,
                                       config.final_lr_frac)
            set_learning_rates(optimizers, multiplier, muon_momentum(step, config.muon_momentum_warmup))
            loss_sum = torch.zeros((), device=runtime.device)
            for micro_step in range(grad_accum_steps):
                x, y = loader.next_batch()
                sync = micro_step == grad_accum_steps - 1
                with (contextlib.nullcontext() if sync or not runtime.distributed else trained_model.no_sync()):
                    with runtime.autocast():
                        loss = trained_model(x, y)
                    (loss / grad_accum_steps).backward()
                loss_sum += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or float("inf"))
            for optimizer in optimizers:
                optimizer.step()
            model.zero_grad(set_to_none=True)
            step += 1
            train_loss = loss_sum.item() / grad_accum_steps
            elapsed = time.perf_counter() - started
            train_seconds += elapsed
            if not math.isfinite(train_loss):
                raise GlassError(f"the loss became {train_loss} at step {step}; lower the learning rates "
                                 "(e.g. --matrix-lr, --adamw-lr) or enable --grad-clip; nothing was saved for this step")
            tokens_per_sec = tokens_per_pass * grad_accum_steps / elapsed
            if runtime.is_main:
                _append_metrics(metrics_path, {
                    "step": step, "loss": round(train_loss, 6), "lr_multiplier": round(multiplier, 6),
                    "grad_norm": round(float(grad_norm), 6), "tokens_per_sec": round(tokens_per_sec, 1),
                    "train_seconds": round(train_seconds, 3)})
            progress.update(step, train_loss, tokens_per_sec)
            if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
                last_bpb = evaluate(step)
            if _agree(stop.requested, runtime):
                interrupted = True
                break
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.max_steps:
                save(step)
        if not interrupted:  # the loop leaves the last step's evaluation to here
            last_bpb = evaluate(step)
        save(step)

    if runtime.is_main:
        _plot(run_dir)
        if interrupted:
            command = (f"torchrun --standalone --nproc-per-node {runtime.world_size} -m glassgpt train "
                       f"--run-name {config.run} --resume" if runtime.distributed
                       else f"glassgpt train --run {config.run} --resume")
            say(f"[yellow]interrupted[/]: saved a checkpoint at step {step}. Resume with: [bold]{command}[/]")
        else:
            say(f"[bold green]done[/]: {step} steps in {ui.format_duration(train_seconds)} of training; "
                f"val bits/byte [bold]{last_bpb:.4f}[/]; run saved in {run_dir}")
    return TrainResult(run_dir, step, last_bpb, interrupted, train_seconds)


def build_model(config: TrainConfig, model_config, device, say=print) -> torch.nn.Module:
    """The reference GPT, or the learner's (--model FILE.py), initialised from the seed."""
    torch.manual_seed(config.seed)
    if not config.model_file:
        return GPT.build(model_config, device)
    from glassgpt.learn.loader import build_learner_model

    reference = GPT.build(model_config, device) if config.init == "reference" else None  # same seed, same numbers
    # built, initialised and run once (forward and backward): any failure is one message about the file
    model, emitted, missing = build_learner_model(config.model_file, model_config, device, reference)
    say(f"your model ({config.model_file}) emits {len(emitted)} of {len(emitted) + len(missing)} trace points"
        + (f"; not emitted: {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''} "
           "(add tap(name, x) calls to see them in glassgpt trace)" if missing else ""))
    return model


def grad_accumulation_steps(total_batch_size: int, tokens_per_pass: int) -> int:
    """Micro-batches per optimiser step so that each step sees total_batch_size tokens."""
    if total_batch_size == 0:
        return 1
    if total_batch_size % tokens_per_pass:
        raise UsageError(
            f"--total-batch-size {total_batch_size:,} is not a multiple of the tokens per pass "
            f"({tokens_per_pass:,} = device batch x seq len x devices); use a multiple, e.g. "
            f"{max(1, round(total_batch_size / tokens_per_pass)) * tokens_per_pass:,}")
    return total_batch_size // tokens_per_pass


def _gather(value, runtime: devices.Runtime) -> list:
    """`value` from every rank, in rank order (on every rank)."""
    if not runtime.distributed:
        return [value]
    import torch.distributed as dist

    values = [None] * runtime.world_size
    dist.all_gather_object(values, value)
    return values


def _agree(flag: bool, runtime: devices.Runtime) -> bool:
    """All ranks stop together if any rank was asked to stop."""
    if not runtime.distributed:
        return flag
    import torch.distributed as dist

    tensor = torch.tensor([int(flag)], device=runtime.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def _write_run_files(run_dir, config, model_config, tokenizer, corpus, data, resume, start_step, runtime) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "config.json", json.dumps({
        "train": config.to_dict(), "model": model_config.to_dict(),
        "tokenizer": {"name": config.tokenizer or default_tokenizer_name(corpus, config.vocab_size),
                      "fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size},
        "data": {"corpus": corpus.key, **{k: data.meta[k] for k in ("train_tokens", "val_tokens", "train_bytes", "val_bytes")}},
        "model_file_sha256": _sha256_of(config.model_file) if config.model_file else None,
        # What --device/--dtype auto resolved to: a resumed run keeps it (see resumed_config).
        "runtime": {"device": runtime.device.type, "dtype": runtime.dtype, "dtype_reason": runtime.dtype_reason,
                    "world_size": runtime.world_size},
        "glassgpt": __version__, "torch": torch.__version__,
    }, indent=2))
    tokenizer.save(run_dir / "tokenizer.json")
    metrics = run_dir / "metrics.jsonl"
    if resume and metrics.exists():  # drop what was logged after the checkpoint we resume from
        kept = [line for line in metrics.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
        atomic.write_text(metrics, "".join(line + "\n" for line in kept))
        samples = run_dir / "samples.txt"
        if samples.exists():
            atomic.write_text(samples, samples_up_to(samples.read_text(encoding="utf-8"), start_step))
    elif not resume:
        metrics.unlink(missing_ok=True)
        (run_dir / "samples.txt").unlink(missing_ok=True)


def samples_up_to(text: str, step: int) -> str:
    """samples.txt without the evaluations after `step` (a resumed run writes them again)."""
    sections = re.split(r"(?m)^(?==== step \d+ ===$)", text)
    return "".join(s for s in sections if s and int(re.match(r"=== step (\d+) ===", s).group(1)) <= step)


def _sha256_of(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _append_metrics(path: Path, record: dict) -> None:
    _append_text(path, json.dumps(record) + "\n")


def _append_text(path: Path, text: str) -> None:
    """Append whole records (a metrics line, one evaluation's samples): a reader never sees half."""
    try:
        with open(path, "a", encoding="utf-8") as file:
            file.write(text)
    except OSError as error:
        raise GlassError(f"cannot write {path}: {error.strerror or error} (is the disk full?)") from None


def _one_line(text: str) -> str:
    return text.replace("\n", "⏎ ")


def _null_console():
    from rich.console import Console

    return Console(quiet=True)


def _plot(run_dir: Path) -> None:
    """plots/loss.png: training loss per step and val bits per byte at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_bpb"]) for r in records if "val_bpb" in r]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps, losses = zip(*train)
        left.plot(steps, losses, lw=0.8, color="tab:blue")
        left.set(xlabel="step", ylabel="train loss (nats/token)", title="training loss")
    if val:
        steps, bpbs = zip(*val)
        right.plot(steps, bpbs, "o-", color="tab:green")
        right.set(xlabel="step", ylabel="val bits per byte", title="validation (whole val split)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.suptitle(run_dir.name)
    figure.tight_layout()
    target = run_dir / "plots" / "loss.png"
    with atomic.atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
