"""Generation: a prefill of the prompt, then one-token decode steps over a preallocated KV cache.

Without a cache, producing token n re-runs the model over all n previous tokens; with one, each
step runs the model on the single newest token and reads the keys/values of the others from the
cache. `Engine.generate(..., use_cache=False)` keeps the naive path as a reference and for
benchmarks; a test checks both give the same logits.
"""

from __future__ import annotations

import codecs
import contextlib
import inspect
from collections.abc import Iterable, Iterator

import torch

from glassgpt.model.gpt import GPT, KVCache
from glassgpt.tokenizer import Tokenizer


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token id from logits (B, V); returns (B,) int64.

    temperature 0 is greedy (argmax). top_k keeps the k likeliest tokens; top_p keeps the smallest
    set of likeliest tokens whose probabilities add up to at least p. Both may be combined.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of strictly likelier tokens
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))  # the top token always stays
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Engine:
    """Streams token ids from a model. Works for any `GPT`, including a learner's."""

    def __init__(self, model: GPT, autocast=contextlib.nullcontext):
        self.model, self.autocast = model, autocast
        self.device = next(model.parameters()).device
        # A learner's GPT may have no KV cache: then every token re-runs the context.
        self.cacheable = "kv_cache" in inspect.signature(model.forward).parameters

    @torch.inference_mode()
    def generate(self, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop_ids: Iterable[int] = (), use_cache: bool = True) -> Iterator[int]:
        """Yield up to max_new_tokens ids after `prompt`, stopping after any id in `stop_ids`.

        When the context reaches the model's sequence_len, generation keeps going with the most
        recent half of the tokens as context (the cache is refilled from them).
        """
        model, config = self.model, self.model.config
        was_training = model.training
        model.eval()
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        stop_ids = set(stop_ids)
        use_cache = use_cache and self.cacheable
        tokens = list(prompt)[-config.sequence_len:]
        cache = KVCache(config, 1, config.sequence_len, self.device, self._cache_dtype()) if use_cache else None
        try:
            logits = self._forward(tokens, cache)
            for _ in range(max_new_tokens):
                next_id = int(sample_next(logits, temperature, top_k, top_p, generator))
                yield next_id
                if next_id in stop_ids:
                    return
                tokens.append(next_id)
                if len(tokens) > config.sequence_len:
                    # The window is full: keep the most recent half and read it again. Both paths
                    # cut alike, so the naive one stays a true reference for the cached one.
                    tokens = tokens[-(config.sequence_len // 2):]
                    if cache is not None:
                        cache.reset()
                    logits = self._forward(tokens, cache)
                elif cache is None:
                    logits = self._forward(tokens, None)
                else:
                    logits = self._forward([next_id], cache)
        finally:
            model.train(was_training)

    def _forward(self, ids: list[int], cache: KVCache | None) -> torch.Tensor:
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)
        with self.autocast():
            logits = self.model(idx, kv_cache=cache) if cache is not None else self.model(idx)
        return logits[:, -1, :]  # (1, V): only the last position samples

    def _cache_dtype(self) -> torch.dtype:
        with self.autocast():  # keys/values come out of autocast matmuls in the autocast dtype
            probe = torch.nn.functional.linear(torch.zeros(1, 1, device=self.device),
                                               torch.zeros(1, 1, device=self.device))
        return probe.dtype


class TextStream:
    """Turns a stream of token ids into text pieces, holding back bytes of an unfinished UTF-8
    character until it is complete (a token can end in the middle of one)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self.tokenizer.token_piece(token_id))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def complete(engine: Engine, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, **sampling) -> str:
    """The prompt's continuation as text (stops at <|bos|>: a new document would begin)."""
    ids = tokenizer.encode(prompt, bos=True)
    stream, pieces = TextStream(tokenizer), []
    for token_id in engine.generate(ids, max_new_tokens, stop_ids={tokenizer.bos_id}, **sampling):
        if token_id != tokenizer.bos_id:
            pieces.append(stream.push(token_id))
    pieces.append(stream.flush())
    return "".join(pieces)
