"""CORE-style evaluation of a base model: few-shot prompts scored by likelihood, no generation.

CORE (from the DCLM paper, as nanochat uses it) averages 22 tasks of three types, each scored by
reading the model's probabilities rather than by sampling an answer:

    multiple_choice     one query, several continuations (the choices): the model's pick is the
                        choice with the highest mean log-probability per token
    schema              several contexts (e.g. the sentence with each candidate for a pronoun), one
                        continuation: the pick is the context under which the continuation is likeliest
    language_modeling   one context, one continuation: right only if every continuation token is
                        the model's greedy (argmax) choice

Each item is preceded by `shots` solved examples of the same task, drawn deterministically (a
seeded draw per item, never the item itself) and separated by blank lines, as in

    <example query><delimiter><its answer>\\n\\n<example ...>\\n\\n<query><delimiter>   → <choice>

A model with a short context gets fewer shots: examples are dropped until the longest option fits,
and only a prompt that does not fit even without examples is cut from the left (counted as
`truncated`).

Accuracy is centred by the task's random baseline, the accuracy of guessing uniformly among the
options (the mean of 1/options over the items; 0 for language modelling):

    centred = (accuracy - baseline) / (1 - baseline)      0 = chance, 1 = perfect, < 0 = worse than chance

and the CORE score is the mean of the centred accuracies. Two of CORE's 22 tasks (SQuAD and CoQA)
are not here: their files are too large for the offline mirror and have no pinned checksum, so the
CORE-style mean is over the other 20 (hellaswag counts twice, zero-shot and 10-shot, as in CORE).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `glassgpt eval --help` lists the tasks from here, so torch and the tokenizer load late
    from glassgpt.tokenizer import Tokenizer

MULTIPLE_CHOICE, SCHEMA, LANGUAGE_MODELING = "multiple_choice", "schema", "language_modeling"
EXAMPLE_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class CoreTask:
    label: str
    """CORE's own name for the task."""
    file: str
    """Its data file (a data-cache path in glassgpt.data.manifest)."""
    kind: str
    """multiple_choice | schema | language_modeling."""
    shots: int
    """Solved examples before each item (fewer when the context is short)."""
    delimiter: str
    """Between a query (or context) and its continuation."""
    what: str


