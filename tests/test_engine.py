"""Generation: sampling rules, cache equivalence, seeds, stop tokens, streaming text."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config, tiny_model
from glassgpt.engine import Engine, TextStream, complete, sample_next


@pytest.fixture
def sampled_logits(monkeypatch) -> list[torch.Tensor]:
    """Every logits tensor the engine samples from, in order (a copy of each)."""
    import glassgpt.engine as engine_module

    recorded, real_sample_next = [], engine_module.sample_next

    def recording_sample_next(logits, *args, **kwargs):
        recorded.append(logits.clone())
        return real_sample_next(logits, *args, **kwargs)

    monkeypatch.setattr(engine_module, "sample_next", recording_sample_next)
    return recorded


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 1.9]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]


def test_top_k_only_ever_picks_among_the_k_likeliest():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, 1.0, top_k=2, generator=generator)) for _ in range(300)}
    assert picks == {0, 1}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    generator = torch.Generator().manual_seed(0)
    picks = {int(sample_next(probs.log(), 1.0, top_p=0.7, generator=generator)) for _ in range(500)}
    assert picks == {0, 1}  # 0.5 < 0.7 ≤ 0.5 + 0.3
    only_top = {int(sample_next(probs.log(), 1.0, top_p=0.01, generator=generator)) for _ in range(50)}
    assert only_top == {0}


def test_sampling_follows_the_distribution():
    probs = torch.tensor([[0.7, 0.2, 0.1]])
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.stack([sample_next(probs.log(), generator=generator) for _ in range(4000)]).ravel(),
                            minlength=3).float() / 4000
    assert torch.allclose(counts, probs[0], atol=0.03)


def test_generation_with_and_without_cache_is_identical_and_seeded():
    model = tiny_model(tiny_config(sequence_len=64))
    engine = Engine(model)
    prompt = [1, 2, 3, 4, 5]
    cached = list(engine.generate(prompt, 40, temperature=0.9, seed=7))
    naive = list(engine.generate(prompt, 40, temperature=0.9, seed=7, use_cache=False))
    assert cached == naive and len(cached) == 40
    assert list(engine.generate(prompt, 40, temperature=0.9, seed=8)) != cached


def test_generation_continues_past_the_context_window_alike_with_and_without_cache():
    model = tiny_model(tiny_config(sequence_len=16))
    engine = Engine(model)
    cached = list(engine.generate([1, 2, 3], 50, temperature=0.9, seed=3))
    naive = list(engine.generate([1, 2, 3], 50, temperature=0.9, seed=3, use_cache=False))
    assert len(cached) == 50 and cached == naive  # 50 > 16: the window was cut twice


def test_generation_stops_after_a_stop_token():
    model = tiny_model()
    engine = Engine(model)
    free = list(engine.generate([1], 30, temperature=0))
    stop = free[5]
    stopped = list(engine.generate([1], 30, temperature=0, stop_ids={stop}))
    assert stopped == free[: free.index(stop) + 1]


def test_text_stream_holds_back_half_characters(tokenizer_512):
    ids = tokenizer_512.encode("héllo 漢字 😀 done")
    stream = TextStream(tokenizer_512)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == "héllo 漢字 😀 done"
    assert all("\ufffd" not in piece for piece in pieces)


def test_complete_returns_text_and_leaves_the_model_in_its_mode(tokenizer_512):
    model = tiny_model(tiny_config(vocab_size=512))
    model.train()
    text = complete(Engine(model), tokenizer_512, "ROMEO:", 20, temperature=0.8, seed=1)
    assert isinstance(text, str) and model.training


# -- rows, tools and stopping rules ---------------------------------------------------------------


class ScriptedModel(torch.nn.Module):
    """A 'model' that writes a fixed script after the prompt: at generated position i its logits
    pick script[i] (forced positions of the script are whatever the engine forces). No KV cache,
    so the engine takes its naive path; `config` carries what the engine reads."""

    def __init__(self, script: list[int], prompt_len: int, vocab_size: int, sequence_len: int = 64):
        super().__init__()
        self.script, self.prompt_len = script, prompt_len
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = tiny_config(vocab_size=vocab_size, sequence_len=sequence_len)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        i = min(T - self.prompt_len, len(self.script) - 1)
        logits[:, -1, self.script[i]] = 100.0
        return logits


def _calculator_script(tokenizer):
    special = tokenizer.special_ids
    call = tokenizer.encode("37 + 48")
    result = tokenizer.encode("85")
    after = tokenizer.encode(" so 85.")
    # what the model "writes"; the slots of the forced result are placeholders (never sampled)
    script = [special["<|tool_call_start|>"], *call, special["<|tool_call_end|>"],
              *[0] * (len(result) + 2), *after, special["<|assistant_end|>"]]
    return script, call, result, after


def test_a_tool_call_gets_the_calculators_result_forced_into_its_row(tokenizer_512):
    from glassgpt.engine import Engine

    special = tokenizer_512.special_ids
    prompt = [tokenizer_512.bos_id, special["<|user_start|>"], *tokenizer_512.encode("What is 37 + 48?"),
              special["<|user_end|>"], special["<|assistant_start|>"]]
    script, call, result, after = _calculator_script(tokenizer_512)
    model = ScriptedModel(script, len(prompt), tokenizer_512.vocab_size)
    engine = Engine(model, tokenizer=tokenizer_512)
    events = list(engine.stream(prompt, 1, 100, temperature=0, stop_ids={special["<|assistant_end|>"]}))
    tokens = [e.token for e in events]
    expected_forced = [special["<|tool_result_start|>"], *result, special["<|tool_result_end|>"]]
    start = 1 + len(call) + 1
    assert tokens[start:start + len(expected_forced)] == expected_forced
    assert [e.forced for e in events] == [False] * start + [True] * len(expected_forced) + [False] * (len(after) + 1)
    assert "".join(e.text for e in events if e.kind == "tool_call") == "37 + 48"
    assert "".join(e.text for e in events if e.kind == "tool_result") == "85"
    assert "".join(e.text for e in events if e.kind not in ("tool_call", "tool_result")) == " so 85."
    assert events[-1].finish == "stop" and events[-1].token == special["<|assistant_end|>"]


def test_a_refused_tool_call_is_answered_with_an_error_result_and_generation_goes_on(tokenizer_512):
    from glassgpt.engine import Engine

    special = tokenizer_512.special_ids
    call = tokenizer_512.encode("__import__('os')")
    script = [special["<|tool_call_start|>"], *call, special["<|tool_call_end|>"], *[0] * 40,
              special["<|assistant_end|>"]]
    model = ScriptedModel(script, 1, tokenizer_512.vocab_size, sequence_len=128)
    events = list(Engine(model, tokenizer=tokenizer_512).stream([tokenizer_512.bos_id], 1, 120, temperature=0,
                                                                  stop_ids={special["<|assistant_end|>"]}))
    assert "".join(e.text for e in events if e.kind == "tool_result").startswith("error: ")


def test_n_rows_share_one_prefill_and_each_stops_on_its_own(tokenizer_512):
    from glassgpt.engine import Engine

    model = tiny_model(tiny_config(vocab_size=tokenizer_512.vocab_size, sequence_len=64))
    engine = Engine(model, tokenizer=tokenizer_512)
    prompt = tokenizer_512.encode("ROMEO:", bos=True)
    rows = {r: [] for r in range(4)}
    for event in engine.stream(prompt, 4, 30, temperature=1.0, seed=3, tools=False):
        rows[event.row].append(event.token)
    # each row is what a one-row generation with the same random stream would give for row 0
    single = list(engine.generate(prompt, 30, temperature=1.0, seed=3))
    assert len({tuple(r) for r in rows.values()}) > 1  # rows differ from each other
    assert all(len(r) == 30 for r in rows.values())
    stop = rows[1][4]
    stopped = {r: [] for r in range(4)}
    for event in engine.stream(prompt, 4, 30, temperature=1.0, seed=3, tools=False, stop_ids={stop}):
        stopped[event.row].append(event.token)
    for r in range(4):  # the same random draws: each row is cut after its own first stop token
        expected = rows[r][: rows[r].index(stop) + 1] if stop in rows[r] else rows[r]
        assert stopped[r] == expected
    assert single == list(engine.generate(prompt, 30, temperature=1.0, seed=3))


def test_cached_and_naive_rows_agree(tokenizer_512):
    from glassgpt.engine import Engine

    model = tiny_model(tiny_config(vocab_size=tokenizer_512.vocab_size, sequence_len=24))
    engine = Engine(model, tokenizer=tokenizer_512)
    prompt = tokenizer_512.encode("JULIET:", bos=True)
    cached = [(e.row, e.token) for e in engine.stream(prompt, 3, 40, temperature=0.9, seed=1, tools=False)]
    naive = [(e.row, e.token) for e in engine.stream(prompt, 3, 40, temperature=0.9, seed=1, tools=False, use_cache=False)]
    assert cached == naive and len(cached) == 120  # 40 > 24: the window slid


def test_a_stop_text_ends_the_row_and_is_not_shown(tokenizer_512):
    from glassgpt.engine import Engine

    text = "To be, or not to be: that is the question."
    ids = tokenizer_512.encode(text)
    model = ScriptedModel(ids + [0], 1, tokenizer_512.vocab_size)
    events = list(Engine(model, tokenizer=tokenizer_512).stream([tokenizer_512.bos_id], 1, 100, temperature=0,
                                                               tools=False, stop_texts=["not to"]))
    assert "".join(e.text for e in events) == "To be, or "
    assert events[-1].finish == "stop"
    # without the stop text, every character arrives, and the row ends at its token limit
    events = list(Engine(model, tokenizer=tokenizer_512).stream([tokenizer_512.bos_id], 1, len(ids), temperature=0,
                                                               tools=False, stop_texts=["never appears"]))
    assert "".join(e.text for e in events) == text and events[-1].finish == "length"


def test_no_new_tokens_asked_means_no_events():
    engine = Engine(tiny_model())
    assert list(engine.stream([1, 2, 3], 2, max_new_tokens=0)) == []


def test_the_engine_samples_from_the_logits_of_a_full_forward(sampled_logits):
    """The prefill/decode split over the KV cache is a speed trick only: at every step, including
    after the window slid, the logits the engine samples from are those of the reference model
    run on the whole context (fp32, 1e-5)."""
    model = tiny_model(tiny_config(sequence_len=16)).eval()
    prompt = [5, 6, 7, 8, 9]
    tokens = list(Engine(model).generate(prompt, 30, temperature=0.9, seed=4))
    assert len(sampled_logits) == 30
    context = list(prompt)
    for step, (logits, token) in enumerate(zip(sampled_logits, tokens)):
        full = model(torch.tensor([context]))[:, -1]  # (1, V): the whole context, no cache
        assert torch.allclose(logits, full, atol=1e-5), f"step {step}"
        context.append(token)
        if len(context) > 16:  # the engine keeps the most recent half of a full window
            context = context[-8:]


@pytest.mark.slow  # compiling takes ~15 s on a fresh machine
def test_a_compiled_decode_step_samples_from_the_logits_of_a_full_forward(sampled_logits):
    """Engine(compile=True): a static KV cache and torch.compile'd decode steps. The same logits as
    the reference model on the whole context (fp32, 1e-5) at every step, across window slides;
    the same tokens as the eager engine; and weights changed in place are seen without compiling
    again (the compiled step reads the parameters, it does not freeze them)."""
    model = tiny_model(tiny_config(sequence_len=16)).eval()
    prompt = [5, 6, 7, 8, 9]
    compiled = Engine(model, compile=True)
    tokens = list(compiled.generate(prompt, 30, temperature=0.9, seed=4))
    assert compiled._compiled_model is not None, "the decode steps did not go through torch.compile"
    assert tokens == list(Engine(model).generate(prompt, 30, temperature=0.9, seed=4))
    context = list(prompt)
    for step, (logits, token) in enumerate(zip(sampled_logits, tokens)):
        full = model(torch.tensor([context]))[:, -1]  # (1, V)
        assert torch.allclose(logits, full, atol=1e-5), f"step {step}"
        context.append(token)
        if len(context) > 16:
            context = context[-8:]

    with torch.no_grad():
        model.blocks[0].mlp.c_fc.weight.mul_(3.0)  # as an optimiser would: in place
    sampled_logits.clear()
    after = list(compiled.generate(prompt, 6, temperature=0, seed=4))
    context = list(prompt)
    for step, (logits, token) in enumerate(zip(sampled_logits, after)):
        full = model(torch.tensor([context]))[:, -1]
        assert torch.allclose(logits, full, atol=1e-5), f"after the weights changed, step {step}"
        context.append(token)


def test_a_decode_step_that_cannot_compile_is_one_clear_error_and_a_bug_stays_a_bug(monkeypatch):
    import glassgpt.engine as engine_module
    from glassgpt.errors import GlassError
    from torch._inductor.exc import InductorError

    def failing(exception):
        def compile_decode_step(model):
            def step(*args, **kwargs):
                raise exception
            return step
        return compile_decode_step

    monkeypatch.setattr(engine_module, "compile_decode_step",
                        failing(InductorError(RuntimeError("C++ compile error\nmore lines"), None)))
    with pytest.raises(GlassError, match=r"could not compile the decode step \(RuntimeError: C\+\+ compile error\); "
                                         r"run without --compile"):
        list(Engine(tiny_model(), compile=True).generate([1, 2, 3], 5, temperature=0))
    monkeypatch.setattr(engine_module, "compile_decode_step", failing(ValueError("a shape bug")))
    with pytest.raises(ValueError, match="a shape bug"):  # not the machine's fault: not dressed up as one
        list(Engine(tiny_model(), compile=True).generate([1, 2, 3], 5, temperature=0))


def test_a_static_cache_reads_a_power_of_two_span_that_covers_the_context():
    from glassgpt.engine import static_span

    assert [static_span(n, 512) for n in (1, 64, 65, 128, 129, 300, 512)] == [64, 64, 128, 128, 256, 512, 512]
    assert static_span(40, 48) == 48 and static_span(700, 1000) == 1000  # never more than the cache holds
    assert all(static_span(n, 2048) >= n for n in range(1, 2049))


def test_decode_steps_over_static_spans_sample_from_the_logits_of_a_full_forward(monkeypatch, sampled_logits):
    """The static cache and its spans, run eagerly (the compiler swapped for the model itself, so
    the test is quick): a 160-token context reads 64, then 128, then 160 slots, and every step's
    logits are the full forward pass's, across a window slide; compile_now visits every span."""
    import glassgpt.engine as engine_module

    spans_seen = []

    def not_compiled(model):
        def step(ids, kv_cache):
            spans_seen.append(kv_cache.span)
            return model(ids, kv_cache=kv_cache)
        return step

    monkeypatch.setattr(engine_module, "compile_decode_step", not_compiled)
    model = tiny_model(tiny_config(sequence_len=160)).eval()
    engine = Engine(model, compile=True)
    assert engine.compile_now() == 3 and list(dict.fromkeys(spans_seen)) == [64, 128, 160]
    spans_seen.clear()
    prompt = list(range(1, 41))
    tokens = list(engine.generate(prompt, 200, temperature=0.9, seed=2))
    assert set(spans_seen) == {64, 128, 160}
    assert tokens == list(Engine(model).generate(prompt, 200, temperature=0.9, seed=2))
    context = list(prompt)
    for step, (logits, token) in enumerate(zip(sampled_logits, tokens)):
        if step % 7 == 0 or len(context) in (63, 64, 65, 128, 129, 160):
            full = model(torch.tensor([context]))[:, -1]
            assert torch.allclose(logits, full, atol=1e-5), f"step {step}, context {len(context)}"
        context.append(token)
        if len(context) > 160:
            context = context[-80:]
