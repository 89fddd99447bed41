"""Decode speed, batch 1: glassgpt's Engine against nanochat's Engine at the same model size, and
against glassgpt's naive path (no KV cache: the whole context re-run for every token).

Both models are fresh (random weights: speed does not depend on what the weights say), on the CPU,
in this process, and generate the same number of tokens from a prompt of random ids, greedily
(temperature 0) unless told otherwise. The engines take turns, round after round, so that a
neighbour's burst on a shared machine slows a round of each rather than all of one; the median
round is reported. nanochat runs twice: as it ships (torch's default number of threads) and on one
thread, which is faster than two on a busy machine.

nanochat is not part of glassgpt and is not installed with it: fetch a checkout yourself, e.g.

    git clone https://github.com/karpathy/nanochat /tmp/nanochat

and pass its folder. Its code is imported from there at run time (it needs only torch and filelock
on a CPU); nothing of it is copied into glassgpt. Without --nanochat, only glassgpt is measured.

    python benchmarks/decode_vs_nanochat.py --nanochat /tmp/nanochat
    python benchmarks/decode_vs_nanochat.py --nanochat /tmp/nanochat --depth 4 --vocab-size 4096 --tokens 256
    python benchmarks/decode_vs_nanochat.py --rounds 3 --dtype bf16       # glassgpt only, decode steps under bf16 autocast
    python benchmarks/decode_vs_nanochat.py --nanochat /tmp/nanochat --compile   # also torch.compile'd decode steps
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

from glassgpt.allocator import tune_allocator
from glassgpt.engine import Engine
from glassgpt.model.config import GPTConfig
from glassgpt.model.gpt import GPT
from nanochat_side import intra_op_threads, nanochat_model


def time_tokens(generate) -> float:
    """tokens/s of one generation (an iterator of tokens)."""
    started = time.perf_counter()
    count = sum(1 for _ in generate())
    return count / (time.perf_counter() - started)


class _NoSpecialTokens:
    """What nanochat's Engine asks a tokenizer for. Its special ids lie outside the vocabulary, so
    no row ever stops early or enters a tool call: every round generates exactly --tokens tokens."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode_special(self, name: str) -> int:
        return self.vocab_size + hash(name) % 1000

    def get_bos_token_id(self) -> int:
        return self.vocab_size + 1000

    def encode(self, text: str) -> list[int]:
        return []

    def decode(self, ids: list[int]) -> str:
        return ""


def nanochat_engine(path: str, depth: int, vocab_size: int, sequence_len: int):
    """nanochat's own model and Engine, at nanochat's own shape for this depth."""
    model, config = nanochat_model(path, depth, vocab_size, sequence_len)
    from nanochat.engine import Engine as NanochatEngine  # importable once nanochat_model found the checkout

    model.eval()
    return NanochatEngine(model, _NoSpecialTokens(vocab_size)), config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanochat", metavar="PATH", help="a nanochat checkout (fetched separately)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--sequence-len", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=256, help="new tokens per round (default 256)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every engine, interleaved (default 5)")
    parser.add_argument("--naive-rounds", type=int, default=1, help="rounds of the no-cache path (slow; default 1)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                        help="also time glassgpt's steps under bf16 autocast (bf16 KV cache); the Engine itself "
                             "generates in fp32 on a CPU")
    parser.add_argument("--compile", action="store_true",
                        help="also time glassgpt's Engine with torch.compile'd decode steps (compile time printed apart)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's intra-op threads for everything (default: torch's own choice, as a user "
                             "runs it)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_allocator()  # as the glassgpt command does at start-up
    load = os.getloadavg()

    torch.manual_seed(0)
    config = GPTConfig.from_depth(args.depth, args.vocab_size, sequence_len=args.sequence_len)
    model = GPT.build(config)
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.dtype == "bf16"
                else contextlib.nullcontext)
    prompt = torch.randint(0, args.vocab_size, (args.prompt_len,)).tolist()
    sampling = dict(temperature=args.temperature, seed=0)

    engine = Engine(model)
    runs = {"glassgpt Engine (fp32)": lambda: engine.generate(prompt, args.tokens, **sampling)}
    if args.dtype == "bf16":
        bf16_engine = Engine(model)
        bf16_engine.autocast = autocast  # what the Engine would do on a GPU: every step under bf16 autocast
        runs["glassgpt Engine, bf16 autocast"] = lambda: bf16_engine.generate(prompt, args.tokens, **sampling)
    if args.compile:
        compiled_engine = Engine(model, compile=True)
        started = time.perf_counter()
        # A whole generation compiles every graph the rounds will use (one per span of the cache).
        for _ in compiled_engine.generate(prompt, args.tokens, **sampling):
            pass
        print(f"glassgpt Engine(compile=True): {time.perf_counter() - started:.1f} s to compile the decode steps "
              "(one generation, not counted below)")
        runs["glassgpt Engine, compiled decode"] = lambda: compiled_engine.generate(prompt, args.tokens, **sampling)
    if args.nanochat:
        nano, nano_config = nanochat_engine(args.nanochat, args.depth, args.vocab_size, args.sequence_len)

        def nanochat_run(threads: int | None = None):
            with intra_op_threads(threads):
                for column, _ in nano.generate(prompt, num_samples=1, max_tokens=args.tokens,
                                               temperature=args.temperature, seed=0):
                    yield column

        runs[f"nanochat Engine (fp32, {torch.get_num_threads()} threads)"] = nanochat_run
        if torch.get_num_threads() > 1:
            runs["nanochat Engine (fp32, 1 thread)"] = lambda: nanochat_run(1)
        print(f"nanochat: depth {nano_config.n_layer}, width {nano_config.n_embd}, {nano_config.n_head} heads, "
              f"vocab {nano_config.vocab_size}, window pattern {nano_config.window_pattern}")
    print(f"glassgpt: depth {config.n_layer}, width {config.n_embd}, {config.n_head} heads of {config.head_dim}, "
          f"vocab {config.vocab_size:,}; {args.tokens} new tokens after {args.prompt_len} prompt tokens, batch 1, "
          f"{torch.get_num_threads()} threads")

    for run in runs.values():  # warm-up: first kernels, allocations
        for _ in zip(range(8), run()):
            pass
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            rates[name].append(time_tokens(run))
    naive = [time_tokens(lambda: engine.generate(prompt, args.tokens, use_cache=False, **sampling))
             for _ in range(args.naive_rounds)]
    rates["glassgpt, no KV cache (naive)"] = naive

    reference = statistics.median(rates[next(iter(rates))])
    print(f"\n{'engine':<40} {'tok/s (median)':>14} {'min':>7} {'max':>7}   glassgpt is")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<40} {median:>14,.0f} {min(values):>7,.0f} {max(values):>7,.0f}   {reference / median:5.2f}x")
    nanochat_best = max((statistics.median(v) for n, v in rates.items() if n.startswith("nanochat")), default=None)
    if nanochat_best:
        for name in [n for n in rates if n.startswith("glassgpt Engine")]:
            print(f"{name}: {statistics.median(rates[name]) / nanochat_best:.2f}x nanochat's Engine "
                  "(its faster thread setting)")
    print(f"load average {load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
          f"({os.cpu_count()} CPUs); rounds interleaved: {args.rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
