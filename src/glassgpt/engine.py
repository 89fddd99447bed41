"""Generation: one prefill of the prompt, then one-token decode steps over a preallocated KV cache.

Without a cache, producing token n re-runs the model over all n previous tokens; with one, each
step runs the model on the newest token of every row and reads the keys/values of the others
from the cache. `use_cache=False` keeps the naive path as a reference and for benchmarks; tests
check that both give the same tokens, and that every step samples from the logits of a full
forward pass over the context.

Both paths run the reference model (`GPT.forward`); the speed is in how it is called. The rows'
tokens live in one preallocated (n, sequence_len) buffer and the cache is preallocated, so a
decode step allocates nothing that grows with the text. On a CPU a decode step runs in fp32: bf16
matrix-vector products are slower there than fp32 ones (`benchmarks/decode_vs_nanochat.py`
measures both).

`Engine.stream` generates N replies to one prompt at once: the prompt is prefilled once and its
cache copied into every row; then each row has its own state:

- stopping: a row ends at any of its stop ids (a chat reply at <|assistant_end|> or <|bos|>), at
  a stop text (which is not shown), at max_new_tokens, or when its context is full and it may not
  slide (see below). These are the only stopping rules; every command and the server use them.
- tools: when a row writes <|tool_call_start|> expression <|tool_call_end|>, the calculator
  evaluates the expression and <|tool_result_start|> result <|tool_result_end|> is forced into
  that row, one token per step like any other token, marked `forced` (never sampled).

When the rows reach the model's sequence_len, `slide=True` keeps going with the most recent half
of each row as its context (all rows have the same length, so they are re-read as one batch);
`slide=False` ends the rows there (finish reason "length").
"""

from __future__ import annotations

import codecs
import contextlib
import inspect
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from glassgpt.errors import GlassError
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


@dataclass
class Event:
    """One generated (or forced) token of one row."""

    row: int
    token: int
    forced: bool = False  # put there by the calculator, not sampled
    kind: str = "text"  # text | tool_call | tool_result | special (a delimiter or stop token)
    text: str = ""  # the visible text this token completes (held back while it may start a stop text)
    finish: str | None = None  # on a row's last event: "stop" (a stop id or text) or "length"


@dataclass
class _Row:
    stream: "TextStream"
    text: str = ""  # the row's generated text so far (kind "text" only), for stop texts
    shown: int = 0  # how much of `text` has been handed out
    forced: deque = field(default_factory=deque)
    tool_call: list[int] | None = None  # ids inside an open <|tool_call_start|>
    kind: str = "text"
    generated: int = 0
    finished: bool = False


