"""Mixtures: which tasks a chat stage trains on, and how many epochs of each.

A mixture is a list of entries (task name or .jsonl path, weight). The weight is in epochs: 2 means
every conversation twice, 0.5 a seeded half, 1.25 every conversation once plus a seeded quarter.
An entry may also carry a limit: read only the task's first `limit` conversations (for SmolTalk,
whose whole train split is ~970 MB); the weight then applies to those.

A spec string, as given on the command line, names a mixture or lists entries:

    mid                               a named mixture (MIXTURES)
    identity:2,arithmetic             tasks with weights (default 1)
    mid,notes/my_chats.jsonl:3        a named mixture's entries, plus a file three times

A name listed with a weight scales all its entries ("mid:2"). An entry listed twice adds up its
weights. A path ending in .jsonl is a user file; the text after its last ':' is a weight only if
it is a number, so "C:/chats.jsonl" is a path.

`build(mixture, split)` returns the conversations with weights applied, after the contamination
guard (tasks/guard.py) has dropped every conversation that contains an evaluation question, and
records how many each task gave and lost. For "val" the weights are ignored and each task gives at
most VAL_CAP conversations of its val split, so evaluating on the mixture stays quick on a CPU; val
is guarded too, since a val loss measured on test questions would be a peek at the test. Test
splits are never part of a mixture.
"""

from __future__ import annotations

import difflib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from glassgpt.errors import UsageError
from glassgpt.tasks import TASKS
from glassgpt.tasks.base import Facts, Task
from glassgpt.tasks.files import file_task

VAL_CAP = 100
"""At most this many val conversations per task (the first ones, in the task's fixed order)."""


@dataclass(frozen=True)
class Entry:
    source: str
    """A task name (TASKS) or the path of a user's .jsonl file."""
    weight: float = 1.0
    """Epochs of it: the integer part repeats everything, the fractional part is a seeded subset."""
    limit: int | None = None
    """Read only the task's first `limit` conversations (before the weight applies)."""

    def __str__(self) -> str:
        text = self.source if self.weight == 1 else f"{self.source}:{self.weight:g}"
        return text if self.limit is None else f"{text} (first {self.limit:,})"


@dataclass(frozen=True)
class Mixture:
    name: str
    entries: tuple[Entry, ...]
    description: str = ""

    def __str__(self) -> str:
        return ", ".join(str(entry) for entry in self.entries)


def _mixture(name: str, description: str, weights: dict[str, float], limits: dict[str, int] | None = None) -> Mixture:
    limits = limits or {}
    return Mixture(name, tuple(Entry(source, weight, limits.get(source)) for source, weight in weights.items()),
                   description)


# The weights are first guesses, kept here in one place to be tuned. mid teaches the formats (tool
# calls, letters, the model's identity) with a full epoch of everything; sft is a lighter pass that
# leans on chat and the identity. The -smoltalk variants replace the three small chat samples with
# the first 100k (mid) or 10k (sft) SmolTalk conversations: a limit rather than a weight, because a
# fractional weight would read all ~970 MB to take its sample.
_SYNTHETIC_AND_EXAMS_MID = {"identity": 1, "arithmetic": 1, "spelling": 1, "gsm8k": 1, "arc-easy": 1,
                            "arc-challenge": 1, "mmlu": 1}
_SYNTHETIC_AND_EXAMS_SFT = {"identity": 1, "arithmetic": 0.5, "spelling": 0.5, "gsm8k": 0.25, "arc-easy": 0.5,
                            "arc-challenge": 0.5, "mmlu": 1}
_SMALL_CHAT = {"alpaca": 1, "no-robots": 1, "glaive": 1}

