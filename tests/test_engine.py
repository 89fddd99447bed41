"""Generation: sampling rules, cache equivalence, seeds, stop tokens, streaming text."""

from __future__ import annotations

import torch

from conftest import tiny_config, tiny_model
from glassgpt.engine import Engine, TextStream, complete, sample_next


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
