"""The HTTP API and the chat page of `glassgpt serve`, as one FastAPI app around one ChatModel.

    POST /v1/chat/completions   OpenAI's chat completions: JSON, or server-sent events with stream
    GET  /v1/models             the run, as the one model (id = the run's name)
    GET  /health                {"status": "ok", ...} with the workers' and the queue's state
    GET  /                      page.html: the chat page

A request is checked completely (schema.py, then the prompt's length) before it is queued, so a
bad one costs no generation and gets a 4xx naming the field. Generation runs on the worker
threads (workers.py); this module only turns their events into OpenAI objects. The calculator's
calls and results are not mixed into `content` (an OpenAI client would show them as words): they
come as the extension fields `delta.glassgpt_part` (stream) and `message.glassgpt_parts`.
docs/reference/api.md describes every field and status code.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from glassgpt.chat.render import render_for_completion
from glassgpt.chat.session import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, ChatModel, Reply, add_event
from glassgpt.errors import UsageError
from glassgpt.serve import schema
from glassgpt.serve.schema import RequestError, error_body
from glassgpt.serve.workers import JobFailed, QueueFull, WorkerPool

INTERNAL_ERROR = "internal error in glassgpt serve; the details are in the server's log"
# The page may run only its own inline script and talk only to this server: no external resource
# can load even if model text were ever to reach the page as markup.
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
               "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass
class ServeSettings:
    workers: int = 1  # generation threads (one per device: two on one CPU only share its cores)
    queue: int = 8  # requests that may wait for a worker; one more gets 503
    max_tokens: int = DEFAULT_MAX_TOKENS  # the longest reply a request may ask for, and the default
    max_body_bytes: int = schema.MAX_BODY_BYTES


def create_app(chat: ChatModel, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving `chat`. Its worker threads start now and stop with the app's lifespan (or
    `app.state.pool.close()`); `app.state.internal_errors` counts requests that hit a bug."""
    settings = settings or ServeSettings()
    pool = WorkerPool(settings.workers, settings.queue)
    limits = schema.Limits(settings.max_tokens, chat.tokenizer.vocab_size)
    name, created = chat.run.name, int(time.time())
    parameters = sum(p.numel() for p in chat.model.parameters())
    page = resources.files("glassgpt.serve").joinpath("page.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await asyncio.to_thread(pool.close)

    app = FastAPI(title="glassgpt serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool, app.state.internal_errors, app.state.settings = pool, 0, settings

    def model_card() -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "glassgpt",
                "glassgpt": {"run": name, "step": chat.run.step, "stage": chat.run.stage, "parameters": parameters,
                             "context": chat.context, "vocab_size": chat.tokenizer.vocab_size,
                             "is_chat_model": chat.is_chat_model,
                             "defaults": {"temperature": DEFAULT_TEMPERATURE, "top_k": DEFAULT_TOP_K,
                                          "max_tokens": settings.max_tokens}}}

    # -- errors: every response is JSON in the OpenAI shape, never a traceback ----------------------

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        message = {404: f"no such endpoint {request.method} {request.url.path}; see GET /v1/models, "
                        "POST /v1/chat/completions, GET /health, GET /",
                   405: f"{request.url.path} does not take {request.method}"}.get(error.status_code, str(error.detail))
        return JSONResponse(error_body(message, "invalid_request_error", None, code), status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        return JSONResponse(error_body("the request does not match this endpoint", "invalid_request_error"), 400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        app.state.internal_errors += 1
        return JSONResponse(error_body(INTERNAL_ERROR, "server_error", None, "internal_error"), status_code=500)

    # -- endpoints ----------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff",
                                           "Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        status = pool.status()
        return {"status": "ok" if status["accepting"] else "stopping", "model": name, **status}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str):
        if model_id != name:
            raise RequestError(f"no model {model_id!r}; this server serves {name!r}", param="model",
                               code="model_not_found", status=404)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = schema.decode_body(await _read_body(request, settings.max_body_bytes))
        ask = schema.parse_chat_request(body, limits)
        ids, dropped = await asyncio.to_thread(_prompt, chat, ask)
        try:
            job = pool.submit(lambda: chat.reply(ask.messages, ask.n, ask.max_tokens, ask.temperature, ask.top_k,
                                                 ask.top_p, ask.seed, ask.stop, prompt_ids=ids))
        except QueueFull as full:
            raise RequestError(f"the server is busy ({full.running} replies being written, {full.waiting} waiting, "
                               f"room for {settings.queue} in the queue); retry in {full.retry_after} s",
                               kind="server_error", code="queue_full", status=503,
                               headers={"Retry-After": str(full.retry_after)}) from None
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": name,
                "system_fingerprint": f"glassgpt-{name}-step-{chat.run.step}"}
        if ask.truncate:
            head["glassgpt_dropped_messages"] = dropped
        if ask.stream:
            return StreamingResponse(_events(app, job, head, ask, len(ids)), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _completion(app, request, job, head, ask, len(ids))

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 past `limit` bytes. What a client still sends past the limit is read and
    dropped (up to 8x the limit), so that it gets the 413 rather than a reset connection."""
    body, size = bytearray(), 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                body += chunk
            elif size > 8 * limit:
                break
    except ClientDisconnect:  # gone before it finished sending: nobody will read the answer
        raise RequestError("the client disconnected before the request body was complete",
                           code="client_disconnected") from None
    if size > limit:
        raise RequestError(f"the request body is {'over ' if size > 8 * limit else ''}{size:,} bytes; at most "
                           f"{limit:,}", code="request_too_large", status=413)
    return bytes(body)


def _prompt(chat: ChatModel, ask: schema.ChatRequest) -> tuple[list[int], int]:
    """(prompt ids, messages dropped): the conversation rendered as training rendered it. It must
    leave room for at least one token of reply; with glassgpt_truncate the oldest turns are
    dropped first, as glassgpt chat does (ChatModel.fit)."""
    if ask.truncate:
        try:
            ids, _, dropped = chat.fit(ask.messages, ask.max_tokens)
        except UsageError as error:
            raise RequestError(str(error), param="messages", code="context_length_exceeded") from None
        return ids, dropped
    ids = render_for_completion({"messages": ask.messages}, chat.tokenizer)
    if len(ids) >= chat.context:
        raise RequestError(f"the messages are {len(ids):,} tokens with their formatting; the model's context holds "
                           f"{chat.context:,}, and the reply needs room in it too: send fewer or shorter messages "
                           "(or set glassgpt_truncate to drop the oldest turns)", param="messages",
                           code="context_length_exceeded")
    return ids, 0


def _kind(event) -> str:
    return event.kind if event.kind in ("tool_call", "tool_result") else "text"


def _sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _events(app: FastAPI, job, head: dict, ask: schema.ChatRequest, prompt_tokens: int):
    """The stream: a role chunk per choice, content (and glassgpt_part) deltas as tokens come, a
    chunk with finish_reason per choice, the usage chunk if asked, then `data: [DONE]`. A client
    that goes away cancels the job (finally), which frees its worker."""
    head = {**head, "object": "chat.completion.chunk"}

    def chunk(index: int, delta: dict, finish: str | None = None) -> str:
        return _sse({**head, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    tokens = 0
    try:
        for index in range(ask.n):
            yield chunk(index, {"role": "assistant", "content": ""})
        async for event in job.events():
            tokens += event.token >= 0
            if event.text:
                kind = _kind(event)
                delta = {"content": event.text} if kind == "text" else {"glassgpt_part": {"type": kind, "text": event.text}}
                yield chunk(event.row, delta)
            if event.finish:
                yield chunk(event.row, {}, event.finish)
        if job.cancelled.is_set():  # not the client (it would not read this): the server is stopping
            yield _sse(error_body("the server is stopping; the reply was cut short", "server_error", None, "shutdown"))
            return
        if ask.include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(prompt_tokens, tokens)})
        yield "data: [DONE]\n\n"
    except JobFailed:
        app.state.internal_errors += 1
        yield _sse(error_body(INTERNAL_ERROR, "server_error", None, "internal_error"))
    finally:
        job.cancel()


async def _completion(app: FastAPI, request: Request, job, head: dict, ask: schema.ChatRequest,
                      prompt_tokens: int) -> JSONResponse:
    """The whole reply as one chat.completion; a client that disconnects while it waits cancels it."""
    replies = [Reply() for _ in range(ask.n)]
    watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
    try:
        async for event in job.events():
            add_event(replies[event.row], event)
        cut_short = job.cancelled.is_set()  # by the client leaving (nobody reads this) or the server stopping
    except JobFailed:
        app.state.internal_errors += 1
        return JSONResponse(error_body(INTERNAL_ERROR, "server_error", None, "internal_error"), status_code=500)
    finally:
        watcher.cancel()
        job.cancel()
    if cut_short:
        return JSONResponse(error_body("the server is stopping; retry later", "server_error", None, "shutdown"),
                            status_code=503, headers={"Retry-After": "5"})
    choices = [{"index": index, "logprobs": None, "finish_reason": reply.finish,
                "message": {"role": "assistant", "content": reply.text, "glassgpt_parts": reply.parts}}
               for index, reply in enumerate(replies)]
    return JSONResponse({**head, "object": "chat.completion", "choices": choices,
                         "usage": _usage(prompt_tokens, sum(reply.tokens for reply in replies))})


async def _cancel_on_disconnect(request: Request, job) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