MIXTURES: dict[str, Mixture] = {m.name: m for m in (
    _mixture("mid", "midtraining: one epoch of every task, to learn the chat format, the calculator and letters",
             {**_SYNTHETIC_AND_EXAMS_MID, **_SMALL_CHAT}),
    _mixture("sft", "supervised finetuning: identity and chat in full, the drills and exams partly",
             {**_SYNTHETIC_AND_EXAMS_SFT, **_SMALL_CHAT}),
    _mixture("mid-smoltalk", "mid with the first 100k SmolTalk conversations instead of the small chat samples",
             {**_SYNTHETIC_AND_EXAMS_MID, "smoltalk": 1}, {"smoltalk": 100_000}),
    _mixture("sft-smoltalk", "sft with the first 10k SmolTalk conversations instead of the small chat samples",
             {**_SYNTHETIC_AND_EXAMS_SFT, "smoltalk": 1}, {"smoltalk": 10_000}),
)}


# --- parsing a spec -----------------------------------------------------------------------------

def parse_mixture(spec: str) -> Mixture:
    """The mixture a spec string names (see the module docstring); UsageError when it is wrong."""
    spec = (spec or "").strip()
    if not spec:
        raise UsageError("empty mixture: name a mixture (" + ", ".join(MIXTURES) + ") or list tasks, "
                         "e.g. identity:2,arithmetic")
    if spec in MIXTURES:
        return MIXTURES[spec]
    entries: list[Entry] = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise UsageError(f"empty entry in mixture {spec!r} (two commas in a row, or one at an end)")
        source, weight = _source_and_weight(item)
        if source in MIXTURES:
            entries += [Entry(e.source, e.weight * weight, e.limit) for e in MIXTURES[source].entries]
        else:
            entries.append(Entry(_checked_source(source), weight))
    return Mixture(spec, _merged(entries))


def _source_and_weight(item: str) -> tuple[str, float]:
    head, colon, tail = item.rpartition(":")
    if not colon or item.endswith(".jsonl"):  # "C:/chats.jsonl" is a path, not C with weight "/chats.jsonl"
        return item, 1.0
    return head.strip(), _weight(tail.strip(), item)


