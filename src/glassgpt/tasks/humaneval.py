"""HumanEval: 164 Python functions to complete from their signature and docstring (evaluation only).

The conversation asks for the function and answers with the reference solution (prompt +
canonical_solution), so it reads like the chat the evaluation will have. Running the unit tests
needs more than the conversation (`test`, `entry_point`), so the evaluation reads `records()`.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

from glassgpt.data.manifest import fetch
from glassgpt.tasks.base import Task
from glassgpt.tasks.common import single_turn

FILE = "humaneval/HumanEval.jsonl.gz"
REQUEST = "Complete this Python function:\n\n"


@functools.lru_cache(maxsize=4)
def _read(path: Path) -> tuple[dict, ...]:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return tuple(json.loads(line) for line in file if line.strip())


def records() -> list[dict]:
    """The raw problems: task_id, prompt, canonical_solution, test, entry_point."""
    return [dict(record) for record in _read(fetch(FILE))]


def conversation(record: dict) -> dict:
    return single_turn(REQUEST + record["prompt"], record["prompt"] + record["canonical_solution"])


TASK = Task(
    name="humaneval",
    description="HumanEval: complete 164 Python functions (evaluation only)",
    provenance="openai/human-eval HumanEval.jsonl.gz, MIT licence",
    load=lambda split, facts: [conversation(record) for record in records()],
    splits=("test",),
    files=(FILE,),
    evaluation_only=True,
    sizes={"test": 164},
)
