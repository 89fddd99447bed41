"""Bits per byte: how many bits the model needs, on average, to encode each byte of held-out text.

    bpb = (sum over predicted tokens of -ln p(token)) / (ln 2 x bytes those tokens stand for)

Unlike loss per token, it does not depend on the tokenizer: a tokenizer with longer tokens has a
higher loss per token but the same bpb for the same model quality. For ASCII text (one byte per
character) bpb equals nanoGPT's character-level val loss divided by ln 2.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from glassgpt.data.loader import sequential_windows


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Pure arithmetic, kept apart so it can be tested on its own."""
    if total_bytes <= 0:
        raise ValueError("bits per byte needs at least one byte of text")
    return total_nats / (math.log(2) * total_bytes)


@torch.no_grad()
def evaluate_bpb(model, tokens: np.ndarray, token_bytes: np.ndarray, seq_len: int, batch_size: int,
                 device, autocast=contextlib.nullcontext, rank: int = 0, world_size: int = 1) -> float:
    """Bits per byte of `model` over every token of `tokens` (the whole split).

    Targets that stand for no text (special tokens such as <|bos|>) are left out of both sums.
    With several ranks, each evaluates its share and the sums are added across ranks.
    """
    was_training = model.training
    model.eval()
    byte_table = torch.as_tensor(token_bytes, device=device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    n_bytes = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in sequential_windows(tokens, seq_len, batch_size, rank, world_size):
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        with autocast():
            logits = model(x)  # (B, T, V): any model that maps ids to logits can be evaluated
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1,
                                 reduction="none").view(y.shape)  # (B, T), 0 where y == -1
        target_bytes = torch.where(y >= 0, byte_table[y.clamp(min=0)], 0)  # (B, T)
        counted = target_bytes > 0
        nats += losses.double()[counted].sum()
        n_bytes += target_bytes.sum()
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(nats)
        dist.all_reduce(n_bytes)
    model.train(was_training)
    return bits_per_byte(nats.item(), int(n_bytes.item()))
