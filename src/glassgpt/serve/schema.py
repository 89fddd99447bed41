"""What a chat completion request may say, checked before any work is done.

A request body becomes a `ChatRequest`, or a `RequestError` that names the field (`param`, e.g.
`temperature` or `messages[2].content`) and what it accepts. The API returns it as the OpenAI
error object, so clients that handle OpenAI errors handle these:

    {"error": {"message": "temperature must be a number from 0 to 2, not 3.5",
               "type": "invalid_request_error", "param": "temperature", "code": "invalid_value"}}

The fields are OpenAI's (docs/reference/api.md lists them with their ranges), plus `top_k` and
`glassgpt_truncate`. Fields that would change the answer but that glassgpt cannot honour
(logprobs, function tools, penalties...) are accepted only at their "off" value, so a client
never gets silently less than it asked for; fields that change nothing here (model, user,
metadata...) are accepted and ignored; any other field is an error (a typo such as `temprature`
is caught rather than ignored).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from glassgpt.chat.conversation import ROLES, ConversationError, validate
from glassgpt.chat.session import DEFAULT_TEMPERATURE, DEFAULT_TOP_K

MAX_BODY_BYTES = 1_000_000  # a request body larger than this is refused (413) before it is parsed
MAX_CONTENT_CHARS = 100_000  # per message; the models' contexts hold far fewer tokens anyway
MAX_MESSAGES = 1024
MAX_N = 8  # replies per request: they are generated as one batch
MAX_STOP = 4  # stop texts, as in the OpenAI API
MAX_STOP_CHARS = 256
MAX_TEMPERATURE = 2.0
SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)  # what torch.Generator.manual_seed accepts

# Accepted and ignored: they change nothing about a reply from this server.
IGNORED = ("model", "user", "metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier",
           "prompt_cache_key", "reasoning_effort", "verbosity")
# Accepted only at their "off" value: anything else asks for what glassgpt does not do.
OFF_VALUES = {
    "frequency_penalty": (None, 0), "presence_penalty": (None, 0), "logprobs": (None, False),
    "top_logprobs": (None, 0), "logit_bias": (None, {}), "tools": (None, []), "tool_choice": (None, "none", "auto"),
    "functions": (None, []), "function_call": (None, "none", "auto"), "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,), "web_search_options": (None,),
}
FIELDS = ("messages", "temperature", "top_p", "top_k", "n", "max_tokens", "max_completion_tokens", "stream",
          "stream_options", "stop", "seed", "glassgpt_truncate")


class RequestError(Exception):
    """A request the server will not run, as an HTTP status and an OpenAI-style error object."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value", status: int = 400,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = message, param, code, status, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class Limits:
    """What this server allows, from its settings and its model."""

    max_tokens: int  # the longest reply a request may ask for, and the default
    vocab_size: int  # top_k goes up to here


@dataclass
class ChatRequest:
    messages: list[dict]  # {"role", "content"} only, checked by conversation.validate; ends with the user
    max_tokens: int
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int | None = DEFAULT_TOP_K  # None: every token
    top_p: float | None = None
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the token counts
    truncate: bool = False  # glassgpt_truncate: drop the oldest turns that do not fit, as glassgpt chat does


