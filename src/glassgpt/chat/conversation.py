"""The conversation format: what every chat stage, evaluation, the chat CLI and the server read.

    {"messages": [
        {"role": "system", "content": "You are glassgpt."},                   optional, first only
        {"role": "user", "content": "What is 37 + 48?"},
        {"role": "assistant", "content": [                                  a string, or parts:
            {"type": "tool_call", "text": "37 + 48"},                          the model asks the calculator
            {"type": "tool_result", "text": "85"},                             what the calculator said
            {"type": "text", "text": "37 + 48 = 85."}]}]}

Roles alternate user, assistant, user, ... after the optional system message. Content is a
non-empty string, or (assistant only) a list of parts: `text`, `tool_call`, and `tool_result`
directly after a `tool_call`. User content may also be a list of `text` parts (as the OpenAI API
allows). Extra keys are ignored, so files from other tools load as long as these hold.

`validate` says what is wrong in one line; `read_conversations` reads a .jsonl file (one
conversation a line) and names the line of the first bad one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from glassgpt.errors import UsageError

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "tool_call", "tool_result")
Conversation = dict  # {"messages": [{"role": ..., "content": str | [parts]}]}


class ConversationError(UsageError):
    """A conversation that breaks the format (exit 2: the file is the user's input)."""


def validate(conversation, complete: bool = True) -> dict:
    """Return `conversation` if it is well formed, else raise ConversationError saying why.

    complete=True (training) also asks that it ends with the assistant: a conversation ending
    with the user has nothing to learn from. complete=False allows that (a prompt to answer).
    """
    if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
        raise ConversationError('a conversation is an object {"messages": [...]}')
    messages = conversation["messages"]
    if not messages:
        raise ConversationError("the conversation has no messages")
    expected = "user"
    for index, message in enumerate(messages, start=1):
        where = f"message {index}"
        if not isinstance(message, dict):
            raise ConversationError(f'{where} is not an object {{"role": ..., "content": ...}}')
        role = message.get("role")
        if role not in ROLES:
            raise ConversationError(f"{where} has unknown role {role!r} (roles: {', '.join(ROLES)})")
        if role == "system":
            if index != 1:
                raise ConversationError(f"{where} is a system message; only the first message may be one")
        elif role != expected:
            raise ConversationError(f"{where} is from the {role} but should be from the {expected}: roles "
                                    "alternate user, assistant, user, ... (after an optional system message)")
        else:
            expected = "assistant" if role == "user" else "user"
        _check_content(message.get("content"), role, where)
    if messages[-1]["role"] == "system":
        raise ConversationError("the conversation has only a system message; add a user message")
    if complete and messages[-1]["role"] != "assistant":
        raise ConversationError(f"the conversation ends with the {messages[-1]['role']}: a training conversation "
                                "ends with the assistant's reply")
    return conversation


def _check_content(content, role: str, where: str) -> None:
    if isinstance(content, str):
        if not content.strip():
            raise ConversationError(f"{where} ({role}) has empty content")
        return
    if not isinstance(content, list):
        raise ConversationError(f"{where} ({role}) content must be a string or a list of parts")
    if not content:
        raise ConversationError(f"{where} ({role}) has empty content (no parts)")
    allowed = PART_TYPES if role == "assistant" else ("text",)
    previous = None
    for number, part in enumerate(content, start=1):
        if not isinstance(part, dict) or part.get("type") not in allowed:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ConversationError(f"{where} ({role}) part {number} has type {kind!r}; {role} parts are "
                                    f"{', '.join(allowed)}")
        text = part.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ConversationError(f"{where} ({role}) part {number} ({part['type']}) has empty text")
        if part["type"] == "tool_result" and previous != "tool_call":
            raise ConversationError(f"{where} part {number} is a tool_result that does not follow a tool_call")
        previous = part["type"]


def parts_of(content) -> list[dict]:
    """Content as a list of parts (a string is one text part)."""
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def text_of(content) -> str:
    """The plain text of a message: its parts' texts joined (tool calls and results included)."""
    return "".join(part["text"] for part in parts_of(content))


def read_conversations(path: str | Path, complete: bool = True) -> Iterator[tuple[int, dict]]:
    """(line number, conversation) for every non-blank line of a .jsonl file; the first bad line
    raises ConversationError naming the file and the line."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConversationError(f"no conversation file {path}") from None
    except UnicodeDecodeError as error:
        raise ConversationError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ConversationError(f"cannot read {path}: {error.strerror or error}") from None
    found = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConversationError(f"{path}:{number}: invalid JSON ({error.msg} at column {error.colno})") from None
        try:
            yield number, validate(record, complete)
        except ConversationError as error:
            raise ConversationError(f"{path}:{number}: {error}") from None
        found = True
    if not found:
        raise ConversationError(f"{path} holds no conversations (one JSON object per line)")
