"""The arithmetic task: "What is 37 + 48?", answered by calling the calculator.

A small model cannot add four-digit numbers reliably in its head, so it is taught not to try: it
writes the expression as a tool call (`37 + 48`), the engine puts the calculator's answer after it
(`85`), and the model only has to copy that into its reply (`37 + 48 = 85.`).

Operands are integers of 1-4 digits (the number of digits is drawn first, so small numbers are as
common as large ones). Divisions are mostly exact; a quarter are not, and then the reply says
"is about" because the calculator rounds to six decimals. Each (a, op, b) triple's split is fixed
by its hash (10% test, 5% val, the rest train), and no triple appears twice in a split.
"""

from __future__ import annotations

import random

from glassgpt.tasks.base import Facts, Task
from glassgpt.tasks.common import stable_hash

SIZES = {"train": 4000, "val": 200, "test": 500}
OPERATORS = ("+", "-", "*", "/")
INEXACT_DIVISION_RATE = 0.25

# {a} and {b} are the operands in the order they are computed: the expression is always "a op b".
QUESTIONS: dict[str, list[str]] = {
    "+": ["What is {a} + {b}?", "what's {a} plus {b}", "Compute {a} + {b}.", "add {a} and {b}", "Add {b} to {a}.",
          "What is the sum of {a} and {b}?", "Calculate {a}+{b}.", "{a} + {b} = ?", "How much is {a} plus {b}?",
          "What do you get if you add {a} and {b}?", "Please work out {a} + {b}.", "what is {a} plus {b}?"],
    "-": ["What is {a} - {b}?", "what's {a} minus {b}", "Compute {a} - {b}.", "Calculate {a} - {b}.",
          "What do you get if you subtract {b} from {a}?", "Subtract {b} from {a}.", "{a} - {b} = ?",
          "How much is {a} minus {b}?", "What is {a} take away {b}?", "Take {b} away from {a}.",
          "what is {a}-{b}", "Please work out {a} - {b}."],
    "*": ["What is {a} * {b}?", "what's {a} times {b}", "What is {a} multiplied by {b}?", "Compute {a} * {b}.",
          "Calculate {a} x {b}.", "Multiply {a} by {b}.", "What is the product of {a} and {b}?", "{a} × {b} = ?",
          "How much is {a} times {b}?", "what is {a}*{b}", "Please work out {a} * {b}.", "multiply {a} and {b}"],
    "/": ["What is {a} / {b}?", "what's {a} divided by {b}", "Compute {a} / {b}.", "Calculate {a} ÷ {b}.",
          "Divide {a} by {b}.", "What is {a} divided by {b}?", "What do you get if you divide {a} by {b}?",
          "{a} / {b} = ?", "How much is {a} divided by {b}?", "What is the quotient of {a} and {b}?",
          "what is {a}/{b}", "Please work out {a} / {b}."],
}


def split_of(a: int, op: str, b: int) -> str:
    bucket = stable_hash(f"arithmetic:{a}{op}{b}") % 20
    return "test" if bucket < 2 else "val" if bucket == 2 else "train"


def _operand(rng: random.Random) -> int:
    digits = rng.randint(1, 4)
    return rng.randint(1 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _triple(rng: random.Random) -> tuple[int, str, int]:
    op = rng.choice(OPERATORS)
    if op == "/" and rng.random() >= INEXACT_DIVISION_RATE:
        divisor = rng.randint(2, 99)
        return divisor * rng.randint(1, 9999 // divisor), op, divisor
    return _operand(rng), op, _operand(rng)


def _written(n: int, rng: random.Random) -> str:
    """How a number appears in a question: 1234 or, sometimes, 1,234."""
    return f"{n:,}" if n >= 1000 and rng.random() < 0.3 else str(n)


def expression(a: int, op: str, b: int) -> str:
    return f"{a} {op} {b}"


def _conversation(a: int, op: str, b: int, rng: random.Random) -> dict:
    from glassgpt.calculator import calculate  # imported here: the calculator is its own module

    question = rng.choice(QUESTIONS[op]).format(a=_written(a, rng), b=_written(b, rng))
    call = expression(a, op, b)
    result = calculate(call)
    exact = op != "/" or a % b == 0
    reply = f"{call} = {result.text}." if exact else f"{call} is about {result.text}."
    return {"messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": [
            {"type": "tool_call", "text": call},
            {"type": "tool_result", "text": result.text},
            {"type": "text", "text": reply}]}]}


def triples(split: str) -> list[tuple[int, str, int]]:
    """The split's distinct (a, op, b) triples, in generation order."""
    rng = random.Random(f"arithmetic:{split}")
    seen: dict[tuple[int, str, int], None] = {}
    while len(seen) < SIZES[split]:
        triple = _triple(rng)
        if split_of(*triple) == split:
            seen.setdefault(triple)
    return list(seen)


def load(split: str, facts: Facts) -> list[dict]:
    rng = random.Random(f"arithmetic:{split}:phrasing")
    return [_conversation(a, op, b, rng) for a, op, b in triples(split)]


TASK = Task(
    name="arithmetic",
    description="+ - * / on 1-4 digit integers, answered through the calculator tool",
    provenance="generated from templates in glassgpt; (a, op, b) triples split by hash",
    load=load,
    splits=("train", "val", "test"),
    sizes=dict(SIZES),
)
