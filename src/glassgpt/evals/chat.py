"""Evaluating a chat model: the questions of each task's test split, asked in the chat format the
model was trained on (`chat.render.render_for_completion`), and answered two ways.

- categorical (ARC-Easy, ARC-Challenge, MMLU): no generation. The model reads the question with its
  lettered choices, and its answer is the offered letter with the highest logit at the first
  position of its reply. Chance is 1/letters.
- generative (GSM8K, HumanEval, spelling, arithmetic, identity): the model writes a reply with the
  engine, the calculator on, exactly as in `glassgpt chat`; a checker reads the reply. Chance is 0.
  Greedy (temperature 0), except identity, which is judged on seeded samples at the chat's
  default temperature, as a user would meet it.

    gsm8k       the number after the reply's last "####" equals the reference's
    humaneval   the reply's code passes the problem's unit tests in a sandboxed subprocess
    spelling    the reply used the calculator and the last number it states is the right count
    arithmetic  the reply's calculator call gives the right result and the reply states it
    identity    the reply states the fact asked about (name, size, trainer, context, data), from
                held-out phrasings of the question

ChatCORE (as in nanochat) is the mean centred accuracy of ARC-Easy, ARC-Challenge, MMLU, GSM8K,
HumanEval and spelling; arithmetic and identity are glassgpt's own checks of what the chat stages
teach, reported beside it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from glassgpt.tasks.base import Facts

CATEGORICAL, GENERATIVE = "categorical", "generative"
IDENTITY_SAMPLES = 3  # seeded samples per held-out identity question
IDENTITY_TEMPERATURE = 0.6  # glassgpt chat's default
IDENTITY_TOP_K = 50


@dataclass(frozen=True)
class ChatTask:
    name: str
    kind: str
    """categorical | generative."""
    what: str
    items: Callable[[Facts], list] = field(repr=False)
    """Every item of the test split, in a fixed order."""
    in_chatcore: bool = True
    max_new_tokens: int = 0
    """Longest reply (generative tasks)."""


# --- items ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Generative:
    """One question for a generative task: what the user says and how to judge the reply."""

    messages: list[dict]
    check: Callable[["Reply"], tuple[bool, dict]]  # reply -> (correct, other measures)
    expected: str  # the right answer, in words, for the report


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _multiple_choice(task: str) -> Callable[[Facts], list]:
    def load(facts: Facts) -> list:
        from glassgpt.tasks.multiple_choice import items

        return items(task, "test")
    return load


def _gsm8k(facts: Facts) -> list[Generative]:
    from glassgpt.tasks import gsm8k

    def item(record: dict) -> Generative:
        expected = gsm8k.extract_answer(record["answer"])

        def check(reply) -> tuple[bool, dict]:
            return gsm8k.extract_answer(reply.text) == expected, {"used_calculator": _calls(reply) > 0}
        return Generative(_user(record["question"]), check, f"#### {expected}")

    return [item(record) for record in gsm8k.records("test")]


def _humaneval(facts: Facts) -> list[Generative]:
    from glassgpt.tasks import humaneval

    def item(record: dict) -> Generative:
        def check(reply) -> tuple[bool, dict]:
            from glassgpt.evals.sandbox import run_python

            outcome = run_python(humaneval_program(record, reply.text))
            return outcome.passed, {"outcome": outcome.status}
        return Generative(_user(humaneval.REQUEST + record["prompt"]), check, f"code passing {record['task_id']}'s tests")

    return [item(record) for record in humaneval.records()]


def humaneval_program(record: dict, reply: str) -> str:
    """The program that tests a reply: its code (a fenced block if it wrote one), completed with
    the prompt when it only wrote the function's body, then the problem's tests."""
    fenced = re.search(r"```(?:python|py)?\n(.*?)(?:```|$)", reply, re.DOTALL)
    code = fenced.group(1) if fenced else reply
    if f"def {record['entry_point']}" in code:
        imports = "".join(line + "\n" for line in record["prompt"].splitlines()
                          if line.startswith(("import ", "from ")))
        code = imports + code
    else:
        code = record["prompt"] + code
    return f"{code}\n\n{record['test']}\n\ncheck({record['entry_point']})\n"


def _tool_answer(conversation: dict) -> tuple[str, str]:
    """(the reference's tool call, the calculator's result) in a synthetic task's conversation."""
    parts = conversation["messages"][-1]["content"]
    call = next(p["text"] for p in parts if p["type"] == "tool_call")
    result = next(p["text"] for p in parts if p["type"] == "tool_result")
    return call, result


def _calls(reply) -> int:
    return sum(part["type"] == "tool_call" for part in reply.parts)


def _first_call_result(reply) -> str | None:
    from glassgpt.calculator import calculate

    call = next((p["text"] for p in reply.parts if p["type"] == "tool_call"), None)
    if call is None:
        return None
    result = calculate(call)
    return result.text if result.ok else None


def _arithmetic(facts: Facts) -> list[Generative]:
    from glassgpt.tasks import arithmetic

    def item(conversation: dict) -> Generative:
        call, result = _tool_answer(conversation)

        def check(reply) -> tuple[bool, dict]:
            computed = _first_call_result(reply)
            correct = computed == result and _states(reply.text, result)
            return correct, {"well_formed_call": computed is not None}
        return Generative(conversation["messages"][:-1], check, f"{call} = {result}")

    return [item(c) for c in arithmetic.TASK.conversations("test")]


