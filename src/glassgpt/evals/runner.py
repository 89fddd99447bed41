"""`glassgpt eval`: run evaluation tasks on a saved run, and keep the results in its folder.

    tasks      CORE-style base-model tasks (evals/core.py) and chat tasks (evals/chat.py), by name
               or by group: core, chat, all. Default: core for a base run, chat for a chat run.
    items      each task's items, or a fixed random subset of --max-per-task of them (a seeded
               shuffle, so the same N items every time)
    ranks      under torchrun, rank r scores items r, r + W, r + 2W, ...; the results are gathered
               (every rank gets all of them) and rank 0 writes the file
    results    <run>/eval.json: per task its accuracy, random baseline, centred accuracy, counts,
               time and a few examples; and the CORE and ChatCORE means over the tasks present.
               It is rewritten (atomically) after every task, so an interrupted evaluation keeps
               what it finished; results of another checkpoint step are replaced, never mixed in.
"""

from __future__ import annotations

import difflib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from glassgpt import atomic, paths
from glassgpt.chat.conversation import text_of
from glassgpt.errors import UsageError
from glassgpt.evals import chat as chat_evals
from glassgpt.evals import core as core_evals

RESULTS_FILE = "eval.json"
EXAMPLES_KEPT = 3
GROUPS = {"core": [task.label for task in core_evals.CORE_TASKS],
          "chat": [task.name for task in chat_evals.CHAT_TASKS]}
CHATCORE_TASKS = [task.name for task in chat_evals.CHAT_TASKS if task.in_chatcore]
# Items scored per call: likelihood tasks batch many items into each forward pass; a generative
# task writes one reply at a time, so its bar moves per item.
CHUNK = {"core": 32, chat_evals.CATEGORICAL: 64, chat_evals.GENERATIVE: 1}


def task_names(spec: str | None, stage: str) -> list[str]:
    """The tasks a --tasks value names, in a fixed order; the stage's default for None."""
    if not spec:
        return list(GROUPS["core" if stage == "base" else "chat"])
    chosen: list[str] = []
    for word in (w.strip() for w in spec.split(",")):
        if not word:
            raise UsageError(f"--tasks {spec!r} has an empty entry")
        if word == "all":
            names = GROUPS["core"] + GROUPS["chat"]
        elif word in GROUPS:
            names = GROUPS[word]
        elif word in GROUPS["core"] or word in GROUPS["chat"]:
            names = [word]
        else:
            known = ["all", *GROUPS, *GROUPS["core"], *GROUPS["chat"]]
            close = difflib.get_close_matches(word, known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"unknown evaluation task {word!r}{hint} (groups: all, core, chat; "
                             "glassgpt eval --help lists every task)")
        chosen += [name for name in names if name not in chosen]
    return chosen


def chosen_items(name: str, n_items: int, max_per_task: int | None) -> list[int]:
    """Indices of the items to score: all of them, or a seeded random subset of max_per_task."""
    if max_per_task is None or max_per_task >= n_items:
        return list(range(n_items))
    return sorted(random.Random(f"eval:{name}").sample(range(n_items), max_per_task))


def centred(accuracy: float, baseline: float) -> float:
    """Accuracy on a scale where guessing scores 0 and a perfect model 1."""
    return (accuracy - baseline) / (1.0 - baseline)


def mean_centred(tasks: dict[str, dict], names: list[str]) -> dict | None:
    """CORE (or ChatCORE): the mean centred accuracy of the named tasks that were run."""
    present = [tasks[name]["centred"] for name in names if name in tasks]
    if not present:
        return None
    return {"score": round(sum(present) / len(present), 6), "tasks": len(present), "of": len(names)}


@dataclass
class Context:
    """What the scorers need: the loaded run and where it runs."""

    run: object  # runs.LoadedRun
    runtime: object  # device.Runtime
    facts: object  # tasks.base.Facts: what the identity task checks
    chat: object = None  # chat.session.ChatModel, made when a generative task first needs it

    @property
    def model(self):
        return self.run.model

    @property
    def tokenizer(self):
        return self.run.tokenizer


def _pool_and_scorer(name: str, ctx: Context) -> tuple[list, Callable[[list[int]], list[list[dict]]], str, str]:
    """(items, score(indices) -> per index the list of its results, group, kind) of a task."""
    runtime = ctx.runtime
    if name in core_evals.BY_LABEL:
        task = core_evals.BY_LABEL[name]
        pool = core_evals.items(task)

        def score(indices):
            return [[result] for result in core_evals.score_items(
                task, pool, indices, ctx.model, ctx.tokenizer, runtime.device, runtime.autocast,
                ctx.model.config.sequence_len)]
        return pool, score, "core", task.kind
    task = chat_evals.BY_NAME[name]
    pool = task.items(ctx.facts)
    if task.kind == chat_evals.CATEGORICAL:
        def score(indices):
            return [[result] for result in chat_evals.score_categorical(
                pool, indices, ctx.model, ctx.tokenizer, runtime.device, runtime.autocast)]
        return pool, score, "chat", task.kind
    chat_model = _chat_model(ctx)
    samples = chat_evals.IDENTITY_SAMPLES if name == "identity" else 1

    def score(indices):
        flat = chat_evals.score_generative(task, pool, indices, chat_model)
        return [flat[i * samples:(i + 1) * samples] for i in range(len(indices))]
    return pool, score, "chat", task.kind


