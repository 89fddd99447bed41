"""Bits per byte: how many bits the model needs, on average, to encode each byte of held-out text.

    bpb = (sum over predicted tokens of -ln p(token)) / (ln 2 x bytes those tokens stand for)

Unlike loss per token, it does not depend on the tokenizer: a tokenizer with longer tokens has a
higher loss per token but the same bpb for the same model quality. For ASCII text (one byte per
character) bpb equals nanoGPT's character-level val loss divided by ln 2.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from glassgpt.data.loader import sequential_windows


# One forward pass of an evaluation holds its activations and, largest of all, its logits
# (rows, T, V) in fp32 with the copies the loss makes of them. Passes are cut to at most this many
# tokens and bytes of logits (at least one row), about what a quickstart training micro-batch holds,
# so that an evaluation never raises the process's peak memory above what training needs: glibc
# keeps freed memory in the process (allocator.py), so a peak once reached is never given back.
EVAL_TOKENS_PER_PASS = 2048
EVAL_LOGITS_BYTES = 16 * 2**20


def eval_rows_per_pass(seq_len: int, vocab_size: int) -> int:
    """Rows of `seq_len` tokens per evaluation pass within both bounds above."""
    tokens = min(EVAL_TOKENS_PER_PASS, EVAL_LOGITS_BYTES // (4 * vocab_size))
    return max(1, tokens // seq_len)


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Pure arithmetic, kept apart so it can be tested on its own."""
    if total_bytes <= 0:
        raise ValueError("bits per byte needs at least one byte of text")
    return total_nats / (math.log(2) * total_bytes)


@dataclass
class Evaluation:
    loss: float  # mean nats per counted target
    bpb: float  # bits per byte of the counted targets that stand for text
    tokens: int  # counted targets

    def record(self) -> dict:
        return {"val_loss": round(self.loss, 6), "val_bpb": round(self.bpb, 6)}


def evaluate(model, batches: Iterable[tuple[np.ndarray, np.ndarray]], token_bytes: np.ndarray, device,
             autocast=contextlib.nullcontext, world_size: int = 1) -> Evaluation:
    """Loss and bits per byte of `model` over every counted target (y != -1) of `batches`.

    The loss counts every counted target; bits per byte leaves out targets that stand for no text
    (special tokens such as <|bos|> or <|assistant_end|>), which have no bytes to divide by.
    With several ranks, each evaluates its share of the batches and the sums are added.
    """
    with _no_autograd(model):
        return _evaluate(model, batches, token_bytes, device, autocast, world_size)


def _no_autograd(model):
    """inference_mode for the reference model, about 10% faster than no_grad on a CPU evaluation (it
    skips autograd's version counters); no_grad for any other, whose forward may do what an
    inference tensor forbids (keep a tensor it later trains with)."""
    from glassgpt.model.gpt import GPT

    return torch.inference_mode() if type(model) is GPT else torch.no_grad()


def _evaluate(model, batches, token_bytes, device, autocast, world_size: int) -> Evaluation:
    was_training = model.training
    model.eval()
    byte_table = torch.as_tensor(token_bytes, device=device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # nats, nats of text, bytes, targets
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", len(token_bytes))
    for x_all, y_all in batches:
        rows = eval_rows_per_pass(x_all.shape[1], vocab_size)
        for first in range(0, x_all.shape[0], rows):
            x = torch.from_numpy(x_all[first:first + rows]).to(device)
            y = torch.from_numpy(y_all[first:first + rows]).to(device)
            with autocast():
                logits = model(x)  # (B, T, V): any model that maps ids to logits can be evaluated
            losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1,
                                     reduction="none").view(y.shape).double()  # (B, T), 0 where y == -1
            del logits
            target_bytes = torch.where(y >= 0, byte_table[y.clamp(min=0)], 0)  # (B, T)
            sums += torch.stack([losses.sum(), losses[target_bytes > 0].sum(), target_bytes.sum().double(),
                                 (y != -1).sum().double()])
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    model.train(was_training)
    nats, text_nats, n_bytes, n_targets = sums.tolist()
    if n_targets == 0:
        raise ValueError("nothing to evaluate: no counted targets")
    return Evaluation(nats / n_targets, bits_per_byte(text_nats, int(n_bytes)), int(n_targets))


def evaluate_bpb(model, tokens: np.ndarray, token_bytes: np.ndarray, seq_len: int, batch_size: int,
                 device, autocast=contextlib.nullcontext, rank: int = 0, world_size: int = 1) -> float:
    """Bits per byte of `model` over every token of `tokens` (a whole split)."""
    batches = sequential_windows(tokens, seq_len, batch_size, rank, world_size)
    return evaluate(model, batches, token_bytes, device, autocast, world_size).bpb
