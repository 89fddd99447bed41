"""A run's fixed overhead as a user meets it: `glassgpt train` in a new process, timed from launch
to exit, minus the training seconds the run itself recorded (metrics.jsonl's train_seconds).

`run_profile.py` splits a run into phases inside one process, so it cannot see what happens before
its first line or after `main` returns: the interpreter's start and its exit. This script sees
both, and repeats the run because a 2-core machine's timings move by a tenth of a second.

    python benchmarks/run_overhead.py                       # cpu-tiny, 20 steps, 3 runs
    python benchmarks/run_overhead.py --runs 5 -- --dtype fp32

The runs are made in the cache as it is (the tokenizer and shards are reused) and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from glassgpt import paths


def one_run(preset: str, max_steps: int, overrides: list[str]) -> tuple[float, float]:
    """(wall seconds from launch to exit, training seconds the run recorded)."""
    run = f"overhead-{os.getpid()}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "glassgpt", "train", "--preset", preset, "--run", run,
               "--max-steps", str(max_steps), *overrides]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    run_dir = paths.run_dir(run)
    try:
        if done.returncode:
            raise SystemExit(f"glassgpt train failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        train_seconds = max(r["train_seconds"] for r in records if "train_seconds" in r)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return wall, train_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-tiny")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra train flags after --")
    args = parser.parse_args()
    if args.runs < 1 or args.max_steps < 1:
        parser.error("--runs and --max-steps must be at least 1")
    overheads = []
    for index in range(args.runs):
        wall, train_seconds = one_run(args.preset, args.max_steps, args.overrides)
        overheads.append(wall - train_seconds)
        print(f"run {index + 1}: wall {wall:.2f}s, training {train_seconds:.2f}s, "
              f"fixed overhead {wall - train_seconds:.2f}s", flush=True)
    print(f"fixed overhead: median {statistics.median(overheads):.2f}s, "
          f"range {min(overheads):.2f}-{max(overheads):.2f}s over {args.runs} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
