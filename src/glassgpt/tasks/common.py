"""What the task modules share: stable hashes (for held-out splits), small file readers, and the
step that turns a dataset's message list into a valid conversation.

Held-out splits are decided by a hash of the item itself (a word, a question, an (a, op, b)
triple), never by where a seeded generator happened to put it: an item's split then cannot change
when the generator, the sizes or the seed change, so a test item can never leak into training.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from glassgpt.chat.conversation import ConversationError, validate


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def held_out_by_rank(items: list[str], test_fraction: float, val_fraction: float, salt: str) -> dict[str, str]:
    """Assign each item a split by the rank of its hash: the lowest-hashing `test_fraction` go to
    test, the next `val_fraction` to val, the rest to train. Used where a list is short (a few dozen
    phrasings), so a plain hash bucket could leave a split empty by bad luck."""
    ranked = sorted(items, key=lambda item: stable_hash(f"{salt}:{item}"))
    n_test = max(1, round(len(ranked) * test_fraction))
    n_val = max(1, round(len(ranked) * val_fraction))
    return {item: ("test" if rank < n_test else "val" if rank < n_test + n_val else "train")
            for rank, item in enumerate(ranked)}


def every_tenth_is_val(items: list, split: str) -> list:
    """The deterministic 90/10 split used for datasets that come without one: the item at index i
    is in val when i % 10 == 9. Spread through the file, so val sees the whole file's mix."""
    if split == "val":
        return [item for index, item in enumerate(items) if index % 10 == 9]
    return [item for index, item in enumerate(items) if index % 10 != 9]


@functools.lru_cache(maxsize=32)
def read_jsonl(path: Path) -> tuple[dict, ...]:
    """Every record of a .jsonl file (cached per path; a tuple, so no caller can change it)."""
    with open(path, encoding="utf-8") as file:
        return tuple(json.loads(line) for line in file if line.strip())


@functools.lru_cache(maxsize=8)
def read_json(path: Path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def single_turn(user, assistant) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def from_messages(messages: list[dict]) -> dict | None:
    """A valid conversation made from a dataset's [{role, content}] list, or None if it cannot be.

    Repairs only what is safe to repair: an empty system message is dropped (it says nothing), and
    trailing user turns are dropped (a training conversation ends with the assistant). Anything else
    (roles out of order, empty turns, unknown roles) means None: guessing would teach the model a
    conversation nobody had.
    """
    kept = [{"role": m.get("role"), "content": m.get("content")} for m in messages
            if not (m.get("role") == "system" and not (m.get("content") or "").strip())]
    while kept and kept[-1]["role"] == "user":
        kept.pop()
    try:
        return validate({"messages": kept}, complete=True)
    except ConversationError:
        return None