def decode_body(raw: bytes) -> dict:
    """The request body as a JSON object, or a RequestError saying what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(f"the request body is not UTF-8 text (invalid byte at position {error.start})",
                           code="invalid_encoding") from None
    if not text.strip():
        raise RequestError('the request body is empty; send a JSON object {"messages": [...]}', code="invalid_json")
    try:
        body = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as error:
        raise RequestError(f"the request body is not valid JSON ({error.msg} at line {error.lineno} column "
                           f"{error.colno})", code="invalid_json") from None
    except RecursionError:
        raise RequestError("the request body is nested too deeply", code="invalid_json") from None
    except ValueError as error:  # NaN/Infinity (below), or an integer with thousands of digits
        raise RequestError(f"the request body is not valid JSON ({error})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(f'the request body must be a JSON object {{"messages": [...]}}, not {_kind(body)}',
                           code="invalid_type")
    return body


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_chat_request(body: dict, limits: Limits) -> ChatRequest:
    """Check every field of a /v1/chat/completions body; the first problem raises RequestError."""
    for name in body:
        if name in FIELDS or name in IGNORED:
            continue
        if name in OFF_VALUES:
            if not _is_off(body[name], OFF_VALUES[name]):
                shown = " or ".join("null" if v is None else json.dumps(v) for v in OFF_VALUES[name])
                raise RequestError(f"{name} is not supported by glassgpt serve; it may only be {shown}", param=name,
                                   code="unsupported_parameter")
            continue
        raise RequestError(f"unknown field {name!r}; a chat completion takes {', '.join(FIELDS)} (and ignores "
                           f"{', '.join(IGNORED[:2])}, ...)", param=name, code="unknown_parameter")
    cap, note = limits.max_tokens, "this server's --max-tokens"
    max_tokens = _integer(body, "max_tokens", 1, cap, cap, note)
    top_k = _integer(body, "top_k", 0, limits.vocab_size, DEFAULT_TOP_K, "0 = every token")
    stream = _boolean(body, "stream", False)
    return ChatRequest(
        messages=_messages(body.get("messages")),
        max_tokens=_integer(body, "max_completion_tokens", 1, cap, max_tokens, note),  # the newer name wins
        temperature=_number(body, "temperature", 0.0, MAX_TEMPERATURE, DEFAULT_TEMPERATURE),
        top_k=top_k or None,
        top_p=_number(body, "top_p", 0.0, 1.0, None, low_open=True),
        n=_integer(body, "n", 1, MAX_N, 1),
        seed=_integer(body, "seed", *SEED_RANGE, None),
        stop=_stop(body.get("stop")),
        stream=stream,
        include_usage=_stream_options(body.get("stream_options")),
        truncate=_boolean(body, "glassgpt_truncate", False),
    )


def _is_off(value, allowed: tuple) -> bool:
    for option in allowed:
        if option is None or isinstance(option, bool):
            if value is option:
                return True
        elif isinstance(option, int):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == option:
                return True
        elif value == option:
            return True
    return False


def _kind(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _number(body: dict, name: str, low: float, high: float, default, low_open: bool = False):
    value = body.get(name)
    if value is None:
        return default
    wanted = f"a number {'greater than' if low_open else 'from'} {low:g} {'and at most' if low_open else 'to'} {high:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be {wanted}, not {_kind(value)}", param=name, code="invalid_type")
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        raise RequestError(f"{name} must be {wanted}, not {value!r}", param=name)
    return float(value)


def _integer(body: dict, name: str, low: int, high: int, default, note: str | None = None):
    value = body.get(name)
    if value is None:
        return default
    wanted = f"a whole number from {low:,} to {high:,}" + (f" ({note})" if note else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be {wanted}, not {_kind(value) if not isinstance(value, float) else value}",
                           param=name, code="invalid_type")
    if not low <= value <= high:
        raise RequestError(f"{name} must be {wanted}, not {value:,}", param=name)
    return value


def _boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, not {_kind(value)}", param=name, code="invalid_type")
    return value


def _stream_options(value) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict):
        raise RequestError(f'stream_options must be an object {{"include_usage": true}}, not {_kind(value)}',
                           param="stream_options", code="invalid_type")
    for key in value:
        if key not in ("include_usage", "include_obfuscation"):
            raise RequestError(f"unknown field stream_options.{key}; stream_options takes include_usage",
                               param=f"stream_options.{key}", code="unknown_parameter")
    return _boolean(value, "include_usage", False) if "include_usage" in value else False


def _stop(value) -> list[str]:
    if value is None:
        return []
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise RequestError(f"stop must be a string or a list of up to {MAX_STOP} strings, not {_kind(value)}",
                           param="stop", code="invalid_type")
    if len(texts) > MAX_STOP:
        raise RequestError(f"stop holds {len(texts)} texts; at most {MAX_STOP}", param="stop")
    for index, text in enumerate(texts):
        param = "stop" if isinstance(value, str) else f"stop[{index}]"
        if not isinstance(text, str):
            raise RequestError(f"{param} must be a string, not {_kind(text)}", param=param, code="invalid_type")
        if not 1 <= len(text) <= MAX_STOP_CHARS:
            raise RequestError(f"{param} must be 1 to {MAX_STOP_CHARS} characters long, not {len(text)}", param=param)
    return list(texts)


def _messages(value) -> list[dict]:
    """The messages as {"role", "content"}: the types checked here (each error names the message
    and the field), then the conversation rules (conversation.validate), then: ends with the user."""
    if value is None:
        raise RequestError('messages is required: a list of {"role": ..., "content": ...} objects',
                           param="messages", code="missing_required_parameter")
    if not isinstance(value, list):
        raise RequestError(f"messages must be a list of messages, not {_kind(value)}", param="messages",
                           code="invalid_type")
    if not value:
        raise RequestError("messages is empty; send at least one user message", param="messages")
    if len(value) > MAX_MESSAGES:
        raise RequestError(f"messages holds {len(value):,} messages; at most {MAX_MESSAGES:,}", param="messages")
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f'{where} must be an object {{"role": ..., "content": ...}}, not {_kind(message)}',
                               param=where, code="invalid_type")
        role = message.get("role")
        if role not in ROLES:
            hint = (" (glassgpt's calculator runs inside the model's reply; there are no function tools)"
                    if role in ("tool", "function") else " (use system)" if role == "developer" else "")
            shown = "missing" if role is None else repr(role) if isinstance(role, str) else _kind(role)
            raise RequestError(f"{where}.role is {shown}; roles are {', '.join(ROLES)}{hint}", param=f"{where}.role")
        messages.append({"role": role, "content": _content(message.get("content"), f"{where}.content")})
    try:
        validate({"messages": messages}, complete=False)
    except ConversationError as error:
        which = re.match(r"message (\d+)", str(error))
        param = f"messages[{int(which.group(1)) - 1}]" if which else "messages"
        raise RequestError(f"messages: {error}", param=param) from None
    if messages[-1]["role"] != "user":
        raise RequestError(f"the last message is from the {messages[-1]['role']}; a reply answers the user, so "
                           "messages must end with a user message", param=f"messages[{len(messages) - 1}]")
    return messages


def _content(value, where: str):
    if value is None:
        raise RequestError(f"{where} is missing: a string, or a list of parts", param=where,
                           code="missing_required_parameter")
    if isinstance(value, str):
        size = len(value)
    elif isinstance(value, list):
        size = 0
        for number, part in enumerate(value):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise RequestError(f'{where}[{number}] must be a part {{"type": "text", "text": ...}}', param=f"{where}[{number}]",
                                   code="invalid_type")
            if not isinstance(part.get("text"), str):
                raise RequestError(f"{where}[{number}].text must be a string, not {_kind(part.get('text'))}"
                                   + (" (glassgpt reads text only)" if part["type"] != "text" else ""),
                                   param=f"{where}[{number}].text", code="invalid_type")
            size += len(part["text"])
        value = [{"type": part["type"], "text": part["text"]} for part in value]
    else:
        raise RequestError(f"{where} must be a string or a list of parts, not {_kind(value)}", param=where,
                           code="invalid_type")
    if size > MAX_CONTENT_CHARS:
        raise RequestError(f"{where} is {size:,} characters long; at most {MAX_CONTENT_CHARS:,}", param=where)
    return value
