"""One optimiser step: the single place where glassgpt trains.

    lr = each group's initial_lr x lr_multiplier          (and Muon's momentum, when given)
    for each micro-batch: forward, backward of its share of the step's loss
    clip the global gradient norm, step every optimiser, zero the gradients

`glassgpt train` (every stage), the trace, the benchmark, the learner's grader and the tap
benchmark all call `train_step`, so what they show or measure is what training does.

The loss of a step is the mean over every *counted* target of all its micro-batches (a target of
-1 is not counted: padding, or a token the loss mask leaves out). Each micro-batch's mean is
weighted by its share of the counted targets, so a micro-batch with 3 counted targets weighs 3,
not as much as one with 300: gradient accumulation then gives the gradients of one big batch,
however unevenly a chat batch's loss mask falls, and a micro-batch with none adds nothing (not NaN).
Under DDP the count is summed over ranks first, and the gradient average DDP takes is undone by
the world size, so N processes compute what one process would with the same global batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from glassgpt.train.optim import OptimizerLike, set_learning_rates


@dataclass
class StepResult:
    loss: float  # mean loss (nats) over the step's counted targets, on every rank
    grad_norm: float  # the global gradient norm before clipping
    counted_tokens: int  # targets the loss counted, over all micro-batches (and ranks)


def train_step(
    model: torch.nn.Module,
    optimizers: Sequence[OptimizerLike],
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    lr_multiplier: float = 1.0,
    muon_momentum: float | None = None,
    grad_clip: float = 0.0,
    autocast: Callable = contextlib.nullcontext,
    step_model: torch.nn.Module | None = None,
    world_size: int = 1,
    watch: Callable = contextlib.nullcontext,
    on_gradients: Callable[[torch.nn.Module], None] | None = None,
) -> StepResult:
    """Run one optimiser step over `micro_batches` [(x, y), ...], each (B, T) on the model's device.

    step_model: what runs forward (a DDP or compiled wrapper of `model`); `model` itself owns the
    parameters that are clipped and stepped. watch: a context entered around every forward and
    backward (the trace's tracer). on_gradients(model): called once the gradients are complete,
    before clipping (the trace reads them there).
    """
    step_model = step_model if step_model is not None else model
    distributed = world_size > 1
    set_learning_rates(optimizers, lr_multiplier, muon_momentum)

    counts = torch.stack([(y != -1).sum() for _, y in micro_batches])  # (micro,) int64
    total = counts.sum()
    if distributed:
        import torch.distributed as dist

        dist.all_reduce(total)
    # DDP averages gradients over ranks; scaling by world_size turns that average into the sum the
    # global normalisation needs.
    scale = world_size / total.clamp(min=1).float()
    loss_sum = torch.zeros((), device=total.device)
    for index, (x, y) in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        no_sync = step_model.no_sync() if distributed and not last else contextlib.nullcontext()
        with no_sync, watch():
            with autocast():
                mean_loss = step_model(x, y)  # mean over this micro-batch's counted targets
            share = counts[index] * scale  # this micro-batch's weight in the step's mean
            (mean_loss * share).backward()
        loss_sum += mean_loss.detach().float() * counts[index]
    if distributed:
        dist.all_reduce(loss_sum)
    if on_gradients is not None:
        on_gradients(model)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    for optimizer in optimizers:
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return StepResult(loss=(loss_sum / total.clamp(min=1)).item(), grad_norm=float(grad_norm),
                      counted_tokens=int(total.item()))

