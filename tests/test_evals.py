"""Bits per byte over a whole split."""

from __future__ import annotations

import math

import numpy as np
import pytest

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

