"""HellaSwag (validation, 10,042 items): pick the most sensible ending of a short scene
(evaluation only).

The file is llama.cpp's text layout of it, 6 lines per item: the context (activity label + ": " +
ctx, already cleaned of [header]/[step] markers), the gold label (0-3), then the four endings.
`records()` gives them raw, for a completion-style evaluation that scores each ending; the
conversations ask the same item in the multiple-choice format of tasks.multiple_choice, for a
letter-scoring evaluation.
"""

from __future__ import annotations

import bz2
import functools
from pathlib import Path

from glassgpt.data.manifest import fetch
from glassgpt.tasks.base import Task
from glassgpt.tasks.multiple_choice import Question, make_question

FILE = "hellaswag/hellaswag_val_full.txt.bz2"
LINES_PER_ITEM = 6
INSTRUCTION = "Answer with the letter of the ending that fits best."


@functools.lru_cache(maxsize=4)
def _read(path: Path) -> tuple[dict, ...]:
    with bz2.open(path, "rt", encoding="utf-8") as file:
        lines = file.read().split("\n")
    while lines and not lines[-1]:  # the file ends with a newline
        lines.pop()
    if len(lines) % LINES_PER_ITEM:
        raise ValueError(f"{path}: {len(lines)} lines is not a multiple of {LINES_PER_ITEM}")
    return tuple({"context": lines[i], "label": int(lines[i + 1]), "endings": lines[i + 2:i + 6]}
                 for i in range(0, len(lines), LINES_PER_ITEM))


def records() -> list[dict]:
    """The raw items: context, label (index of the right ending, 0-3), endings (4 strings)."""
    return [{**record, "endings": list(record["endings"])} for record in _read(fetch(FILE))]


def question(record: dict) -> Question:
    return make_question(record["context"], record["endings"], record["label"], INSTRUCTION)


TASK = Task(
    name="hellaswag",
    description="HellaSwag validation: choose the right ending of a scene (evaluation only)",
    provenance=("rowanz/hellaswag validation set (MIT), in llama.cpp's text layout from "
                "klosax/hellaswag_text_data"),
    load=lambda split, facts: [question(record).conversation for record in records()],
    splits=("test",),
    files=(FILE,),
    evaluation_only=True,
    sizes={"test": 10042},
)
