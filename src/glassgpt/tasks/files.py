"""A user's own conversations (.jsonl, one conversation a line) as a task.

Splits: val = every 10th conversation (index % 10 == 9), train = the rest. A file with fewer than
10 conversations would get no val at all, so then every conversation is in train *and* in val:
val then measures how well the model fits those conversations, which is still worth seeing for a
handful of hand-written examples. Errors in the file name its line (read_conversations).
"""

from __future__ import annotations

from pathlib import Path

from glassgpt.chat.conversation import read_conversations
from glassgpt.tasks.base import Task
from glassgpt.tasks.common import every_tenth_is_val

SMALL_FILE = 10  # fewer conversations than this: val = train


def read_file(path: str | Path) -> list[dict]:
    return [conversation for _, conversation in read_conversations(path)]


def split_file(conversations: list[dict], split: str) -> list[dict]:
    if len(conversations) < SMALL_FILE:
        return list(conversations)
    return every_tenth_is_val(conversations, split)


def file_task(path: str | Path) -> Task:
    """The task of a user's .jsonl file, named by the path as given. Read when loaded, not here."""
    name = str(path)
    return Task(
        name=name,
        description=f"your conversations in {name}",
        provenance=f"your file {Path(path).expanduser()}",
        load=lambda split, facts: split_file(read_file(path), split),
    )
