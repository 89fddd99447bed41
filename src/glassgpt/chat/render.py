"""A conversation as the model sees it: token ids, and a loss mask saying which ones it learns.

    <|bos|>
    <|system_start|> text <|system_end|>                 (when there is a system message)
    <|user_start|> text <|user_end|>
    <|assistant_start|> text <|assistant_end|>
    ...

Assistant parts render in place: `<|tool_call_start|> 37 + 48 <|tool_call_end|>` for a call and
`<|tool_result_start|> 85 <|tool_result_end|>` for its result. The mask is 1 exactly on what the
model should learn to produce: assistant text, tool calls (with their two delimiters), and
`<|assistant_end|>` (so it learns to stop). It is 0 on `<|bos|>`, the system and user turns,
`<|assistant_start|>` (the format puts it there, not the model) and tool results (the calculator
writes those; the model only has to read them).

Training, evaluation, the chat CLI and the server all call these functions, so what a model is
trained on and what it is asked at inference can never drift apart.
"""

from __future__ import annotations

from glassgpt.chat.conversation import ConversationError, parts_of, validate
from glassgpt.tokenizer import SPECIAL_TOKENS, Tokenizer

# What each part type is wrapped in, and whether the model learns it.
PART_TOKENS = {"text": (None, None, 1), "tool_call": ("<|tool_call_start|>", "<|tool_call_end|>", 1),
               "tool_result": ("<|tool_result_start|>", "<|tool_result_end|>", 0)}


class ConversationTooLong(ConversationError):
    """A conversation with more tokens than the context holds."""

    def __init__(self, n_tokens: int, max_tokens: int):
        super().__init__(f"the conversation is {n_tokens:,} tokens long, more than the {max_tokens:,} the "
                         "model's context holds; shorten it or train with a longer --seq-len")
        self.n_tokens, self.max_tokens = n_tokens, max_tokens


def missing_chat_tokens(tokenizer: Tokenizer) -> list[str]:
    """The chat format needs every special token; a tokenizer saved with fewer cannot render it."""
    return [name for name in SPECIAL_TOKENS if name not in tokenizer.special_ids]


def render_conversation(conversation: dict, tokenizer: Tokenizer, max_tokens: int | None = None
                        ) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a complete conversation; ConversationTooLong past `max_tokens`."""
    validate(conversation, complete=True)
    return _render(conversation["messages"], tokenizer, max_tokens)


def render_for_completion(conversation: dict, tokenizer: Tokenizer, max_tokens: int | None = None) -> list[int]:
    """The ids to generate the next assistant reply from: every message up to the last user
    message (a final assistant message, e.g. an evaluation's answer, is left out), then
    `<|assistant_start|>`."""
    validate(conversation, complete=False)
    messages = list(conversation["messages"])
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    ids, _ = _render(messages, tokenizer, None)
    ids.append(tokenizer.special_ids["<|assistant_start|>"])
    if max_tokens is not None and len(ids) > max_tokens:
        raise ConversationTooLong(len(ids), max_tokens)
    return ids


def _render(messages: list[dict], tokenizer: Tokenizer, max_tokens: int | None) -> tuple[list[int], list[int]]:
    special = tokenizer.special_ids
    ids, mask = [tokenizer.bos_id], [0]

    def add(tokens: list[int], learned: int) -> None:
        ids.extend(tokens)
        mask.extend([learned] * len(tokens))

    for message in messages:
        role = message["role"]
        if role != "assistant":
            add([special[f"<|{role}_start|>"]], 0)
            add(tokenizer.encode("".join(p["text"] for p in parts_of(message["content"]))), 0)
            add([special[f"<|{role}_end|>"]], 0)
            continue
        add([special["<|assistant_start|>"]], 0)
        for part in parts_of(message["content"]):
            start, end, learned = PART_TOKENS[part["type"]]
            if start:
                add([special[start]], learned)
            add(tokenizer.encode(part["text"]), learned)
            if end:
                add([special[end]], learned)
        add([special["<|assistant_end|>"]], 1)
    if max_tokens is not None and len(ids) > max_tokens:
        raise ConversationTooLong(len(ids), max_tokens)
    return ids, mask


def decode_conversation(ids: list[int], tokenizer: Tokenizer) -> dict:
    """The conversation a rendered id sequence stands for (the inverse of render_conversation):
    used to check the format round-trips, and to read what a model generated."""
    names = {token_id: name for name, token_id in tokenizer.special_ids.items()}
    messages: list[dict] = []
    role, part_type, pieces, parts = None, None, [], []

    def close_piece() -> None:
        nonlocal pieces
        if pieces:
            parts.append({"type": part_type or "text", "text": tokenizer.decode(pieces)})
        pieces = []

    for token_id in ids:
        name = names.get(token_id)
        if name is None:
            pieces.append(token_id)
        elif name.endswith("_start|>") and name[2:-8] in ("system", "user", "assistant"):
            role, part_type, pieces, parts = name[2:-8], None, [], []
        elif name.endswith("_end|>") and name[2:-6] in ("system", "user", "assistant"):
            close_piece()
            text_only = all(p["type"] == "text" for p in parts)
            content = "".join(p["text"] for p in parts) if text_only else parts
            messages.append({"role": role, "content": content})
            role = None
        elif name in ("<|tool_call_start|>", "<|tool_result_start|>"):
            close_piece()
            part_type = name[2:-8]
        elif name in ("<|tool_call_end|>", "<|tool_result_end|>"):
            close_piece()
            part_type = None
    return {"messages": messages}
