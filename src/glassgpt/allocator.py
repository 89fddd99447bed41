"""Process-wide memory allocator tuning, done before any command runs.

Kept apart from `device.py` so that it imports nothing heavy: `glassgpt scale` and `--help` should
not pay for importing torch.
"""

from __future__ import annotations

import ctypes
import os
import platform


def tune_allocator() -> None:
    """Keep freed memory in the process instead of returning it to the OS (glibc only).

    glibc serves blocks above ~32 MB with mmap and unmaps them on free, so every step re-faults
    the memory of its large activations (the logits alone are B x T x V x 4 bytes) page by page.
    Reusing the heap makes depth-4 CPU training ~1.5x faster (at vocabulary 4,096, sequence 512,
    batch 8, fp32: 185,000 page faults and 0.5 s of kernel time per step without it, 25,000 and
    0.04 s with it; measured with one thread).

    The price is memory: the heap never shrinks, so the process keeps its highest heap extent,
    the largest live tensors plus the gaps between them. This is why an evaluation cuts its
    passes to the size of a training micro-batch (evals/bpb.py): one pass of full-vocabulary
    logits larger than a training step's would raise the whole run's memory for good.
    benchmarks/run_profile.py shows where a run's memory goes. A process that goes on to other
    work after training (the stages of `glassgpt speedrun`) gives the kept memory back with
    `release_free_memory`.
    """
    if os.environ.get("GLASSGPT_NO_MALLOC_TUNING"):
        return
    libc = _glibc()
    if libc is None:
        return
    try:
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except AttributeError:  # a libc without mallopt: nothing to tune
        pass


def release_free_memory() -> bool:
    """Return the heap's free memory to the OS (glibc's malloc_trim); True when some was returned.

    Call it where one piece of work ends and another begins (a training run before an evaluation,
    one speedrun stage before the next): the next piece then starts from its own live memory instead
    of the previous one's high-water mark. Never between training steps: the next step would fault
    every page of its activations in again, which is what `tune_allocator` avoids.
    """
    libc = _glibc()
    if libc is None:
        return False
    try:
        return bool(libc.malloc_trim(0))
    except AttributeError:
        return False


def _glibc():
    """The C library when it is glibc on Linux, else None."""
    if platform.system() != "Linux":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return None
