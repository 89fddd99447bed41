"""Optimisers and schedules, each in exactly one place.

- `Muon` for the 2-D weight matrices inside the blocks: momentum, then the update is replaced by
  the nearest semi-orthogonal matrix (Newton-Schulz iteration), so every direction of the matrix
  moves by a similar amount, whatever the gradient's scale.
- AdamW for what is not a hidden matrix: embeddings (a lookup table, one row per token), the LM
  head, and 1-D gains/biases. Their learning rates scale as (n_embd / 768)^-0.5, so a wider
  model takes smaller steps there.
- `lr_multiplier` (warmup → constant → linear warmdown) and `muon_momentum` are pure functions
  of the step, unit-tested for their invariants.

Both optimisers are written here on a small `Optimizer` base rather than on `torch.optim`'s:
torch's base class and AdamW import torch._dynamo (and sympy) on first use, which costs a CPU run
a second of start-up and 70 MB of memory for a compiler it does not use. The state dicts have
torch's layout, so a checkpoint written with `torch.optim.AdamW` loads here and the other way
round. On CUDA, AdamW is torch's fused kernel (one launch per step), which a GPU run can afford.
"""

from __future__ import annotations

import copy
import functools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from glassgpt.device import uses_fused_adamw
from glassgpt.errors import UsageError
from glassgpt.model.gpt import head_is_tied

