"""StatsTracer: records what every watched trace point held, as numbers a person can read.

For each tensor it keeps summary statistics (shape, dtype, device, mean, std, min, max, RMS, L2
norm, fractions of exact zeros and of negative entries), a few leading values, and, for names
asked for in `keep`, a cropped copy of the tensor itself (e.g. the first 48 positions of an
attention pattern) for heatmaps. With `grads=True` it registers a hook on each watched tensor and
records the same statistics for its gradient under `grad:<name>`.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field

import torch

from glassgpt.model.taps import Tracer


@dataclass
class TensorStats:
    shape: list[int]
    dtype: str
    device: str
    mean: float
    std: float
    min: float
    max: float
    rms: float
    norm: float
    zeros: float  # fraction of entries exactly 0 (ReLU sparsity, masked logits...)
    neg_inf: float  # fraction of -inf entries (the causal mask)
    negative: float = 0.0  # fraction of entries below 0, -inf included (what GELU lets through)
    head: list[float] = field(default_factory=list)  # the first few values, flattened

    def to_dict(self) -> dict:
        """JSON-ready: non-finite statistics (a tensor with no finite entry) become None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def tensor_stats(x: torch.Tensor, head: int = 6) -> TensorStats:
    """Statistics over the finite entries of `x` (a masked score tensor has -inf in it).

    A handful of reductions and one transfer of the results: cheap enough to run on every
    tensor of a training step."""
    data = x.detach()
    data = data if data.dtype == torch.float32 else data.float()
    count = max(data.numel(), 1)
    flat = data.reshape(-1)
    neg_inf = 0.0
    # A finite mean means every entry is finite (any inf or nan would spread into it), so the
    # common case needs no mask; a masked score tensor takes the slower path.
    if flat.numel() and not math.isfinite(flat.mean().item()):
        finite = torch.isfinite(flat)
        neg_inf = (flat == float("-inf")).sum().item() / count
        flat = flat[finite]
    if flat.numel() == 0:
        mean = std = lo = hi = rms = norm = float("nan")
    else:
        std_t, mean_t = torch.std_mean(flat) if flat.numel() > 1 else (torch.zeros(()), flat.mean())
        lo_t, hi_t = torch.aminmax(flat)
        norm_t = torch.linalg.vector_norm(flat)
        mean, std, lo, hi, norm = torch.stack([mean_t, std_t, lo_t, hi_t, norm_t]).tolist()
        rms = norm / math.sqrt(flat.numel())
    return TensorStats(
        shape=list(x.shape), dtype=str(x.dtype).removeprefix("torch."), device=str(x.device),
        mean=mean, std=std, min=lo, max=hi, rms=rms, norm=norm,
        zeros=1.0 - torch.count_nonzero(data).item() / count, neg_inf=neg_inf,
        negative=(data < 0).sum().item() / count,
        head=[_finite_or_str(v) for v in data.reshape(-1)[:head].tolist()],
    )


def _finite_or_str(value: float):
    return value if math.isfinite(value) else str(value)


class StatsTracer(Tracer):
    """Watches trace points matching `patterns`; keeps crops of tensors matching `keep`."""

    def __init__(self, patterns: list[str] | str = "*", keep: list[str] = (), grads: bool = True,
                 crop: int = 48):
        super().__init__(patterns)
        self.keep_patterns, self.grads_wanted, self.crop = list(keep), grads, crop
        self.stats: dict[str, TensorStats] = {}
        self.kept: dict[str, torch.Tensor] = {}
        self.order: list[str] = []

    def record(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if not self.wants(name):
            return x
        self.stats[name] = tensor_stats(x)
        self.order.append(name)
        if any(fnmatch.fnmatchcase(name, p) for p in self.keep_patterns):
            self.kept[name] = crop_tensor(x.detach(), self.crop).float().cpu().clone()
        if self.grads_wanted and x.requires_grad:
            x.register_hook(lambda grad, name=name: self._record_grad(name, grad))
        return x

    def _record_grad(self, name: str, grad: torch.Tensor) -> None:
        self.stats[f"grad:{name}"] = tensor_stats(grad)


def crop_tensor(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first batch row, and at most n positions along each time axis: (T,...) and (H, T, T)
    layouts both shrink to what a heatmap can show."""
    if x.dim() == 0:
        return x
    x = x[0] if x.dim() >= 2 else x
    if x.dim() == 3 and x.shape[-1] == x.shape[-2]:  # (H, Tq, Tk) attention-like
        return x[:, :n, :n]
    return x[:n]
