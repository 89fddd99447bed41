"""`glassgpt serve`: the OpenAI-compatible API, driven by the official openai client, curl and raw
HTTP against a real uvicorn server on 127.0.0.1.

Most tests serve an in-process ChatModel around a tiny random model (no training, milliseconds per
token) on a server thread; the CLI tests (ready line, Ctrl-C, exit codes) train one tiny run and
start `python -m glassgpt serve` as a process. The protocol does not need a good model. Models
that block, crawl or follow a script (the calculator) are small wrappers defined here, and
tests/test_serve_page.py and tests/test_serve_load.py use them too.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from conftest import MIRROR, REPO, TINY_TRAIN, tiny_config, tiny_model
from glassgpt.chat.render import render_for_completion
from glassgpt.chat.session import ChatModel
from glassgpt.runs import LoadedRun
from glassgpt.serve import ServeSettings, create_app
from glassgpt.serve.server import BackgroundServer

openai = pytest.importorskip("openai", reason="the openai client is a test dependency (pip install openai)")

HELLO = [{"role": "user", "content": "Hello there"}]


# -- models to serve ------------------------------------------------------------------------------------

def make_chat(tokenizer, model=None, stage: str = "sft", step: int = 7, name: str = "tiny", cls=ChatModel, **extra):
    """A ChatModel around `model` (default: a tiny random GPT with a 64-token context)."""
    model = model or tiny_model(tiny_config(vocab_size=tokenizer.vocab_size, sequence_len=64))
    model.eval()
    run = LoadedRun(name, Path("."), {"train": {"stage": stage}}, model, tokenizer, step)
    chat = cls(run)
    for key, value in extra.items():
        setattr(chat, key, value)
    return chat


class ScriptedGPT(torch.nn.Module):
    """A 'model' whose reply is a fixed script: at the i-th position after the last
    <|assistant_start|> its logits pick script[i] (the last entry repeats). The calculator's forced
    tokens take script positions too (put anything there). No KV cache: the engine's naive path."""

    def __init__(self, tokenizer, script: list[int], sequence_len: int = 512):
        super().__init__()
        self.script, self.start = script, tokenizer.special_ids["<|assistant_start|>"]
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = tiny_config(vocab_size=tokenizer.vocab_size, sequence_len=sequence_len)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        for row in range(B):
            starts = (idx[row] == self.start).nonzero()
            written = T - 1 - int(starts[-1]) if len(starts) else 0
            logits[row, -1, self.script[min(written, len(self.script) - 1)]] = 100.0
        return logits


def calculator_script(tokenizer, after: str = " so 85.", end: bool = True) -> list[int]:
    """The model asks the calculator for 37 + 48, then writes `after` (and ends, or repeats its
    last token until max_tokens)."""
    special = tokenizer.special_ids
    result = tokenizer.encode("85")
    return [special["<|tool_call_start|>"], *tokenizer.encode("37 + 48"), special["<|tool_call_end|>"],
            *[0] * (len(result) + 2), *tokenizer.encode(after), *([special["<|assistant_end|>"]] if end else [])]


class SlowChat(ChatModel):
    """Sleeps `delay` seconds before each event (so that streaming can be watched) and counts the
    events it produced (so that a test sees when generation really stopped)."""

    delay = 0.05
    produced = 0

    def reply(self, *args, **kwargs):
        for event in super().reply(*args, **kwargs):
            time.sleep(self.delay)
            self.produced += 1
            yield event


class BlockingChat(ChatModel):
    """Holds every reply until `release` is set."""

    release: threading.Event

    def reply(self, *args, **kwargs):
        self.release.wait(30)
        yield from super().reply(*args, **kwargs)


class BrokenChat(ChatModel):
    """A bug inside the model code: every reply (and fit) raises with a secret in its message."""

    def fit(self, *args, **kwargs):
        raise RuntimeError("secret-fit-detail")

    def reply(self, *args, **kwargs):
        raise RuntimeError("secret-reply-detail")


def serve(chat, **settings) -> BackgroundServer:
    return BackgroundServer(create_app(chat, ServeSettings(**settings)))


def client_for(server: BackgroundServer):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=30)


