"""Bits per byte over a whole split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import tiny_config
from glassgpt.evals.bpb import evaluate_bpb
from glassgpt.model.gpt import GPT


def test_a_uniform_model_scores_log2_vocab_bits_per_token(tokenizer_512, shakespeare_text):
    model = GPT.build(tiny_config(vocab_size=512))  # zero head: every token gets probability 1/512
    tokens = np.array(tokenizer_512.encode(shakespeare_text[:20_000], bos=True), dtype=np.uint16)
    lengths = tokenizer_512.token_bytes()
    targets = tokens[1:]
    expected = math.log2(512) * (lengths[targets] > 0).sum() / lengths[targets].sum()
    bpb = evaluate_bpb(model, tokens, lengths, seq_len=32, batch_size=8, device="cpu")
    assert bpb == pytest.approx(expected, rel=1e-5)


def test_evaluation_passes_stay_within_their_token_and_logit_bounds():
    from glassgpt.evals.bpb import EVAL_LOGITS_BYTES, EVAL_TOKENS_PER_PASS, eval_rows_per_pass

    for seq_len, vocab in [(128, 4096), (128, 1024), (512, 65536), (64, 300), (4096, 65536)]:
        rows = eval_rows_per_pass(seq_len, vocab)
        assert rows >= 1
        if rows > 1:  # one row may exceed the bounds (it cannot be cut); more rows never do
            assert rows * seq_len <= EVAL_TOKENS_PER_PASS and 4 * rows * seq_len * vocab <= EVAL_LOGITS_BYTES
            assert (rows + 1) * seq_len > EVAL_TOKENS_PER_PASS or 4 * (rows + 1) * seq_len * vocab > EVAL_LOGITS_BYTES


def test_bits_per_byte_do_not_depend_on_how_the_split_is_cut_into_passes(tokenizer_512, shakespeare_text,
                                                                        monkeypatch):
    import glassgpt.evals.bpb as bpb

    model = GPT.build(tiny_config(vocab_size=512))
    torch.nn.init.normal_(model.lm_head.weight, 0.0, 0.05)  # a head that is not uniform
    tokens = np.array(tokenizer_512.encode(shakespeare_text[:2_500], bos=True), dtype=np.uint16)
    lengths = tokenizer_512.token_bytes()
    scores = []
    for tokens_per_pass in (32, 96, 100_000):  # one row, three rows, the whole batch per pass
        monkeypatch.setattr(bpb, "EVAL_TOKENS_PER_PASS", tokens_per_pass)
        scores.append(bpb.evaluate_bpb(model, tokens, lengths, seq_len=32, batch_size=8, device="cpu"))
    assert scores[0] == pytest.approx(scores[1], rel=1e-6) and scores[0] == pytest.approx(scores[2], rel=1e-6)
