"""The training loop, the same for every stage: data → model → steps → evals → checkpoints.

    step k:  lr = initial_lr x lr_multiplier(k)
             train_step over grad_accum_steps micro-batches (= total_batch_size tokens): the loss
             is the mean over the step's counted targets; clip; optimiser step (train/step.py)
             every eval_every steps: val loss and bits per byte on the stage's val split, and samples
             every checkpoint_every steps: an atomic checkpoint

What a stage trains on (a corpus, or a conversation mixture packed or padded into rows) comes
from `train/stages.py`; the run folder's files are written through `runs.RunFolder`.

Resuming restores the weights, optimiser state, loader cursor and RNG state of the newest
checkpoint, so the continued run computes exactly what an uninterrupted one would have. The first
Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint and returns; a second Ctrl-C
stops at once. A repeated SIGTERM does not: a scheduler may deliver it twice (Slurm signals every
process of a job, and torchrun passes its own on), and each one only asks to save and stop.

One process trains a run at a time (`runs.run_lock`, held by rank 0): a second is refused, and
a process killed outright (kill -9, a lost node) leaves no lock behind, only temp files that the
next attempt clears before it resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.markup import escape

from glassgpt import __version__, device as devices, paths, ui
from glassgpt.allocator import release_free_memory
from glassgpt.config import TrainConfig
from glassgpt.data.prepare import barrier
from glassgpt.errors import GlassError, UsageError
from glassgpt.evals.bpb import evaluate as evaluate_batches
from glassgpt.model.gpt import GPT
from glassgpt.runs import (RunFolder, check_writable, checkpoint_of, read_run_config, remove_leftovers,
                           remove_run_files, run_lock)
from glassgpt.train import checkpoint, stages
from glassgpt.train.optim import build_optimizers, lr_multiplier, muon_momentum
from glassgpt.train.step import train_step

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


# -- stopping cleanly -------------------------------------------------------------------------------


class StopRequest:
    """The first SIGINT or SIGTERM sets `requested`; the loop saves and returns after the current
    step. A second SIGINT (Ctrl-C again) raises KeyboardInterrupt at once; SIGTERM never does."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
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
        check_writable(run_dir)
        with _only_writer(run_dir, config.run, runtime):
            return _train_locked(config, resume, runtime, run_dir, say)
    finally:
        devices.teardown(runtime)
        # The heap kept the run's high-water mark (allocator.py); whatever this process does next
        # (a speedrun's evaluation, the next stage) starts from its own memory instead.
        release_free_memory()


def _train_locked(config: TrainConfig, resume: bool, runtime: devices.Runtime, run_dir: Path, say) -> TrainResult:
    """`train`, once this process (or its group, under torchrun) is the run's only writer."""
    if runtime.is_main:
        remove_leftovers(run_dir)  # what an attempt killed mid-write left: only temp names
    barrier(runtime)
    if not resume and (run_dir / "config.json").exists():
        if checkpoint.latest(run_dir) is not None:
            raise UsageError(f"run {config.run!r} already exists in {run_dir.parent}; add --resume to continue "
                             "it, or choose another --run")
        barrier(runtime)  # every rank has looked before rank 0 clears the folder
        if runtime.is_main:  # an attempt that stopped before its first checkpoint holds nothing to keep
            say(f"[yellow]note[/]: run {config.run!r} has no checkpoint (an earlier attempt stopped before "
                "saving one); starting it afresh")
            remove_run_files(run_dir)
    if resume and checkpoint.latest(run_dir) is None:
        raise GlassError(f"run {config.run!r} has no checkpoint to resume from; train it without --resume")
    try:
        return _train(config, resume, runtime, run_dir, say)
    except BaseException:
        # A new run that fails (or is stopped hard) before its first checkpoint leaves no folder
        # behind: nothing in it could be resumed, and its name stays free for the next attempt.
        if not resume and runtime.is_main and checkpoint.latest(run_dir) is None:
            remove_run_files(run_dir)  # the folder itself goes with the lock
        raise


@contextlib.contextmanager
def _only_writer(run_dir: Path, run: str, runtime: devices.Runtime):
    """Rank 0 holds the run's lock for the group; every rank learns whether it got it, so that a
    refused group stops together with one message instead of waiting for a rank that left."""
    refusal = None
    with contextlib.ExitStack() as stack:
        if runtime.is_main:
            try:
                stack.enter_context(run_lock(run_dir, run))
            except GlassError as error:
                refusal = str(error)
        if runtime.distributed:
            refusal = _broadcast(refusal, runtime)
        if refusal:
            raise GlassError(refusal)
        yield