def wait_for(predicate, timeout: float = 5.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def health(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=5).json()


def stream_lines(response) -> list[str]:
    return [line for line in response.iter_lines() if line]


@pytest.fixture(scope="module")
def chat(tokenizer_512):
    return make_chat(tokenizer_512)


@pytest.fixture(scope="module")
def server(chat):
    with serve(chat, queue=4, max_tokens=48) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return client_for(server)


# -- the OpenAI API through the official client ---------------------------------------------------------

def test_a_reply_is_a_chat_completion_whose_usage_counts_the_rendered_prompt(client, chat):
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=8, seed=1, user="me")
    assert reply.object == "chat.completion" and reply.model == "tiny" and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    prompt = render_for_completion({"messages": HELLO}, chat.tokenizer)
    assert reply.usage.prompt_tokens == len(prompt)
    assert 1 <= reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 8
    # the parts extension holds the same text (no calculator here: a random model rarely calls it)
    parts = choice.message.model_extra["glassgpt_parts"]
    assert "".join(p["text"] for p in parts if p["type"] == "text") == choice.message.content


def test_a_stream_adds_up_to_the_reply_the_same_seed_gives_without_streaming(client):
    asked = dict(model="tiny", messages=HELLO, max_completion_tokens=16, seed=5, temperature=1.0,
                 extra_body={"top_k": 0})  # top_k is glassgpt's: the openai client passes it in extra_body
    whole = client.chat.completions.create(**asked)
    chunks = list(client.chat.completions.create(**asked, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == whole.choices[0].message.content and text
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_the_same_seed_gives_the_same_reply_and_another_seed_another(client):
    def text(seed):
        return client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16, seed=seed,
                                              temperature=1.0, extra_body={"top_k": 0}).choices[0].message.content

    assert text(11) == text(11)
    assert len({text(seed) for seed in (1, 2, 3, 4)}) > 1


def test_n_gives_n_choices_streamed_and_not(client):
    reply = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=6, n=2, seed=3, temperature=1.0)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage.completion_tokens >= 2
    chunks = list(client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=6, n=2, seed=3,
                                                 temperature=1.0, stream=True))
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1}
    assert texts == {c.index: c.message.content for c in reply.choices}


def test_a_stop_text_ends_the_reply_before_it(client):
    asked = dict(model="tiny", messages=HELLO, max_tokens=24, temperature=1.0, extra_body={"top_k": 0})
    for seed in range(40):  # a seed whose reply has some words in it
        full = client.chat.completions.create(**asked, seed=seed).choices[0].message.content
        if len(full) >= 8:
            break
    stop = full[4:6]
    expected = full[:full.index(stop)]
    for form in (stop, [stop, "zzzzqq"]):
        reply = client.chat.completions.create(**asked, seed=seed, stop=form)
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason == "stop"


def test_the_calculators_work_is_a_part_beside_the_content_not_in_it(tokenizer_512):
    chat = make_chat(tokenizer_512, ScriptedGPT(tokenizer_512, calculator_script(tokenizer_512)))
    with serve(chat) as server:
        client = client_for(server)
        asked = dict(model="tiny", messages=[{"role": "user", "content": "What is 37 + 48?"}], temperature=0)
        message = client.chat.completions.create(**asked).choices[0].message
        assert message.content == " so 85."
        assert message.model_extra["glassgpt_parts"] == [
            {"type": "tool_call", "text": "37 + 48"}, {"type": "tool_result", "text": "85"},
            {"type": "text", "text": " so 85."}]
        content, parts = "", {"tool_call": "", "tool_result": ""}
        order = []
        for chunk in client.chat.completions.create(**asked, stream=True):
            delta = chunk.choices[0].delta
            content += delta.content or ""
            part = (delta.model_extra or {}).get("glassgpt_part")
            if part:
                parts[part["type"]] += part["text"]
                order.append(part["type"])
        assert content == " so 85." and parts == {"tool_call": "37 + 48", "tool_result": "85"}
        assert order.index("tool_result") > max(i for i, kind in enumerate(order) if kind == "tool_call")
        # the history the page sends back, calculator parts included, is a valid conversation
        again = client.chat.completions.create(model="tiny", temperature=0, messages=[
            *asked["messages"], {"role": "assistant", "content": message.model_extra["glassgpt_parts"]},
            {"role": "user", "content": "And 1 + 1?"}])
        assert again.choices[0].message.content == " so 85."


def test_models_lists_the_run_as_the_one_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    extra = models.data[0].model_extra["glassgpt"]
    assert extra["step"] == 7 and extra["context"] == 64 and extra["parameters"] > 0
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


# -- curl --------------------------------------------------------------------------------------------------

