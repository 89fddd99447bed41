"""Which device and number format to train with, and the process-wide settings that go with them.

Device `auto` picks cuda > mps > cpu. Dtype `auto` is a measured policy, not a guess:

- CUDA: bf16 autocast when the GPU supports bf16 (Ampere and newer), else fp32.
- MPS: fp32. `--dtype bf16` autocasts to bf16 where the Apple GPU supports it (macOS 14 or newer,
  and a PyTorch with MPS autocast); elsewhere it is refused, never silently run in fp32.
- CPU: fp32 when the CPU's flags show no bf16 instructions; otherwise time a bf16 and an fp32
  matmul (~0.2 s, once per machine: the result is kept in the cache root) and use bf16 only when
  it is clearly faster. CPUs with AVX512-BF16 or AMX run bf16 about twice as fast as fp32; CPUs
  without them (e.g. AMD Zen 3, most laptops before 2023) emulate bf16 and run it ~100x slower.

Weights and optimizer state always stay fp32; bf16 applies to matmul inputs inside autocast.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from dataclasses import dataclass

import torch

from glassgpt.errors import GlassError, UsageError


@dataclass
class Runtime:
    device: torch.device
    dtype: str  # "fp32" or "bf16"
    dtype_reason: str
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.dtype == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise GlassError(
                f"--device cuda, but this PyTorch ({torch.__version__}) sees no CUDA GPU; "
                "use --device cpu or install a CUDA build of torch"
            )
        return torch.device("cuda", local_rank)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise GlassError("--device mps, but MPS is not available (it needs Apple silicon); use --device cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise UsageError(f"--device must be one of auto, cpu, cuda, mps, not {name!r}")


def resolve_dtype(name: str, device: torch.device) -> tuple[str, str]:
    """(dtype, reason): the reason is printed so the choice is never a mystery."""
    if name == "fp32":
        return "fp32", "asked for fp32"
    if name == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise GlassError("--dtype bf16, but this GPU does not support bf16; use --dtype fp32")
        if device.type == "mps" and (problem := mps_bf16_problem()):
            raise GlassError(f"--dtype bf16, but {problem}; use --dtype fp32")
        return "bf16", "asked for bf16"
    if name != "auto":
        raise UsageError(f"--dtype must be one of auto, fp32, bf16, not {name!r}")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "this GPU supports bf16"
        return "fp32", "this GPU has no bf16 support"
    if device.type == "mps":
        return "fp32", "MPS trains in fp32 unless asked (--dtype bf16, macOS 14 or newer)"
    native = cpu_has_native_bf16()
    if native is False:
        return "fp32", "this CPU has no bf16 instructions (AVX512-BF16, AMX or Arm BF16), so bf16 would be emulated"
    fp32, bf16 = remembered_cpu_matmul_speeds()
    if bf16 > 1.3 * fp32:
        return "bf16", f"bf16 matmul measured {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s on this CPU"
    return "fp32", f"bf16 matmul measured {bf16:.1f} vs fp32 {fp32:.0f} GFLOP/s on this CPU"


def mps_bf16_problem() -> str | None:
    """Why bf16 autocast cannot run on this Mac's GPU, or None when it can: it needs bf16 on the
    Metal GPU (macOS 14 or newer) and a PyTorch whose autocast knows MPS (2.5 or newer)."""
    if not torch.amp.is_autocast_available("mps"):
        return f"this PyTorch ({torch.__version__}) has no autocast for MPS (it needs 2.5 or newer)"
    if not torch.backends.mps.is_macos_or_newer(14, 0):
        return "bf16 on the Apple GPU needs macOS 14 or newer"
    return None


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU's feature flags include bf16 arithmetic; None where the OS does not say
    (only Linux lists them in /proc/cpuinfo). Flags alone can mislead inside some VMs, so a True
    is confirmed by measuring; a False settles it without the measurement's noise."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86 | Arm
            flags.update(line.split(":", 1)[-1].split())
    if not flags:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def remembered_cpu_matmul_speeds(cpuinfo: str = "/proc/cpuinfo") -> tuple[float, float]:
    """`cpu_matmul_speeds`, measured once per machine and kept in the cache root
    (`cpu-matmul.json`) under the CPU's model and flags, the PyTorch version and the number of
    threads: later runs start 0.2 s sooner, and runs on one machine make the same choice instead
    of one that a busy moment could flip. A new CPU, PyTorch or thread count measures again."""
    from glassgpt import atomic, paths

    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as file:
            described = sorted({line.strip() for line in file if line.startswith(("model name", "flags", "Features"))})
    except OSError:
        described = []
    key = {"cpu": described, "torch": torch.__version__, "threads": torch.get_num_threads()}
    path = paths.home() / "cpu-matmul.json"
    try:
        saved = json.loads(path.read_text())
        if saved["key"] == key:
            fp32, bf16 = saved["gflops"]
            return float(fp32), float(bf16)
    except (OSError, ValueError, KeyError, TypeError):  # none yet, unreadable, or another format: measure
        pass
    speeds = cpu_matmul_speeds()
    with contextlib.suppress(OSError, GlassError):  # a read-only cache root only costs the measurement
        atomic.write_text(path, json.dumps({"key": key, "gflops": list(speeds)}))
    return speeds


@functools.cache
def cpu_matmul_speeds(n: int = 512, rounds: int = 6) -> tuple[float, float]:
    """(fp32, bf16) GFLOP/s of an n x n matmul on this CPU, ~0.2 s, cached for the process.

    The two formats are timed in alternating short rounds and each keeps its best round: a
    neighbour's burst on a shared machine then slows one round, not one format.
    """
    cpu, fp32, bf16 = torch.device("cpu"), 0.0, 0.0
    for _ in range(rounds):
        fp32 = max(fp32, measure_matmul(cpu, torch.float32, n, seconds=0.015))
        bf16 = max(bf16, measure_matmul(cpu, torch.bfloat16, n, seconds=0.015))
    return fp32, bf16


def measure_matmul(device: torch.device, dtype: torch.dtype, n: int = 1024, seconds: float = 0.3) -> float:
    """Practical peak GFLOP/s of a square matmul, the ceiling that MFU is measured against.

    The best of several short windows rather than the mean: on a shared or throttling machine a
    neighbour's burst would otherwise lower the "peak" and push MFU above what the hardware allows.
    """
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    a @ b  # warm up (kernel selection, thread pool, caches)
    synchronize(device)
    window = seconds / 5
    best, started = 0.0, time.perf_counter()
    while True:
        iterations, window_start = 0, time.perf_counter()
        while True:
            a @ b
            iterations += 1
            synchronize(device)
            now = time.perf_counter()
            if now - window_start >= window:
                break
        best = max(best, 2 * n**3 * iterations / (now - window_start) / 1e9)
        if now - started >= seconds:
            return best


def copies_through_pinned_memory(device: str | torch.device) -> bool:
    """Whether host batches go to `device` through page-locked (pinned) memory, copied without
    blocking: on CUDA, where that lets the copy overlap the GPU's work. MPS shares memory with the
    CPU and the CPU needs no copy, so neither gains from it."""
    return torch.device(device).type == "cuda"


def uses_fused_adamw(device: str | torch.device) -> bool:
    """Whether training on `device` takes torch.optim.AdamW's fused kernel (one launch per step,
    the fastest on CUDA) rather than glassgpt's own multi-tensor AdamW (train/optim.py)."""
    return torch.device(device).type == "cuda"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def setup(device: str = "auto", dtype: str = "auto") -> Runtime:
    """Resolve device and dtype; join the process group when launched by torchrun."""
    rank, local_rank, world_size = (int(os.environ.get(k, d)) for k, d in
                                    (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    resolved = resolve_device(device, local_rank)
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if resolved.type == "cuda" else "gloo"
            if resolved.type == "cuda":
                torch.cuda.set_device(resolved)
            # device_id: NCCL binds this process to its GPU at once, so no collective (a barrier
            # before the first all-reduce) can land on another rank's GPU.
            dist.init_process_group(backend=backend, device_id=resolved if resolved.type == "cuda" else None)
    if resolved.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # tf32 matmuls for fp32 parts: ~free speed
        torch.backends.cudnn.allow_tf32 = True
    chosen, reason = resolve_dtype(dtype, resolved)
    if world_size > 1 and dtype == "auto":
        # Every rank must compute in the same format; a measurement on a busy machine could
        # differ between ranks, so rank 0's decision is the group's.
        import torch.distributed as dist

        decision = [chosen, reason]
        dist.broadcast_object_list(decision, src=0)
        chosen, reason = decision
    return Runtime(resolved, chosen, reason, rank, local_rank, world_size)


def teardown(runtime: Runtime) -> None:
    if runtime.distributed:
        import gc

        import torch.distributed as dist

        # A DDP wrapper sits in reference cycles, so it may outlive the run until the interpreter
        # shuts down; its gloo work objects dying then can abort the process (seen once: SIGABRT,
        # "terminate called without an active exception", after a finished run). Collect it now,
        # while the interpreter and the group are alive.
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
