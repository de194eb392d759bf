"""The FastAPI app: POST /v1/chat/completions (JSON or server-sent events), GET /v1/models, /health, /metrics.

Every path but /health and /metrics needs the API key when one is set (there are no /docs). Every error is an
OpenAI-style JSON body, counted in /metrics by status, and leaves the connection open for the next request."""

import asyncio
import copy
import hmac
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from earlytom.runtime.pipeline import Pipeline, PromptTooLong, Result
from earlytom.serve.media import Media, open_media
from earlytom.serve.metrics import Metrics
from earlytom.serve.protocol import (
    ApiError,
    check_greedy,
    conversation,
    max_new_tokens,
    parse_chat,
    stop_strings,
)
from earlytom.serve.text import TextStream, cut_at_stop
from earlytom.serve.worker import QueueFull, Worker

log = logging.getLogger("earlytom.serve")

RETRY_AFTER_S = 1
OPEN_PATHS = ("/health", "/metrics")  # answered without the API key
ENDPOINTS = ("/v1/chat/completions", "/v1/models", *OPEN_PATHS)  # /metrics counts any other path as "other"


@dataclass
class Settings:
    """What the operator chose (the `earlytom serve` flags of the same names)."""

    served_model_name: str
    allowed_local_media_path: Path | None = None
    max_video_bytes: int = 64 * 2**20
    api_key: str | None = None
    max_queue: int = 16

    def __post_init__(self) -> None:
        if self.max_video_bytes < 1:
            raise ValueError(f"--max-video-bytes = {self.max_video_bytes}: allow at least 1 byte")
        if self.max_queue < 0:
            raise ValueError(f"--max-queue = {self.max_queue}: allow 0 or more waiting requests")
        if self.allowed_local_media_path is not None:
            allowed = Path(self.allowed_local_media_path).resolve()
            if not allowed.is_dir():
                raise ValueError(f"--allowed-local-media-path {allowed} is not a directory")
            self.allowed_local_media_path = allowed

    @property
    def body_limit(self) -> int:
        """Largest request body: a video at the limit in base64 (4/3 of its size) plus 1 MiB of JSON around it."""
        return self.max_video_bytes * 4 // 3 + 2**20


class Cancelled(Exception):
    """The streaming client went away; the model stops generating for it."""


@dataclass
class Answer:
    result: Result
    prompt_tokens: int


def answer(pipeline: Pipeline, media: Media, prompt: str, max_tokens: int, on_token=None) -> Answer:
    """Runs on the model thread: the pipeline's answer, and the prompt length it saw (text + visual tokens)."""
    try:
        before, after = pipeline.prompt_ids(prompt)
        result = pipeline.generate(str(media.path), prompt, max_tokens, on_token=on_token)
    finally:
        media.release()
    # The decoder gets the selected visual tokens and the backbone's suffix embeddings between the text halves.
    return Answer(result, len(before) + len(after) + result.counts["visual_tokens"] + 1)