_LOCAL = "core_eval/"
# Shots follow CORE's settings. Delimiters are chosen so that each example reads as the file's text
# intends: "\nAnswer: " after a bare question, nothing after a query that already ends in "Answer: ".
CORE_TASKS: tuple[CoreTask, ...] = (
    CoreTask("hellaswag_zeroshot", "hellaswag/hellaswag_val_full.txt.bz2", MULTIPLE_CHOICE, 0, " ",
             "the likeliest ending of a scene, no examples"),
    CoreTask("jeopardy", _LOCAL + "world_knowledge/jeopardy_all.jsonl", LANGUAGE_MODELING, 10, "\nAnswer: ",
             "Jeopardy! answers, word for word"),
    CoreTask("bigbench_qa_wikidata", _LOCAL + "world_knowledge/bigbench_qa_wikidata.jsonl", LANGUAGE_MODELING, 10, " ",
             "complete a Wikidata fact (\"The country of Novosibirsk is\" Russia)"),
    CoreTask("arc_easy", _LOCAL + "world_knowledge/arc_easy.jsonl", MULTIPLE_CHOICE, 10, "\nAnswer: ",
             "ARC-Easy science questions, the answer text scored"),
    CoreTask("arc_challenge", _LOCAL + "world_knowledge/arc_challenge.jsonl", MULTIPLE_CHOICE, 10, "\nAnswer: ",
             "ARC-Challenge science questions, the answer text scored"),
    CoreTask("copa", _LOCAL + "commonsense_reasoning/copa.jsonl", MULTIPLE_CHOICE, 0, " ",
             "the more plausible cause or effect"),
    CoreTask("commonsense_qa", _LOCAL + "commonsense_reasoning/commonsense_qa.jsonl", MULTIPLE_CHOICE, 10, " ",
             "everyday-knowledge questions, the letter scored"),
    CoreTask("piqa", _LOCAL + "commonsense_reasoning/piqa.jsonl", MULTIPLE_CHOICE, 10, "Answer: ",
             "the better of two ways to reach a physical goal"),
    CoreTask("openbook_qa", _LOCAL + "commonsense_reasoning/openbook_qa.jsonl", MULTIPLE_CHOICE, 0, " ",
             "elementary science, completing the question"),
    CoreTask("lambada_openai", _LOCAL + "language_understanding/lambada_openai.jsonl", LANGUAGE_MODELING, 0, " ",
             "the last word of a passage, which needs the whole passage"),
    CoreTask("hellaswag", "hellaswag/hellaswag_val_full.txt.bz2", MULTIPLE_CHOICE, 10, " ",
             "the likeliest ending of a scene, after 10 examples"),
    CoreTask("winograd", _LOCAL + "language_understanding/winograd_wsc.jsonl", SCHEMA, 0, " ",
             "who a pronoun refers to (Winograd schemas)"),
    CoreTask("winogrande", _LOCAL + "language_understanding/winogrande.jsonl", SCHEMA, 0, " ",
             "who a blank refers to (WinoGrande)"),
    CoreTask("bigbench_dyck_languages", _LOCAL + "symbolic_problem_solving/bigbench_dyck_languages.jsonl",
             LANGUAGE_MODELING, 10, " ", "close the open brackets of a sequence"),
    CoreTask("agi_eval_lsat_ar", _LOCAL + "symbolic_problem_solving/agi_eval_lsat_ar.jsonl", MULTIPLE_CHOICE, 3, " ",
             "LSAT analytical-reasoning puzzles, the letter scored"),
    CoreTask("bigbench_cs_algorithms", _LOCAL + "symbolic_problem_solving/bigbench_cs_algorithms.jsonl",
             LANGUAGE_MODELING, 10, " ", "results of small algorithms (longest common subsequence, ...)"),
    CoreTask("bigbench_operators", _LOCAL + "symbolic_problem_solving/bigbench_operators.jsonl",
             LANGUAGE_MODELING, 10, " ", "apply an operator defined in words"),
    CoreTask("bigbench_repeat_copy_logic", _LOCAL + "symbolic_problem_solving/bigbench_repeat_copy_logic.jsonl",
             LANGUAGE_MODELING, 10, " ", "repeat words as instructed"),
    CoreTask("boolq", _LOCAL + "reading_comprehension/boolq.jsonl", MULTIPLE_CHOICE, 10, "\nAnswer: ",
             "yes/no questions about a passage"),
    CoreTask("bigbench_language_identification", _LOCAL + "language_understanding/bigbench_language_identification.jsonl",
             MULTIPLE_CHOICE, 10, "", "which language a sentence is in, the letter scored"),
)
BY_LABEL = {task.label: task for task in CORE_TASKS}


# --- items --------------------------------------------------------------------------------------

def items(task: CoreTask) -> list[dict]:
    """Every item of the task, in the file's order, as the file's own fields (HellaSwag's text
    layout is turned into the multiple-choice fields: query, choices, gold)."""
    if task.file.startswith("hellaswag/"):
        from glassgpt.tasks import hellaswag

        return [{"query": r["context"], "choices": r["endings"], "gold": r["label"]} for r in hellaswag.records()]
    from glassgpt.data.manifest import fetch
    from glassgpt.tasks.common import read_jsonl

    return [dict(row) for row in read_jsonl(fetch(task.file))]


def options(task: CoreTask, item: dict) -> list[tuple[str, str]]:
    """(context, continuation) texts of each option the model chooses among (one for language
    modelling), without examples."""
    d = task.delimiter
    if task.kind == MULTIPLE_CHOICE:
        return [(item["query"] + d, choice) for choice in item["choices"]]
    if task.kind == SCHEMA:
        return [(context + d, item["continuation"]) for context in item["context_options"]]
    return [(item["context"] + d, item["continuation"])]


def solved(task: CoreTask, item: dict) -> str:
    """An item with its right answer, as a few-shot example."""
    context, continuation = options(task, item)[item.get("gold", 0)]
    return context + continuation


def random_baseline(task: CoreTask, item: dict) -> float:
    """The chance of guessing this item right: 1/options, or 0 when the answer must be written."""
    return 0.0 if task.kind == LANGUAGE_MODELING else 1.0 / len(options(task, item))


