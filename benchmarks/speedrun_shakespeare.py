"""Time to a val bits-per-byte target on tinyshakespeare, against nanoGPT's CPU character recipe.

nanoGPT's shakespeare_char config on a CPU (4 layers, 128 wide, 2000 iterations) reaches val loss
1.8857 nats/char = 2.72 bits per byte in 123 s on a 2-core machine. This script trains glassgpt
with a preset (plus overrides), evaluating val bits per byte on the whole val split every few
steps, and reports:

- the training time (evaluation excluded) at which val bpb first reached 2.72;
- the val bpb at the end, and the training time it took.

Run it on an otherwise idle machine:

    GLASSGPT_DATA_MIRROR=../shared/data python benchmarks/speedrun_shakespeare.py --preset cpu-tiny
    python benchmarks/speedrun_shakespeare.py --preset cpu-tiny --max-steps 100 --eval-every 5 -- --depth 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

NANOGPT_BPB, NANOGPT_SECONDS = 2.72, 123.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu-tiny")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--target", type=float, default=NANOGPT_BPB)
    parser.add_argument("--keep", action="store_true", help="keep the run (default: delete it at the end)")
    parser.add_argument("overrides", nargs="*", help="extra train flags after --, e.g. -- --depth 3 --seq-len 128")
    args = parser.parse_args()

    # The usual cache root (GLASSGPT_HOME or ~/.cache/glassgpt): data and tokenizer are reused; the
    # run itself is deleted at the end unless --keep.
    from glassgpt.cli import main as glassgpt

    run = f"speedrun-{int(time.time())}"
    flags = ["train", "--preset", args.preset, "--run", run, "--eval-every", str(args.eval_every),
             "--sample-tokens", "0", "--checkpoint-every", "0", *args.overrides]
    if args.max_steps:
        flags += ["--max-steps", str(args.max_steps)]
    started = time.perf_counter()
    code = glassgpt(flags)
    wall = time.perf_counter() - started
    if code:
        return code

    from glassgpt import paths

    run_dir = paths.run_dir(run)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds_at = {r["step"]: r["train_seconds"] for r in records if "train_seconds" in r}
    seconds_at[0] = 0.0
    evals = [(r["step"], seconds_at[r["step"]], r["val_bpb"]) for r in records if "val_bpb" in r]
    reached = next(((step, s, bpb) for step, s, bpb in evals if bpb <= args.target), None)
    final_step, final_seconds, final_bpb = evals[-1]
    print()
    print(f"preset {args.preset} {' '.join(args.overrides)}")
    for step, seconds, bpb in evals:
        print(f"  step {step:>5}  train {seconds:7.1f}s  val bpb {bpb:.4f}")
    if reached:
        print(f"reached {args.target} bpb at step {reached[0]} after {reached[1]:.1f}s of training "
              f"(nanoGPT: {NANOGPT_SECONDS:.0f}s; {NANOGPT_SECONDS / reached[1]:.1f}x faster)")
    else:
        print(f"did not reach {args.target} bpb")
    print(f"final: val bpb {final_bpb:.4f} after {final_seconds:.1f}s of training ({wall:.1f}s wall incl. evals)")
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