def _chat_model(ctx: Context):
    from glassgpt.chat.session import ChatModel

    if ctx.chat is None:
        ctx.chat = ChatModel(ctx.run, ctx.runtime.autocast)
    return ctx.chat


def _question(pool: list, index: int, group: str) -> str:
    item = pool[index]
    if group == "core":
        return (item.get("query") or item.get("context") or item["context_options"][0])[-300:]
    conversation = getattr(item, "conversation", None)
    messages = conversation["messages"] if conversation else item.messages
    return text_of(messages[-1 if messages[-1]["role"] == "user" else -2]["content"])


def run_task(name: str, ctx: Context, max_per_task: int | None, progress, on_fraction=None) -> dict:
    """Score one task and summarise it; every rank returns the same summary."""
    started = time.perf_counter()
    pool, score, group, kind = _pool_and_scorer(name, ctx)
    indices = chosen_items(name, len(pool), max_per_task)
    runtime = ctx.runtime
    mine = indices[runtime.rank::runtime.world_size]
    chunk = CHUNK["core" if group == "core" else kind]
    progress.begin(name, len(mine))
    results: list[list[dict]] = []
    for first in range(0, len(mine), chunk):
        results += score(mine[first:first + chunk])
        progress.advance(len(results), len(mine))
        if on_fraction:
            on_fraction(len(results) / max(len(mine), 1))
    per_index = _gathered(results, runtime)  # in the order of `indices`
    flat = [result for group_results in per_index for result in group_results]
    if not flat:
        raise UsageError(f"task {name} has no items to evaluate")
    correct = sum(r["correct"] for r in flat)
    accuracy = correct / len(flat)
    baseline = sum(r["baseline"] for r in flat) / len(flat)
    summary = {
        "task": name, "group": group, "kind": kind, "n": len(flat), "items": len(indices), "of": len(pool),
        "correct": correct, "accuracy": round(accuracy, 6), "baseline": round(baseline, 6),
        "centred": round(centred(accuracy, baseline), 6), "seconds": round(time.perf_counter() - started, 2),
        "max_per_task": max_per_task,
    }
    summary.update(_rates(flat))
    if group == "core":
        summary["shots"] = round(sum(r["shots"] for r in flat) / len(flat), 2)
    if any(r.get("truncated") or r.get("too_long") for r in flat):
        summary["cut"] = sum(bool(r.get("truncated") or r.get("too_long")) for r in flat)
    summary["examples"] = [
        {"question": _question(pool, index, group), **{k: v for k, v in results_[0].items() if k != "baseline"}}
        for index, results_ in list(zip(indices, per_index))[:EXAMPLES_KEPT]]
    return summary


def _rates(flat: list[dict]) -> dict:
    """The share of results with each extra yes/no measure (e.g. well_formed_call)."""
    keys = sorted({k for r in flat for k, v in r.items() if isinstance(v, bool)} - {"correct", "truncated", "too_long"})
    return {key: round(sum(bool(r.get(key)) for r in flat) / len(flat), 6) for key in keys}


def _gathered(results: list, runtime) -> list:
    """Every rank's results, put back in item order (rank r scored items r, r + W, ...)."""
    if not runtime.distributed:
        return results
    import torch.distributed as dist

    everyone: list = [None] * runtime.world_size
    dist.all_gather_object(everyone, results)
    merged = []
    for position in range(max(len(part) for part in everyone)):
        merged += [part[position] for part in everyone if position < len(part)]
    return merged


# --- the results file -------------------------------------------------------------------------------

def results_path(run: str) -> Path:
    return paths.run_dir(run) / RESULTS_FILE


def read_results(run: str) -> dict | None:
    """The run's eval.json, or None if it has none (a damaged file counts as none)."""
    try:
        return json.loads(results_path(run).read_text())
    except (OSError, ValueError):
        return None


def write_results(run: str, document: dict) -> None:
    tasks = document["tasks"]
    document["core"] = mean_centred(tasks, GROUPS["core"])
    document["chatcore"] = mean_centred(tasks, CHATCORE_TASKS)
    atomic.write_text(results_path(run), json.dumps(_finite(document), indent=2))


