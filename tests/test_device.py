"""Device and dtype policy: auto-detection order, measured bf16 choice, clear errors."""

from __future__ import annotations

import os
import platform

import pytest
import torch

from glassgpt import device
from glassgpt.errors import GlassError, UsageError


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.resolve_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device.resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device.resolve_device("auto").type == "cpu"


def test_asking_for_a_missing_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(GlassError, match="sees no CUDA GPU; use --device cpu"):
        device.resolve_device("cuda")
    with pytest.raises(GlassError, match="MPS is not available"):
        device.resolve_device("mps")
    with pytest.raises(UsageError):
        device.resolve_device("tpu")


def test_cpu_dtype_auto_picks_bf16_only_when_measured_faster(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(device, "remembered_cpu_matmul_speeds", lambda: (120.0, 1.2))  # emulated bf16 (AMD Zen 3)
    dtype, reason = device.resolve_dtype("auto", cpu)
    assert dtype == "fp32" and "1.2" in reason and "120" in reason
    monkeypatch.setattr(device, "remembered_cpu_matmul_speeds", lambda: (180.0, 390.0))  # AMX / AVX512-BF16
    assert device.resolve_dtype("auto", cpu)[0] == "bf16"
    assert device.resolve_dtype("fp32", cpu) == ("fp32", "asked for fp32")
    assert device.resolve_dtype("bf16", cpu)[0] == "bf16"


def test_bf16_autocast_runs_the_model_on_cpu():
    from conftest import tiny_model

    model = tiny_model()
    runtime = device.Runtime(torch.device("cpu"), "bf16", "test")
    idx = torch.randint(0, 97, (2, 8))
    with runtime.autocast():
        loss = model(idx, idx)
    loss.backward()
    assert loss.dtype == torch.float32 and model.wte.weight.grad.dtype == torch.float32  # weights stay fp32


def test_matmul_measurement_is_positive():
    assert device.measure_matmul(torch.device("cpu"), torch.float32, n=64, seconds=0.01) > 0


def test_cpu_without_bf16_flags_trains_in_fp32_without_measuring(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(device, "cpu_matmul_speeds", lambda: pytest.fail("no need to measure"))
    dtype, reason = device.resolve_dtype("auto", torch.device("cpu"))
    assert dtype == "fp32" and "no bf16 instructions" in reason


def test_bf16_flags_are_read_from_cpuinfo(tmp_path):
    zen3 = tmp_path / "zen3"
    zen3.write_text("processor : 0\nflags : fpu sse2 avx2 fma\n\nprocessor : 1\nflags : fpu sse2 avx2 fma\n")
    zen4 = tmp_path / "zen4"
    zen4.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    graviton = tmp_path / "arm"
    graviton.write_text("processor : 0\nFeatures : fp asimd bf16 i8mm\n")
    assert device.cpu_has_native_bf16(str(zen3)) is False
    assert device.cpu_has_native_bf16(str(zen4)) is True
    assert device.cpu_has_native_bf16(str(graviton)) is True
    assert device.cpu_has_native_bf16(str(tmp_path / "missing")) is None
    (tmp_path / "empty").write_text("")
    assert device.cpu_has_native_bf16(str(tmp_path / "empty")) is None


@pytest.mark.skipif(platform.system() != "Linux", reason="glibc's allocator, read through /proc")
def test_freed_memory_stays_in_the_tuned_heap_until_it_is_released():
    """tune_allocator keeps freed blocks in the heap (fast steps); release_free_memory hands them
    back, so a speedrun stage does not start from the previous stage's high-water mark."""
    import numpy as np

    from glassgpt.allocator import release_free_memory, tune_allocator

    def rss_mb() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    tune_allocator()
    release_free_memory()
    before = rss_mb()
    block = np.ones(96 * 2**20 // 8)  # 96 MB, touched: from the heap, not mmap, once tuned
    del block
    kept = rss_mb()
    assert kept > before + 64, "the tuned heap should keep the freed block"
    assert release_free_memory()
    assert rss_mb() < kept - 64


def test_cpu_matmul_speeds_are_measured_once_per_machine_and_again_when_it_changes(glass_home, tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Some CPU\nflags\t\t: avx512f avx512_bf16\n")
    measured = []
    monkeypatch.setattr(device, "cpu_matmul_speeds", lambda: measured.append(1) or (100.0, 250.0))
    assert device.remembered_cpu_matmul_speeds(str(cpuinfo)) == (100.0, 250.0)
    assert device.remembered_cpu_matmul_speeds(str(cpuinfo)) == (100.0, 250.0)
    assert len(measured) == 1 and (glass_home / "cpu-matmul.json").exists()
    cpuinfo.write_text("model name\t: Another CPU\nflags\t\t: avx512f avx512_bf16\n")  # a new machine
    device.remembered_cpu_matmul_speeds(str(cpuinfo))
    (glass_home / "cpu-matmul.json").write_text("{not json")  # a damaged file is measured again, not an error
    device.remembered_cpu_matmul_speeds(str(cpuinfo))
    assert len(measured) == 3
