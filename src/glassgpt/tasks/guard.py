"""The contamination guard: no evaluation question may reach a training mixture.

An evaluation score means something only if the model never trained on the questions. Mixtures
take data from many places (and from users' own files), so rather than trusting each source, every
training conversation is checked against fingerprints of every evaluation question:

- ARC-Easy / ARC-Challenge test and MMLU test (the question text), GSM8K test (the question),
  HumanEval (the prompt), HellaSwag (the context);
- the test splits of the synthetic tasks (identity, arithmetic, spelling: their user messages).

A fingerprint is the first 16 hex digits of the sha256 of normalised text (lowercase, whitespace
collapsed, punctuation and symbols stripped at the ends), taken of the whole text and of each paragraph of at
least MIN_PARAGRAPH characters. A training user message matches when any of its fingerprints is an
evaluation fingerprint: the whole message equals an evaluation question, or one of its paragraphs
does (a question pasted into a longer message, or shown above its choices), or it equals one
paragraph of a longer evaluation text. Exact matching after normalisation is deliberate: it is
fast and has no false positives beyond texts that really are the same, and it catches what
actually happens (the same benchmark file copied into another dataset). A paraphrase passes.

Computing the fingerprints reads every evaluation file (a few seconds), so they are cached in
memory and on disk (data cache, `guard/`), keyed by the files' checksums and by the source of the
modules that produce the questions: a changed file or template makes a new key, never a stale set.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

from glassgpt.chat.conversation import text_of

MIN_PARAGRAPH = 20
FINGERPRINT_HEX = 16
GUARD_VERSION = 1  # bump when what is fingerprinted changes in a way the key below cannot see

_WHITESPACE = re.compile(r"\s+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_memory: dict[str, frozenset[str]] = {}


def normalise(text: str) -> str:
    """Lowercase, whitespace collapsed to single spaces, and punctuation, symbols and spaces
    stripped at both ends: '  What is\n the Sun? ' -> 'what is the sun'."""
    text = _WHITESPACE.sub(" ", text.lower())
    start, end = 0, len(text)
    while start < end and _is_edge(text[start]):
        start += 1
    while end > start and _is_edge(text[end - 1]):
        end -= 1
    return text[start:end]


def _is_edge(char: str) -> bool:
    # Unicode punctuation (P*) and symbols such as quotes and "?" in other scripts, plus spaces.
    return char.isspace() or unicodedata.category(char)[0] in "PS"


def _digest(normalised: str) -> str:
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:FINGERPRINT_HEX]


def fingerprints(text: str) -> set[str]:
    """The fingerprints of the whole text and of each paragraph of >= MIN_PARAGRAPH characters."""
    found = set()
    whole = normalise(text)
    if whole:
        found.add(_digest(whole))
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = normalise(paragraph)
        if len(paragraph) >= MIN_PARAGRAPH:
            found.add(_digest(paragraph))
    return found


def is_contaminated(conversation: dict, evaluation: frozenset[str] | set[str]) -> bool:
    """Whether any user message of the conversation shares a fingerprint with `evaluation`."""
    return any(not evaluation.isdisjoint(fingerprints(text_of(message["content"])))
               for message in conversation["messages"] if message["role"] == "user")


# --- the evaluation questions -----------------------------------------------------------------

def evaluation_texts() -> list[str]:
    """Every evaluation question or prompt, as text (see the module docstring for which)."""
    from glassgpt.tasks import arithmetic, gsm8k, hellaswag, humaneval, identity, spelling
    from glassgpt.tasks.multiple_choice import arc_file, mmlu_rows
    from glassgpt.data.manifest import fetch
    from glassgpt.tasks.common import read_jsonl

    texts = [row["question"] for level in ("Easy", "Challenge") for row in read_jsonl(fetch(arc_file(level, "test")))]
    texts += [row["question"] for row in mmlu_rows("test")]
    texts += [row["question"] for row in gsm8k.records("test")]
    texts += [record["prompt"] for record in humaneval.records()]
    texts += [record["context"] for record in hellaswag.records()]
    for task in (identity.TASK, arithmetic.TASK, spelling.TASK):
        # User messages do not depend on the run's facts (only the answers do), so default Facts serve.
        texts += [text_of(message["content"]) for conversation in task.conversations("test")
                  for message in conversation["messages"] if message["role"] == "user"]
    return texts


def _sources() -> list[str]:
    """Relpaths of the files evaluation_texts reads."""
    from glassgpt.tasks import gsm8k, hellaswag, humaneval, spelling
    from glassgpt.tasks.multiple_choice import MMLU_SUBJECTS, arc_file, mmlu_file

    return ([arc_file(level, "test") for level in ("Easy", "Challenge")]
            + [mmlu_file(subject, "test") for subject in MMLU_SUBJECTS]
            + [gsm8k.TEST_FILE, humaneval.FILE, hellaswag.FILE, spelling.WORDS_FILE, spelling.BROWN_FILE])


def cache_key() -> str:
    """A digest of everything the fingerprints depend on: the files' pinned checksums and the
    source of the modules that turn them (or templates) into questions."""
    from glassgpt.data.manifest import FILES
    from glassgpt.tasks import arithmetic, common, gsm8k, hellaswag, humaneval, identity, multiple_choice, spelling

    digest = hashlib.sha256(f"guard v{GUARD_VERSION}\n".encode())
    for relpath in _sources():
        digest.update(f"{relpath} {FILES[relpath][1]}\n".encode())
    for module in (arithmetic, common, gsm8k, hellaswag, humaneval, identity, multiple_choice, spelling):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:FINGERPRINT_HEX]


def evaluation_fingerprints() -> frozenset[str]:
    """Fingerprints of every evaluation question (memory, then disk cache, then computed)."""
    from glassgpt import atomic
    from glassgpt.paths import data_dir

    key = cache_key()
    if key in _memory:
        return _memory[key]
    path = data_dir() / "guard" / f"evaluation-fingerprints-{key}.txt"
    try:
        found = frozenset(path.read_text(encoding="ascii").split())
    except (OSError, UnicodeDecodeError):
        found = frozenset().union(*(fingerprints(text) for text in evaluation_texts()))
        atomic.write_text(path, "\n".join(sorted(found)) + "\n")
    _memory[key] = found
    return found


def clear_memory_cache() -> None:
    """Forget the in-memory copy (tests use it to time the disk cache)."""
    _memory.clear()
