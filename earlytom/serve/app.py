"""The FastAPI app: POST /v1/chat/completions (JSON or server-sent events), GET /v1/models, /health, /metrics."""

import asyncio
import hmac
import json
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from earlytom.runtime.pipeline import Pipeline, Result
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
COUNTED_ENDPOINTS = ("/v1/chat/completions", "/v1/models")


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


def as_api_error(error: BaseException) -> ApiError:
    """A failure of the model thread as the client sees it: the pipeline's ValueErrors are the request's fault
    (unreadable video, prompt too long); anything else is the server's."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, ValueError):
        return ApiError(400, str(error), "invalid_input")
    log.error("the model failed on a request", exc_info=error)
    return ApiError(
        500, f"the model failed on this request: {type(error).__name__}: {error}", "model_error", kind="server_error"
    )


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


def check_api_key(request: Request, key: str | None) -> None:
    if key is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
        raise ApiError(401, "missing or wrong API key: send the header Authorization: Bearer <key>", "invalid_api_key")


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


class StatusCounter:
    """ASGI middleware counting responses of the /v1 endpoints by status (streamed ones when they start)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in COUNTED_ENDPOINTS else "other"

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


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
            raise as_api_error(error) from error
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
            raise as_api_error(future.exception())
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
                    yield sse(as_api_error(future.exception()).body())
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
        check_api_key(request, self.settings.api_key)
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
        media = await asyncio.to_thread(
            open_media, url, allowed=self.settings.allowed_local_media_path, max_bytes=self.settings.max_video_bytes
        )
        return await (self.stream(media, job) if chat.stream else self.complete(media, job))


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def create_app(pipeline: Pipeline, settings: Settings) -> FastAPI:
    """The server for one loaded pipeline. Closing the app (its lifespan) waits for the running request."""
    service = ChatService(pipeline, settings)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        service.worker.close()

    app = FastAPI(title="EarlyTom video chat", lifespan=lifespan)
    app.add_middleware(StatusCounter, metrics=service.metrics)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        code = "not_found" if error.status_code == 404 else "method_not_allowed"
        return error_response(ApiError(error.status_code, str(error.detail), code))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await service.handle(request)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_api_key(request, settings.api_key)
        card = {"id": settings.served_model_name, "object": "model", "created": started, "owned_by": "earlytom"}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "pid": os.getpid(), "waiting": service.worker.waiting}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
