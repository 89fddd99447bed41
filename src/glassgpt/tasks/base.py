"""What a task is: a named, deterministic source of conversations with train/val(/test) splits.

Every task module defines one `Task` (or a few, e.g. ARC-Easy and ARC-Challenge) and registers it
in `glassgpt.tasks.TASKS`. A task never decides how it is mixed or batched: mixtures weight
tasks, the chat loaders pack or pad them, and the evaluations score their test splits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Facts:
    """What the identity task teaches the model about itself (the run being trained)."""

    run: str = "glassgpt"
    """The run's name, which is also the model's name."""
    parameters: int = 0
    """Its size in parameters."""
    trainer: str = "a glassgpt user"
    """Who trained it (--identity-name; default the user name)."""
    pretraining: str = "text"
    """What its base model was pretrained on, in words."""
    chat_data: str = "conversations"
    """What it was then trained on to chat, in words."""
    context: int = 0
    """Its context length in tokens."""


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    """One line for `glassgpt data list`."""
    provenance: str
    """Where the data comes from and its licence, or 'generated from templates in glassgpt'."""
    load: Callable[[str, Facts], list[dict]] = field(repr=False)
    """load(split, facts) -> conversations, in a fixed order (the same every call)."""
    load_first: Callable[[str, Facts, int], list[dict]] | None = field(default=None, repr=False)
    """load_first(split, facts, n) -> the first n of load's conversations without reading the rest
    (for tasks too big to load whole, e.g. SmolTalk); None means load everything, then slice."""
    splits: tuple[str, ...] = ("train", "val")
    """The splits it has; "test" ones are for evaluation only and never enter a training mixture."""
    files: tuple[str, ...] = ()
    """Data-cache paths it reads (see glassgpt.data.manifest), fetched on first use."""
    evaluation_only: bool = False
    """True for tasks that exist only to be evaluated on (HumanEval, HellaSwag)."""
    sizes: dict[str, int] = field(default_factory=dict, compare=False)
    """Conversations per split, where known without loading (generator sizes, pinned files)."""

    def conversations(self, split: str, facts: Facts | None = None, limit: int | None = None) -> list[dict]:
        """The split's conversations; with `limit`, only its first `limit` of them."""
        if split not in self.splits:
            raise ValueError(f"task {self.name} has no {split!r} split (it has {', '.join(self.splits)})")
        facts = facts or Facts()
        if limit is None:
            return self.load(split, facts)
        if self.load_first is not None:
            return self.load_first(split, facts, limit)
        return self.load(split, facts)[:limit]
