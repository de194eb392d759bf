"""The chat-completions request as this server accepts it (the OpenAI schema with vLLM's `video_url` parts), its
validation into what the pipeline needs, and OpenAI-style errors."""

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_MAX_TOKENS = 128
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256  # each is compared with the answer's end at every token, on the event loop
MAX_PROBLEMS = 5  # validation errors named in a 400 (a body may hold thousands)


class ApiError(Exception):
    """An error the client gets as {"error": {"message", "type", "code"}} with HTTP `status`."""

    def __init__(
        self, status: int, message: str, code: str, *, kind: str = "invalid_request_error", headers=None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind
        self.headers = {} if headers is None else headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code}}


class MediaURL(BaseModel):
    url: str


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class VideoPart(BaseModel):
    type: Literal["video_url"]
    video_url: MediaURL


Part = Annotated[TextPart | VideoPart, Field(discriminator="type")]


class Message(BaseModel):
    role: str
    content: str | list[Part]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """Fields this server reads; other OpenAI fields are accepted and have no effect."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


def parse_chat(body: bytes) -> ChatRequest:
    """The request body -> ChatRequest, or a 400 naming what is wrong."""
    try:
        data = json.loads(body)
    except ValueError as error:  # not JSON, not UTF-8, an integer of more than 4300 digits
        raise ApiError(400, f"the request body is not valid JSON: {error}", "invalid_json") from error
    except RecursionError as error:
        raise ApiError(400, "the request body is JSON nested too deeply to read", "invalid_json") from error
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as error:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors()]
        more = f"; and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        raise ApiError(
            400, f"invalid chat request: {'; '.join(problems[:MAX_PROBLEMS])}{more}", "invalid_request"
        ) from error


def conversation(chat: ChatRequest) -> tuple[str, str]:
    """The one user turn's text (its text parts joined by newlines) and the URL of its one video."""
    if len(chat.messages) != 1 or chat.messages[0].role != "user":
        roles = [m.role for m in chat.messages]
        raise ApiError(
            400,
            f"messages have roles {roles}; this model answers one user message holding one video and its text "
            "(no system, assistant or multi-turn messages)",
            "unsupported_conversation",
        )
    content = chat.messages[0].content
    parts = [TextPart(type="text", text=content)] if isinstance(content, str) else content
    videos = [p.video_url.url for p in parts if isinstance(p, VideoPart)]
    if len(videos) != 1:
        raise ApiError(
            400,
            f"the user message has {len(videos)} video_url parts; send exactly one "
            '{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}',
            "missing_video" if not videos else "too_many_videos",
        )
    return "\n".join(p.text for p in parts if isinstance(p, TextPart)), videos[0]


def max_new_tokens(chat: ChatRequest) -> int:
    """`max_completion_tokens` (the current OpenAI name) or `max_tokens`; DEFAULT_MAX_TOKENS when neither."""
    given = {v for v in (chat.max_tokens, chat.max_completion_tokens) if v is not None}
    if len(given) > 1:
        raise ApiError(
            400,
            f"max_tokens = {chat.max_tokens} and max_completion_tokens = {chat.max_completion_tokens} disagree; "
            "send one of them",
            "invalid_max_tokens",
        )
    return given.pop() if given else DEFAULT_MAX_TOKENS


def check_greedy(chat: ChatRequest) -> None:
    """This server decodes greedily: temperature 0 (or absent), top_p 1 (or absent), n 1 (or absent)."""
    wrong = [
        f"{name} = {value}"
        for name, value, greedy in (("temperature", chat.temperature, 0), ("top_p", chat.top_p, 1), ("n", chat.n, 1))
        if value is not None and value != greedy
    ]
    if wrong:
        raise ApiError(
            400,
            f"{', '.join(wrong)}: this server decodes greedily and does not sample; send temperature 0, top_p 1 "
            "and n 1 (or leave them out)",
            "sampling_not_supported",
        )


def stop_strings(chat: ChatRequest) -> list[str]:
    """`stop` as a list of 0 to MAX_STOP_STRINGS non-empty strings of at most MAX_STOP_CHARS characters."""
    if chat.stop is None:
        return []
    stop = [chat.stop] if isinstance(chat.stop, str) else chat.stop
    if len(stop) > MAX_STOP_STRINGS or not all(1 <= len(s) <= MAX_STOP_CHARS for s in stop):
        raise ApiError(
            400,
            f"stop = {chat.stop!r:.200}: give up to {MAX_STOP_STRINGS} non-empty strings of at most "
            f"{MAX_STOP_CHARS} characters",
            "invalid_stop",
        )
    return stop
