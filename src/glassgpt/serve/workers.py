"""Generation off the event loop: a few worker threads, and a bounded queue in front of them.

A request becomes a `Job`: a function that returns the engine's event iterator. A worker thread
runs it and hands every event to the request's asyncio.Queue through `loop.call_soon_threadsafe`
(the one thread-safe way into an asyncio queue), so the event loop never runs the model and keeps
answering other requests while tokens are computed. Between events the worker checks the job's
cancel flag: a client that leaves mid-stream frees its worker after at most one more token, and
one that leaves while waiting gives its place up at once.

Admission is decided on arrival: when every worker is busy and `queue` jobs already wait,
`submit` raises QueueFull (the API answers 503 with a Retry-After header) instead of letting the
client hang behind an ever longer line.

Why threads and not processes: the model is loaded once and shared; PyTorch releases the GIL
inside its kernels. Why one worker per device by default: two workers on a 2-core CPU only split
the same cores (each step gets slower by as much as the other one gains).
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue as queues
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator

logger = logging.getLogger("glassgpt.serve")

_END = object()  # the last item of every job's queue, however it ended


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class QueueFull(Exception):
    """Every worker is busy and the waiting line is full."""

    def __init__(self, running: int, waiting: int, retry_after: int):
        super().__init__(f"{running} running, {waiting} waiting")
        self.running, self.waiting, self.retry_after = running, waiting, retry_after


class JobFailed(Exception):
    """The generation raised; the original error is logged by the worker and chained here."""


class Job:
    """One request's generation: its events arrive on `items` (read them with `events()`)."""

    def __init__(self, produce: Callable[[], Iterator], loop: asyncio.AbstractEventLoop, pool: "WorkerPool"):
        self.produce, self.loop, self.pool = produce, loop, pool
        self.items: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.state = "waiting"  # waiting → running → done, or waiting → cancelled (under the pool's lock)

    def cancel(self) -> None:
        """Stop this job (idempotent): a waiting job leaves the queue now, a running one after
        its current token."""
        self.pool._cancel(self)

    async def events(self) -> AsyncIterator:
        """The job's events as they are produced; JobFailed if the generation raised. Ends early
        (without error) when the job is cancelled."""
        while True:
            item = await self.items.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise JobFailed(str(item.error)) from item.error
            yield item

    def _put(self, item) -> bool:
        """From a worker thread: hand one item to the request's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
            return True
        except RuntimeError:  # the loop is closed: the server stopped; nobody is listening
            self.cancelled.set()
            return False


class WorkerPool:
    """`workers` threads running jobs one at a time each, at most `queue` more jobs waiting."""

    def __init__(self, workers: int = 1, queue: int = 8):
        if workers < 1 or queue < 0:
            raise ValueError("workers must be ≥ 1 and queue ≥ 0")
        self.workers, self.queue = workers, queue
        self.running = self.waiting = 0
        self.accepted = 0  # jobs ever admitted
        self._lock = threading.Lock()
        self._jobs: queues.Queue = queues.Queue()  # admission is counted in submit, so no bound here
        self._active: set[Job] = set()
        self._seconds: deque[float] = deque(maxlen=32)  # recent job durations, for Retry-After
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"glassgpt-worker-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, produce: Callable[[], Iterator], loop: asyncio.AbstractEventLoop | None = None) -> Job:
        """Queue `produce` (called on a worker thread; it returns an iterator of events). Call it
        from the event loop; QueueFull when there is no room."""
        job = Job(produce, loop or asyncio.get_running_loop(), self)
        with self._lock:
            if self._closed or self.running + self.waiting >= self.workers + self.queue:
                raise QueueFull(self.running, self.waiting, self._retry_after())
            self.waiting += 1
            self.accepted += 1
            self._active.add(job)
        self._jobs.put(job)
        return job

    def status(self) -> dict:
        with self._lock:
            return {"workers": self.workers, "running": self.running, "waiting": self.waiting,
                    "queue": self.queue, "accepting": not self._closed}

    def close(self, timeout: float = 5.0) -> None:
        """Cancel every job (their readers see the end of their events) and stop the threads."""
        with self._lock:
            self._closed = True
            active = list(self._active)
        for job in active:
            job.cancel()
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _retry_after(self) -> int:
        """Seconds until a place is likely to free up: the line ahead, at the recent job length."""
        typical = sorted(self._seconds)[len(self._seconds) // 2] if self._seconds else 1.0
        ahead = (self.running + self.waiting) / self.workers
        return max(1, min(60, math.ceil(typical * ahead)))

    def _cancel(self, job: Job) -> None:
        job.cancelled.set()
        with self._lock:
            if job.state != "waiting":
                return
            job.state = "cancelled"
            self.waiting -= 1
            self._active.discard(job)
        job._put(_END)  # a waiting job never reaches a worker: end its events here

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                if job.state != "waiting":  # cancelled while it waited
                    continue
                job.state = "running"
                self.waiting -= 1
                self.running += 1
            started = time.monotonic()
            try:
                self._run(job)
            finally:
                with self._lock:
                    job.state = "done"
                    self.running -= 1
                    self._active.discard(job)
                    self._seconds.append(time.monotonic() - started)

    def _run(self, job: Job) -> None:
        events = None
        try:
            events = job.produce()
            for event in events:  # each step of this loop computes one token
                if not job._put(event) or job.cancelled.is_set():
                    break  # before computing another token nobody will read
        except Exception as error:  # reported to the client as a generic error; the details go to the log
            logger.exception("generation failed")
            job._put(_Failure(error))
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # runs the engine's cleanup (model back in its mode) now, on this thread
            job._put(_END)
