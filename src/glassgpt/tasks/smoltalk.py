"""SmolTalk: HuggingFaceTB/smol-smoltalk, the chat mixture made for models of a few hundred million
parameters and less (its `messages` column: [{role, content}], system messages included).

train = its four train parquet files, val = its test file (we never evaluate on it, so it is our
validation split). The files are large and are downloaded on first use; there is no copy in the
offline mirror. `conversations(split, limit=n)` reads row groups one at a time and stops at n
valid conversations, fetching the next file only when it needs it, so a mixture that wants 10k
conversations neither downloads nor parses the rest. That takes the *first* n rows in file order;
a fractional weight instead samples the whole split, at the cost of reading all of it.
Conversations that cannot be made valid are skipped (see tasks.common.from_messages).
"""

from __future__ import annotations

from glassgpt.data.manifest import fetch
from glassgpt.tasks.base import Task
from glassgpt.tasks.common import from_messages

TRAIN_FILES = tuple(f"smoltalk/train-{i:05d}-of-00004.parquet" for i in range(4))
VAL_FILES = ("smoltalk/test-00000-of-00001.parquet",)


def _files(split: str) -> tuple[str, ...]:
    return TRAIN_FILES if split == "train" else VAL_FILES


def read(split: str, limit: int | None = None) -> list[dict]:
    """The split's valid conversations in file order, stopping after `limit` of them."""
    import pyarrow.parquet as pq  # imported here: pyarrow is slow to import and few commands need it

    conversations: list[dict] = []
    for relpath in _files(split):
        parquet = pq.ParquetFile(fetch(relpath))
        for group in range(parquet.num_row_groups):
            for messages in parquet.read_row_group(group, columns=["messages"]).column("messages").to_pylist():
                conversation = from_messages(messages)
                if conversation is not None:
                    conversations.append(conversation)
                if limit is not None and len(conversations) >= limit:
                    return conversations
    return conversations


TASK = Task(
    name="smoltalk",
    description="general chat: HuggingFaceTB/smol-smoltalk (about half a million conversations, ~970 MB download)",
    provenance=("HuggingFaceTB/smol-smoltalk on Hugging Face (Apache-2.0), downloaded on first use; "
                "train = its train files, val = its test file"),
    load=lambda split, facts: read(split),
    load_first=lambda split, facts, limit: read(split, limit),
    files=TRAIN_FILES + VAL_FILES,
)
