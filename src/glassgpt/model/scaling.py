"""Parameter and FLOP accounting for a GPTConfig, computed from the model built on the meta device
(no memory for weights), so the numbers are the model's own, never a second formula to drift."""

from __future__ import annotations

import torch

from glassgpt.model.config import GPTConfig
from glassgpt.model.gpt import GPT


def meta_model(config: GPTConfig) -> GPT:
    with torch.device("meta"):
        return GPT(config)


def matmul_params(model: GPT) -> int:
    """Weights that take part in a matmul per token: every 2-D weight except the embedding
    lookups, plus the head (which, when tied, is the embedding matrix used a second time)."""
    count = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and n not in ("wte.weight", "wpe.weight"))
    if model.lm_head is None:
        count += model.wte.weight.numel()
    return count


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward), the convention used for MFU:

        6 x matmul parameters                       (2 for the forward multiply-add, 4 for backward)
      + 12 x n_layer x n_head x head_dim x seq_len  (q·k and pattern·v, forward and backward)

    The attention term counts the full T x T product; causal kernels skip about half of it, so
    MFU computed with this count slightly overstates the work done (the common convention).
    """
    seq_len = seq_len or config.sequence_len
    model = meta_model(config)
    return 6 * matmul_params(model) + 12 * config.n_layer * config.n_head * config.head_dim * seq_len
