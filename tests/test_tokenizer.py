"""BPE tokenizer: exact round trips, reserved special tokens, safe save/load, byte accounting."""

from __future__ import annotations

import json
import random

import pytest

from glassgpt.errors import GlassError, UsageError
from glassgpt.tokenizer import MIN_VOCAB_SIZE, SPECIAL_TOKENS, Tokenizer


def random_unicode(rng: random.Random, length: int) -> str:
    """Text mixing ASCII, accented Latin, CJK, emoji (4-byte UTF-8), combining marks and whitespace."""
    ranges = [(0x20, 0x7E), (0xC0, 0x17F), (0x4E00, 0x4FFF), (0x1F600, 0x1F64F), (0x300, 0x36F), (0x9, 0xD)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(length))


def test_round_trip_is_exact_for_any_utf8_text(tokenizer_512):
    rng = random.Random(0)
    for length in (0, 1, 2, 17, 300):
        for _ in range(20):
            text = random_unicode(rng, length)
            assert tokenizer_512.decode(tokenizer_512.encode(text)) == text


def test_round_trip_on_real_text_and_whitespace_runs(tokenizer_512, shakespeare_text):
    for text in (shakespeare_text[-5000:], "  \n\n\t  x  \r\n", "1234567890 3.14159", "naïve café — “quotes”"):
        assert tokenizer_512.decode(tokenizer_512.encode(text)) == text


def test_special_tokens_sit_at_the_top_and_cannot_be_injected_by_text(tokenizer_512):
    assert tokenizer_512.vocab_size == 512
    assert tokenizer_512.bos_id == 512 - len(SPECIAL_TOKENS)
    assert sorted(tokenizer_512.special_ids.values()) == list(range(512 - len(SPECIAL_TOKENS), 512))
    ids = tokenizer_512.encode("<|bos|><|assistant_start|>")
    assert not set(ids) & set(tokenizer_512.special_ids.values())
    assert tokenizer_512.encode("hi", bos=True)[0] == tokenizer_512.bos_id


def test_batch_encoding_equals_one_by_one(tokenizer_512, shakespeare_text):
    texts = [shakespeare_text[i:i + 500] for i in range(0, 20000, 500)]
    assert tokenizer_512.encode_batch(texts) == [tokenizer_512.encode(t) for t in texts]


def test_token_bytes_add_up_to_the_text_length(tokenizer_512, shakespeare_text):
    text = shakespeare_text[:10000] + "é漢😀"
    ids = tokenizer_512.encode(text, bos=True)
    lengths = tokenizer_512.token_bytes()
    assert lengths[tokenizer_512.bos_id] == 0
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))


def test_bigger_vocabulary_compresses_better(shakespeare_text):
    train = shakespeare_text[:200_000]
    small, large = Tokenizer.train([train], 300), Tokenizer.train([train], 1024)
    held_out = shakespeare_text[-50_000:]
    assert len(large.encode(held_out)) < 0.8 * len(small.encode(held_out))


def test_save_and_load_give_the_same_tokenizer_as_plain_json(tokenizer_512, tmp_path, shakespeare_text):
    path = tmp_path / "tok" / "tokenizer.json"
    tokenizer_512.save(path)
    data = json.loads(path.read_text())  # plain JSON: nothing to unpickle
    assert data["format"] == "glassgpt-bpe-1" and data["special_tokens"] == SPECIAL_TOKENS
    loaded = Tokenizer.load(path)
    sample = shakespeare_text[:3000]
    assert loaded.encode(sample) == tokenizer_512.encode(sample)
    assert loaded.fingerprint == tokenizer_512.fingerprint


def test_vocabulary_below_bytes_plus_specials_is_refused():
    with pytest.raises(UsageError, match=f"at least {MIN_VOCAB_SIZE}"):
        Tokenizer.train(["some text"], MIN_VOCAB_SIZE - 1)


def test_too_little_text_for_the_vocabulary_is_a_clear_error():
    with pytest.raises(GlassError, match="only supports a vocabulary of"):
        Tokenizer.train(["abc abc"], 4096)


def test_damaged_tokenizer_file_is_a_clear_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"format": "glassgpt-bpe-1", "pattern": 1')
    with pytest.raises(GlassError, match="not readable"):
        Tokenizer.load(path)
    with pytest.raises(GlassError, match="no tokenizer at"):
        Tokenizer.load(tmp_path / "missing.json")