def examples_for(task: CoreTask, pool: list[dict], index: int) -> list[dict]:
    """The task's solved examples for item `index` of `pool`: a draw seeded by the task and the
    index, so every run (and every rank) shows an item the same examples; never the item itself."""
    if task.shots == 0 or len(pool) < 2:
        return []
    rng = random.Random(f"core:{task.label}:{index}")
    others = rng.sample(range(len(pool) - 1), min(task.shots, len(pool) - 1))
    return [pool[i if i < index else i + 1] for i in others]


# --- tokens -------------------------------------------------------------------------------------

@dataclass
class Prompt:
    """One item's options as token ids, ready to score."""

    pairs: list[tuple[list[int], list[int]]]  # (context ids starting with <|bos|>, continuation ids) per option
    shots: int  # examples that fit
    truncated: bool  # the prompt was cut from the left even without examples


def tokenized(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(bos + context ids, continuation ids) whose concatenation is exactly bos + encode(context +
    continuation): a BPE token may span the boundary (" " + "signs" is one token " signs"), so the
    continuation starts where the tokens of the whole text stop agreeing with those of the context."""
    whole = tokenizer.encode(context + continuation)
    alone = tokenizer.encode(context)
    shared = 0
    while shared < min(len(whole), len(alone)) and whole[shared] == alone[shared]:
        shared += 1
    if shared == len(whole):  # the continuation vanished into the context's last token
        shared -= 1
    return [tokenizer.bos_id] + whole[:shared], whole[shared:]


def build_prompt(task: CoreTask, pool: list[dict], index: int, tokenizer: Tokenizer, context_len: int) -> Prompt:
    """Item `index` of `pool` with as many of its examples as fit in `context_len` tokens of input."""
    examples = [solved(task, example) + EXAMPLE_SEPARATOR for example in examples_for(task, pool, index)]
    bare = [tokenized(tokenizer, context, continuation) for context, continuation in options(task, pool[index])]
    # Start from the number of examples whose separately counted tokens fit (tokens do not merge
    # across the blank line between examples, so this is exact or close), then check for real.
    room = context_len - max(len(c) + len(t) - 1 for c, t in bare)
    shots, used = 0, 0
    for text in examples:
        used += len(tokenizer.encode(text))
        if used > room:
            break
        shots += 1
    for shots in range(shots, -1, -1):
        if shots == 0:
            pairs = bare
        else:
            prefix = "".join(examples[:shots])
            pairs = [tokenized(tokenizer, prefix + context, continuation)
                     for context, continuation in options(task, pool[index])]
        # The model reads context + continuation minus its last token.
        if max(len(c) + len(t) - 1 for c, t in pairs) <= context_len:
            return Prompt(pairs, shots, False)
    return Prompt([_cut_left(c, t, context_len) for c, t in bare], 0, True)


def _cut_left(context: list[int], continuation: list[int], context_len: int) -> tuple[list[int], list[int]]:
    continuation = continuation[: context_len]  # pathological: a continuation as long as the context
    keep = max(1, context_len + 1 - len(continuation))
    return context[-keep:], continuation


# --- scoring ------------------------------------------------------------------------------------

def score_items(task: CoreTask, pool: list[dict], indices: list[int], model, tokenizer: Tokenizer, device,
                autocast, context_len: int) -> list[dict]:
    """One result per item index: {"correct", "baseline", "shots", "truncated", "picked"}; all the
    items' options are scored in shared batches."""
    from glassgpt.evals.scoring import score_continuations

    prompts = [build_prompt(task, pool, index, tokenizer, context_len) for index in indices]
    flat = [pair for prompt in prompts for pair in prompt.pairs]
    scores = score_continuations(model, flat, device, autocast, pad_id=tokenizer.bos_id)
    results, at = [], 0
    for index, prompt in zip(indices, prompts):
        item, mine = pool[index], scores[at:at + len(prompt.pairs)]
        at += len(prompt.pairs)
        if task.kind == LANGUAGE_MODELING:
            picked, correct = None, mine[0].greedy
        else:  # the option with the highest mean log-probability per token
            picked = max(range(len(mine)), key=lambda i: mine[i].logprob_mean)
            correct = picked == item["gold"]
        results.append({"correct": bool(correct), "baseline": random_baseline(task, item), "shots": prompt.shots,
                        "truncated": prompt.truncated, "picked": picked})
    return results