def _spelling(facts: Facts) -> list[Generative]:
    from glassgpt.tasks import spelling

    def item(conversation: dict) -> Generative:
        call, count = _tool_answer(conversation)

        def check(reply) -> tuple[bool, dict]:
            numbers = re.findall(r"\d+", reply.text)
            used = _calls(reply) > 0
            return used and bool(numbers) and numbers[-1] == count, {"used_calculator": used,
                                                                     "exact_call": _first_call(reply) == call}
        return Generative(conversation["messages"][:-1], check, f"{count} ({call})")

    return [item(c) for c in spelling.TASK.conversations("test")]


def _first_call(reply) -> str | None:
    return next((p["text"].strip() for p in reply.parts if p["type"] == "tool_call"), None)


def _states(text: str, number: str) -> bool:
    """Whether `number` appears in `text` as a whole number (85 in "= 85.", not in "850")."""
    return re.search(rf"(?<![\d.]){re.escape(number)}(?![\d]|\.\d)", text) is not None


def _identity(facts: Facts) -> list[Generative]:
    from glassgpt.tasks.identity import identity_checks

    def item(fact: str, question: str, passes) -> Generative:
        def check(reply) -> tuple[bool, dict]:
            return passes(reply.text), {"fact": fact}
        return Generative(_user(question), check, f"states its {fact}")

    return [item(*check) for check in identity_checks(facts)]


CHAT_TASKS: tuple[ChatTask, ...] = (
    ChatTask("arc-easy", CATEGORICAL, "ARC-Easy test: grade-school science, the letter's logit", _multiple_choice("arc-easy")),
    ChatTask("arc-challenge", CATEGORICAL, "ARC-Challenge test: harder science, the letter's logit",
             _multiple_choice("arc-challenge")),
    ChatTask("mmlu", CATEGORICAL, "MMLU test: exam questions in 57 subjects, the letter's logit", _multiple_choice("mmlu")),
    ChatTask("gsm8k", GENERATIVE, "GSM8K test: maths word problems, calculator on, answer after ####", _gsm8k,
             max_new_tokens=256),
    ChatTask("humaneval", GENERATIVE, "HumanEval: write a Python function, run its tests in a sandbox", _humaneval,
             max_new_tokens=256),
    ChatTask("spelling", GENERATIVE, "count a letter in a held-out word, with the calculator", _spelling,
             max_new_tokens=128),
    ChatTask("arithmetic", GENERATIVE, "held-out + - * / questions, through a calculator call", _arithmetic,
             in_chatcore=False, max_new_tokens=64),
    ChatTask("identity", GENERATIVE, f"held-out questions about itself, {IDENTITY_SAMPLES} seeded samples each",
             _identity, in_chatcore=False, max_new_tokens=96),
)
BY_NAME = {task.name: task for task in CHAT_TASKS}


# --- scoring ----------------------------------------------------------------------------------

def score_categorical(pool: list, indices: list[int], model, tokenizer, device, autocast) -> list[dict]:
    """One result per multiple-choice question pool[i]: the offered letter with the highest logit
    at the first position of the reply. A question longer than the context loses its beginning."""
    from glassgpt.chat.render import render_for_completion
    from glassgpt.evals.scoring import next_token_logits
    from glassgpt.tasks.multiple_choice import LETTERS

    letter_ids = []
    for letter in LETTERS:
        ids = tokenizer.encode(letter)
        if len(ids) != 1:
            raise ValueError(f"the letter {letter!r} is not one token in this tokenizer")
        letter_ids.append(ids[0])
    context = model.config.sequence_len
    prompts = [render_for_completion(pool[i].conversation, tokenizer) for i in indices]
    logits = next_token_logits(model, [p[-context:] for p in prompts], letter_ids, device, autocast,
                               pad_id=tokenizer.bos_id)  # (N, 5)
    results = []
    for row, index in enumerate(indices):
        question = pool[index]
        offered = len(question.letters)
        picked = LETTERS[int(logits[row, :offered].argmax())]
        results.append({"correct": picked == question.answer, "baseline": 1.0 / offered, "picked": picked,
                        "truncated": len(prompts[row]) > context})
    return results


def score_generative(task: ChatTask, pool: list[Generative], indices: list[int], chat_model) -> list[dict]:
    """One result per reply to the questions pool[i] for i in indices: whether it is right, the
    reply as text (tool calls inline) and the task's other measures. A question's seed is its
    index, so a reply does not depend on which other questions are asked, or on which rank."""
    from glassgpt.chat.session import collect
    from glassgpt.errors import UsageError
    from glassgpt.train.stages import reply_text

    hot = task.name == "identity"
    samples = IDENTITY_SAMPLES if hot else 1
    results = []
    for index in indices:
        item = pool[index]
        try:
            ids, _, _ = chat_model.fit(item.messages, task.max_new_tokens)
        except UsageError:  # a question longer than the model's context: counted wrong, and marked
            results += [{"correct": False, "baseline": 0.0, "reply": "", "too_long": True}] * samples
            continue
        events = list(chat_model.reply(item.messages, n=samples, max_tokens=task.max_new_tokens,
                                       temperature=IDENTITY_TEMPERATURE if hot else 0.0,
                                       top_k=IDENTITY_TOP_K if hot else None, seed=index, prompt_ids=ids))
        for row, reply in enumerate(collect(events, samples)):
            correct, extra = item.check(reply)
            results.append({"correct": bool(correct), "baseline": 0.0,
                            "reply": reply_text(e for e in events if e.row == row), **extra})
    return results