def as_api_error(error: BaseException, media: Media) -> ApiError:
    """A failure of the model thread as the client sees it: the pipeline's ValueErrors are the request's fault
    (unreadable video, prompt too long); anything else is the server's. No message names a temporary file."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, ValueError):
        return ApiError(400, media.public(str(error)), "invalid_input")
    log.error("the model failed on a request", exc_info=error)
    message = media.public(f"the model failed on this request: {type(error).__name__}: {error}")
    return ApiError(500, message, "model_error", kind="server_error")


def finish_reason(result: Result, eos: int, stopped: bool) -> str:
    return "stop" if stopped or result.token_ids[-1] == eos else "length"


def usage(done: Answer) -> dict:
    completion = len(done.result.token_ids)
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": done.prompt_tokens + completion,
    }


def extras(result: Result) -> dict:
    return {"timings_ms": result.timings_ms, "counts": result.counts, "notes": result.notes}


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case, as RFC 9110 has it)."""
    scheme, _, token = (header or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes, over the limit of {limit}", "body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over the limit of {limit} bytes", "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def error_response(error: ApiError) -> Response:
    """The error as JSON in ASCII (a lone surrogate echoed from a request stays valid JSON)."""
    return Response(json.dumps(error.body()), error.status, error.headers, media_type="application/json")


class RequireKey:
    """ASGI middleware: 401 on every path but OPEN_PATHS unless the request carries `Authorization: Bearer <key>`."""

    def __init__(self, app, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            token = bearer_token(Headers(scope=scope).get("authorization"))
            if token is None or not hmac.compare_digest(token.encode(), self.key):
                message = "missing or wrong API key: send the header Authorization: Bearer <key>"
                return await error_response(ApiError(401, message, "invalid_api_key"))(scope, receive, send)
        await self.app(scope, receive, send)


class CountAndContain:
    """ASGI middleware: counts every response by endpoint and status (streamed ones when they start), and answers
    an error no handler took with a JSON 500 itself. (Starlette's last-resort handler re-raises it after its
    plain-text 500, and uvicorn then closes the connection under the client's next request.)"""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        started = False

        async def counting_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception as error:
            if started:  # a response under way can only be cut off
                raise
            log.error("unhandled error in a request to %s", endpoint, exc_info=error)
            message = f"the server failed on this request ({type(error).__name__})"
            failed = ApiError(500, message, "internal_error", kind="server_error")
            await error_response(failed)(scope, receive, counting_send)


class TokenFeed:
    """Generated token ids, handed from the model thread to the event loop as they come, then END."""

    END = object()

    def __init__(self) -> None:
        self.loop, self.queue, self.cancel = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()

    def on_token(self, token_id: int) -> None:
        """Runs on the model thread, per token; stops the generation once the client has gone."""
        if self.cancel.is_set():
            raise Cancelled
        self.loop.call_soon_threadsafe(self.queue.put_nowait, token_id)

    def close(self, future: asyncio.Future) -> None:
        """The generation's done-callback (its tokens were queued before it): END follows them. Its exception
        counts as seen: a stream whose client left never reads it."""
        if not future.cancelled():
            future.exception()
        self.queue.put_nowait(self.END)

    async def get(self):
        return await self.queue.get()


class PromptCheck:
    """The prompt's size, checked before the request reaches the model thread: its characters first (no longer
    prompt can fit the context: each token spells at most the longest vocabulary entry), then its tokens, counted
    on a thread of their own with a tokenizer of their own (a tokenizer is not thread-safe: each call sets whether
    typed special tokens are split). Both refusals are a 400 "prompt_too_long"."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.tokenizer = copy.deepcopy(pipeline.tokenizer)
        before, after = pipeline.prompt_ids("")
        self.template_tokens = len(before) + len(after)  # prompt_ids tokenizes the prompt apart from the template
        self.context = pipeline.decoder.context_length
        self.max_chars = self.context * max(map(len, self.tokenizer.get_vocab()))
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="earlytom-tokenize")

    def tokens(self, prompt: str) -> int:
        """Text tokens of the whole chat-formatted prompt (as Pipeline.prompt_ids counts them)."""
        ids = self.tokenizer(prompt, add_special_tokens=False, split_special_tokens=True).input_ids
        return self.template_tokens + len(ids)

    def fits(self, prompt: str, max_tokens: int) -> None:
        """Runs on the check's thread: PromptTooLong unless the prompt, the visual tokens and the answer fit."""
        self.pipeline.check_context(self.tokens(prompt), max_tokens, self.context)

    async def check(self, prompt: str, max_tokens: int) -> None:
        try:
            prompt.encode()
        except UnicodeEncodeError as error:
            raise ApiError(400, f"the prompt is not valid Unicode text: {error}", "invalid_prompt") from error
        if len(prompt) > self.max_chars:
            raise ApiError(
                400,
                f"the prompt has {len(prompt)} characters; no prompt over {self.max_chars} fits this model's "
                f"context window of {self.context} tokens",
                "prompt_too_long",
            )
        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.fits, prompt, max_tokens)
        except PromptTooLong as error:
            raise ApiError(400, str(error), "prompt_too_long") from error

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class Job:
    """One validated chat request."""

    prompt: str
    max_tokens: int
    stop: list[str]
    include_usage: bool


class ChatService:
    """The chat-completions endpoint's work for one loaded pipeline."""

    def __init__(self, pipeline: Pipeline, settings: Settings) -> None:
        self.pipeline, self.settings = pipeline, settings
        self.worker = Worker(settings.max_queue)
        self.prompts = PromptCheck(pipeline)
        self.metrics = Metrics(lambda: self.worker.waiting)
        self.eos = pipeline.tokenizer.eos_token_id

    def submit(self, media: Media, job: Job, on_token) -> asyncio.Future:
        """Queue the generation; it releases `media` when done. 503 (and the media released) if the queue is full."""
        try:
            return self.worker.submit(lambda: answer(self.pipeline, media, job.prompt, job.max_tokens, on_token))
        except QueueFull as error:
            media.release()
            raise ApiError(
                503,
                f"the server is busy: {error}; retry later",
                "queue_full",
                kind="server_overloaded",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from error

    def record(self, done: Answer, started: float) -> None:
        result = done.result
        self.metrics.observe(result.timings_ms, result.counts, len(result.token_ids))
        self.metrics.latency.observe(time.perf_counter() - started)

    def envelope(self, kind: str) -> dict:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.settings.served_model_name,
        }

    async def complete(self, media: Media, job: Job) -> JSONResponse:
        started = time.perf_counter()
        try:
            done = await self.submit(media, job, None)
        except Exception as error:
            raise as_api_error(error, media) from error
        self.record(done, started)
        text, stopped = cut_at_stop(done.result.text, job.stop)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason(done.result, self.eos, stopped),
        }
        body = self.envelope("chat.completion") | {
            "choices": [choice],
            "usage": usage(done),
            "earlytom": extras(done.result),
        }
        return JSONResponse(body)

    async def stream(self, media: Media, job: Job) -> Response:
        """Server-sent events: one chunk per generated token (the first as soon as it exists), a last chunk with
        the finish reason and EarlyTom's timings, a usage chunk if asked for, then [DONE]. Errors before the
        first token get their HTTP status; a failure later ends the stream with an error event."""
        started, feed = time.perf_counter(), TokenFeed()
        future = self.submit(media, job, feed.on_token)
        future.add_done_callback(feed.close)
        first = await feed.get()
        if first is TokenFeed.END:
            raise as_api_error(future.exception(), media)
        head, text = self.envelope("chat.completion.chunk"), TextStream(self.pipeline.tokenizer, job.stop)

        def chunk(delta: dict, reason: str | None = None, **more) -> str:
            return sse(head | {"choices": [{"index": 0, "delta": delta, "finish_reason": reason}]} | more)

        async def events():
            try:
                yield chunk({"role": "assistant", "content": text.push(first)})
                while (token_id := await feed.get()) is not TokenFeed.END:
                    if not text.stopped:
                        yield chunk({"content": text.push(token_id)})
                if future.exception() is not None:
                    yield sse(as_api_error(future.exception(), media).body())
                    return
                done = future.result()
                self.record(done, started)
                rest = text.finish(done.result.text)
                if rest:
                    yield chunk({"content": rest})
                reason = finish_reason(done.result, self.eos, text.stopped)
                yield chunk({}, reason, earlytom=extras(done.result))
                if job.include_usage:
                    yield sse(head | {"choices": [], "usage": usage(done)})
                yield sse("[DONE]")
            finally:
                feed.cancel.set()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    async def handle(self, request: Request) -> Response:
        body = await read_body(request, self.settings.body_limit)
        chat = await asyncio.to_thread(parse_chat, body)
        if chat.model != self.settings.served_model_name:
            raise ApiError(
                404,
                f"model {chat.model!r} is not served here; this server serves {self.settings.served_model_name!r}",
                "model_not_found",
            )
        prompt, url = conversation(chat)
        check_greedy(chat)
        include_usage = chat.stream_options is not None and chat.stream_options.include_usage
        job = Job(prompt, max_new_tokens(chat), stop_strings(chat), include_usage)
        await self.prompts.check(job.prompt, job.max_tokens)
        media = await asyncio.to_thread(
            open_media, url, allowed=self.settings.allowed_local_media_path, max_bytes=self.settings.max_video_bytes
        )
        return await (self.stream(media, job) if chat.stream else self.complete(media, job))


def create_app(pipeline: Pipeline, settings: Settings) -> FastAPI:
    """The server for one loaded pipeline. Closing the app (its lifespan) waits for the running request."""
    service = ChatService(pipeline, settings)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.worker.close()
        service.prompts.close()

    app = FastAPI(title="EarlyTom video chat", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if settings.api_key is not None:
        app.add_middleware(RequireKey, key=settings.api_key)
    app.add_middleware(CountAndContain, metrics=service.metrics)  # added last: outside the key check
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> Response:
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error_response(ApiError(error.status_code, str(error.detail), code))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await service.handle(request)

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": settings.served_model_name, "object": "model", "created": started, "owned_by": "earlytom"}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "pid": os.getpid(), "waiting": service.worker.waiting}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