# Quintic Newton-Schulz coefficients (Keller Jordan's Muon): chosen to push singular values
# towards 1 as fast as possible in 5 steps, accepting that they land in roughly [0.7, 1.2].
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U Vᵀ of G = U S Vᵀ (all singular values → ~1), for a 2-D matrix."""
    a, b, c = NS_COEFFICIENTS
    X = G.float() if G.device.type == "cpu" else G.bfloat16()  # CPUs without bf16 units are slow in bf16
    tall = X.size(0) > X.size(1)
    if tall:  # iterate on the smaller Gram matrix
        X = X.T
    X = X / (X.norm() + 1e-7)  # singular values now ≤ 1, where the iteration converges
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    if tall:
        X = X.T
    return X.to(G.dtype)


class Optimizer:
    """What training needs of an optimiser: parameter groups with their hyperparameters, a
    per-parameter state, `zero_grad`, and a state dict in torch.optim's layout
    ({"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}, indices counted
    over the groups in order). Subclasses write `step`."""

    def __init__(self, params: Iterable, defaults: dict):
        self.defaults = dict(defaults)
        groups = list(params)
        if not groups:
            raise ValueError("an optimiser needs at least one parameter")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups = [{**self.defaults, **group, "params": list(group["params"])} for group in groups]
        self.state: dict[torch.Tensor, dict] = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def _indexed_params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict:
        params = self._indexed_params()
        index = {id(p): i for i, p in enumerate(params)}
        groups, first = [], 0
        for group in self.param_groups:
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(first, first + len(group["params"])))})
            first += len(group["params"])
        return {"state": {index[id(p)]: state for p, state in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        saved_groups = state_dict["param_groups"]
        if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the saved optimiser state has different parameter groups")
        params = self._indexed_params()
        self.state = defaultdict(dict)
        for index, state in state_dict["state"].items():
            p = params[int(index)]
            # Copies (never the caller's tensors): moments follow their parameter's device and
            # dtype, and the step count stays as saved.
            self.state[p] = {key: value.to(p.device, p.dtype if key != "step" else value.dtype, copy=True)
                             if torch.is_tensor(value) else copy.deepcopy(value)
                             for key, value in state.items()}
        for group, saved in zip(self.param_groups, saved_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})


# What the training step, checkpoints and the trace accept: glassgpt's optimisers, or torch's (a
# learner's `setup_optimizers` returns torch.optim ones, and CUDA runs use torch's fused AdamW).
OptimizerLike = Optimizer | torch.optim.Optimizer


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), for every parameter at once:

        m ← β1·m + (1 − β1)·g            v ← β2·v + (1 − β2)·g²
        p ← p·(1 − lr·wd) − lr · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + eps)

    The update is a few multi-tensor (`torch._foreach_*`) operations over all parameters of a
    group, not a Python loop of small ones.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):  # torch.optim.AdamW's defaults
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            # A parameter's step count starts at its first gradient, so counts can differ within
            # a group: each count has its own bias correction.
            by_count: dict[int, list[torch.Tensor]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not self.state[p]:
                    self.state[p] = {"step": torch.zeros((), dtype=torch.float32),
                                     "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                self.state[p]["step"] += 1
                by_count[int(self.state[p]["step"].item())].append(p)
            for t, params in by_count.items():
                self._update(params, group, t)

    def _update(self, params: list[torch.Tensor], group: dict, t: int) -> None:
        grads = [p.grad for p in params]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominators, (1 - beta2 ** t) ** 0.5)
        torch._foreach_add_(denominators, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denominators, -lr / (1 - beta1 ** t))


class Muon(Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D parameters only.

    update = orthogonalize(nesterov momentum of the gradient) x sqrt(max(1, rows / cols))
    (the factor keeps the per-element update size similar for tall matrices).
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon only takes 2-D parameters, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(p.grad)
                direction = p.grad.add(buffer, alpha=group["momentum"]) if group["nesterov"] else buffer
                update = orthogonalize(direction, group["ns_steps"])
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.add_(update, alpha=-group["lr"] * scale)


@dataclass
class OptimizerSettings:
    kind: str  # "muon" (Muon + AdamW) or "adamw" (AdamW alone)
    matrix_lr: float
    embedding_lr: float
    unembedding_lr: float
    scalar_lr: float
    adamw_lr: float
    weight_decay: float
    beta1: float
    beta2: float


def is_block_matrix(name: str, parameter: torch.Tensor) -> bool:
    """The parameters Muon takes: the 2-D weight matrices inside the blocks."""
    return name.startswith("blocks.") and parameter.dim() == 2


def build_optimizers(model: torch.nn.Module, settings: OptimizerSettings) -> list[Optimizer]:
    """Split the model's parameters into groups and give each group its optimiser.

    Every group records `initial_lr`; the training loop sets lr = initial_lr x lr_multiplier(step).
    """
    named = dict(model.named_parameters())
    if settings.kind == "adamw":
        decay = [p for p in named.values() if p.dim() >= 2]
        no_decay = [p for p in named.values() if p.dim() < 2]
        groups = [
            dict(params=decay, lr=settings.adamw_lr, weight_decay=settings.weight_decay),
            dict(params=no_decay, lr=settings.adamw_lr, weight_decay=0.0),
        ]
        return [_adamw(groups, settings)]
    if settings.kind != "muon":
        raise UsageError(f"optimizer must be auto, muon or adamw, not {settings.kind!r}")

    width_scale = (model.config.n_embd / 768) ** -0.5
    tied = head_is_tied(model)
    matrices = [p for n, p in named.items() if is_block_matrix(n, p)]
    embeddings = [p for n, p in named.items() if n in ("wte.weight", "wpe.weight") and not (tied and n == "wte.weight")]
    # A tied matrix is also the head, and the head needs the small step: a large one swings all logits.
    head = [named["wte.weight"]] if tied else [named["lm_head.weight"]]
    scalars = [p for p in named.values() if p.dim() < 2]
    assert len(matrices) + len(embeddings) + len(head) + len(scalars) == len(named), "a parameter has no group"
    adam_groups = [
        dict(params=group, lr=lr * width_scale, weight_decay=0.0)
        for group, lr in ((embeddings, settings.embedding_lr), (head, settings.unembedding_lr),
                          (scalars, settings.scalar_lr))
        if group
    ]
    return [_adamw(adam_groups, settings), _with_initial_lr(Muon(matrices, lr=settings.matrix_lr))]


def _adamw(groups: list[dict], settings: OptimizerSettings) -> "AdamW | torch.optim.AdamW":
    device = groups[0]["params"][0].device
    kind = functools.partial(torch.optim.AdamW, fused=True) if uses_fused_adamw(device) else AdamW
    return _with_initial_lr(kind(groups, betas=(settings.beta1, settings.beta2), eps=1e-10))


def _with_initial_lr(optimizer: Optimizer) -> Optimizer:
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


# -- schedules ---------------------------------------------------------------------------------


def lr_multiplier(step: int, total_steps: int, warmup_steps: int = 0, warmdown_ratio: float = 0.2,
                  final_lr_frac: float = 0.0) -> float:
    """Learning-rate multiplier for optimiser step `step` (0-based) of `total_steps`.

    Linear warmup from 1/warmup_steps to 1, constant at 1, then a linear warmdown over the last
    warmdown_ratio of the steps, ending just above final_lr_frac. Where warmup and warmdown
    overlap (very short runs) the smaller multiplier wins.
    """
    warmup = (step + 1) / warmup_steps if step < warmup_steps else 1.0
    warmdown_steps = round(warmdown_ratio * total_steps)
    steps_left = total_steps - step
    if warmdown_steps > 0 and steps_left <= warmdown_steps:
        progress = steps_left / warmdown_steps  # 1 → 1/warmdown_steps
        warmdown = progress + (1 - progress) * final_lr_frac
    else:
        warmdown = 1.0
    return min(warmup, warmdown)


def muon_momentum(step: int, warmup_steps: int = 300, start: float = 0.85, end: float = 0.95) -> float:
    """Muon's momentum rises from `start` to `end` over the first steps: early gradients point
    in quickly changing directions, so averaging over a long window would lag behind."""
    if warmup_steps <= 0:
        return end
    frac = min(step / warmup_steps, 1.0)
    return (1 - frac) * start + frac * end


def set_learning_rates(optimizers: list[Optimizer], multiplier: float, momentum: float | None) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
            if momentum is not None and isinstance(optimizer, Muon):
                group["momentum"] = momentum
