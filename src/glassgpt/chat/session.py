"""A conversation with a trained run: the history, what fits in the model's context, and replies.

`glassgpt chat` (the terminal) and `glassgpt serve` (the web page and the API) both talk to a
model through `ChatModel.reply`, which renders the conversation exactly as training rendered it
(`render_for_completion`) and generates with the engine's stopping and tool rules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from glassgpt.chat.render import missing_chat_tokens, render_for_completion
from glassgpt.engine import Engine, Event
from glassgpt.errors import GlassError, UsageError

DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_K = 50
DEFAULT_MAX_TOKENS = 256


@dataclass
class Reply:
    """What one reply produced, once its events have been consumed."""

    text: str = ""  # the reply's text, tool calls and results left out
    parts: list[dict] = field(default_factory=list)  # the assistant message's content parts
    tokens: int = 0  # tokens generated (forced tool results included)
    finish: str = "stop"


class ChatModel:
    """A loaded run, ready to answer conversations."""

    def __init__(self, run, autocast=contextlib.nullcontext, compile: bool = False):
        missing = missing_chat_tokens(run.tokenizer)
        if missing:
            raise GlassError(f"run {run.name!r}'s tokenizer has no {', '.join(missing)}: it cannot chat")
        self.run, self.model, self.tokenizer = run, run.model, run.tokenizer
        self.engine = Engine(run.model, autocast, run.tokenizer, compile=compile)
        self.context = run.model.config.sequence_len
        special = run.tokenizer.special_ids
        self.stop_ids = {special["<|assistant_end|>"], run.tokenizer.bos_id}

    @property
    def is_chat_model(self) -> bool:
        return self.run.stage != "base"

    def fit(self, messages: list[dict], max_tokens: int) -> tuple[list[int], list[dict], int]:
        """(prompt ids, messages kept, turns dropped): the oldest user/assistant turns are dropped
        until the prompt leaves room for a reply (at least a quarter of the context, at most
        max_tokens); a system message is always kept."""
        reserve = min(max_tokens, self.context // 4)
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system):]
        dropped = 0
        while True:
            kept = system + turns
            ids = render_for_completion({"messages": kept}, self.tokenizer)
            if len(ids) + reserve <= self.context or len(turns) <= 1:
                break
            cut = 2 if len(turns) > 2 else 1  # a user message and the assistant's answer to it
            turns, dropped = turns[cut:], dropped + cut
        if len(ids) + 1 > self.context:
            raise UsageError(f"the message is {len(ids):,} tokens with its formatting; the model's context holds "
                             f"{self.context:,}: send a shorter one")
        return ids, kept, dropped

    def reply(self, messages: list[dict], n: int = 1, max_tokens: int = DEFAULT_MAX_TOKENS,
              temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = DEFAULT_TOP_K, top_p: float | None = None,
              seed: int | None = None, stop: list[str] = (), prompt_ids: list[int] | None = None) -> Iterator[Event]:
        """Events of n replies to `messages` (which end with the user's message)."""
        ids = prompt_ids if prompt_ids is not None else self.fit(messages, max_tokens)[0]
        room = self.context - len(ids)
        return self.engine.stream(ids, n, min(max_tokens, room), temperature, top_k, top_p, seed,
                                  stop_ids=self.stop_ids, stop_texts=stop, tools=True, slide=False)


def collect(events, n: int = 1) -> list[Reply]:
    """Consume events into n Replies: text, content parts (tool calls and results as parts), counts."""
    replies = [Reply() for _ in range(n)]
    for event in events:
        add_event(replies[event.row], event)
    return replies


def add_event(reply: Reply, event: Event) -> None:
    reply.tokens += 1 if event.token >= 0 else 0
    if event.finish:
        reply.finish = event.finish
    if not event.text:
        return
    kind = event.kind if event.kind in ("tool_call", "tool_result") else "text"
    if kind == "text":
        reply.text += event.text
    if reply.parts and reply.parts[-1]["type"] == kind:
        reply.parts[-1]["text"] += event.text
    else:
        reply.parts.append({"type": kind, "text": event.text})


def assistant_message(reply: Reply) -> dict:
    """The reply as a message for the history (an empty reply becomes a placeholder: the format
    does not allow empty content)."""
    parts = [p for p in reply.parts if p["text"].strip()]
    if not parts:
        return {"role": "assistant", "content": "…"}
    if all(p["type"] == "text" for p in parts):
        return {"role": "assistant", "content": "".join(p["text"] for p in parts)}
    return {"role": "assistant", "content": parts}
