"""Tokenise a corpus once into flat, memory-mapped token files: `train.bin` and `val.bin`.

Each document becomes `<|bos|> tokens…`, documents are concatenated, and ids are stored as uint16
when the vocabulary fits (≤ 65,536), else uint32. The files live under
`$GLASSGPT_HOME/shards/<corpus-key>--<tokenizer-fingerprint>/` and are built in a temp folder that
is renamed into place when complete, so an interrupted build leaves nothing behind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glassgpt import atomic, paths
from glassgpt.data.sources import Corpus
from glassgpt.errors import GlassError
from glassgpt.tokenizer import Tokenizer

CHUNK_CHARS = 1 << 22  # long documents are encoded in ~4 MB pieces to bound memory
BATCH_DOCS = 512


@dataclass
class TokenShards:
    train: np.ndarray  # (n_train_tokens,) memory-mapped
    val: np.ndarray  # (n_val_tokens,) memory-mapped
    meta: dict
    folder: Path


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def shards_folder(corpus: Corpus, tokenizer: Tokenizer) -> Path:
    return paths.shards_dir() / f"{corpus.key}--{tokenizer.fingerprint}"


def load_or_build(corpus: Corpus, tokenizer: Tokenizer, on_build=None) -> TokenShards:
    """The corpus's shards for this tokenizer, tokenising it first if needed.
    `on_build(message)` is called before a (possibly long) build starts."""
    folder = shards_folder(corpus, tokenizer)
    if not (folder / "meta.json").exists():
        if on_build:
            on_build(f"tokenising {corpus.key} into {folder}")
        build(corpus, tokenizer, folder)
    meta = json.loads((folder / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    return TokenShards(
        train=_memmap(folder / "train.bin", dtype),
        val=_memmap(folder / "val.bin", dtype),
        meta=meta,
        folder=folder,
    )


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def build(corpus: Corpus, tokenizer: Tokenizer, folder: Path) -> None:
    dtype = token_dtype(tokenizer.vocab_size)
    meta: dict = {"corpus": corpus.key, "tokenizer": tokenizer.fingerprint, "dtype": dtype.name,
                  "vocab_size": tokenizer.vocab_size}
    with atomic.atomic_dir(folder) as tmp:
        for split, documents in (("train", corpus.train()), ("val", corpus.val())):
            n_tokens, n_bytes, n_docs = write_tokens(documents, tokenizer, tmp / f"{split}.bin", dtype)
            meta.update({f"{split}_tokens": n_tokens, f"{split}_bytes": n_bytes, f"{split}_docs": n_docs})
            if n_bytes == 0 or not n_tokens:
                raise GlassError(
                    f"the {split} split of {corpus.key} is empty (no text besides whitespace); "
                    "give a corpus with more text"
                )
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))


def write_tokens(documents: Iterator[str], tokenizer: Tokenizer, path: Path, dtype: np.dtype):
    """Append every document's tokens to `path`; returns (tokens, bytes of text, documents).
    Whitespace-only documents are skipped: they teach nothing."""
    n_tokens = n_bytes = n_docs = 0
    with open(path, "wb") as out:
        batch: list[str] = []
        starts: list[bool] = []  # does this piece begin a document (gets <|bos|>)?

        def flush() -> None:
            nonlocal n_tokens
            for ids, starts_doc in zip(tokenizer.encode_batch(batch), starts):
                array = np.asarray([tokenizer.bos_id, *ids] if starts_doc else ids, dtype=dtype)
                out.write(array.tobytes())
                n_tokens += len(array)
            batch.clear()
            starts.clear()

        for document in documents:
            if not document.strip():
                continue
            n_docs += 1
            n_bytes += len(document.encode("utf-8"))
            for i, piece in enumerate(split_long(document)):
                batch.append(piece)
                starts.append(i == 0)
                if len(batch) >= BATCH_DOCS:
                    flush()
        flush()
    return n_tokens, n_bytes, n_docs


_SAFE_CUT = re.compile(r"\n(?=\S)")


def split_long(text: str, limit: int = CHUNK_CHARS) -> Iterator[str]:
    """Cut text longer than `limit` after a newline that precedes a non-space character. The split
    regex never joins across such a point, so the pieces encode to the same tokens as the whole."""
    start = 0
    while len(text) - start > limit:
        cut = None
        for match in _SAFE_CUT.finditer(text, start + limit // 2, start + limit):
            cut = match.end()
        if cut is None:  # no safe point (e.g. one giant line): cut anyway, nearly lossless
            cut = start + limit
        yield text[start:cut]
        start = cut
    yield text[start:]
