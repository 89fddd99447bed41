"""Dropout, checked both ways: off in eval mode, and in training mode at the config's rate.

In eval mode a component must equal the reference exactly whatever `config.dropout` is (the
component checks compare that). In training mode its outputs are random. A learner who applies
dropout at the same places, in the same order, as the reference draws the same masks from the same
seed and matches it exactly; any other correct dropout is recognised by its statistics over
`DRAWS` calls each: how often an output value is zeroed, how much the outputs vary from call to
call, and their mean. Each finding is returned as words and a registry hint key, computed from
the outputs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

DRAWS = 24
SEED = 1234
# How far the statistics may be from the reference's before they count as different. Measured over
# 12 seeds on correct files that draw other random numbers than the reference (a mask of their own,
# F.scaled_dot_product_attention): zero shares within 0.005, mean factors within 0.016, variance
# ratios 0.96-1.02. Mistakes land outside: a rate of 0.1 for 0.2 (zero share off by 0.10, variance
# ratio 0.45), the attention weights not dropped (0.50 for the attention, 0.89 for a block), the
# embedding not dropped (the logits' mean factor off by 0.13), kept values not rescaled (0.8 x).
ZERO_SHARE_SLACK = 0.02  # plus 5 standard errors of the reference's share
SPREAD_RATIO = (0.85, 1.18)  # learner's variance over draws / reference's
MEAN_SLACK = 0.05  # |learner's mean factor - reference's| (each: mean output · eval output / |eval output|²)


@dataclass
class Finding:
    message: str
    hint: str  # registry key


@contextlib.contextmanager
def training(*modules: torch.nn.Module):
    """Put modules in training mode, and back in the mode each was in."""
    before = [m.training for m in modules]
    try:
        for m in modules:
            m.train()
        yield
    finally:
        for m, mode in zip(modules, before):
            m.train(mode)


def random_in_eval(call: Callable[[], torch.Tensor]) -> bool:
    """Whether two calls in eval mode with different random states give different outputs."""
    with torch.no_grad():
        torch.manual_seed(SEED)
        first = call()
        torch.manual_seed(SEED + 1)
        second = call()
    return isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and first.shape == second.shape \
        and not torch.equal(first, second)


def _draws(call: Callable[[], torch.Tensor], first_seed: int) -> torch.Tensor:
    outputs = []
    with torch.no_grad():
        for i in range(DRAWS):
            torch.manual_seed(first_seed + i)
            outputs.append(call().detach().float())
    return torch.stack(outputs)  # (DRAWS, *output shape)


def _zero_share(draws: torch.Tensor, eval_output: torch.Tensor) -> float:
    """Share of output values that are exactly 0 where the eval output is not: zeroed by dropout."""
    nonzero = eval_output != 0
    return float(((draws == 0) & nonzero).float().sum() / (nonzero.sum() * draws.shape[0]).clamp(min=1))


def _mean_factor(draws: torch.Tensor, eval_output: torch.Tensor) -> float:
    reference = eval_output.float()
    return float((draws.mean(0) * reference).sum() / (reference * reference).sum().clamp(min=1e-30))


def compare_training_mode(what: str, p: float, reference: Callable[[], torch.Tensor],
                          learner: Callable[[], torch.Tensor], eval_output: torch.Tensor,
                          same: Callable[[torch.Tensor, torch.Tensor], bool]) -> Finding | None:
    """`reference` and `learner` run the component in training mode (they are called with the
    random state seeded); `eval_output` is the reference's output in eval mode; `same` compares
    two outputs within the check's tolerance. None when the learner's dropout is the reference's.
    `what` names the output: "your MLP's output"."""
    eval_output = eval_output.detach().float()
    torch.manual_seed(SEED)
    with torch.no_grad():
        expected = reference()
    torch.manual_seed(SEED)
    with torch.no_grad():
        got = learner()
    if same(expected, got):  # the same masks from the same seed
        return None
    mine, theirs = _draws(learner, SEED), _draws(reference, SEED)
    if bool((mine == mine[0]).all()):
        if same(eval_output, mine[0]):
            return Finding(f"in training mode, {what} is the same on every call, and equal to the eval-mode one: "
                           f"config.dropout = {p:g} is ignored", "dropout.ignored")
        return Finding(f"in training mode, {what} is the same on every call (no dropout, with config.dropout "
                       f"= {p:g}), and differs from the eval-mode one", "dropout.ignored")
    zeroed, zeroed_ref = _zero_share(mine, eval_output), _zero_share(theirs, eval_output)
    samples = max(1, int((eval_output != 0).sum()) * DRAWS)
    if abs(zeroed - zeroed_ref) > ZERO_SHARE_SLACK + 5 * math.sqrt(zeroed_ref * (1 - zeroed_ref) / samples):
        if zeroed == 0:
            return Finding(f"in training mode, no value of {what} is ever zeroed; the reference's dropout zeroes "
                           f"{zeroed_ref:.0%} of them (config.dropout = {p:g}): a dropout is missing", "dropout.sites")
        return Finding(f"in training mode, dropout zeroes {zeroed:.1%} of the values of {what}, and "
                       f"{zeroed_ref:.1%} of the reference's (config.dropout = {p:g}): dropout at another rate (a "
                       "hard-coded one?) or at another place",
                       "dropout.rate")
    factor, factor_ref = _mean_factor(mine, eval_output), _mean_factor(theirs, eval_output)
    if abs(factor - factor_ref) > MEAN_SLACK:
        scaled = math.isclose(factor / factor_ref, 1 - p, rel_tol=0.05)
        return Finding(f"in training mode, {what} averages {factor:.3g} × the eval-mode one over {DRAWS} calls, the "
                       f"reference's {factor_ref:.3g} ×" + (f": the values dropout keeps are not divided by 1 - p = "
                                                            f"{1 - p:g}" if scaled else ""),
                       "dropout.scale" if scaled else "dropout.sites")
    spread = float(mine.var(0).sum() / theirs.var(0).sum().clamp(min=1e-30))
    if not SPREAD_RATIO[0] <= spread <= SPREAD_RATIO[1]:
        fewer = "at fewer places or a lower rate" if spread < 1 else "at more places or a higher rate"
        return Finding(f"in training mode, {what} varies {spread:.2g} × as much from call to call as the reference's "
                       f"(config.dropout = {p:g}): dropout {fewer} than the reference's", "dropout.sites")
    return None