def _train(config: TrainConfig, resume: bool, runtime: devices.Runtime, run_dir: Path, say) -> TrainResult:
    """The run itself, once `train` has settled that the run folder may be written."""
    tokens_per_pass = config.device_batch_size * config.seq_len * runtime.world_size
    grad_accum_steps = grad_accumulation_steps(config.total_batch_size, tokens_per_pass)  # fail before any work
    eval_batch = config.eval_batch_size or 4 * config.device_batch_size
    saved = read_run_config(run_dir) if resume else None
    data = stages.prepare(config, runtime, eval_batch, say, saved)
    # An epoch ends where a whole optimiser step no longer fits: then N processes read exactly the
    # batches one process reads with N times the accumulation (see data/loader.py).
    data.loader.micro_batches_per_step = grad_accum_steps
    model_config = config.model_config(data.tokenizer.vocab_size)
    model = build_model(config, model_config, runtime.device, say)
    if data.parent and not resume:  # a chat stage starts from its parent's final weights
        checkpoint.load_weights(checkpoint_of(data.parent["run"]), model)
    torch.manual_seed(config.seed)  # the data order and dropout: the same whichever model was built
    optimizers = build_optimizers(model, config.optimizer_settings())
    loader = data.loader

    start_step, train_seconds, last_eval = 0, 0.0, None
    if resume:
        folder = checkpoint.latest(run_dir)
        state = checkpoint.read_state(folder)
        checkpoint.load_weights(folder, model)
        checkpoint.load_optimizers(folder, optimizers)
        loader.load_state_dict(state["loader"])
        checkpoint.restore_rng(state, runtime.rank)
        start_step, train_seconds = state["step"], state.get("train_seconds", 0.0)
        last_eval = state.get("val")
        if state.get("world_size", 1) != runtime.world_size:
            say(f"[yellow]note[/]: the run was trained on {state.get('world_size', 1)} process(es), now "
                f"{runtime.world_size}: it goes on, but batches are cut differently, so it is no longer an exact "
                "continuation")
        if start_step >= config.max_steps:
            raise UsageError(f"run {config.run!r} already reached step {start_step} of --max-steps "
                             f"{config.max_steps}; pass a larger --max-steps to train further")
        say(f"resuming [bold]{config.run}[/] from step {start_step} ({folder.name})")

    folder_writer = RunFolder(run_dir)
    n_params = sum(p.numel() for p in model.parameters())
    if runtime.is_main:
        folder_writer.start(_run_record(config, model_config, data, runtime), data.tokenizer,
                            start_step if resume else None)
        say(f"model: {model_config.family} family, depth {model_config.n_layer}, width {model_config.n_embd}, "
            f"{model_config.n_head} heads ({model_config.n_kv_head} kv) of {model_config.head_dim}, "
            f"{n_params:,} parameters" + (f"; stage {config.stage}" if config.stage != "base" else ""))
        for line in data.summary:
            say(line)
        say(f"steps: {config.max_steps} x {tokens_per_pass * grad_accum_steps:,} tokens "
            f"({config.device_batch_size} x {config.seq_len} x {runtime.world_size} device(s) x "
            f"{grad_accum_steps} accumulation); {runtime.device.type}, {runtime.dtype} ({runtime.dtype_reason})")

    step_model = model
    if runtime.distributed:
        from torch.nn.parallel import DistributedDataParallel

        step_model = DistributedDataParallel(model, device_ids=[runtime.local_rank] if runtime.device.type == "cuda" else None)
    if config.compile:
        step_model = torch.compile(step_model)

    token_bytes = data.tokenizer.token_bytes()
    # A chat stage's loss counts only assistant tokens: say so where the numbers are printed.
    counted = "" if config.stage == "base" else " (assistant tokens)"

    def evaluate(step: int) -> dict:
        result = evaluate_batches(model, data.val_batches(), token_bytes, runtime.device, runtime.autocast,
                                  runtime.world_size)
        # A freshly initialised reference model writes random tokens: its step-0 samples would cost a
        # third of a second for nothing (nanochat does not sample at step 0 either). A chat stage
        # starts from a trained model, and its step-0 samples show how that model meets
        # conversations; a learner's --model samples at step 0 so that a broken generation path
        # (its KV cache) fails before the training, not after it.
        untrained = step == 0 and data.parent is None and not config.model_file
        samples = (data.samples(model, runtime.autocast)
                   if runtime.is_main and config.sample_tokens and not untrained else [])
        if runtime.is_main:
            folder_writer.append_metrics({"step": step, **result.record()})
            if samples:
                folder_writer.append_samples(step, samples)
            progress.print(f"[bold]step {step}[/]: val loss{counted} {result.loss:.4f}, "
                           f"val bits/byte [bold green]{result.bpb:.4f}[/]")
            for prompt, text in samples:
                # escaped: a chat sample's "[calculator: ...]" is text, not a Rich style tag
                progress.print(f"  [dim]{escape(_one_line(prompt))}[/][italic]{escape(_one_line(text)[:160])}[/]",
                               markup=True)
        return result.record()

    def save(step: int) -> None:
        # Every rank draws its own dropout masks, so every rank's random state is saved.
        rng_by_rank = _gather(checkpoint.rng_state(), runtime)
        if runtime.is_main:
            checkpoint.save(run_dir, step, model, optimizers, {
                "loader": loader.state_dict(), "train_seconds": train_seconds, "val": last_eval,
                "val_bpb": (last_eval or {}).get("val_bpb"), "world_size": runtime.world_size,
                **({"rng_by_rank": rng_by_rank} if runtime.distributed else {})}, keep=config.keep_checkpoints)
        barrier(runtime)

    step, interrupted = start_step, False
    progress = ui.TrainingProgress(config.max_steps, start_step, config.log_every,
                                   ui.console() if runtime.is_main else _null_console())
    with StopRequest() as stop, progress:
        if step == 0 and config.eval_every:
            last_eval = evaluate(0)
        while step < config.max_steps:
            started = time.perf_counter()
            multiplier = lr_multiplier(step, config.max_steps, config.warmup_steps, config.warmdown_ratio,
                                       config.final_lr_frac)
            result = train_step(model, optimizers, [loader.next_batch() for _ in range(grad_accum_steps)],
                                lr_multiplier=multiplier, muon_momentum=muon_momentum(step, config.muon_momentum_warmup),
                                grad_clip=config.grad_clip, autocast=runtime.autocast, step_model=step_model,
                                world_size=runtime.world_size)
            step += 1
            elapsed = time.perf_counter() - started
            train_seconds += elapsed
            if not math.isfinite(result.loss):
                raise GlassError(f"the loss became {result.loss} at step {step}; lower the learning rates "
                                 "(e.g. --matrix-lr, --adamw-lr) or enable --grad-clip; nothing was saved for this step")
            tokens_per_sec = tokens_per_pass * grad_accum_steps / elapsed
            if runtime.is_main:
                folder_writer.append_metrics({
                    "step": step, "loss": round(result.loss, 6), "lr_multiplier": round(multiplier, 6),
                    "grad_norm": round(result.grad_norm, 6), "tokens_per_sec": round(tokens_per_sec, 1),
                    "counted_tokens": result.counted_tokens, "train_seconds": round(train_seconds, 3)})
            progress.update(step, result.loss, tokens_per_sec)
            if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
                last_eval = evaluate(step)
            if _agree(stop.requested, runtime):
                interrupted = True
                break
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.max_steps:
                save(step)
        if not interrupted:  # the loop leaves the last step's evaluation to here
            last_eval = evaluate(step)
        save(step)

    last_bpb = (last_eval or {}).get("val_bpb")
    if runtime.is_main:
        folder_writer.plot()
        if interrupted:
            command = (f"torchrun --standalone --nproc-per-node {runtime.world_size} -m glassgpt train "
                       f"--run-name {config.run} --resume" if runtime.distributed
                       else f"glassgpt train --run {config.run} --resume")
            say(f"[yellow]interrupted[/]: saved a checkpoint at step {step}. Resume with: [bold]{command}[/]")
        else:
            loss = f"val loss{counted} {last_eval['val_loss']:.4f}, " if config.stage != "base" else ""
            say(f"[bold green]done[/]: {step} steps in {ui.format_duration(train_seconds)} of training; "
                f"{loss}val bits/byte [bold]{last_bpb:.4f}[/]; run saved in {run_dir}")
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


