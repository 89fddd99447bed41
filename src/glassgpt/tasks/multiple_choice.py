"""Multiple-choice tasks: ARC-Easy, ARC-Challenge and MMLU, asked one way and answered with a letter.

Every question is shown the same way, so the model learns one format and the evaluation can score
it by comparing the probabilities of the letters:

    <question>

    A. <choice>
    B. <choice>
    ...

    Answer with the letter of the correct choice.

and the assistant's reply is exactly the letter ("B"). `items(task, split)` gives the evaluation
each question as (conversation, correct letter, letters offered): ARC has 3-5 choices, so the
letters offered differ between questions.

ARC's answer keys are labels ("A".."E", or "1".."4" in some rows); the answer is found by the
position of the key among the choice labels, and letters are given by position, so "1".."4"
become A..D. MMLU's answer is a 0-based index. MMLU has no validation split of its own: val is
a fixed 10% of its dev questions (by a hash of the question), train the other 90%, test the
57 subject test files.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import NamedTuple

from glassgpt.data.manifest import FILES, fetch, fetch_group
from glassgpt.tasks.base import Task
from glassgpt.tasks.common import read_jsonl, single_turn, stable_hash

LETTERS = "ABCDE"
INSTRUCTION = "Answer with the letter of the correct choice."

ARC_SPLITS = {"train": "train", "val": "validation", "test": "test"}
ARC_SIZES = {"Easy": {"train": 2251, "val": 570, "test": 2376},
             "Challenge": {"train": 1119, "val": 299, "test": 1172}}

# The subjects are read from the manifest rather than by listing a folder: on a user's machine the
# files are fetched one by one, so there is no folder to list until they are all there.
MMLU_SUBJECTS = tuple(sorted(relpath.removeprefix("mmlu/test/").removesuffix("_test.csv")
                             for relpath in FILES if relpath.startswith("mmlu/test/")))
assert len(MMLU_SUBJECTS) == 57, MMLU_SUBJECTS


class Question(NamedTuple):
    """One multiple-choice question, as the evaluation needs it."""

    conversation: dict
    answer: str
    """The correct letter."""
    letters: str
    """The letters offered, in order ("ABCD"); the answer is one of them."""


def user_message(question: str, choices: list[str], instruction: str = INSTRUCTION) -> str:
    lines = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices))
    return f"{question.strip()}\n\n{lines}\n\n{instruction}"


def make_question(question: str, choices: list[str], answer_index: int, instruction: str = INSTRUCTION) -> Question:
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"{len(choices)} choices; multiple choice here has 2 to {len(LETTERS)}")
    letter = LETTERS[answer_index]
    return Question(single_turn(user_message(question, choices, instruction), letter), letter,
                    LETTERS[: len(choices)])


# --- ARC ------------------------------------------------------------------------------------------

def arc_file(level: str, split: str) -> str:
    return f"arc/ARC-{level}-{ARC_SPLITS[split]}.jsonl"


def arc_question(row: dict) -> Question:
    """An ARC row as a Question: the answer is the position of answerKey among the labels."""
    labels = row["choices"]["label"]
    return make_question(row["question"], row["choices"]["text"], labels.index(row["answerKey"]))


# --- MMLU -----------------------------------------------------------------------------------------

def mmlu_file(subject: str, split: str) -> str:
    folder = "test" if split == "test" else "dev"
    return f"mmlu/{folder}/{subject}_{folder}.csv"


@functools.lru_cache(maxsize=256)
def _read_csv(path: Path) -> tuple[dict, ...]:
    with open(path, encoding="utf-8", newline="") as file:
        return tuple(csv.DictReader(file))


def mmlu_rows(split: str) -> list[dict]:
    """The split's raw rows (question, choice0..choice3, answer, subject), subject by subject."""
    rows = []
    files = fetch_group([mmlu_file(subject, split) for subject in MMLU_SUBJECTS], f"MMLU {'test' if split == 'test' else 'dev'} questions, one file per subject")
    for subject, path in zip(MMLU_SUBJECTS, files):
        for row in _read_csv(path):
            if split == "test" or _mmlu_dev_split(row["question"]) == split:
                rows.append({**row, "subject": subject})
    return rows


def _mmlu_dev_split(question: str) -> str:
    return "val" if stable_hash(f"mmlu-dev:{question}") % 10 == 0 else "train"


def mmlu_question(row: dict) -> Question:
    return make_question(row["question"], [row[f"choice{i}"] for i in range(4)], int(row["answer"]))


# --- the tasks --------------------------------------------------------------------------------

def items(task: str, split: str) -> list[Question]:
    """Every question of a multiple-choice task's split: arc-easy, arc-challenge, mmlu, or
    hellaswag (its "test" split; its items offer four endings instead of answers)."""
    if task == "hellaswag":
        from glassgpt.tasks import hellaswag  # imported here: hellaswag builds on this module

        return [hellaswag.question(record) for record in hellaswag.records()]
    if task == "mmlu":
        return [mmlu_question(row) for row in mmlu_rows(split)]
    level = {"arc-easy": "Easy", "arc-challenge": "Challenge"}[task]
    return [arc_question(row) for row in read_jsonl(fetch(arc_file(level, split)))]


def _arc_task(level: str) -> Task:
    name = f"arc-{level.lower()}"
    return Task(
        name=name,
        description=f"ARC-{level}: grade-school science questions, answered with a letter",
        provenance=("AI2 ARC (allenai/ai2_arc, CC BY-SA 4.0), copied from zhaoxlpku/HKU-DASC7606-A2; "
                    "its own train/validation/test splits"),
        load=lambda split, facts: [q.conversation for q in items(name, split)],
        splits=("train", "val", "test"),
        files=tuple(arc_file(level, split) for split in ARC_SPLITS),
        sizes=dict(ARC_SIZES[level]),
    )


ARC_EASY = _arc_task("Easy")
ARC_CHALLENGE = _arc_task("Challenge")

MMLU = Task(
    name="mmlu",
    description="MMLU: 57 subjects of multiple-choice exam questions, answered with a letter",
    provenance=("MMLU (hendrycks/test; a CSV copy from HaeChan0305/MLILAB-FedLLM, no licence stated for "
                "the data); train/val = 90/10 of its dev questions by hash, test = its test files"),
    load=lambda split, facts: [q.conversation for q in items("mmlu", split)],
    splits=("train", "val", "test"),
    files=tuple(mmlu_file(subject, split) for subject in MMLU_SUBJECTS for split in ("train", "test")),
    sizes={"train": 258, "val": 27, "test": 14042},
)
