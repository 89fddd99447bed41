"""Optimisers and schedules: invariants of the one schedule function, Muon, parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_config, tiny_model
from glassgpt.evals.bpb import bits_per_byte
from glassgpt.train.loop import grad_accumulation_steps
from glassgpt.errors import UsageError
from glassgpt.train.optim import Muon, OptimizerSettings, build_optimizers, lr_multiplier, muon_momentum, orthogonalize

SETTINGS = OptimizerSettings("muon", 0.02, 0.2, 0.004, 0.004, 1e-3, 0.1, 0.8, 0.95)


@pytest.mark.parametrize("total, warmup, warmdown, final", [(100, 0, 0.2, 0.0), (100, 10, 0.2, 0.1),
                                                              (7, 3, 0.5, 0.0), (1, 0, 0.2, 0.0), (50, 60, 0.9, 0.05)])
def test_lr_multiplier_warms_up_holds_then_decays_within_bounds(total, warmup, warmdown, final):
    values = [lr_multiplier(s, total, warmup, warmdown, final) for s in range(total)]
    assert all(0.0 < v <= 1.0 for v in values)
    assert all(v >= final for s, v in enumerate(values) if s >= warmup)  # warmup may start below final
    warmdown_start = total - round(warmdown * total)
    for s in range(1, total):  # rising only during warmup, falling only during warmdown
        if values[s] > values[s - 1]:
            assert s < warmup
        if values[s] < values[s - 1]:
            assert s >= warmdown_start
    if warmup < warmdown_start:
        assert max(values) == 1.0
    assert values[-1] < 1.0 or round(warmdown * total) == 0


def test_lr_multiplier_warmdown_is_linear_and_ends_above_final():
    values = [lr_multiplier(s, 10, 0, 0.5, 0.0) for s in range(10)]
    assert values == pytest.approx([1, 1, 1, 1, 1, 1.0, 0.8, 0.6, 0.4, 0.2])
    assert lr_multiplier(9, 10, 0, 0.5, 0.5) == pytest.approx(0.6)


def test_muon_momentum_ramps_from_085_to_095():
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(150) == pytest.approx(0.90)
    assert muon_momentum(300) == muon_momentum(10_000) == pytest.approx(0.95)
    assert muon_momentum(5, warmup_steps=0) == 0.95


@pytest.mark.parametrize("shape", [(64, 64), (32, 128), (128, 32)])
def test_orthogonalize_keeps_directions_and_pushes_singular_values_near_one(shape):
    gradient = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * torch.logspace(-1, 1, shape[1])
    U, S, Vh = torch.linalg.svd(gradient, full_matrices=False)
    result = orthogonalize(gradient)
    mapped = torch.diagonal(U.T @ result @ Vh.T)  # each singular direction keeps its vectors...
    off_diagonal = U.T @ result @ Vh.T - torch.diag(mapped)
    assert off_diagonal.abs().max() < 1e-3
    significant = S >= 0.02 * S[0]  # ...and its value moves into the quintic's band, ~[0.7, 1.2]
    assert mapped[significant].min() > 0.5 and mapped.max() < 1.3


def test_muon_rejects_non_matrix_parameters():
    with pytest.raises(ValueError, match="only takes 2-D"):
        Muon([torch.nn.Parameter(torch.zeros(3))])


@pytest.mark.parametrize("fields", [{}, dict(tie_embeddings=True), dict(position="learned", norm_affine=True, bias=True)])
def test_every_parameter_is_in_exactly_one_group(fields):
    model = tiny_model(tiny_config(**fields))
    optimizers = build_optimizers(model, SETTINGS)
    grouped = [p for o in optimizers for g in o.param_groups for p in g["params"]]
    assert len(grouped) == len(set(map(id, grouped))) == len(list(model.parameters()))
    muon = next(o for o in optimizers if isinstance(o, Muon))
    assert all(p.dim() == 2 for g in muon.param_groups for p in g["params"])


def test_tied_matrix_gets_the_heads_small_learning_rate():
    model = tiny_model(tiny_config(tie_embeddings=True))
    adamw = build_optimizers(model, SETTINGS)[0]
    group = next(g for g in adamw.param_groups if any(p is model.wte.weight for p in g["params"]))
    assert group["lr"] == pytest.approx(0.004 * (32 / 768) ** -0.5)


def test_adamw_mode_decays_matrices_only():
    model = tiny_model(tiny_config("gpt2"))
    (adamw,) = build_optimizers(model, OptimizerSettings("adamw", 0, 0, 0, 0, 1e-3, 0.1, 0.9, 0.95))
    for group in adamw.param_groups:
        assert all((p.dim() >= 2) == (group["weight_decay"] > 0) for p in group["params"])


def test_one_step_of_each_optimiser_lowers_the_loss_on_a_fixed_batch():
    for kind in ("muon", "adamw"):
        model = tiny_model(tiny_config())
        optimizers = build_optimizers(model, OptimizerSettings(kind, 0.02, 0.2, 0.004, 0.004, 3e-3, 0.0, 0.8, 0.95))
        idx = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(0))
        before = model(idx, idx)
        before.backward()
        for optimizer in optimizers:
            optimizer.step()
        assert model(idx, idx).item() < before.item(), kind


def test_gradient_accumulation_steps_divide_the_batch_exactly():
    assert grad_accumulation_steps(0, 4096) == 1
    assert grad_accumulation_steps(16384, 4096) == 4
    with pytest.raises(UsageError, match="not a multiple of the tokens per pass"):
        grad_accumulation_steps(10000, 4096)


def test_bits_per_byte_arithmetic():
    assert bits_per_byte(math.log(2) * 100, 100) == pytest.approx(1.0)
    assert bits_per_byte(math.log(256) * 10, 10) == pytest.approx(8.0)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)
