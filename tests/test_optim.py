"""Optimisers and schedules: invariants of the one schedule function, Muon, parameter groups."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from conftest import REPO, tiny_config, tiny_model
from glassgpt.evals.bpb import bits_per_byte
from glassgpt.train.loop import grad_accumulation_steps
from glassgpt.errors import UsageError
from glassgpt.train.optim import AdamW, Muon, OptimizerSettings, build_optimizers, lr_multiplier, muon_momentum, orthogonalize

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


def _groups(params):
    return [dict(params=[params[0]], lr=0.01, weight_decay=0.1), dict(params=[params[1]], lr=0.02, weight_decay=0.0)]


def test_adamw_takes_the_same_steps_as_torchs_and_their_states_load_into_each_other():
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    adamw = AdamW(_groups(ours), betas=(0.8, 0.95), eps=1e-10)
    reference = torch.optim.AdamW(_groups(theirs), betas=(0.8, 0.95), eps=1e-10, foreach=True)
    for _ in range(4):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        adamw.step()
        reference.step()
    for p, q in zip(ours, theirs):
        assert torch.allclose(p, q, rtol=0, atol=1e-7)
    # a checkpoint written by either optimiser resumes in the other, to the same next step
    restored = AdamW(_groups([torch.nn.Parameter(q.detach().clone()) for q in theirs]), betas=(0.8, 0.95), eps=1e-10)
    restored.load_state_dict(reference.state_dict())
    back = torch.optim.AdamW(_groups([torch.nn.Parameter(p.detach().clone()) for p in ours]), betas=(0.1, 0.1))
    back.load_state_dict(adamw.state_dict())
    assert back.param_groups[0]["betas"] == (0.8, 0.95)
    assert restored.state_dict()["state"][0]["step"].item() == 4
    for optimizer in (restored, back):
        for p in optimizer.param_groups[0]["params"] + optimizer.param_groups[1]["params"]:
            p.grad = torch.ones_like(p)
        optimizer.step()
    for p, q in zip(restored.param_groups, back.param_groups):
        assert torch.allclose(p["params"][0], q["params"][0], rtol=0, atol=1e-7)


def test_adamw_corrects_each_parameter_by_its_own_step_count_as_torch_does():
    """A parameter whose first gradient comes later (frozen, unused) starts its own count."""
    torch.manual_seed(1)
    ours = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(3))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    adamw, reference = AdamW([dict(params=ours)], lr=0.1), torch.optim.AdamW([dict(params=theirs)], lr=0.1, foreach=True)
    for step in range(3):
        for index, (p, q) in enumerate(zip(ours, theirs)):
            late = index == 1 and step == 0
            p.grad = None if late else torch.randn_like(p)
            q.grad = None if late else p.grad.clone()
        adamw.step()
        reference.step()
    assert [adamw.state[p]["step"].item() for p in ours] == [3, 2]
    for p, q in zip(ours, theirs):
        assert torch.allclose(p, q, rtol=0, atol=1e-7)


def test_optimiser_state_of_other_groups_is_refused():
    adamw = AdamW(_groups([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]))
    other = AdamW([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="different parameter groups"):
        adamw.load_state_dict(other.state_dict())


def test_training_on_the_cpu_never_imports_torch_dynamo():
    """torch.optim's base class and AdamW import torch._dynamo (and sympy) on first use: a second
    and 70 MB of every run. glassgpt's optimisers and model build do not."""
    code = ("import sys, torch\nsys.path.insert(0, 'tests')\nfrom conftest import tiny_model\n"
            "from glassgpt.train.optim import OptimizerSettings, build_optimizers\n"
            "from glassgpt.train.step import train_step\n"
            "for kind in ('muon', 'adamw'):\n"
            "    model = tiny_model()\n"
            "    optimizers = build_optimizers(model, OptimizerSettings(kind, 0.02, 0.2, 0.004, 0.5, 1e-3, 0.1, 0.8, 0.95))\n"
            "    batch = torch.randint(0, 97, (2, 8))\n"
            "    train_step(model, optimizers, [(batch, batch)], grad_clip=1.0)\n"
            "    [o.state_dict() for o in optimizers]\n"
            "print('torch._dynamo' in sys.modules, 'sympy' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
