"""Tasks: named, deterministic sources of conversations (see tasks/base.py), in one registry.

    TASKS["arithmetic"].conversations("train")        -> list of conversations
    glassgpt.tasks.mixtures.parse_mixture("mid")      -> which tasks, how many epochs each
    glassgpt.tasks.mixtures.build(mixture, "train")   -> the mixture's conversations, guarded
    glassgpt.tasks.guard                              -> keeps evaluation questions out of training

A user's own .jsonl file is a task too (glassgpt.tasks.files.file_task); it is not registered,
mixtures name it by its path.
"""

from __future__ import annotations

from glassgpt.tasks import arithmetic, chat_samples, gsm8k, hellaswag, humaneval, identity, smoltalk, spelling
from glassgpt.tasks.base import SPLITS, Facts, Task
from glassgpt.tasks.multiple_choice import ARC_CHALLENGE, ARC_EASY, MMLU

TASKS: dict[str, Task] = {task.name: task for task in (
    identity.TASK, arithmetic.TASK, spelling.TASK, gsm8k.TASK, ARC_EASY, ARC_CHALLENGE, MMLU,
    chat_samples.ALPACA, chat_samples.NO_ROBOTS, chat_samples.GLAIVE, smoltalk.TASK,
    humaneval.TASK, hellaswag.TASK,
)}

__all__ = ["SPLITS", "TASKS", "Facts", "Task"]
