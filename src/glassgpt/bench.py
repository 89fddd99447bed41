"""`glassgpt bench`: speed on this machine, read against the machine's own measured matmul peak.

- matmul: achieved GFLOP/s of a large square matmul per dtype (the practical peak).
- train: `train_step` (forward, backward, clipping, optimiser step, as training runs it) of a
  fresh model on random tokens; tokens/s,
  ms/step and MFU = (FLOPs per token x tokens/s) / matmul peak.
- decode: tokens/s generating with the engine (`engine.Engine`: one prefill, then one-token
  decode steps over the KV cache; on a CPU in fp32) and without the
  cache (the whole context re-run every token, the naive reference).
"""

from __future__ import annotations

import json
import time

import torch

from glassgpt import atomic, ui
from glassgpt.config import TrainConfig
from glassgpt.device import measure_matmul, resolve_device, resolve_dtype, synchronize
from glassgpt.engine import Engine
from glassgpt.errors import UsageError
from glassgpt.model.config import GPTConfig
from glassgpt.model.gpt import GPT
from glassgpt.model.scaling import flops_per_token
from glassgpt.train.optim import build_optimizers
from glassgpt.train.step import train_step

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def run(args) -> int:
    what = [w.strip() for w in args.what.split(",") if w.strip()]
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    for item in what:
        if item not in ("matmul", "train", "decode"):
            raise UsageError(f"--what takes matmul, train, decode; not {item!r}")
    for dtype in dtypes:
        if dtype not in (*DTYPES, "auto") or (dtype == "auto" and len(dtypes) > 1):
            raise UsageError(f"--dtype takes auto, or a comma list of fp32, bf16; not {args.dtype!r}")
    device = resolve_device(args.device)
    if dtypes == ["auto"]:  # what training would use here, next to the fp32 baseline
        dtypes = ["fp32"] + (["bf16"] if resolve_dtype("auto", device)[0] == "bf16" else [])
    config = GPTConfig.from_depth(args.depth, args.vocab_size, args.family, head_dim=args.head_dim,
                                  sequence_len=args.seq_len)
    out = ui.console()
    out.print(f"[bold]bench[/] on {device.type} ({torch.get_num_threads()} threads), torch {torch.__version__}: "
              f"{config.family} depth {config.n_layer}, width {config.n_embd}, {config.n_head} heads of "
              f"{config.head_dim}, vocab {config.vocab_size:,}, seq {args.seq_len}, batch {args.batch_size}")
    results: dict = {"config": config.to_dict(), "device": device.type, "threads": torch.get_num_threads()}
    peaks: dict[str, float] = {}
    if "matmul" in what or "train" in what:
        for dtype in dtypes:
            peaks[dtype] = measure_matmul(device, DTYPES[dtype], n=1024, seconds=1.0)
            out.print(f"matmul peak {dtype}: [bold]{peaks[dtype]:,.1f}[/] GFLOP/s (1024 x 1024)")
        results["matmul_gflops"] = peaks
    if "train" in what:
        results["train"] = {}
        for dtype in dtypes:
            steps, warmup = args.steps, 3
            if dtype != "fp32" and "fp32" in peaks and peaks[dtype] < 0.2 * peaks["fp32"]:
                # bf16 without native instructions is emulated: a step can take a minute, and a few
                # steps already show the order of magnitude that decides the dtype policy.
                steps, warmup = min(steps, 2), 1
                out.print(f"[yellow]note[/]: {dtype} matmuls run at {peaks[dtype] / peaks['fp32']:.0%} of fp32 here "
                          f"(no native {dtype} instructions); timing {steps} steps only")
            for compiled in ([False, True] if args.compile else [False]):
                r = bench_train(config, device, dtype, args.batch_size, args.seq_len, steps, compiled, warmup)
                # Measure the peak again right after: on a shared machine one measurement can land in
                # a neighbour's burst, and MFU should be against the best the hardware showed.
                peaks[dtype] = max(peaks[dtype], measure_matmul(device, DTYPES[dtype], n=1024, seconds=1.0))
                r["mfu"] = r["gflops"] / peaks[dtype]
                label = dtype + (" compiled" if compiled else "")
                results["train"][label] = r
                # Under autocast only the matmuls run in the low precision; if the model outpaces the
                # measured matmul "peak", that peak is not a ceiling and an MFU above 100% would mislead.
                mfu = (f"MFU {100 * r['mfu']:.0f}% of the {dtype} matmul peak" if r["mfu"] <= 1 else
                       f"MFU not meaningful (faster than the measured {dtype} matmul peak)")
                out.print(f"train {label}: [bold]{r['tokens_per_sec']:,.0f}[/] tok/s, {r['ms_per_step']:.0f} ms/step, "
                          f"{r['gflops']:.1f} GFLOP/s = {mfu} ({peaks[dtype]:,.1f} GFLOP/s)")
    if "decode" in what:
        results["decode"] = {}
        for use_cache in (True, False):
            rate = bench_decode(config, device, args.decode_tokens, use_cache)
            results["decode"]["kv_cache" if use_cache else "no_cache"] = rate
            out.print(f"decode {'with' if use_cache else 'without'} KV cache: [bold]{rate:,.0f}[/] tok/s "
                      f"({args.decode_tokens} new tokens after 16, batch 1, fp32)")
        if args.compile:
            rate, compile_seconds = bench_decode_compiled(config, device, args.decode_tokens)
            results["decode"]["kv_cache_compiled"] = rate
            results["decode"]["compile_seconds"] = compile_seconds
            out.print(f"decode with KV cache, compiled decode step: [bold]{rate:,.0f}[/] tok/s "
                      f"(after {compile_seconds:.1f} s of compiling, not counted)")
    if args.json_out:
        atomic.write_text(args.json_out, json.dumps(results, indent=2))
    return 0


