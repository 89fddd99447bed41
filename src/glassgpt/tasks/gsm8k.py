"""GSM8K: grade-school maths word problems, with the calculator used where the solution computes.

GSM8K's answers already mark their arithmetic: "Natalia sold 48/2 = <<48/2=24>>24 clips". Each
`<<expr=result>>` annotation becomes a tool call (`48/2`) and its tool result (`24`, from our
calculator, so training shows exactly what the engine will put there at inference; the
annotation's own result only where our calculator refuses the expression). The text around it is
kept as it is, so the reply reads "... 48/2 = [call 48/2 -> 24] 24 clips in May." The last line
"#### 72" stays: `extract_answer` reads the final answer from it.

Splits: train = GSM8K train without its last 500 problems, val = those 500, test = GSM8K test.
"""

from __future__ import annotations

import re

from glassgpt.data.manifest import fetch
from glassgpt.tasks.base import Facts, Task
from glassgpt.tasks.common import read_jsonl, single_turn

TRAIN_FILE, TEST_FILE = "gsm8k/train.jsonl", "gsm8k/test.jsonl"
VAL_SIZE = 500
ANNOTATION = re.compile(r"<<(.*?)>>", re.DOTALL)
FINAL_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def answer_parts(answer: str) -> list[dict]:
    """A GSM8K answer as assistant parts: text, then tool_call + tool_result per annotation."""
    from glassgpt.calculator import calculate  # imported here: the calculator is its own module

    parts = []
    pieces = ANNOTATION.split(answer)  # text, annotation, text, annotation, ..., text
    for index, piece in enumerate(pieces):
        if index % 2 == 0:
            # Whitespace alone cannot be a part (the format forbids empty text); GSM8K has none.
            if piece.strip():
                parts.append({"type": "text", "text": piece})
            continue
        expression, _, stated = piece.rpartition("=")
        if not expression:  # no "=": the whole annotation is the expression
            expression, stated = piece, ""
        result = calculate(expression)
        result_text = result.text if result.ok else stated.strip()
        if expression.strip() and result_text:
            parts += [{"type": "tool_call", "text": expression}, {"type": "tool_result", "text": result_text}]
    return parts


def extract_answer(text: str) -> str | None:
    """The number after the last "####" (commas removed), or None: '#### 1,200' -> '1200'."""
    matches = FINAL_ANSWER.findall(text or "")
    return matches[-1].replace(",", "") if matches else None


def records(split: str) -> list[dict]:
    """The split's raw {question, answer} records."""
    if split == "test":
        return list(read_jsonl(fetch(TEST_FILE)))
    rows = read_jsonl(fetch(TRAIN_FILE))
    return list(rows[-VAL_SIZE:] if split == "val" else rows[:-VAL_SIZE])


def load(split: str, facts: Facts) -> list[dict]:
    return [single_turn(row["question"], answer_parts(row["answer"])) for row in records(split)]


TASK = Task(
    name="gsm8k",
    description="grade-school maths word problems, the arithmetic done by calculator tool calls",
    provenance=("openai/grade-school-math (GSM8K), MIT licence; val = the last 500 problems of its train "
                "file, test = its test file"),
    load=load,
    splits=("train", "val", "test"),
    files=(TRAIN_FILE, TEST_FILE),
    sizes={"train": 7473 - VAL_SIZE, "val": VAL_SIZE, "test": 1319},
)