def _weight(text: str, item: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise UsageError(f"bad weight {text!r} in {item!r}: a weight is a number of epochs, e.g. "
                         "identity:2 or mmlu:0.5") from None
    if not math.isfinite(weight) or weight <= 0:
        raise UsageError(f"bad weight {text!r} in {item!r}: a weight must be a positive number of epochs")
    return weight


def _checked_source(source: str) -> str:
    if source.endswith(".jsonl"):
        if not Path(source).expanduser().is_file():
            raise UsageError(f"no conversation file {source} (a mixture entry ending in .jsonl is a file)")
        return source
    task = TASKS.get(source)
    if task is None:
        names = [*MIXTURES, *TASKS]
        close = difflib.get_close_matches(source, names, n=3)
        hint = f" (did you mean {' or '.join(repr(name) for name in close)}?)" if close else ""
        if not close and ("/" in source or source.endswith(".json")):
            hint = " (a file of conversations must be a .jsonl file, one conversation a line)"
        raise UsageError(f"unknown mixture or task {source!r}{hint}; mixtures: {', '.join(MIXTURES)}; "
                         f"tasks: {', '.join(n for n, t in TASKS.items() if not t.evaluation_only)}")
    if task.evaluation_only:
        raise UsageError(f"task {source!r} is for evaluation only and cannot be part of a training mixture")
    return source


def _merged(entries: list[Entry]) -> tuple[Entry, ...]:
    """One entry per source, in first-seen order: weights add up; a limit stays only if every
    mention of the source had one (then the largest)."""
    merged: dict[str, Entry] = {}
    for entry in entries:
        if entry.source in merged:
            seen = merged[entry.source]
            limit = None if seen.limit is None or entry.limit is None else max(seen.limit, entry.limit)
            entry = Entry(entry.source, seen.weight + entry.weight, limit)
        merged[entry.source] = entry
    return tuple(merged.values())


def is_user_file(source: str) -> bool:
    """Whether an entry is the user's own .jsonl file (whose problems are errors, not skips)."""
    return source not in TASKS


def describe_spec(spec: str) -> str:
    """A mixture in words, for what the identity task says the model was trained on."""
    mixture = parse_mixture(spec)
    names = [Path(e.source).name if is_user_file(e.source) else e.source for e in mixture.entries]
    return f"conversations ({', '.join(names)})"


def task_of(source: str) -> Task:
    return TASKS[source] if source in TASKS else file_task(source)


# --- building -------------------------------------------------------------------------------------

@dataclass
class BuiltMixture:
    """A mixture's conversations for one split, and where they came from (for the log and config)."""

    conversations: list[dict]
    sources: list[str] = field(default_factory=list)
    """The entry each conversation came from (parallel to `conversations`)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Conversations each entry contributed, after the guard and the weight."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Distinct conversations of each entry the contamination guard removed (before the weight)."""

    def summary(self) -> dict:
        return {"conversations": len(self.conversations), "counts": dict(self.counts), "dropped": dict(self.dropped)}


def apply_weight(conversations: list[dict], weight: float, rng: random.Random) -> list[dict]:
    """`weight` epochs of `conversations`: int(weight) full copies, then a seeded subset of
    round(fraction * n) of them, kept in their original order."""
    whole, fraction = divmod(weight, 1.0)
    chosen = conversations * int(whole)
    n_extra = round(fraction * len(conversations))
    if n_extra:
        keep = sorted(rng.sample(range(len(conversations)), n_extra))
        chosen += [conversations[index] for index in keep]
    return chosen


def build(mixture: Mixture | str, split: str = "train", facts: Facts | None = None, seed: int = 0) -> BuiltMixture:
    """The mixture's conversations of `split` ("train" or "val"), guarded and weighted, in a fixed
    order (task by task, each task's own order; the loader shuffles)."""
    from glassgpt.tasks.guard import evaluation_fingerprints, is_contaminated

    if isinstance(mixture, str):
        mixture = parse_mixture(mixture)
    if split not in ("train", "val"):
        raise ValueError(f"a mixture has train and val splits, not {split!r} (test splits are for evaluation only)")
    evaluation = evaluation_fingerprints()
    built = BuiltMixture([])
    for entry in mixture.entries:
        task = task_of(entry.source)
        if split not in task.splits:
            continue
        limit = min(VAL_CAP, entry.limit or VAL_CAP) if split == "val" else entry.limit
        conversations = task.conversations(split, facts, limit=limit)
        clean = [c for c in conversations if not is_contaminated(c, evaluation)]
        built.dropped[entry.source] = len(conversations) - len(clean)
        if split == "train":
            clean = apply_weight(clean, entry.weight, random.Random(f"mixture:{seed}:{entry.source}"))
        built.conversations += clean
        built.sources += [entry.source] * len(clean)
        built.counts[entry.source] = len(clean)
    return built


# --- listing ----------------------------------------------------------------------------------

def describe() -> dict[str, list[dict[str, str]]]:
    """Rows for `glassgpt data list`, as plain strings: {"tasks": [...], "mixtures": [...]}.

    A task row has name, what, provenance, evaluation ("yes" for evaluation-only tasks) and one
    column per split: its size, "—" when it is not known without loading the data, "" when the
    task has no such split. A mixture row has name, what and entries.
    """
    from glassgpt.tasks.base import SPLITS

    tasks = []
    for task in TASKS.values():
        row = {"name": task.name, "what": task.description, "provenance": task.provenance,
               "evaluation": "yes" if task.evaluation_only else ""}
        for split in SPLITS:
            size = task.sizes.get(split)
            row[split] = "" if split not in task.splits else "—" if size is None else f"{size:,}"
        tasks.append(row)
    mixtures = [{"name": m.name, "what": m.description, "entries": str(m)} for m in MIXTURES.values()]
    return {"tasks": tasks, "mixtures": mixtures}
