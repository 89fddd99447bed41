"""Scoring of every evaluation type, on hand-made models whose right answer is known: a scoring bug
(the wrong option picked, an off-by-one position, a baseline that does not match) cannot hide."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch

from glassgpt.evals import chat as chat_evals
from glassgpt.evals import core, runner
from glassgpt.evals.scoring import next_token_logits, score_continuations
from glassgpt.tasks.multiple_choice import make_question


class Bigram(torch.nn.Module):
    """A model whose next-token logits depend only on the current token: table[x_t]. Setting a row
    makes it prefer (or avoid) a token after a given one; any ids -> logits module can be scored."""

    def __init__(self, vocab: int, sequence_len: int = 256):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(vocab, vocab))
        self.config = type("Config", (), {"sequence_len": sequence_len})()

    def forward(self, idx):
        return self.table[idx]  # (B, T, V)

    def prefer(self, after: int, token: int, strength: float = 8.0) -> None:
        with torch.no_grad():
            self.table[after, token] = strength


def test_scores_are_the_log_probabilities_at_the_right_positions():
    model = Bigram(10)
    model.prefer(3, 7)  # after 3, token 7 is likely; everything else is uniform
    p7 = math.exp(8) / (math.exp(8) + 9)
    context, continuation = [1, 2, 3], [7, 5]
    scored = score_continuations(model, [(context, continuation), ([1, 3], [5])])
    assert scored[0].logprob_sum == pytest.approx(math.log(p7) + math.log(0.1))
    assert scored[0].logprob_mean == pytest.approx(scored[0].logprob_sum / 2)
    assert not scored[0].greedy  # after 7 every token ties and the argmax is token 0, not 5
    assert scored[1].logprob_sum == pytest.approx(math.log((1 - p7) / 9))
    assert score_continuations(model, [([3], [7])])[0].greedy


def test_padding_in_a_shared_batch_changes_nothing():
    model = Bigram(12)
    for a, b in [(1, 4), (4, 9), (9, 2), (2, 11)]:
        model.prefer(a, b, 3.0)
    pairs = [([1, 4, 9], [2, 11]), ([5], [6]), ([1, 2, 3, 4, 5, 6, 7], [8, 9, 10])]
    together = score_continuations(model, pairs, tokens_per_pass=1000)
    alone = [score_continuations(model, [pair], tokens_per_pass=1000)[0] for pair in pairs]
    one_per_pass = score_continuations(model, pairs, tokens_per_pass=1)
    for a, b, c in zip(together, alone, one_per_pass):
        assert a.logprob_sum == pytest.approx(b.logprob_sum) == pytest.approx(c.logprob_sum)
        assert a.greedy == b.greedy == c.greedy


def test_next_token_logits_read_the_position_after_each_prompt():
    model = Bigram(8)
    model.prefer(5, 2)
    model.prefer(6, 3)
    logits = next_token_logits(model, [[1, 1, 5], [6], [1, 6, 1, 1]], [2, 3])
    assert logits[0].argmax() == 0 and logits[1].argmax() == 1
    assert logits[2].tolist() == [0.0, 0.0]


def test_a_sequence_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="longer than the model's context"):
        score_continuations(Bigram(5, sequence_len=3), [([1, 2, 3], [4, 1])])


# --- CORE task types, each on a case whose answer the model is forced to prefer --------------------

def _forced_for(tokenizer, model: Bigram, context: str, continuation: str) -> None:
    """Make `model` predict exactly `continuation`'s tokens after `context`."""
    ids, cont = core.tokenized(tokenizer, context, continuation)
    sequence = ids + cont
    for before, after in zip(sequence[len(ids) - 1:-1], cont):
        model.prefer(before, after, 12.0)


