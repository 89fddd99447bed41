"""One training step for everyone: loss normalised over the step's counted targets, and the trace,
the trainer and the benchmark all taking the same step."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_config, tiny_model
from glassgpt.config import TrainConfig
from glassgpt.train.optim import build_optimizers
from glassgpt.train.step import train_step


def masked_batches(seed: int = 0):
    """Four micro-batches of 2 x 16 with very uneven loss masks: 3, ~all, 0 and ~half counted."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for kept in (3, 30, 0, 17):
        x = torch.randint(0, 97, (2, 16), generator=generator)
        y = torch.randint(0, 97, (2, 16), generator=generator)
        flat = y.view(-1)
        order = torch.randperm(flat.numel(), generator=generator)
        flat[order[kept:]] = -1  # keep exactly `kept` targets
        batches.append((x, y))
    return batches


def gradients_after(model, batches, optimizers=None):
    """The gradients train_step computes (read just before clipping), and its result."""
    seen = {}

    def grab(m):
        seen.update({n: p.grad.clone() for n, p in m.named_parameters()})

    result = train_step(model, optimizers or [], batches, on_gradients=grab)
    return seen, result


def test_accumulating_four_uneven_micro_batches_gives_the_gradient_of_one_big_batch():
    model = tiny_model(tiny_config(dropout=0.0))
    batches = masked_batches()
    accumulated, result = gradients_after(copy.deepcopy(model), batches)
    big = (torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
    whole, whole_result = gradients_after(copy.deepcopy(model), [big])
    for name in whole:
        assert torch.allclose(accumulated[name], whole[name], atol=1e-6, rtol=0), name
    assert result.counted_tokens == whole_result.counted_tokens == 3 + 30 + 0 + 17
    assert result.loss == pytest.approx(whole_result.loss, abs=1e-6)


def test_a_per_micro_batch_mean_would_have_weighted_the_sparse_batch_differently():
    # The test above must be able to fail: the old rule (mean of micro-batch means) disagrees here.
    model = tiny_model(tiny_config())
    batches = [b for b in masked_batches() if (b[1] != -1).any()]
    means = [model(x, y) for x, y in batches]
    old_rule = sum(means) / len(means)
    counted = torch.tensor([(y != -1).sum() for _, y in batches], dtype=torch.float32)
    new_rule = sum(m * c for m, c in zip(means, counted)) / counted.sum()
    assert abs(old_rule.item() - new_rule.item()) > 1e-3


def test_an_all_masked_step_adds_nothing_and_is_not_nan():
    model = tiny_model(tiny_config())
    x = torch.randint(0, 97, (2, 16))
    nothing = torch.full((2, 16), -1)
    grads, result = gradients_after(model, [(x, nothing), (x, nothing)])
    assert result.loss == 0.0 and result.counted_tokens == 0
    assert all(torch.isfinite(g).all() and (g == 0).all() for g in grads.values())


def test_the_step_sets_the_learning_rate_clips_and_steps_every_optimiser():
    model = tiny_model(tiny_config())
    optimizers = build_optimizers(model, TrainConfig().optimizer_settings())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_step(model, optimizers, masked_batches()[:2], lr_multiplier=0.5, muon_momentum=0.9, grad_clip=1e-3)
    assert all(g["lr"] == pytest.approx(0.5 * g["initial_lr"]) for o in optimizers for g in o.param_groups)
    assert result.grad_norm > 1e-3  # clipped: the norm returned is the one before clipping
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_one_traced_iteration_and_one_training_step_give_bit_identical_weights(glass_home):
    """The trace runs train_step itself: from the same state and batch, the weights it leaves equal
    those of a plain training step, bit for bit."""
    from glassgpt.see.trace import TraceOptions, run_trace

    options = TraceOptions(depth=1, seq_len=16, steps=1, text="To be, or not to be, that is the question")
    captured = {}

    import glassgpt.see.trace as trace_module

    real_step = trace_module.train_step

    def spy(model, optimizers, batches, **kwargs):
        captured["start"] = copy.deepcopy(model.state_dict())
        captured["optimizer_state"] = [copy.deepcopy(o.state_dict()) for o in optimizers]
        captured["batches"] = [(x.clone(), y.clone()) for x, y in batches]
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k in ("lr_multiplier", "muon_momentum", "grad_clip")}
        captured["model"] = model
        result = real_step(model, optimizers, batches, **kwargs)
        captured["after"] = copy.deepcopy(model.state_dict())
        return result

    trace_module.train_step = spy
    try:
        report = run_trace(options)
    finally:
        trace_module.train_step = real_step
    # The same step again, untraced, from the same weights and a fresh optimiser like the trace's.
    plain = copy.deepcopy(captured["model"])
    plain.load_state_dict(captured["start"])
    optimizers = build_optimizers(plain, TrainConfig().optimizer_settings())
    for optimizer, state in zip(optimizers, captured["optimizer_state"]):
        optimizer.load_state_dict(state)
    result = train_step(plain, optimizers, captured["batches"], **captured["kwargs"])
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, captured["after"][name]), name
    assert result.loss == report.steps[0].loss
