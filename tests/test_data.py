"""Corpora, token shards and the batch loader."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from glassgpt.data import shards, sources
from glassgpt.data.loader import TokenLoader, sequential_windows
from glassgpt.errors import GlassError, UsageError


# -- sources -------------------------------------------------------------------------------------


def test_tinyshakespeare_split_is_nanogpts_first_90_percent(shakespeare_text):
    corpus = sources.resolve("tinyshakespeare")
    train, val = "".join(corpus.train()), "".join(corpus.val())
    n = len(shakespeare_text)
    assert train == shakespeare_text[: int(n * 0.9)] and val == shakespeare_text[int(n * 0.9):]
    assert len(val) == 111_540


def test_tinyshakespeare_is_verified_and_cached_from_the_mirror(glass_home):
    sources.resolve("tinyshakespeare").prepare()
    cached = glass_home / "data" / "tinyshakespeare" / "input.txt"
    assert cached.stat().st_size == 1_115_394


def test_without_mirror_or_network_the_error_says_how_to_fix_it(monkeypatch):
    monkeypatch.delenv("GLASSGPT_DATA_MIRROR")
    import glassgpt.data.sources as s

    monkeypatch.setattr(s, "TINYSHAKESPEARE", s.RemoteFile("tinyshakespeare/input.txt", "http://127.0.0.1:9/x.txt", None))
    with pytest.raises(GlassError, match="GLASSGPT_DATA_MIRROR"):
        s.resolve("tinyshakespeare").prepare()


def test_user_text_file_is_one_document_split_by_character(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("a" * 90 + "b" * 10)
    corpus = sources.resolve(str(path))
    assert list(corpus.train()) == ["a" * 90] and list(corpus.val()) == ["b" * 10]
    assert corpus.key.startswith("notes-")


def test_jsonl_parquet_and_folders_give_documents_and_a_document_split(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(12)) + "\n")
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(8)], "id": list(range(8))}), folder / "b.parquet")
    (folder / "c.txt").write_text("plain")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    corpus = sources.resolve(str(folder))
    train, val = list(corpus.train()), list(corpus.val())
    assert len(train) + len(val) == 21 and len(val) == 2  # last 10% of documents
    assert train[0] == "doc 0" and val == ["row 7", "plain"]
    glob_corpus = sources.resolve(str(folder / "*.jsonl"))
    assert len(list(glob_corpus.train())) + len(list(glob_corpus.val())) == 12


def test_a_folder_of_few_files_is_cut_at_90_percent_of_its_characters(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "a.txt").write_text("a" * 600)
    (folder / "b.txt").write_text("b" * 400)  # whole files would give a 60/40 split
    corpus = sources.resolve(str(folder))
    assert list(corpus.train()) == ["a" * 600, "b" * 300] and list(corpus.val()) == ["b" * 100]
    assert sources.split_documents(["x" * 10] * 3) == (["x" * 10] * 2 + ["x" * 7], ["x" * 3])


def test_corpus_key_changes_when_the_file_changes(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one")
    first = sources.resolve(str(path)).key
    path.write_text("two, longer")
    assert sources.resolve(str(path)).key != first


@pytest.mark.parametrize("content, message", [
    (b"ok \xff\xfe bad", "not valid UTF-8 (byte 0xff at offset 3)"),
])
def test_invalid_utf8_names_the_byte_and_offset(tmp_path, content, message):
    path = tmp_path / "latin1.txt"
    path.write_bytes(content)
    with pytest.raises(GlassError, match=message.replace("(", r"\(").replace(")", r"\)")):
        list(sources.resolve(str(path)).train())


def test_jsonl_without_text_field_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(GlassError, match=r"d.jsonl:2 has no \"text\""):
        list(sources.resolve(str(path)).train())


def test_parquet_without_text_column_lists_the_columns(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["x"], "id": [1]}), path)
    with pytest.raises(GlassError, match="no 'text' column \\(columns: content, id\\)"):
        list(sources.resolve(str(path)).train())


def test_unknown_source_is_a_usage_error_listing_corpora():
    with pytest.raises(UsageError, match="not a registered corpus \\(tinyshakespeare, brown, fineweb-edu\\)"):
        sources.resolve("shakespeare-complete")
    with pytest.raises(UsageError, match="fineweb-edu:N needs N between 1 and"):
        sources.resolve("fineweb-edu:zero")


def test_fineweb_edu_reads_train_shards_and_the_last_shard_as_val(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "fineweb-edu").mkdir(parents=True)
    for index, prefix in ((0, "train"), (1, "train1"), (sources.FINEWEB_EDU_SHARDS - 1, "val")):
        pq.write_table(pa.table({"text": [f"{prefix} doc {i}" for i in range(5)]}),
                       mirror / "fineweb-edu" / f"shard_{index:05d}.parquet")
    monkeypatch.setenv("GLASSGPT_DATA_MIRROR", str(mirror))
    corpus = sources.resolve("fineweb-edu:2")
    assert list(corpus.train()) == [f"train doc {i}" for i in range(5)] + [f"train1 doc {i}" for i in range(5)]
    assert list(corpus.val()) == [f"val doc {i}" for i in range(5)]
    assert corpus.key == "fineweb-edu-2"


# -- shards --------------------------------------------------------------------------------------


def test_shards_hold_each_document_after_bos_as_uint16(tmp_path, tokenizer_512):
    path = tmp_path / "docs.jsonl"
    docs = [f"document number {i} says hello" for i in range(20)]
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    data = shards.load_or_build(sources.resolve(str(path)), tokenizer_512)
    assert data.train.dtype == np.uint16
    expected = [t for d in docs[:18] for t in tokenizer_512.encode(d, bos=True)]
    assert data.train.tolist() == expected
    assert data.meta["train_docs"] == 18 and data.meta["val_docs"] == 2
    assert data.meta["train_bytes"] == sum(len(d.encode()) for d in docs[:18])


def test_empty_corpus_is_refused_and_leaves_no_shards(tmp_path, tokenizer_512, glass_home):
    path = tmp_path / "blank.txt"
    path.write_text("   \n\t  \n")
    with pytest.raises(GlassError, match="is empty \\(no text besides whitespace\\)"):
        shards.load_or_build(sources.resolve(str(path)), tokenizer_512)
    assert not any((glass_home / "shards").glob("*/meta.json"))
    assert not [p for p in (glass_home / "shards").iterdir() if not p.name.startswith(".")]


def test_long_documents_are_cut_where_the_tokens_do_not_change(tokenizer_512, shakespeare_text):
    text = shakespeare_text[:200_000]
    pieces = list(shards.split_long(text, limit=10_000))
    assert len(pieces) > 15 and "".join(pieces) == text
    assert [t for p in pieces for t in tokenizer_512.encode(p)] == tokenizer_512.encode(text)


# -- loader --------------------------------------------------------------------------------------


def tokens(n: int = 5000) -> np.ndarray:
    return np.arange(n, dtype=np.uint16) % 1000


def test_batches_are_shifted_windows():
    x, y = TokenLoader(tokens(), batch_size=4, seq_len=16, seed=0).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal((y - x) % 1000, torch.ones_like(x))


def test_same_seed_same_batches_different_seed_different_batches():
    a, b, c = (TokenLoader(tokens(), 4, 16, seed=s) for s in (1, 1, 2))
    for _ in range(5):
        xa, xb, xc = a.next_batch()[0], b.next_batch()[0], c.next_batch()[0]
        assert torch.equal(xa, xb)
    assert not torch.equal(xa, xc)


def test_restored_cursor_continues_with_exactly_the_same_batches():
    original = TokenLoader(tokens(), 4, 16, seed=3)
    for _ in range(100):  # crosses several epoch boundaries (77 windows / 4 per batch)
        original.next_batch()
    saved = json.loads(json.dumps(original.state_dict()))
    restored = TokenLoader(tokens(), 4, 16, seed=0)
    restored.load_state_dict(saved)
    for _ in range(30):
        assert torch.equal(original.next_batch()[0], restored.next_batch()[0])


def test_ranks_see_disjoint_windows_and_together_cover_an_epoch():
    data = tokens(16 * 40 + 1)
    loaders = [TokenLoader(data, 2, 16, seed=5, rank=r, world_size=2) for r in range(2)]
    seen = []
    for _ in range(9):
        batches = [loader.next_batch()[0][:, 0].tolist() for loader in loaders]
        assert not set(batches[0]) & set(batches[1])
        seen += batches[0] + batches[1]
    assert len(seen) == len(set(seen))  # within one epoch, no window twice


def test_corpus_shorter_than_one_batch_is_a_clear_error():
    with pytest.raises(GlassError, match="fewer than one batch needs"):
        TokenLoader(tokens(100), batch_size=8, seq_len=32)


def test_sequential_windows_predict_every_token_once():
    data = tokens(1000)
    targets = [t for _, y in sequential_windows(data, 64, 3) for t in y.ravel().tolist() if t != -1]
    assert targets == data[1:].tolist()
    split = [sum((y != -1).sum() for _, y in sequential_windows(data, 64, 3, rank=r, world_size=2)) for r in range(2)]
    assert sum(split) == 999


def test_corpora_joined_with_plus_keep_each_split_and_get_their_own_cache_key():
    from glassgpt.data import sources
    from glassgpt.errors import UsageError

    joined = sources.resolve("brown+tinyshakespeare")
    brown, shakespeare = sources.resolve("brown"), sources.resolve("tinyshakespeare")
    assert joined.key == "brown.tinyshakespeare"
    assert list(joined.train()) == list(brown.train()) + list(shakespeare.train())
    assert list(joined.val()) == list(brown.val()) + list(shakespeare.val())
    assert "Brown" in sources.describe_corpus(joined.key) and "Shakespeare" in sources.describe_corpus(joined.key)
    with pytest.raises(UsageError, match="empty part"):
        sources.resolve("brown+")
    with pytest.raises(UsageError, match="names a corpus twice"):
        sources.resolve("brown+brown")