@pytest.mark.parametrize("gold", [0, 1, 2])
def test_multiple_choice_picks_the_choice_the_model_prefers(tokenizer_512, gold):
    task = core.CoreTask("t", "", core.MULTIPLE_CHOICE, 0, " ", "")
    item = {"query": "The animal that barks is the", "choices": ["zebra", "dog", "kitten"], "gold": gold}
    model = Bigram(tokenizer_512.vocab_size)
    context, continuation = core.options(task, item)[gold]
    _forced_for(tokenizer_512, model, context, continuation)
    [result] = core.score_items(task, [item], [0], model, tokenizer_512, "cpu", contextlib.nullcontext,
                                context_len=200)
    assert result["picked"] == gold and result["correct"]
    assert result["baseline"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("gold", [0, 1])
def test_schema_picks_the_context_under_which_the_continuation_is_likeliest(tokenizer_512, gold):
    task = core.CoreTask("t", "", core.SCHEMA, 0, " ", "")
    item = {"context_options": ["The trophy did not fit because the trophy",
                                "The trophy did not fit because the suitcase"],
            "continuation": "was too big.", "gold": gold}
    model = Bigram(tokenizer_512.vocab_size)
    context, continuation = core.options(task, item)[gold]
    ids, cont = core.tokenized(tokenizer_512, context, continuation)
    model.prefer(ids[-1], cont[0], 12.0)  # only the gold context's last token leads into the continuation
    [result] = core.score_items(task, [item], [0], model, tokenizer_512, "cpu", contextlib.nullcontext,
                                context_len=200)
    assert result["picked"] == gold and result["correct"] and result["baseline"] == 0.5


def test_language_modelling_is_right_only_if_every_token_is_the_greedy_choice(tokenizer_512):
    task = core.CoreTask("t", "", core.LANGUAGE_MODELING, 0, " ", "")
    item = {"context": "The capital of France is", "continuation": "Paris, of course"}
    model = Bigram(tokenizer_512.vocab_size)
    _forced_for(tokenizer_512, model, item["context"] + " ", item["continuation"])
    score = lambda: core.score_items(task, [item], [0], model, tokenizer_512, "cpu",  # noqa: E731
                                     contextlib.nullcontext, context_len=200)[0]
    assert score()["correct"] and score()["baseline"] == 0.0
    ids, cont = core.tokenized(tokenizer_512, item["context"] + " ", item["continuation"])
    model.prefer((ids + cont)[-2], 0, 50.0)  # the last token is no longer the argmax
    assert not score()["correct"]


def test_the_continuation_starts_where_the_tokens_of_the_whole_text_part_from_the_context(tokenizer_512):
    context, continuation = "I don't care about ", "signs"
    ids, cont = core.tokenized(tokenizer_512, context, continuation)
    assert ids[0] == tokenizer_512.bos_id
    assert ids[1:] + cont == tokenizer_512.encode(context + continuation)
    assert tokenizer_512.decode(cont).strip() == "signs" and cont


def test_examples_are_drawn_deterministically_never_the_item_and_dropped_when_the_context_is_short(tokenizer_512):
    task = core.CoreTask("t", "", core.LANGUAGE_MODELING, 5, " ", "")
    pool = [{"context": f"Fact number {i} says", "continuation": f"value {i}"} for i in range(20)]
    first = core.examples_for(task, pool, 7)
    assert first == core.examples_for(task, pool, 7) and len(first) == 5 and pool[7] not in first
    assert core.build_prompt(task, pool, 7, tokenizer_512, context_len=500).shots == 5
    short = core.build_prompt(task, pool, 7, tokenizer_512, context_len=20)
    assert short.shots < 5 and not short.truncated
    assert max(len(c) + len(t) - 1 for c, t in short.pairs) <= 20
    cut = core.build_prompt(task, pool, 7, tokenizer_512, context_len=3)
    assert cut.truncated and max(len(c) + len(t) - 1 for c, t in cut.pairs) <= 3


def test_every_core_task_file_reads_as_its_type():
    for task in core.CORE_TASKS:
        items = core.items(task)
        assert items, task.label
        for item in items[:20]:
            options = core.options(task, item)
            assert options and all(context and continuation for context, continuation in options), task.label
            if task.kind != core.LANGUAGE_MODELING:
                assert 0 <= item["gold"] < len(options)


# --- chat tasks ---------------------------------------------------------------------------------------

class FixedLetter(torch.nn.Module):
    """Always prefers one token next: the letter it "answers"."""

    def __init__(self, vocab: int, token: int):
        super().__init__()
        self.vocab, self.token = vocab, token
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"sequence_len": 512})()

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, self.vocab)
        logits[..., self.token] = 5.0
        return logits


@pytest.mark.parametrize("letter", ["A", "C"])
def test_a_categorical_answer_is_the_offered_letter_with_the_highest_logit(tokenizer_512, letter):
    questions = [make_question("Which is red?", ["sky", "grass", "blood"], 2),
                 make_question("Pick one", ["x", "y", "z", "w", "v"], 0)]
    model = FixedLetter(tokenizer_512.vocab_size, tokenizer_512.encode(letter)[0])
    results = chat_evals.score_categorical(questions, [0, 1], model, tokenizer_512, "cpu",
                                           contextlib.nullcontext)
    assert [r["picked"] for r in results] == [letter, letter]
    assert [r["correct"] for r in results] == [letter == "C", letter == "A"]
    assert [r["baseline"] for r in results] == [pytest.approx(1 / 3), pytest.approx(1 / 5)]


class Reply:
    def __init__(self, parts):
        self.parts = parts
        self.text = "".join(p["text"] for p in parts if p["type"] == "text")


def _tool_reply(call: str, result: str, text: str) -> Reply:
    return Reply([{"type": "tool_call", "text": call}, {"type": "tool_result", "text": result},
                  {"type": "text", "text": text}])