def bench_train(config: GPTConfig, device, dtype: str, batch_size: int, seq_len: int, steps: int,
                compiled: bool = False, warmup: int = 3) -> dict:
    torch.manual_seed(0)
    model = GPT.build(config, device)
    defaults = TrainConfig(family=config.family)  # the training defaults: optimiser groups, clipping
    optimizers = build_optimizers(model, defaults.optimizer_settings())
    step_model = torch.compile(model) if compiled else model
    x = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)
    y = torch.randint(0, config.vocab_size, (batch_size, seq_len), device=device)

    def autocast():
        return (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16"
                else torch.autocast(device.type, enabled=False))

    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            started = time.perf_counter()
        train_step(model, optimizers, [(x, y)], grad_clip=defaults.grad_clip, autocast=autocast, step_model=step_model)
    synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    tokens_per_sec = batch_size * seq_len / seconds
    return {"tokens_per_sec": tokens_per_sec, "ms_per_step": 1000 * seconds,
            "gflops": flops_per_token(config, seq_len) * tokens_per_sec / 1e9}


def bench_decode(config: GPTConfig, device, tokens: int, use_cache: bool, prompt_len: int = 16) -> float:
    """tokens/s of one generation, after a warm-up."""
    return _timed_decode(config, device, tokens, use_cache, prompt_len, compiled=False)[0]


def bench_decode_compiled(config: GPTConfig, device, tokens: int, prompt_len: int = 16) -> tuple[float, float]:
    """tokens/s of one generation whose decode steps run torch.compile'd (`Engine(compile=True)`),
    and the seconds the compilation took (the warm-up; not counted in the rate)."""
    return _timed_decode(config, device, tokens, True, prompt_len, compiled=True)


def _timed_decode(config: GPTConfig, device, tokens: int, use_cache: bool, prompt_len: int,
                  compiled: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = GPT.build(config, device)
    engine = Engine(model, compile=compiled)
    prompt = torch.randint(0, config.vocab_size, (prompt_len,)).tolist()
    started = time.perf_counter()
    # Warm up; compiled, a whole generation, which compiles every graph (one per span of the cache).
    for _ in engine.generate(prompt, tokens if compiled else 8, temperature=0, use_cache=use_cache):
        pass
    synchronize(device)
    warm_up = time.perf_counter() - started
    started = time.perf_counter()
    count = sum(1 for _ in engine.generate(prompt, tokens, temperature=0, use_cache=use_cache))
    synchronize(device)
    return count / (time.perf_counter() - started), warm_up
