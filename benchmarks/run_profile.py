"""Where a training run's wall time and memory go: one row per phase of `glassgpt train`.

The run is the real one (`glassgpt.cli.main`, in this process); the script only wraps the loop's
phases (device setup, data, model, evaluation, samples, training steps, checkpoints, plots) with
timers, and samples the resident memory (RSS) every 5 ms from a thread. Reported per phase: wall
seconds, calls, the RSS when it ended and the highest RSS seen while it ran; then the process's
peak RSS as the kernel counts it (VmHWM), and the fixed overhead: wall time minus training time.
What happens before this script's first line and after `main` returns (the interpreter's start
and exit) is not counted: `run_overhead.py` times a run from launch to exit.

    python benchmarks/run_profile.py                        # cpu-tiny, 20 steps, cache as it is
    python benchmarks/run_profile.py --fresh                # in an empty cache root: tokenizer and shards too
    python benchmarks/run_profile.py --max-steps 300        # the quickstart's whole run
    python benchmarks/run_profile.py -- --dtype fp32        # any train flags after --

`--fresh` needs the data (GLASSGPT_DATA_MIRROR or the internet). The run is deleted afterwards.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports: they are part of a run's overhead

import argparse  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections import defaultdict  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Phases:
    """Wall time and RSS per named phase; a sampler thread keeps each open phase's highest RSS."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.rss_after: dict[str, float] = {}
        self.rss_peak: dict[str, float] = defaultdict(float)
        self.open: list[str] = []
        self.raised: list[tuple[str, int, float]] = []  # (phase, call, new peak): who raised the peak
        self.stop = threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(0.005):
            now = rss_mb()
            for name in list(self.open):
                self.rss_peak[name] = max(self.rss_peak[name], now)

    def wrap(self, owner, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            self.open.append(name)
            started, peak_before = time.perf_counter(), peak_rss_mb()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1
                self.open.remove(name)
                self.rss_after[name] = rss_mb()
                self.rss_peak[name] = max(self.rss_peak[name], self.rss_after[name])
                if peak_rss_mb() > peak_before + 1 and len(self.open) == 0:
                    self.raised.append((name, self.calls[name], peak_rss_mb()))

        setattr(owner, attribute, timed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-tiny")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--fresh", action="store_true",
                        help="use an empty cache root: tokenizer training and tokenising are part of the run")
    parser.add_argument("overrides", nargs="*", help="extra train flags after --")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="run-profile-") if args.fresh else None
    if scratch:
        os.environ["GLASSGPT_HOME"] = scratch

    phases = Phases()
    phases.sampler.start()
    # The heavy imports one by one, in the order a run needs them.
    imports = [("import torch", "torch"), ("import glassgpt (cli, training loop)", "glassgpt.train.loop")]
    for name, module in imports:
        phases.open.append(name)
        started, peak_before = time.perf_counter(), peak_rss_mb()
        importlib.import_module(module)
        phases.seconds[name], phases.calls[name] = time.perf_counter() - started, 1
        phases.open.remove(name)
        phases.rss_after[name] = rss_mb()
        if peak_rss_mb() > peak_before + 1:
            phases.raised.append((name, 1, peak_rss_mb()))

    from glassgpt import device, engine, paths, runs
    from glassgpt.cli import main as glassgpt
    from glassgpt.train import checkpoint, loop, stages

    wrapped = [
        (device, "setup", "device and dtype (setup)"),
        (stages, "prepare", "data: tokenizer, shards, loader"),
        (loop, "build_model", "model: build and init"),
        (loop, "build_optimizers", "optimisers"),
        (runs.RunFolder, "start", "run folder: config, tokenizer copy"),
        (loop, "evaluate_batches", "evaluation (val bpb)"),
        (engine, "complete", "samples"),
        (loop, "train_step", "training steps"),
        (checkpoint, "save", "checkpoints"),
        (runs.RunFolder, "plot", "plots"),
    ]
    for owner, attribute, name in wrapped:
        phases.wrap(owner, attribute, name)

    run = f"profile-{os.getpid()}"
    flags = ["train", "--preset", args.preset, "--run", run, "--max-steps", str(args.max_steps), *args.overrides]
    main_started = time.perf_counter()
    code = glassgpt(flags)
    ended = time.perf_counter()
    phases.stop.set()
    if code:
        return code
    wall = ended - STARTED
    accounted = sum(phases.seconds.values())
    print()
    print(f"{'phase':<40} {'seconds':>8} {'calls':>6} {'RSS after':>10} {'RSS peak':>9}")
    for name in [name for name, _ in imports] + [name for _, _, name in wrapped]:
        if name in phases.calls:
            print(f"{name:<40} {phases.seconds[name]:>8.2f} {phases.calls[name]:>6} "
                  f"{phases.rss_after[name]:>8.0f}MB {phases.rss_peak[name]:>7.0f}MB")
    print(f"{'everything else (Python, CLI, logging)':<40} {wall - accounted:>8.2f}")
    train_seconds = phases.seconds["training steps"]
    print("\nthe process's peak RSS was raised by:")
    for name, call, peak in phases.raised:
        print(f"  {name} (call {call}): to {peak:.0f} MB")
    # torch._dynamo (and sympy) cost a second and 70 MB; nothing in a CPU run should import them.
    print(f"\ntorch._dynamo imported by the run: {'yes' if 'torch._dynamo' in sys.modules else 'no'}")
    print(f"wall {wall:.2f}s (main: {ended - main_started:.2f}s), training steps {train_seconds:.2f}s: "
          f"fixed overhead {wall - train_seconds:.2f}s; peak RSS {peak_rss_mb():.0f} MB (VmHWM)")
    shutil.rmtree(paths.run_dir(run), ignore_errors=True)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