def test_arithmetic_is_right_only_through_a_calculator_call_with_the_right_result():
    item = next(i for i in chat_evals.BY_NAME["arithmetic"].items(None) if i.expected.startswith(("1", "2", "3")))
    call, result = item.expected.split(" = ")
    assert item.check(_tool_reply(call, result, f"{call} = {result}."))[0]
    a, op, b = call.split(" ")
    if op in "+*":
        assert item.check(_tool_reply(f"{b} {op} {a}", result, f"That is {result}."))[0]  # the same sum
    assert not item.check(_tool_reply(call, result, "I do not know."))[0]  # never said the result
    assert not item.check(_tool_reply(f"{a} {op} {int(b) + 1}", "x", f"{call} = {result}."))[0]
    assert not item.check(Reply([{"type": "text", "text": f"{call} = {result}."}]))[0]  # no call at all
    assert item.check(Reply([{"type": "tool_call", "text": "37 +"}]))[1]["well_formed_call"] is False


def test_spelling_needs_the_calculator_and_the_right_final_count():
    item = chat_evals.BY_NAME["spelling"].items(None)[0]
    count, _, call = item.expected.partition(" (")
    call = call.removesuffix(")")
    assert item.check(_tool_reply(call, count, f"So there are {count} of them."))[0]
    assert not item.check(_tool_reply(call, count, f"So there are {int(count) + 1} of them."))[0]
    assert not item.check(Reply([{"type": "text", "text": f"There are {count}."}]))[0]


def test_gsm8k_reads_the_number_after_the_last_marks():
    item = chat_evals.BY_NAME["gsm8k"].items(None)[0]
    expected = item.expected.removeprefix("#### ")
    assert item.check(Reply([{"type": "text", "text": f"... so #### 3\nno wait #### {expected}"}]))[0]
    assert not item.check(Reply([{"type": "text", "text": f"#### {expected}1"}]))[0]


def test_a_humaneval_reply_is_completed_by_its_prompt_and_tested():
    from glassgpt.tasks import humaneval

    record = humaneval.records()[0]
    body = record["canonical_solution"]
    whole = record["prompt"] + body
    for reply in (body, f"Here you are:\n```python\n{whole}```", whole):
        program = chat_evals.humaneval_program(record, reply)
        assert program.endswith(f"check({record['entry_point']})\n")
    item = chat_evals.BY_NAME["humaneval"].items(None)[0]
    assert item.check(Reply([{"type": "text", "text": body}]))[0]
    assert not item.check(Reply([{"type": "text", "text": "    return None\n"}]))[0]


# --- the runner's arithmetic ---------------------------------------------------------------------------

def test_centring_puts_chance_at_zero_and_perfect_at_one():
    assert runner.centred(0.25, 0.25) == 0 and runner.centred(1.0, 0.25) == 1
    assert runner.centred(0.0, 0.5) == -1 and runner.centred(0.3, 0.0) == pytest.approx(0.3)
    tasks = {"a": {"centred": 0.2}, "b": {"centred": -0.1}}
    assert runner.mean_centred(tasks, ["a", "b", "c"]) == {"score": pytest.approx(0.05), "tasks": 2, "of": 3}
    assert runner.mean_centred(tasks, ["c"]) is None


def test_a_subset_of_items_is_the_same_every_time_and_every_item_without_a_limit():
    assert runner.chosen_items("mmlu", 1000, 10) == runner.chosen_items("mmlu", 1000, 10)
    assert runner.chosen_items("mmlu", 1000, 10) != runner.chosen_items("arc-easy", 1000, 10)
    assert runner.chosen_items("mmlu", 5, 10) == runner.chosen_items("mmlu", 5, None) == [0, 1, 2, 3, 4]


def test_task_names_take_groups_and_names_and_refuse_typos():
    from glassgpt.errors import UsageError

    assert runner.task_names(None, "base") == runner.GROUPS["core"]
    assert runner.task_names(None, "sft") == runner.GROUPS["chat"]
    assert runner.task_names("arithmetic,chat", "sft")[0] == "arithmetic"
    assert len(runner.task_names("all", "sft")) == len(runner.GROUPS["core"]) + len(runner.GROUPS["chat"])
    with pytest.raises(UsageError, match="did you mean arithmetic"):
        runner.task_names("arithmetc", "sft")


def test_results_written_as_strict_json_with_null_for_non_finite_numbers(glass_home):
    (glass_home / "runs" / "r").mkdir(parents=True)
    document = {"run": "r", "step": 1, "stage": "sft",
                "tasks": {"mmlu": {"centred": float("nan"), "accuracy": float("inf")}}}
    runner.write_results("r", document)
    text = runner.results_path("r").read_text()

    def refuse(constant):
        raise ValueError(constant)

    parsed = json.loads(text, parse_constant=refuse)
    assert parsed["tasks"]["mmlu"]["accuracy"] is None
