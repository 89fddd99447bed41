"""Latency of `glassgpt serve`: time to first token and tokens/s for one client, then p50/p95
request latency and total throughput for 1, 4 and 16 clients streaming at once.

The server runs as a process of its own (`python -m glassgpt serve --port 0`), as a user would run
it: clients in the same process would share its interpreter lock and slow it down. Its --queue is
made large enough that every client is admitted, so the latency under load includes the wait for
the worker (one, by default: one per device). Every reply streams `--max-tokens` tokens at most;
a base model may end a reply earlier, so tokens are counted from the server's `usage`.

    python benchmarks/serve_latency.py --run quickstart
    python benchmarks/serve_latency.py --tiny                    # trains a 20-step run in a temporary cache first
    python benchmarks/serve_latency.py --run quickstart --concurrency 1,2,8 --max-tokens 64 --workers 2
    python benchmarks/serve_latency.py --tiny --compile          # the server compiles its decode step first
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="quickstart", help="the run to serve (default quickstart)")
    parser.add_argument("--tiny", action="store_true",
                        help="train a 20-step run (bench-tiny) in a temporary cache root and serve that")
    parser.add_argument("--max-tokens", type=int, default=32, help="longest reply (default 32)")
    parser.add_argument("--requests", type=int, default=4, help="replies per client at each level (default 4)")
    parser.add_argument("--single", type=int, default=10, help="replies timed for the one-client line (default 10)")
    parser.add_argument("--concurrency", default="1,4,16", help="clients at once, comma-separated (default 1,4,16)")
    parser.add_argument("--workers", type=int, default=1, help="the server's --workers (default 1)")
    parser.add_argument("--prompt", default="What is 37 + 48?")
    parser.add_argument("--compile", action="store_true",
                        help="the server's --compile (its compile time is not counted: it compiles before it is ready)")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]

    env = {**os.environ, "NO_COLOR": "1"}
    with tempfile.TemporaryDirectory(prefix="serve-latency-") as scratch:
        if args.tiny:
            env["GLASSGPT_HOME"] = scratch
            args.run = "bench-tiny"
            print("training bench-tiny (20 steps) in a temporary cache root ...", flush=True)
            trained = subprocess.run([sys.executable, "-m", "glassgpt", "train", "--data", "tinyshakespeare",
                                      "--max-steps", "20", "--run", args.run], env=env, capture_output=True, text=True)
            if trained.returncode:
                print(trained.stderr, file=sys.stderr)
                return trained.returncode
        server = subprocess.Popen([sys.executable, "-m", "glassgpt", "serve", "--run", args.run, "--port", "0",
                                   "--workers", str(args.workers), "--queue", str(max(levels) * 2),
                                   "--max-tokens", str(args.max_tokens), *(["--compile"] if args.compile else [])],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = server.stdout.readline()
            found = re.search(r"at (http://\S+)", ready)
            if not found:
                print(f"the server did not start: {ready}{server.communicate(timeout=30)[1]}", file=sys.stderr)
                return 1
            url = found.group(1)
            info = httpx.get(f"{url}/v1/models").json()["data"][0]["glassgpt"]
            print(f"glassgpt serve, run {args.run} (step {info['step']}, {info['parameters']:,} parameters, context "
                  f"{info['context']}): {args.workers} worker(s), max_tokens {args.max_tokens}, {os.cpu_count()} CPUs"
                  + (", compiled decode step" if args.compile else ""))
            asyncio.run(measure(url, args, levels))
        finally:
            server.terminate()
            server.wait(30)
    return 0


async def one_reply(http: httpx.AsyncClient, url: str, args, seed: int) -> dict:
    """Stream one reply: {"status", "seconds", "first" (s to the first token), "tokens"}."""
    body = {"messages": [{"role": "user", "content": args.prompt}], "max_tokens": args.max_tokens, "seed": seed,
            "temperature": 1.0, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first, tokens = None, 0
    async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return {"status": response.status_code, "seconds": time.perf_counter() - started}
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                delta = choice["delta"]
                if first is None and (delta.get("content") or delta.get("glassgpt_part")):
                    first = time.perf_counter() - started
    return {"status": 200, "seconds": time.perf_counter() - started, "first": first, "tokens": tokens}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(url: str, args, levels: list[int]) -> None:
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=max(levels) + 4)) as http:
        await one_reply(http, url, args, 0)  # warm-up: first allocations, first kernels

        single = [await one_reply(http, url, args, seed) for seed in range(1, args.single + 1)]
        firsts = [r["first"] for r in single if r.get("first") is not None]
        decoding = [(r["tokens"] - 1) / (r["seconds"] - r["first"]) for r in single
                    if r.get("first") is not None and r["tokens"] > 1 and r["seconds"] > r["first"]]
        tokens = statistics.mean(r["tokens"] for r in single)
        print(f"one client, {len(single)} replies of {tokens:.1f} tokens on average: time to first token "
              f"{statistics.median(firsts) * 1000:.1f} ms (median), "
              f"{statistics.median(decoding):.0f} tokens/s after it (median)" if firsts and decoding else
              "one client: no reply had two tokens or more")
        print()
        print(f"{'clients':>7}  {'replies':>7}  {'p50 latency':>11}  {'p95 latency':>11}  {'p50 first token':>15}  "
              f"{'tokens/s (all)':>14}  {'not 200':>7}")
        for clients in levels:
            async def client(index: int) -> list[dict]:
                return [await one_reply(http, url, args, 1000 * clients + index * args.requests + i)
                        for i in range(args.requests)]

            started = time.perf_counter()
            results = [r for batch in await asyncio.gather(*(client(i) for i in range(clients))) for r in batch]
            wall = time.perf_counter() - started
            served = [r for r in results if r["status"] == 200]
            latencies = [r["seconds"] for r in served]
            firsts = [r["first"] for r in served if r.get("first") is not None]
            print(f"{clients:>7}  {len(results):>7}  {percentile(latencies, 50):>10.3f}s  {percentile(latencies, 95):>10.3f}s  "
                  f"{(percentile(firsts, 50) * 1000 if firsts else float('nan')):>13.1f}ms  "
                  f"{sum(r['tokens'] for r in served) / wall:>14.0f}  {len(results) - len(served):>7}")


if __name__ == "__main__":
    sys.exit(main())