class Engine:
    """Streams tokens from a model. Works for any `GPT`, including a learner's.

    `tokenizer` is needed for tools and stop texts (to read what a row wrote)."""

    def __init__(self, model: GPT, autocast=contextlib.nullcontext, tokenizer: Tokenizer | None = None,
                 compile: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        # On a CPU, generation runs in fp32 whatever the training format: its steps are
        # matrix-vector products, which bf16 makes slower there, not faster (2x, measured with
        # benchmarks/decode_vs_nanochat.py --dtype bf16). On a GPU, bf16 autocast pays.
        self.autocast = contextlib.nullcontext if self.device.type == "cpu" else autocast
        # A learner's GPT may have no KV cache: then every token re-runs the context.
        self.cacheable = "kv_cache" in inspect.signature(model.forward).parameters
        # compile=True runs the decode steps (one token per row) through torch.compile over a
        # static KV cache (see compile_decode_step): the same model code, its small operations fused
        # into a few kernels launched from C++. One graph per span of the cache (static_span): on a
        # CPU each takes about 10 s to compile the first time (torch keeps them on disk, so later runs
        # start faster), paid where a generation first needs it, or all at once by `compile_now`.
        # Then at depth 4 on this project's 2-core CPU a token took about 0.85 ms instead of 1.7 ms
        # (benchmarks/decode_vs_nanochat.py --compile). Off by default because of that wait:
        # `glassgpt chat --compile` and `glassgpt serve --compile` turn it on. Prefills, and
        # generations of several rows at once, run eagerly.
        self.compile = compile and self.cacheable
        self._compiled_model = None

    @torch.inference_mode()
    def compile_now(self, on_graph=None) -> int:
        """With compile=True, compile the decode step for every span of the cache now rather than in
        the middle of a generation; returns the number of graphs. on_graph(i, n) after each."""
        if not self.compile:
            return 0
        model, config = self.model, self.model.config
        first_context = {}  # span → the shortest context whose decode step reads that span
        for length in range(2, config.sequence_len + 1):
            first_context.setdefault(static_span(length, config.sequence_len), length)
        was_training, cache_dtype = model.training, self._cache_dtype()
        model.eval()
        try:
            for index, length in enumerate(first_context.values()):
                cache = KVCache(config, 1, config.sequence_len, self.device, cache_dtype, static=True)
                ids = torch.zeros(1, length - 1, dtype=torch.long, device=self.device)
                self._forward(ids, cache, length - 1)  # the prefill (eager)
                self._forward(ids[:, :1], cache, length)  # one decode step: compiles this span's graph
                if on_graph:
                    on_graph(index + 1, len(first_context))
        finally:
            model.train(was_training)
        return len(first_context)

    def generate(self, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 stop_ids: Iterable[int] = (), use_cache: bool = True) -> Iterator[int]:
        """Plain continuation of one prompt: the ids, up to and including a stop id."""
        for event in self.stream(prompt, 1, max_new_tokens, temperature, top_k, top_p, seed, stop_ids,
                                 use_cache=use_cache, tools=False):
            yield event.token

    @torch.inference_mode()
    def stream(self, prompt: list[int], n: int = 1, max_new_tokens: int = 256, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
               stop_ids: Iterable[int] = (), stop_texts: Iterable[str] = (), tools: bool = True,
               use_cache: bool = True, slide: bool = True) -> Iterator[Event]:
        """Yield Events of n rows that all continue `prompt`, step by step (each step gives one
        event per unfinished row, in row order)."""
        if max_new_tokens <= 0:
            return
        model, config = self.model, self.model.config
        was_training = model.training
        model.eval()
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        stop_ids, stop_texts = set(stop_ids), [s for s in stop_texts if s]
        special = dict(self.tokenizer.special_ids) if self.tokenizer else {}
        tool_ids = (special.get("<|tool_call_start|>"), special.get("<|tool_call_end|>"))
        tools = tools and self.tokenizer is not None and None not in tool_ids
        specials = set(special.values())
        rows = [_Row(TextStream(self.tokenizer)) if self.tokenizer else _Row(None) for _ in range(n)]
        prompt = list(prompt)[-config.sequence_len:]
        # Every row's context lives in one preallocated buffer: a step writes a column, nothing grows.
        tokens = torch.empty(n, config.sequence_len, dtype=torch.long, device=self.device)  # (n, S)
        tokens[:, :len(prompt)] = torch.tensor(prompt, dtype=torch.long, device=self.device)
        length = len(prompt)
        cache = None
        if use_cache and self.cacheable:
            # Compiled steps serve one row (a chat reply); several rows decode eagerly, so that no
            # graph is ever compiled after compile_now, e.g. in a server's worker thread.
            cache = KVCache(config, 1, config.sequence_len, self.device, self._cache_dtype(),
                            static=self.compile and n == 1)
        try:
            logits = self._forward(tokens[:1, :length], cache, length)  # (1, V): one prefill for every row
            if n > 1:
                cache = cache.repeat(n) if cache is not None else None
                logits = logits.expand(n, -1)
            while True:
                sampled = sample_next(logits, temperature, top_k, top_p, generator)  # (n,)
                sampled_ids = sampled.tolist()
                chosen = None  # None while every row takes its sampled token (the usual step)
                for index, row in enumerate(rows):
                    if row.finished:
                        chosen = chosen or list(sampled_ids)
                        chosen[index] = int(tokens[index, length - 1])  # keeps the batch rectangular; ignored
                        continue
                    forced = bool(row.forced)
                    token = row.forced.popleft() if forced else sampled_ids[index]
                    if forced:
                        chosen = chosen or list(sampled_ids)
                        chosen[index] = token
                    row.generated += 1
                    event = self._advance(row, index, token, forced, stop_ids, stop_texts, specials, tool_ids if tools else None)
                    if not row.finished and row.generated >= max_new_tokens and not row.forced:
                        _finish(row, event, "length")
                    yield event
                if all(row.finished for row in rows):
                    return
                slid = length == config.sequence_len
                if slid:
                    if not slide:
                        for index, row in enumerate(rows):
                            if not row.finished:  # an event with no new token: the row's text, flushed
                                event = Event(index, -1, kind="special")
                                _finish(row, event, "length")
                                yield event
                        return
                    # The window is full: keep the most recent half (with the new token) and read
                    # it again. Both paths cut alike, so the naive one stays a true reference.
                    keep = config.sequence_len // 2
                    tokens[:, :keep - 1] = tokens[:, length - keep + 1:length].clone()
                    length = keep - 1
                tokens[:, length] = sampled if chosen is None else torch.tensor(chosen, device=self.device)
                length += 1
                if cache is None:
                    logits = self._forward(tokens[:, :length], None, length)
                elif slid:  # the cache starts again from the kept half
                    cache.reset()
                    logits = self._forward(tokens[:, :length], cache, length)
                else:
                    logits = self._forward(tokens[:, length - 1:length], cache, length)  # the decode step
        finally:
            model.train(was_training)

    def _advance(self, row: _Row, index: int, token: int, forced: bool, stop_ids: set[int],
                 stop_texts: list[str], specials: set[int], tool_ids) -> Event:
        """Apply the stopping and tool rules to one new token of a row; the event it makes."""
        event = Event(index, token, forced, "special" if token in specials else row.kind)
        if token in stop_ids:
            _finish(row, event, "stop")
            return event
        if tool_ids and token == tool_ids[0] and row.tool_call is None:
            row.tool_call, row.kind = [], "tool_call"
        elif tool_ids and token == tool_ids[1] and row.tool_call is not None:
            row.forced.extend(self._tool_result(row.tool_call))
            row.tool_call, row.kind = None, "text"
        elif row.tool_call is not None and token not in specials:
            row.tool_call.append(token)
        if forced and token == self.tokenizer.special_ids.get("<|tool_result_start|>"):
            row.kind = "tool_result"
        elif forced and token == self.tokenizer.special_ids.get("<|tool_result_end|>"):
            row.kind = "text"
        if row.stream is None or token in specials:
            return event
        piece = row.stream.push(token)
        if event.kind != "text":
            event.text = piece
            return event
        row.text += piece
        hit = min((i for i in (row.text.find(s, max(0, row.shown - len(s))) for s in stop_texts) if i >= 0),
                  default=-1)
        if hit >= 0:  # a stop text: end the row there, without showing the stop text
            event.text, row.shown = row.text[row.shown:hit], hit
            row.finished, event.finish = True, "stop"
            return event
        # Hold back an end of the text that may be the start of a stop text.
        held = max((k for s in stop_texts for k in range(min(len(s) - 1, len(row.text)), 0, -1)
                    if row.text.endswith(s[:k])), default=0)
        event.text, row.shown = row.text[row.shown:len(row.text) - held], len(row.text) - held
        return event

    def _tool_result(self, call: list[int]) -> list[int]:
        from glassgpt.calculator import calculate

        special = self.tokenizer.special_ids
        result = calculate(self.tokenizer.decode(call))
        return [special["<|tool_result_start|>"], *self.tokenizer.encode(result.text), special["<|tool_result_end|>"]]

    def _forward(self, ids: torch.Tensor, cache: KVCache | None, length: int) -> torch.Tensor:
        """The last position's logits (B, V) of running `ids`, the end of a `length`-token context."""
        model = self.model
        if cache is not None and cache.static:
            cache.span = static_span(length, cache.max_len)
        if self.compile and cache is not None and cache.static and ids.shape[1] == 1:  # a decode step
            if self._compiled_model is None:
                self._compiled_model = compile_decode_step(self.model)
            try:  # a call on a new span (or number of rows) compiles: that can fail on this machine
                with self.autocast():
                    logits = self._compiled_model(ids, kv_cache=cache)
            except _compiler_failures() as error:
                first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise GlassError(f"torch.compile could not compile the decode step ({first_line[:200]}); "
                                 "run without --compile") from error
            return logits[:, -1, :]
        with self.autocast():
            logits = model(ids, kv_cache=cache) if cache is not None else model(ids)
        return logits[:, -1, :]  # (B, V): only the last position samples

    def _cache_dtype(self) -> torch.dtype:
        with self.autocast():  # keys/values come out of autocast matmuls in the autocast dtype
            probe = torch.nn.functional.linear(torch.zeros(1, 1, device=self.device),
                                               torch.zeros(1, 1, device=self.device))
        return probe.dtype


def static_span(length: int, max_len: int) -> int:
    """How many slots of a static cache a step over a `length`-token context reads: the next power
    of two (at least 64), so that attention reads about as much as the text holds while a
    generation compiles at most log2(max_len / 64) + 1 graphs (4 for a 512-token context)."""
    span = 64
    while span < length:
        span *= 2
    return min(span, max_len)


def compiled_summary(graphs: int, seconds: float) -> str:
    """The line `glassgpt chat --compile` and `glassgpt serve --compile` print after `compile_now`."""
    return f"compiled the decode step: {graphs} graph{'s' if graphs != 1 else ''} in {seconds:.0f}s"


def _compiler_failures() -> tuple[type[BaseException], ...]:
    """What torch.compile raises when it cannot build a graph (no C++ compiler, a compiler error).
    Looked up only when a call has failed, so that a run without --compile never imports it."""
    from torch._dynamo.exc import BackendCompilerFailed

    return (BackendCompilerFailed,)


def compile_decode_step(model: GPT):
    """`model` compiled for decode steps over a static KVCache.

    The static cache keeps every shape fixed, so one graph serves every step of a span (compiled
    again for the next span, or a new number of rows). What a step costs beyond its kernels is then
    what pays or loses:
    - on a CPU the wrapper that launches the kernels is compiled to C++ (cpp_wrapper), not Python;
    - guards on the model's modules and parameters are skipped: checking ~100 of them before
      every step costs about a tenth of a millisecond. Safe here because the Engine runs the model
      in eval mode with the weights updated, if ever, in place; a module swapped for another
      would not be seen (build a new Engine for that).
    At depth 4 on this project's 2-core CPU a step fell from 1.8 ms (eager) to 0.8 ms. Under bf16
    autocast the compiled step was slower (1.8 ms): a CPU's bf16 matrix-vector products are.
    """
    options = {}
    skip_module_guards = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)  # torch 2.8+
    if skip_module_guards is not None:
        options["guard_filter_fn"] = skip_module_guards
    if next(model.parameters()).device.type == "cpu":
        options["cpp_wrapper"] = True
    return torch.compile(model, dynamic=False, options=options)


def _finish(row: _Row, event: Event, reason: str) -> None:
    """End a row: its last event carries whatever text was still held back."""
    if row.stream is not None:
        event.text += row.text[row.shown:] + row.stream.flush()
        row.shown = len(row.text)
    row.finished, event.finish = True, reason


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
