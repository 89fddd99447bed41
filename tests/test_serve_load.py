"""`glassgpt serve` under load: many clients at once, and many that leave mid-stream.

Bounded in count and in time: 100 streaming clients of a tiny model with a one-worker, eight-place
queue (so most are told 503 and some are served), then 50 that disconnect after their first
event. Nothing may hang (every client has a deadline), /health must answer during the load, the
memory of the process must come back to about where it was, and a request after the storm must
be served at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest

from test_serve import HELLO, SlowChat, make_chat, serve, wait_for

pytestmark = pytest.mark.slow


def rss_mb() -> float:
    """This process's resident memory (the server runs on a thread of it), from /proc."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


async def stream_one(http: httpx.AsyncClient, url: str, seed: int) -> str:
    """'done' (a full stream ending in [DONE]) or 'busy' (503 with Retry-After and a JSON error)."""
    body = {"messages": HELLO, "max_tokens": 6, "stream": True, "seed": seed, "temperature": 1.0}
    async with http.stream("POST", url, json=body) as response:
        if response.status_code == 503:
            assert int(response.headers["Retry-After"]) >= 1
            assert json.loads(await response.aread())["error"]["code"] == "queue_full"
            return "busy"
        assert response.status_code == 200
        events = [line async for line in response.aiter_lines() if line]
    assert events[-1] == "data: [DONE]", events[-3:]
    assert any('"finish_reason":"' in event for event in events)
    return "done"


async def health_during(http: httpx.AsyncClient, url: str, stop: asyncio.Event) -> list[float]:
    """How long /health takes, polled while the load runs."""
    took = []
    while not stop.is_set():
        started = time.monotonic()
        response = await http.get(url, timeout=5)
        assert response.status_code == 200 and response.json()["status"] == "ok"
        took.append(time.monotonic() - started)
        await asyncio.sleep(0.05)
    return took


def test_a_hundred_streaming_clients_each_get_a_whole_stream_or_a_503(tokenizer_512):
    chat = make_chat(tokenizer_512)
    with serve(chat, workers=1, queue=8, max_tokens=16) as server:
        url = f"{server.url}/v1/chat/completions"
        httpx.post(url, json={"messages": HELLO, "max_tokens": 4}, timeout=30)  # warm up
        before = rss_mb()

        async def storm():
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
            async with httpx.AsyncClient(timeout=30, limits=limits) as http:
                stop = asyncio.Event()
                watcher = asyncio.create_task(health_during(http, f"{server.url}/health", stop))
                outcomes = await asyncio.wait_for(asyncio.gather(*(stream_one(http, url, seed) for seed in range(100))),
                                                  timeout=90)
                stop.set()
                return outcomes, await watcher

        outcomes, health_times = asyncio.run(storm())
        assert len(outcomes) == 100 and set(outcomes) <= {"done", "busy"}
        assert outcomes.count("done") >= 9  # at least the worker's and the queue's places were served
        assert health_times and max(health_times) < 2.0, health_times  # the event loop kept answering
        wait_for(lambda: httpx.get(f"{server.url}/health").json()["running"] == 0, what="the pool to drain")
        assert server.app.state.internal_errors == 0
        assert rss_mb() - before < 200, f"memory grew from {before:.0f} MB to {rss_mb():.0f} MB"


def test_fifty_clients_that_leave_mid_stream_leave_the_server_free(tokenizer_512):
    chat = make_chat(tokenizer_512, cls=SlowChat, delay=0.02)
    with serve(chat, workers=1, queue=64, max_tokens=48) as server:
        url = f"{server.url}/v1/chat/completions"

        async def leave_early(http: httpx.AsyncClient, seed: int) -> None:
            body = {"messages": HELLO, "max_tokens": 48, "stream": True, "seed": seed, "temperature": 1.0, "top_k": 0}
            async with http.stream("POST", url, json=body) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        break  # the first event (the role chunk), then away

        async def storm():
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as http:
                await asyncio.wait_for(asyncio.gather(*(leave_early(http, seed) for seed in range(50))), timeout=60)

        asyncio.run(storm())
        def idle() -> bool:
            status = httpx.get(f"{server.url}/health").json()
            return status["running"] == status["waiting"] == 0

        wait_for(idle, timeout=5, what="the queue to empty")
        produced = chat.produced
        started = time.monotonic()
        reply = httpx.post(url, json={"messages": HELLO, "max_tokens": 4}, timeout=10)
        assert reply.status_code == 200 and time.monotonic() - started < 2
        # the abandoned replies were not generated: 50 replies of 48 tokens would be 2,400 events
        assert produced < 50 * 5, produced
