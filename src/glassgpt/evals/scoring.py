"""Reading a model's likelihoods in batches: the one place every likelihood-based evaluation runs
the model.

    score_continuations(model, [(context_ids, continuation_ids), ...])
        -> per pair: sum and mean of log p(continuation token | everything before it), and whether
           every continuation token is the model's greedy choice
    next_token_logits(model, [prompt_ids, ...], candidate_ids)
        -> per prompt: the logits of the candidate tokens at the position after the prompt

Sequences of different lengths share a forward pass, padded on the right: the model is causal, so
padding after a sequence never changes the logits of its own positions. Sequences are sorted by
length first (less padding), and a pass holds at most `tokens_per_pass` tokens, which bounds the
(rows, T, vocab) logits, the largest tensor of an evaluation.

Any module that maps ids (B, T) to logits (B, T, V) can be scored: the reference GPT, a learner's,
or a hand-made model in a test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glassgpt.evals.bpb import EVAL_TOKENS_PER_PASS


@dataclass(frozen=True)
class Scored:
    """How likely a model finds one continuation of one context."""

    logprob_sum: float  # nats
    logprob_mean: float  # per continuation token: comparable between continuations of different lengths
    greedy: bool  # each continuation token is the model's likeliest next token


def _batches(lengths: Sequence[int], tokens_per_pass: int) -> Iterator[list[int]]:
    """Indices of the sequences, shortest first, grouped so that rows x longest <= tokens_per_pass
    (a sequence longer than that gets a pass of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for index in order:
        if batch and (len(batch) + 1) * lengths[index] > tokens_per_pass:
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def _padded(sequences: list[list[int]], pad_id: int, device) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    rows = [s + [pad_id] * (width - len(s)) for s in sequences]
    return torch.tensor(rows, dtype=torch.long, device=device)  # (B, T)


def _check_length(model, length: int) -> None:
    limit = getattr(getattr(model, "config", None), "sequence_len", None)
    if limit is not None and length > limit:
        raise ValueError(f"a scored sequence of {length} tokens is longer than the model's context ({limit}); "
                         "the caller must cut it first")


@torch.no_grad()
def score_continuations(model, pairs: Sequence[tuple[list[int], list[int]]], device="cpu",
                        autocast: Callable = contextlib.nullcontext, pad_id: int = 0,
                        tokens_per_pass: int = EVAL_TOKENS_PER_PASS) -> list[Scored]:
    """Score each (context, continuation): the model reads context + continuation[:-1] and is
    asked for each continuation token in turn."""
    if any(not continuation for _, continuation in pairs):
        raise ValueError("every continuation needs at least one token")
    inputs = [list(context) + list(continuation[:-1]) for context, continuation in pairs]
    results: list[Scored | None] = [None] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        for batch in _batches([len(s) for s in inputs], tokens_per_pass):
            _check_length(model, max(len(inputs[i]) for i in batch))
            x = _padded([inputs[i] for i in batch], pad_id, device)  # (B, T)
            with autocast():
                logits = model(x)  # (B, T, V)
            rows, positions, targets, spans = [], [], [], []
            for row, index in enumerate(batch):
                context, continuation = pairs[index]
                start = len(context) - 1  # the position whose output predicts continuation[0]
                spans.append((index, len(targets), len(targets) + len(continuation)))
                rows += [row] * len(continuation)
                positions += range(start, start + len(continuation))
                targets += continuation
            picked = logits[torch.tensor(rows, device=device), torch.tensor(positions, device=device)].float()  # (N, V)
            del logits
            wanted = torch.tensor(targets, device=device)  # (N,)
            logprobs = (-F.cross_entropy(picked, wanted, reduction="none")).tolist()  # log p of each target
            greedy = (picked.argmax(dim=-1) == wanted).tolist()
            for index, begin, end in spans:
                total = sum(logprobs[begin:end])
                results[index] = Scored(total, total / (end - begin), all(greedy[begin:end]))
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


@torch.no_grad()
def next_token_logits(model, prompts: Sequence[list[int]], candidate_ids: Sequence[int], device="cpu",
                      autocast: Callable = contextlib.nullcontext, pad_id: int = 0,
                      tokens_per_pass: int = EVAL_TOKENS_PER_PASS) -> torch.Tensor:
    """(len(prompts), len(candidate_ids)) fp32: the logits of each candidate token at the position
    that follows each prompt (a multiple-choice answer's letter, read without generating)."""
    candidates = torch.tensor(list(candidate_ids), dtype=torch.long, device=device)
    out = torch.empty(len(prompts), len(candidates), dtype=torch.float32, device=device)
    was_training = model.training
    model.eval()
    try:
        for batch in _batches([len(p) for p in prompts], tokens_per_pass):
            _check_length(model, max(len(prompts[i]) for i in batch))
            x = _padded([list(prompts[i]) for i in batch], pad_id, device)  # (B, T)
            with autocast():
                logits = model(x)  # (B, T, V)
            last = torch.tensor([len(prompts[i]) - 1 for i in batch], device=device)  # (B,)
            final = logits[torch.arange(len(batch), device=device), last].float()  # (B, V)
            out[torch.tensor(batch, device=device)] = final[:, candidates]
    finally:
        model.train(was_training)
    return out