def _finite(value):
    """Strict JSON: a non-finite number becomes null (json.dumps would write NaN, which is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# --- the command ------------------------------------------------------------------------------------

@dataclass
class EvalOptions:
    run: str
    tasks: str | None = None
    max_per_task: int | dict[str, int | None] | None = None  # one limit for all tasks, or one per task
    checkpoint: int | None = None
    device: str = "auto"
    skip_done: bool = False  # keep a task already evaluated at this step with these settings (speedrun)


def evaluate(options: EvalOptions, say=None) -> dict:
    """Run the tasks and return the run's results document (also written to <run>/eval.json)."""
    from glassgpt import device as devices, ui
    from glassgpt.runs import load_run

    runtime = devices.setup(options.device, "auto")
    try:
        run = load_run(options.run, options.checkpoint, runtime.device)
        names = task_names(options.tasks, run.stage)
        document = read_results(options.run) or {}
        if document.get("step") != run.step:
            document = {}
        document.update(run=options.run, step=run.step, stage=run.stage)
        document.setdefault("tasks", {})
        ctx = Context(run, runtime, _facts(run))
        say = say or (ui.err_console().print if runtime.is_main else (lambda *a, **k: None))
        todo = [name for name in names if not (options.skip_done and _done(document, name, _limit(options, name)))]
        if run.stage == "base" and any(name in GROUPS["chat"] for name in todo):
            say(f"[yellow]note[/]: {options.run} is a base model: it was never taught the chat format, so expect "
                "chat tasks near zero (and replies that run to their length limit); train --stage mid and sft first")
        if len(todo) < len(names):
            say(f"[dim]{len(names) - len(todo)} task(s) already evaluated at step {run.step}: kept[/]")
        pipeline = ui.pipeline()
        with ui.TaskProgress(ui.err_console() if runtime.is_main else _quiet()) as progress:
            for position, name in enumerate(todo):
                def on_fraction(fraction: float, position=position) -> None:
                    if pipeline is not None:
                        pipeline.fraction((position + fraction) / len(todo))
                summary = run_task(name, ctx, _limit(options, name), progress, on_fraction)
                document["tasks"][name] = summary
                if runtime.is_main:
                    write_results(options.run, document)
                progress.end(_line(summary))
        if not runtime.is_main:
            document["core"] = mean_centred(document["tasks"], GROUPS["core"])
            document["chatcore"] = mean_centred(document["tasks"], CHATCORE_TASKS)
        elif not todo:
            write_results(options.run, document)
        return read_results(options.run) if runtime.is_main else document
    finally:
        devices.teardown(runtime)


def _limit(options: EvalOptions, name: str) -> int | None:
    if isinstance(options.max_per_task, dict):
        return options.max_per_task.get(name)
    return options.max_per_task


def _done(document: dict, name: str, max_per_task: int | None) -> bool:
    previous = document.get("tasks", {}).get(name)
    return previous is not None and previous.get("max_per_task") == max_per_task


def _facts(run):
    """What the run was taught about itself (a chat run's config.json), or what is known of a base run."""
    from glassgpt.tasks.base import Facts

    if "identity" in run.config:
        return Facts(**run.config["identity"])
    return Facts(run=run.name, parameters=sum(p.numel() for p in run.model.parameters()),
                 context=run.model.config.sequence_len)


def _line(summary: dict) -> str:
    extra = "".join(f", {k.replace('_', ' ')} {summary[k]:.0%}" for k in ("well_formed_call", "used_calculator")
                    if k in summary)
    return (f"{summary['task']:<32} accuracy {summary['accuracy']:6.1%} (chance {summary['baseline']:.1%}, "
            f"centred {summary['centred']:+.3f}) on {summary['n']:,}{extra} in {summary['seconds']:.1f}s")


def _quiet():
    from rich.console import Console

    return Console(quiet=True)


def render(document: dict, out) -> None:
    """The results as a table, then the CORE and ChatCORE means."""
    from rich.table import Table

    table = Table(title=f"{document['run']} at step {document['step']} ({document['stage']})")
    for column in ("task", "kind", "n", "accuracy", "chance", "centred", "seconds"):
        table.add_column(column, justify="left" if column in ("task", "kind") else "right")
    for name, task in document["tasks"].items():
        table.add_row(name, task["kind"], f"{task['n']:,}", f"{task['accuracy']:.1%}", f"{task['baseline']:.1%}",
                      f"{task['centred']:+.3f}", f"{task['seconds']:.1f}")
    out.print(table)
    for key, label in (("core", "CORE"), ("chatcore", "ChatCORE")):
        value = document.get(key)
        if value:
            partial = "" if value["tasks"] == value["of"] else f" (over {value['tasks']} of its {value['of']} tasks)"
            out.print(f"{label}: [bold]{value['score']:+.4f}[/]{partial}   (0 = chance, 1 = every answer right)")
