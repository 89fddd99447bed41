"""What trace points cost when nobody is watching: training throughput of the reference model vs the
same model with every trace point removed.

The tap-free model is not written by hand: this script reads `glassgpt/model/gpt.py`, rewrites
every `tap(name, x)` call to plain `x` and every "does a tracer want this?" check to `False` (AST
transform), and executes the result as a throwaway module. Both models get the same weights and
the same batches; steps (forward, backward, Muon/AdamW step) alternate between them so that
machine noise hits both alike. Reported: median ms/step of each and the relative difference.

    python benchmarks/tap_overhead.py                      # cpu-tiny shape: depth 3, seq 128, batch 16
    python benchmarks/tap_overhead.py --depth 4 --seq-len 512 --batch-size 8 --steps 30
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
import time
import types
from pathlib import Path

import torch

import glassgpt.model.gpt as reference
from glassgpt.allocator import tune_allocator
from glassgpt.model.config import GPTConfig
from glassgpt.train.optim import OptimizerSettings, build_optimizers
from glassgpt.train.step import train_step


class StripTaps(ast.NodeTransformer):
    def visit_Call(self, node: ast.Call):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "tap":
            return node.args[1]  # tap(name, x) → x
        if _calls_wants(node):
            return ast.Constant(False)  # any(taps.wants(n) for n in ...) / taps.wants(n) → False
        return node


def _calls_wants(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "wants" for n in ast.walk(node))


def tap_free_module() -> types.ModuleType:
    source = Path(reference.__file__).read_text()
    tree = ast.fix_missing_locations(StripTaps().visit(ast.parse(source)))
    stripped = ast.unparse(tree)
    assert "tap(" not in stripped.replace("def tap", ""), "a trace point survived the transform"
    module = types.ModuleType("gpt_without_taps")
    exec(compile(tree, "gpt_without_taps", "exec"), module.__dict__)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per model")
    args = parser.parse_args()
    tune_allocator()

    config = GPTConfig.from_depth(args.depth, args.vocab_size, head_dim=args.head_dim, sequence_len=args.seq_len)
    stripped = tap_free_module()
    torch.manual_seed(0)
    with_taps = reference.GPT.build(config)
    without = stripped.GPT.build(config)
    without.load_state_dict(with_taps.state_dict())
    settings = OptimizerSettings("muon", 0.02, 0.2, 0.004, 0.004, 1e-3, 0.0, 0.8, 0.95)
    models = {"with trace points": with_taps, "without trace points": without}
    optimizers = {name: build_optimizers(model, settings) for name, model in models.items()}
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len + 1), generator=generator)
               for _ in range(8)]
    times: dict[str, list[float]] = {name: [] for name in models}
    losses: dict[str, list[float]] = {name: [] for name in models}
    for i in range(args.steps + 3):
        batch = batches[i % len(batches)]
        for name, model in (list(models.items()) if i % 2 else list(models.items())[::-1]):
            started = time.perf_counter()
            result = train_step(model, optimizers[name], [(batch[:, :-1], batch[:, 1:])])
            if i >= 3:  # warm-up steps are not timed
                times[name].append(time.perf_counter() - started)
            losses[name].append(result.loss)
    assert losses["with trace points"] == losses["without trace points"], "the two models computed different things"
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    tokens = args.batch_size * args.seq_len
    print(f"depth {args.depth}, seq {args.seq_len}, batch {args.batch_size}, {args.steps} steps each, "
          f"{torch.get_num_threads()} threads (identical losses: yes)")
    for name, ms in medians.items():
        print(f"  {name:<22} median {ms:8.1f} ms/step  {tokens / ms * 1000:8,.0f} tok/s")
    overhead = medians["with trace points"] / medians["without trace points"] - 1
    print(f"overhead of inactive trace points: {100 * overhead:+.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