def _broadcast(value, runtime: devices.Runtime):
    """Rank 0's `value`, on every rank."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _agree(flag: bool, runtime: devices.Runtime) -> bool:
    """All ranks stop together if any rank was asked to stop."""
    if not runtime.distributed:
        return flag
    import torch.distributed as dist

    tensor = torch.tensor([int(flag)], device=runtime.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def _run_record(config: TrainConfig, model_config, data: stages.StageData, runtime: devices.Runtime) -> dict:
    """config.json: everything that says what the run is and how it was made."""
    return {
        "train": config.to_dict(), "model": model_config.to_dict(),
        "tokenizer": {"name": data.tokenizer_name, "fingerprint": data.tokenizer.fingerprint,
                      "vocab_size": data.tokenizer.vocab_size},
        "data": data.record,
        **({"parent": data.parent, "identity": data.facts} if data.parent else {}),
        "model_file_sha256": _sha256_of(config.model_file) if config.model_file else None,
        # What --device/--dtype auto resolved to: a resumed run keeps it (see kept_dtype).
        "runtime": {"device": runtime.device.type, "dtype": runtime.dtype, "dtype_reason": runtime.dtype_reason,
                    "world_size": runtime.world_size},
        "glassgpt": __version__, "torch": torch.__version__,
    }


def _sha256_of(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _one_line(text: str) -> str:
    return text.replace("\n", "⏎ ")


def _null_console():
    from rich.console import Console

    return Console(quiet=True)