def curl(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=30)


def test_curl_reads_health_models_and_an_event_stream_that_ends_with_done(server):
    status = json.loads(curl(f"{server.url}/health").stdout)
    assert status["status"] == "ok" and status["model"] == "tiny"
    assert {"workers", "running", "waiting", "queue"} <= status.keys()
    assert json.loads(curl(f"{server.url}/v1/models").stdout)["data"][0]["id"] == "tiny"
    body = json.dumps({"messages": HELLO, "max_tokens": 5, "stream": True})
    result = curl("-N", "-i", f"{server.url}/v1/chat/completions", "-H", "Content-Type: application/json", "-d", body)
    head, _, stream = result.stdout.replace("\r\n", "\n").partition("\n\n")
    assert "content-type: text/event-stream" in head.lower()
    assert stream.endswith("data: [DONE]\n\n")
    events = stream.strip().split("\n\n")
    assert all(event.startswith("data: ") for event in events)
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


# -- validation: every bad request is a 4xx naming the field, before any work -----------------------------

def _body(**fields) -> dict:
    return {"messages": HELLO, **fields}


LONG = "many words " * 200  # far more than the 64-token context
BAD_REQUESTS = [
    # (what, raw body or JSON object, status, param, words the message must contain)
    ("invalid JSON", b'{"messages": [', 400, None, "not valid JSON"),
    ("not UTF-8", b'{"messages": "\xff\xfe"}', 400, None, "not UTF-8"),
    ("NaN", b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400, None, "NaN"),
    ("nested too deeply", b"[" * 100_000 + b"]" * 100_000, 400, None, "nested too deeply"),
    ("a list, not an object", b"[]", 400, None, "JSON object"),
    ("empty body", b"", 400, None, "empty"),
    ("too large", b'{"messages": [{"role": "user", "content": "' + b"x" * 1_100_000 + b'"}]}', 413, None, "1,000,000"),
    ("no messages", {}, 400, "messages", "required"),
    ("messages not a list", {"messages": "hi"}, 400, "messages", "list"),
    ("empty messages", {"messages": []}, 400, "messages", "empty"),
    ("a message not an object", {"messages": ["hi"]}, 400, "messages[0]", "object"),
    ("unknown role", {"messages": [{"role": "tool", "content": "4"}]}, 400, "messages[0].role", "system, user, assistant"),
    ("no role", {"messages": [{"content": "4"}]}, 400, "messages[0].role", "missing"),
    ("system not first", {"messages": [*HELLO, {"role": "system", "content": "x"}]}, 400, "messages[1]", "system"),
    ("two users in a row", {"messages": [*HELLO, *HELLO]}, 400, "messages[1]", "alternate"),
    ("ends with the assistant", {"messages": [*HELLO, {"role": "assistant", "content": "hi"}]}, 400, "messages[1]",
     "end with a user message"),
    ("content too long", {"messages": [{"role": "user", "content": "x" * 100_001}]}, 400, "messages[0].content",
     "100,000"),
    ("content a number", {"messages": [{"role": "user", "content": 4}]}, 400, "messages[0].content", "string or a list"),
    ("content missing", {"messages": [{"role": "user"}]}, 400, "messages[0].content", "missing"),
    ("content blank", {"messages": [{"role": "user", "content": "  "}]}, 400, "messages[0]", "empty"),
    ("an image part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "messages[0].content[0].text", "text"),
    ("a tool result without its call", {"messages": [*HELLO, {"role": "assistant", "content": [
        {"type": "tool_result", "text": "4"}]}, *HELLO]}, 400, "messages[1]", "tool_call"),
    ("prompt longer than the context", {"messages": [{"role": "user", "content": LONG}]}, 400, "messages", "context"),
    ("max_tokens 0", _body(max_tokens=0), 400, "max_tokens", "1 to 48"),
    ("max_tokens over the cap", _body(max_tokens=49), 400, "max_tokens", "1 to 48"),
    ("max_tokens a string", _body(max_tokens="8"), 400, "max_tokens", "whole number"),
    ("max_completion_tokens 0", _body(max_completion_tokens=0), 400, "max_completion_tokens", "1 to 48"),
    ("temperature below 0", _body(temperature=-0.1), 400, "temperature", "0 to 2"),
    ("temperature above 2", _body(temperature=2.5), 400, "temperature", "0 to 2"),
    ("temperature a string", _body(temperature="hot"), 400, "temperature", "0 to 2"),
    ("temperature a boolean", _body(temperature=True), 400, "temperature", "0 to 2"),
    ("temperature infinite", b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999}', 400,
     "temperature", "0 to 2"),
    ("top_p 0", _body(top_p=0), 400, "top_p", "greater than 0 and at most 1"),
    ("top_p above 1", _body(top_p=1.5), 400, "top_p", "greater than 0 and at most 1"),
    ("n 0", _body(n=0), 400, "n", "1 to 8"),
    ("n 9", _body(n=9), 400, "n", "1 to 8"),
    ("n fractional", _body(n=1.5), 400, "n", "whole number"),
    ("top_k negative", _body(top_k=-1), 400, "top_k", "0 to 512"),
    ("top_k above the vocabulary", _body(top_k=513), 400, "top_k", "0 to 512"),
    ("five stop texts", _body(stop=["a", "b", "c", "d", "e"]), 400, "stop", "at most 4"),
    ("an empty stop text", _body(stop=""), 400, "stop", "1 to 256"),
    ("a stop text not a string", _body(stop=["a", 1]), 400, "stop[1]", "string"),
    ("seed a string", _body(seed="x"), 400, "seed", "whole number"),
    ("stream a string", _body(stream="yes"), 400, "stream", "true or false"),
    ("stream_options a list", _body(stream=True, stream_options=[]), 400, "stream_options", "include_usage"),
    ("a typo", _body(temprature=1), 400, "temprature", "unknown field"),
    ("logprobs", _body(logprobs=True), 400, "logprobs", "not supported"),
    ("function tools", _body(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools", "not supported"),
    ("a penalty", _body(frequency_penalty=0.5), 400, "frequency_penalty", "not supported"),
]


@pytest.mark.parametrize("what, body, status, param, words", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_a_bad_request_is_a_4xx_naming_the_field_and_never_reaches_generation(server, what, body, status, param, words):
    pool, app = server.app.state.pool, server.app
    before = (app.state.internal_errors, pool.accepted)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.url}/v1/chat/completions", content=raw, timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert words in error["message"], error["message"]
    assert "Traceback" not in response.text
    assert (app.state.internal_errors, pool.accepted) == before  # no 500 handler, nothing queued


def test_fields_that_change_nothing_here_are_accepted_and_ignored(client):
    reply = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"}],
        max_tokens=3, user="u1", metadata={"a": "b"}, frequency_penalty=0, presence_penalty=0.0, tools=[],
        response_format={"type": "text"}, logprobs=False, parallel_tool_calls=False, store=False)
    assert reply.choices[0].message.role == "assistant"


def test_unknown_paths_and_methods_are_openai_style_errors_too(server):
    missing = httpx.get(f"{server.url}/v1/completions")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(f"{server.url}/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_a_bug_is_a_generic_500_without_its_details(tokenizer_512):
    with serve(make_chat(tokenizer_512, cls=BrokenChat)) as server:
        url = f"{server.url}/v1/chat/completions"
        for body in (_body(), _body(glassgpt_truncate=True)):  # a failure in the worker, and in the handler
            response = httpx.post(url, json=body, timeout=10)
            assert response.status_code == 500
            assert response.json()["error"]["code"] == "internal_error"
            assert "secret" not in response.text and "Traceback" not in response.text
        with httpx.stream("POST", url, json=_body(stream=True), timeout=10) as response:
            lines = stream_lines(response)
        assert response.status_code == 200  # the stream had started; the error is its last event
        assert json.loads(lines[-1][6:])["error"]["code"] == "internal_error" and "secret" not in "".join(lines)
        assert server.app.state.internal_errors == 3
        assert health(server)["running"] == 0


@pytest.mark.slow  # compiles the decode step (~15 s on a fresh machine)
def test_compiled_decode_steps_serve_concurrent_requests_with_the_replies_of_the_eager_engine(tokenizer_512):
    model = tiny_model(tiny_config(vocab_size=tokenizer_512.vocab_size, sequence_len=64)).eval()
    eager = make_chat(tokenizer_512, model)
    compiled = make_chat(tokenizer_512, model, cls=lambda run: ChatModel(run, compile=True))
    assert compiled.engine.compile_now() == 1  # before serving, as `glassgpt serve --compile` does
    asks = [_body(max_tokens=12, seed=seed, temperature=0.9) for seed in (1, 2, 3)] + [
        _body(max_tokens=6, seed=4, temperature=0.9, n=2)]  # two rows: decoded eagerly

    def texts(response) -> list[str]:
        assert response.status_code == 200, response.text
        return [choice["message"]["content"] for choice in response.json()["choices"]]

    with serve(eager, workers=1) as server:
        expected = [texts(httpx.post(f"{server.url}/v1/chat/completions", json=ask, timeout=30)) for ask in asks]
    results: dict[int, list[str]] = {}
    with serve(compiled, workers=2, queue=4) as server:
        def ask(index: int) -> None:
            results[index] = texts(httpx.post(f"{server.url}/v1/chat/completions", json=asks[index], timeout=60))

        threads = [threading.Thread(target=ask, args=(index,)) for index in range(len(asks))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert [results.get(index) for index in range(len(asks))] == expected


# -- the queue: bounded, 503 when full, freed by clients that leave ---------------------------------------

def test_a_full_queue_answers_503_with_retry_after_and_the_queued_replies_still_finish(tokenizer_512):
    chat = make_chat(tokenizer_512, cls=BlockingChat, release=threading.Event())
    with serve(chat, workers=1, queue=1) as server:
        url, results = f"{server.url}/v1/chat/completions", {}

        def ask(key):
            results[key] = httpx.post(url, json=_body(max_tokens=4), timeout=30)

        threads = [threading.Thread(target=ask, args=(key,)) for key in ("running", "waiting")]
        threads[0].start()
        wait_for(lambda: health(server)["running"] == 1, what="the first reply to start")
        threads[1].start()
        wait_for(lambda: health(server)["waiting"] == 1, what="the second to wait")
        full = httpx.post(url, json=_body(max_tokens=4, stream=True), timeout=10)
        assert full.status_code == 503
        assert int(full.headers["Retry-After"]) >= 1
        error = full.json()["error"]
        assert error["code"] == "queue_full" and error["type"] == "server_error" and "retry" in error["message"]
        with pytest.raises(openai.APIStatusError) as raised:  # the openai client sees it as an API error
            client_for(server).chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
        assert raised.value.status_code == 503
        chat.release.set()
        for thread in threads:
            thread.join(30)
        assert [results[key].status_code for key in ("running", "waiting")] == [200, 200]
        assert health(server)["running"] == health(server)["waiting"] == 0


def test_a_client_that_leaves_mid_stream_frees_its_worker_at_once(tokenizer_512):
    chat = make_chat(tokenizer_512, cls=SlowChat, delay=0.05)
    with serve(chat, workers=1, queue=0, max_tokens=60) as server:  # no queue: a busy worker means 503
        url = f"{server.url}/v1/chat/completions"
        with httpx.Client(timeout=10) as http:  # read three tokens of a long reply, then leave
            with http.stream("POST", url, json=_body(stream=True, temperature=1.0, top_k=0, max_tokens=60)) as response:
                seen = 0
                for line in response.iter_lines():
                    seen += '"content":"' in line and '"role"' not in line
                    if seen == 3:
                        break
        left = time.monotonic()
        wait_for(lambda: health(server)["running"] == 0, timeout=2, what="the worker to be freed")
        freed_after = time.monotonic() - left
        produced = chat.produced
        started = time.monotonic()
        reply = httpx.post(url, json=_body(max_tokens=2), timeout=10)
        assert reply.status_code == 200, reply.text  # not 503: the worker was free
        assert time.monotonic() - started < 2 and freed_after < 1
        time.sleep(0.3)
        assert chat.produced - produced <= 3  # the abandoned reply was not generated any further

        # a client that gives up on a non-streamed reply frees the worker too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=_body(max_tokens=60), timeout=0.5)
        wait_for(lambda: health(server)["running"] == 0, timeout=2, what="the worker to be freed")
        assert httpx.post(url, json=_body(max_tokens=2), timeout=10).status_code == 200


def test_stopping_the_server_ends_a_reply_being_streamed(tokenizer_512):
    chat = make_chat(tokenizer_512, cls=SlowChat, delay=0.05)
    server = serve(chat, max_tokens=60)
    with server:
        lines, done = [], threading.Event()

        def read():
            with httpx.stream("POST", f"{server.url}/v1/chat/completions", timeout=20,
                              json=_body(stream=True, max_tokens=60, temperature=1.0, top_k=0)) as response:
                for line in response.iter_lines():
                    lines.append(line)
            done.set()

        threading.Thread(target=read, daemon=True).start()
        wait_for(lambda: len(lines) >= 4, what="the stream to start")
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 4 and done.wait(5)
    assert not server.thread.is_alive()
    assert json.loads([line for line in lines if line][-1][6:])["error"]["code"] == "shutdown"


def test_glassgpt_truncate_drops_the_oldest_turns_that_do_not_fit(client, chat):
    turns = []
    for index in range(12):
        turns += [{"role": "user", "content": f"question {index} is here"}, {"role": "assistant", "content": "ok then"}]
    messages = [{"role": "system", "content": "Be kind."}, *turns, {"role": "user", "content": "last"}]
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
    assert raised.value.body["param"] == "messages" and raised.value.body["code"] == "context_length_exceeded"
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, extra_body={"glassgpt_truncate": True})
    dropped = reply.model_extra["glassgpt_dropped_messages"]
    ids, kept, expected = chat.fit(messages, 4)
    assert dropped == expected > 0 and reply.usage.prompt_tokens == len(ids) < chat.context


# -- the command ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_home(tmp_path_factory):
    """A cache root with one tiny trained run, 'tiny' (2 steps)."""
    from glassgpt.cli import main

    home = tmp_path_factory.mktemp("serve-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GLASSGPT_HOME", str(home))
        patch.setenv("GLASSGPT_DATA_MIRROR", str(MIRROR))
        if not (MIRROR / "tinyshakespeare").exists():
            pytest.skip(f"no data mirror at {MIRROR}")
        assert main(["train", *TINY_TRAIN, "--max-steps", "2", "--run", "tiny"]) == 0
    return home


def start_cli_server(home: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "glassgpt", "serve", "--run", "tiny", "--port", "0", *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env={**__import__("os").environ, "GLASSGPT_HOME": str(home), "NO_COLOR": "1"})
    line = process.stdout.readline()
    ready = re.fullmatch(r"serving tiny \(step 2, [\d,]+ parameters\) at (http://127\.0\.0\.1:(\d+))  \(Ctrl-C to stop\)\n",
                         line)
    if not ready:
        process.kill()
        raise AssertionError(f"no ready line: {line!r}\n{process.communicate(timeout=10)}")
    return process, ready.group(1)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_command_serves_a_trained_run_on_127_0_0_1_and_stops_cleanly(trained_home, stop):
    process, url = start_cli_server(trained_home)
    try:
        assert int(url.rsplit(":", 1)[1]) > 0  # --port 0: the port the system picked, printed
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
        reply = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4)
        assert reply.usage.completion_tokens >= 1
        assert "<title>glassgpt</title>" in httpx.get(url).text
        process.send_signal(stop)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err and err.strip().endswith("stopped")


@pytest.mark.slow  # compiles the decode step
def test_the_command_compiles_the_decode_step_before_it_serves(trained_home):
    process, url = start_cli_server(trained_home, "--compile")  # the ready line comes after compiling
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
        reply = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4)
        assert reply.usage.completion_tokens >= 1
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert re.search(r"compiling the decode step …\ncompiled the decode step: 1 graph in \d+s\n", err), err


def test_the_default_host_is_this_machine_only():
    from glassgpt.cli import build_parser

    args = build_parser().parse_args(["serve", "--run", "x"])
    assert (args.host, args.port, args.workers, args.queue) == ("127.0.0.1", 8000, 1, 8)


def test_a_missing_run_or_a_busy_port_is_one_line_and_exit_2(trained_home, monkeypatch, capsys):
    from glassgpt.cli import main

    assert main(["serve", "--run", "missing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run named 'missing'") and err.count("\n") == 1
    monkeypatch.setenv("GLASSGPT_HOME", str(trained_home))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--run", "tiny", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and err.count("\n") == 1
    assert main(["serve", "--run", "tiny", "--port", "70000"]) == 2
    assert main(["serve", "--run", "tiny", "--queue", "-1"]) == 2


def test_the_openai_snippet_of_the_how_to_runs(server, capsys):
    page = (REPO / "docs" / "how-to" / "serve.md").read_text(encoding="utf-8")
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", page, re.S) if "from openai import" in block)
    assert "http://127.0.0.1:8000/v1" in snippet
    exec(compile(snippet.replace("http://127.0.0.1:8000", server.url), "serve.md", "exec"), {})
    assert capsys.readouterr().out.strip()
