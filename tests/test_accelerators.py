"""The GPU paths, checked on a CPU: the choices made for each kind of device (number format,
fused AdamW, pinned copies) and the attention call that flash attention needs."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from conftest import tiny_config, tiny_model
from glassgpt import device as devices
from glassgpt.errors import GlassError
from glassgpt.train.optim import AdamW, OptimizerSettings, build_optimizers


def settings(kind: str = "muon") -> OptimizerSettings:
    return OptimizerSettings(kind, 0.02, 0.2, 0.004, 0.5, 1e-3, 0.0, 0.8, 0.95)


@pytest.mark.parametrize("kind, fused", [("cuda", True), ("mps", False), ("cpu", False)])
def test_adamw_is_torchs_fused_kernel_on_cuda_and_glassgpts_multi_tensor_one_elsewhere(kind, fused):
    assert devices.uses_fused_adamw(torch.device(kind)) is fused


@pytest.mark.parametrize("kind", ["muon", "adamw"])
def test_the_optimisers_built_for_a_cpu_model_use_glassgpts_adamw(kind):
    adamw = build_optimizers(tiny_model(), settings(kind))[0]
    assert isinstance(adamw, AdamW) and not isinstance(adamw, torch.optim.Optimizer)


@pytest.mark.parametrize("kind, pinned", [("cuda", True), ("mps", False), ("cpu", False)])
def test_batches_go_to_a_cuda_gpu_through_pinned_memory_only(kind, pinned):
    assert devices.copies_through_pinned_memory(kind) is pinned


def test_cuda_trains_in_bf16_when_the_gpu_supports_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert devices.resolve_dtype("auto", torch.device("cuda", 0))[0] == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert devices.resolve_dtype("auto", torch.device("cuda", 0)) == ("fp32", "this GPU has no bf16 support")
    with pytest.raises(GlassError, match="this GPU does not support bf16"):
        devices.resolve_dtype("bf16", torch.device("cuda", 0))


def test_mps_trains_in_fp32_unless_asked_and_bf16_only_where_the_mac_can(monkeypatch):
    mps = torch.device("mps")
    assert devices.resolve_dtype("auto", mps)[0] == "fp32"
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda kind: True)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: (major, minor) <= (13, 5))
    with pytest.raises(GlassError, match="bf16 on the Apple GPU needs macOS 14 or newer; use --dtype fp32"):
        devices.resolve_dtype("bf16", mps)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: True)
    assert devices.resolve_dtype("bf16", mps) == ("bf16", "asked for bf16")
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda kind: kind != "mps")
    with pytest.raises(GlassError, match="has no autocast for MPS"):
        devices.resolve_dtype("bf16", mps)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_training_attention_is_called_the_way_flash_attention_needs(n_kv_head, dtype, monkeypatch):
    """CUDA's flash kernel takes causal attention without an explicit mask (is_causal), and heads
    of a size that is a multiple of 8: the training step's SDPA calls are recorded and checked,
    then run with only the flash kernel allowed (PyTorch has one for CPUs too)."""
    calls, real = [], torch.nn.functional.scaled_dot_product_attention

    def recorded(q, k, v, attn_mask=None, is_causal=False, **kw):
        calls.append((attn_mask, is_causal, q.shape[-1]))
        return real(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recorded)
    model = tiny_model(tiny_config(n_kv_head=n_kv_head))
    runtime = devices.Runtime(torch.device("cpu"), dtype, "test")
    x = torch.randint(0, model.config.vocab_size, (2, 16))  # (B, T)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), runtime.autocast():
        loss = model(x, x)
    loss.backward()
    assert calls and all(mask is None and causal and head_dim % 8 == 0 for mask, causal, head_dim in calls), calls
    if dtype == "fp32":  # the flash kernel computes what the default choice computes
        assert loss.item() == pytest.approx(model(x, x).item(), abs=1e-5)
