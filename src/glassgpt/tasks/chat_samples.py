"""General chat: three small supervised-finetuning samples that ship with public repositories.

- alpaca: LLaMA-Factory's 999-record Stanford Alpaca sample. instruction (+ input, after a blank
  line, when there is one) is the user message; output is the reply.
- no-robots: the 500 human-written conversations of HuggingFaceH4/no_robots' test_sft split.
  System messages are kept (the format allows one, first); conversations that cannot be made valid
  are skipped and counted (`no_robots_skipped()`; none are, in the pinned file).
- glaive: LLaMA-Factory's 300-conversation Glaive function-calling sample (ShareGPT layout). Our
  model's only tool is a calculator, so a conversation that calls one of glaive's tools
  (function_call / observation turns) would teach it tools it does not have: those are skipped
  (GLAIVE_SKIPPED_TOOL_CONVERSATIONS of them). The others become human -> user, gpt -> assistant,
  and their `tools` list (which a chat template would turn into a tool-describing system prompt)
  is dropped, since it describes tools the model cannot call.

None of them has a validation split: each is split 90/10 by position (every 10th is val).
"""

from __future__ import annotations

import functools
from pathlib import Path

from glassgpt.data.manifest import fetch
from glassgpt.tasks.base import Facts, Task
from glassgpt.tasks.common import every_tenth_is_val, from_messages, read_json, single_turn

ALPACA_FILE = "chat/alpaca_en_demo.json"
NO_ROBOTS_FILE = "no_robots/test_sft-00000-of-00001.parquet"
GLAIVE_FILE = "chat/glaive_toolcall_en_demo.json"

GLAIVE_ROLES = {"human": "user", "gpt": "assistant"}
GLAIVE_TOOL_TURNS = ("function_call", "observation")
GLAIVE_SKIPPED_TOOL_CONVERSATIONS = 153
"""Conversations of the pinned glaive file that use glaive's tools (of 300); 147 remain."""


def alpaca_conversation(record: dict) -> dict:
    user = record["instruction"].strip()
    if record.get("input", "").strip():
        user += "\n\n" + record["input"].strip()
    return single_turn(user, record["output"])


def load_alpaca(split: str, facts: Facts) -> list[dict]:
    return every_tenth_is_val([alpaca_conversation(r) for r in read_json(fetch(ALPACA_FILE))], split)


@functools.lru_cache(maxsize=4)
def _no_robots(path: Path) -> tuple[tuple[dict, ...], int]:
    import pyarrow.parquet as pq  # imported here: pyarrow is slow to import and few commands need it

    conversations, skipped = [], 0
    for messages in pq.read_table(path, columns=["messages"]).column("messages").to_pylist():
        conversation = from_messages(messages)
        if conversation is None:
            skipped += 1
        else:
            conversations.append(conversation)
    return tuple(conversations), skipped


def no_robots_skipped() -> int:
    """How many no_robots conversations could not be made valid (and so are not in the task)."""
    return _no_robots(fetch(NO_ROBOTS_FILE))[1]


def load_no_robots(split: str, facts: Facts) -> list[dict]:
    conversations, _ = _no_robots(fetch(NO_ROBOTS_FILE))
    return every_tenth_is_val([_copy(c) for c in conversations], split)


def _copy(conversation: dict) -> dict:
    return {"messages": [dict(message) for message in conversation["messages"]]}


def glaive_conversation(record: dict) -> dict | None:
    """A glaive record as a conversation, or None when it uses glaive's tools (see the module text)."""
    turns = record["conversations"]
    if any(turn["from"] in GLAIVE_TOOL_TURNS for turn in turns):
        return None
    return from_messages([{"role": GLAIVE_ROLES.get(turn["from"], turn["from"]), "content": turn["value"]}
                          for turn in turns])


def glaive_conversations() -> tuple[list[dict], int]:
    """(the kept conversations, how many were skipped) for the whole file."""
    kept = [glaive_conversation(record) for record in read_json(fetch(GLAIVE_FILE))]
    return [c for c in kept if c is not None], sum(c is None for c in kept)


def load_glaive(split: str, facts: Facts) -> list[dict]:
    return every_tenth_is_val(glaive_conversations()[0], split)


ALPACA = Task(
    name="alpaca",
    description="single-turn instructions and answers (Stanford Alpaca, 999-record sample)",
    provenance=("Stanford Alpaca sample alpaca_en_demo.json from hiyouga/LLaMA-Factory (Apache-2.0 repository; "
                "Alpaca itself CC BY-NC 4.0); 90/10 train/val by position"),
    load=load_alpaca,
    files=(ALPACA_FILE,),
    sizes={"train": 900, "val": 99},
)

NO_ROBOTS = Task(
    name="no-robots",
    description="human-written instructions and conversations (No Robots test_sft, 500 conversations)",
    provenance=("HuggingFaceH4/no_robots test_sft split (CC BY-NC 4.0: non-commercial), copied from "
                "winkash/llama3-pytorch; system messages kept; conversations that cannot be made valid are "
                "skipped and counted; 90/10 train/val by position"),
    load=load_no_robots,
    files=(NO_ROBOTS_FILE,),
    sizes={"train": 450, "val": 50},
)

GLAIVE = Task(
    name="glaive",
    description="multi-turn chat from Glaive function-calling v2 (sample), without its tool calls",
    provenance=(f"glaive_toolcall_en_demo.json from hiyouga/LLaMA-Factory (Glaive Function Calling V2 sample); "
                f"the {GLAIVE_SKIPPED_TOOL_CONVERSATIONS} of 300 conversations that call glaive's tools are "
                "skipped (our only tool is a calculator), and the tool-describing system prompt is dropped; "
                "90/10 train/val by position"),
    load=load_glaive,
    files=(GLAIVE_FILE,),
    sizes={"train": 133, "val": 14},
)
