"""Training throughput: glassgpt's `train_step` against nanochat's training step at the same size.

glassgpt is timed as `glassgpt bench` times it (`glassgpt.bench.bench_train`: forward, backward,
clipping, Muon + AdamW step of a fresh model on random tokens); nanochat as its base_train.py
steps (forward with targets, backward, its MuonAdamW step, zero_grad), its optimiser's own
compiled kernels warmed up first. Eager models by default; with `--compile` both models run
`torch.compile`d, as nanochat's base_train.py always runs its model (the warm-up steps then
include the compilation). Both in fp32 and in bf16: glassgpt with bf16
autocast, nanochat with NANOCHAT_DTYPE=bfloat16 (its way: weights cast in each Linear). nanochat
reads its dtype when imported, so each nanochat measurement runs in a child process of its own;
rounds alternate between the two so a neighbour's burst on a shared machine hits both alike.

nanochat is not part of glassgpt: fetch a checkout yourself (git clone
https://github.com/karpathy/nanochat /tmp/nanochat) and pass its folder.

    python benchmarks/train_vs_nanochat.py --nanochat /tmp/nanochat
    python benchmarks/train_vs_nanochat.py --nanochat /tmp/nanochat --dtype bf16 --rounds 3 --steps 5
    python benchmarks/train_vs_nanochat.py --nanochat /tmp/nanochat --compile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def nanochat_tokens_per_sec(path: str, depth: int, vocab_size: int, seq_len: int, batch_size: int, steps: int,
                            warmup: int, compiled: bool) -> float:
    """tokens/s of nanochat's training step (runs in the child process)."""
    import torch

    from nanochat_side import nanochat_model

    model, _ = nanochat_model(path, depth, vocab_size, seq_len)
    optimizer = model.setup_optimizer()
    if compiled:
        model = torch.compile(model, dynamic=False)  # as base_train.py does
    torch.manual_seed(0)
    x = torch.randint(0, vocab_size, (batch_size, seq_len))
    y = torch.randint(0, vocab_size, (batch_size, seq_len))
    for i in range(warmup + steps):
        if i == warmup:
            started = time.perf_counter()
        loss = model(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
    return batch_size * seq_len * steps / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanochat", metavar="PATH", required=True, help="a nanochat checkout (fetched separately)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="fp32,bf16", help="comma list of fp32, bf16 (default both)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile both models (nanochat's training script always does)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.depth, args.vocab_size, args.seq_len, args.batch_size)
    if args.worker:  # the child: one nanochat measurement, printed as JSON
        print(json.dumps(nanochat_tokens_per_sec(args.nanochat, *shape, args.steps, args.warmup, args.compile)))
        return 0

    import torch

    from glassgpt.allocator import tune_allocator
    from glassgpt.bench import bench_train
    from glassgpt.model.config import GPTConfig

    tune_allocator()  # as the glassgpt command does at start-up
    load = os.getloadavg()
    config = GPTConfig.from_depth(args.depth, args.vocab_size, sequence_len=args.seq_len)
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    device = torch.device("cpu")
    print(f"depth {args.depth}, width {config.n_embd}, vocab {args.vocab_size:,}, seq {args.seq_len}, "
          f"batch {args.batch_size}; {args.steps} timed steps after {args.warmup}; {torch.get_num_threads()} threads; "
          f"{'compiled' if args.compile else 'eager'} models")
    rates: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for dtype in dtypes:
            glass = bench_train(config, device, dtype, args.batch_size, args.seq_len, args.steps,
                                compiled=args.compile, warmup=args.warmup)
            rates.setdefault(f"glassgpt {dtype}", []).append(glass["tokens_per_sec"])
            env = {**os.environ, "NANOCHAT_DTYPE": "bfloat16" if dtype == "bf16" else "float32"}
            child = subprocess.run([sys.executable, __file__, "--worker", "--nanochat", args.nanochat,
                                    "--depth", str(args.depth), "--vocab-size", str(args.vocab_size),
                                    "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
                                    "--steps", str(args.steps), "--warmup", str(args.warmup),
                                    *(["--compile"] if args.compile else [])],
                                   env=env, capture_output=True, text=True)
            if child.returncode:
                print(child.stderr, file=sys.stderr)
                return child.returncode
            rates.setdefault(f"nanochat {dtype}", []).append(float(child.stdout.strip().splitlines()[-1]))
    print(f"\n{'':<16} {'tok/s (median)':>14} {'min':>8} {'max':>8}")
    for name, values in rates.items():
        print(f"{name:<16} {statistics.median(values):>14,.0f} {min(values):>8,.0f} {max(values):>8,.0f}")
    for dtype in dtypes:
        ratio = statistics.median(rates[f"glassgpt {dtype}"]) / statistics.median(rates[f"nanochat {dtype}"])
        print(f"glassgpt / nanochat in {dtype}: {ratio:.2f}x")
    print(f"load average {load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
