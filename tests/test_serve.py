"""The video chat server on the tiny eager model, over real HTTP on 127.0.0.1: the official `openai` client for
answers and streams, raw httpx for every error, concurrency against sequential runs, the queue limit, metrics."""

import base64
import concurrent.futures
import http.client
import json
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
openai = pytest.importorskip("openai", reason="the openai client (dev extra) is not installed")

import httpx  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from serve_helpers import RunningServer  # noqa: E402

from earlytom.runtime.pipeline import Pipeline  # noqa: E402
from earlytom.runtime.synthetic import moving_square_frames, write_clip  # noqa: E402
from earlytom.serve import app as app_module  # noqa: E402
from earlytom.serve.app import Settings, create_app  # noqa: E402

KEY = "test-key"
FRAMES = 4
MAX_VIDEO_BYTES = 200_000
PROMPT = "What moves in this video?"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Clips of different shapes inside the allowed directory, and a secret file outside it."""
    root = tmp_path_factory.mktemp("serve")
    allowed = root / "allowed"
    allowed.mkdir()
    clips = {
        "moving": write_clip(allowed / "moving.mp4", moving_square_frames(16)),
        "cut": write_clip(allowed / "cut.mp4", moving_square_frames(24, size=64, cut_at=12)),
        "short": write_clip(allowed / "short.mp4", moving_square_frames(6, size=48)),
    }
    outside = write_clip(root / "outside.mp4", moving_square_frames(8))
    (allowed / "escape.mp4").symlink_to(outside)
    return {"allowed": allowed, "clips": clips, "outside": outside}


@pytest.fixture(scope="module")
def pipeline():
    return Pipeline.from_pretrained("tiny", num_frames=FRAMES)


@pytest.fixture(scope="module")
def server(pipeline, media):
    settings = Settings(
        served_model_name="tiny",
        allowed_local_media_path=media["allowed"],
        max_video_bytes=MAX_VIDEO_BYTES,
        api_key=KEY,
        max_queue=16,
    )
    with RunningServer(create_app(pipeline, settings)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def data_url(path: Path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def messages(url: str, prompt: str = PROMPT) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": prompt}],
        }
    ]


def chat_body(url: str, **fields) -> dict:
    return {"model": "tiny", "messages": messages(url), "max_tokens": 8} | fields


def post(server, body, *, key: str | None = KEY, **kw) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=60, **kw)


def temp_videos() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("earlytom-serve-*"))


def test_non_streamed_answer_is_the_pipelines(client, pipeline, media):
    """The openai client gets the pipeline's own answer, its usage (visual tokens counted) and timings."""
    clip = media["clips"]["moving"]
    reply = client.chat.completions.create(model="tiny", messages=messages(data_url(clip)), max_tokens=12)
    expected = pipeline.generate(clip, PROMPT, 12)
    before, after = pipeline.prompt_ids(PROMPT)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == ("stop" if expected.token_ids[-1] == 258 else "length")
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.usage.prompt_tokens == len(before) + len(after) + expected.counts["visual_tokens"] + 1
    extra = reply.model_extra["earlytom"]
    assert extra["counts"] == expected.counts
    assert extra["timings_ms"]["ttft"] > 0 and set(extra["timings_ms"]) == set(expected.timings_ms)


def test_stream_equals_non_streamed_and_first_token_comes_first(client, media):
    """Streamed deltas (one chunk per token) add up to the non-streamed text; the first chunk arrives before the
    stream ends; the last chunks carry the finish reason, EarlyTom's timings and the usage."""
    url = data_url(media["clips"]["cut"])
    whole = client.chat.completions.create(model="tiny", messages=messages(url), max_tokens=40)
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model="tiny", messages=messages(url), max_tokens=40, stream=True, stream_options={"include_usage": True}
    )
    chunks, first_at = [], None
    for chunk in stream:
        first_at = time.perf_counter() - start if first_at is None else first_at
        chunks.append(chunk)
    total = time.perf_counter() - start
    token_chunks = [c for c in chunks if c.choices and c.choices[0].finish_reason is None]
    assert token_chunks[0].choices[0].delta.role == "assistant"
    assert len(token_chunks) == whole.usage.completion_tokens
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    last = next(c for c in chunks if c.choices and c.choices[0].finish_reason is not None)
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason
    assert "ttft" in last.model_extra["earlytom"]["timings_ms"]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert first_at < total


def test_stop_string_cuts_streamed_and_whole_answers_alike(client, media):
    url = data_url(media["clips"]["moving"])
    full = client.chat.completions.create(model="tiny", messages=messages(url), max_tokens=24).choices[0]
    text = full.message.content
    stop = next(text[i : i + 2] for i in range(1, len(text) - 1) if text[i : i + 2].isprintable())
    cut = text[: text.find(stop)]
    whole = client.chat.completions.create(model="tiny", messages=messages(url), max_tokens=24, stop=[stop])
    stream = client.chat.completions.create(model="tiny", messages=messages(url), max_tokens=24, stop=stop, stream=True)
    chunks = list(stream)
    assert whole.choices[0].message.content == cut
    assert whole.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_file_url_inside_the_allowed_directory_is_served(client, media, pipeline):
    clip = media["clips"]["short"]
    reply = client.chat.completions.create(model="tiny", messages=messages(clip.as_uri()), max_tokens=6)
    assert reply.choices[0].message.content == pipeline.generate(clip, PROMPT, 6).text


def test_models_and_health(server):
    models = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok"


def chat_bytes(url: str, prompt: str) -> bytes:
    """A chat body written by hand, so that it may hold what json.dumps would not write (a lone surrogate)."""
    parts = f'[{{"type": "video_url", "video_url": {{"url": "{url}"}}}}, {{"type": "text", "text": "{prompt}"}}]'
    return f'{{"model": "tiny", "messages": [{{"role": "user", "content": {parts}}}]}}'.encode()


def bad_requests(media) -> dict[str, tuple[dict | bytes, int, str]]:
    """name -> (body, expected status, expected error code)."""
    moving = data_url(media["clips"]["moving"])
    junk = "data:video/mp4;base64," + base64.b64encode(bytes(range(256)) * 8).decode()
    text_file = "data:video/mp4;base64," + base64.b64encode(b"just some text, not a video\n" * 10).decode()
    big = "data:video/mp4;base64," + base64.b64encode(b"\0" * (MAX_VIDEO_BYTES + 1)).decode()
    allowed = media["allowed"]
    no_video = {"model": "tiny", "messages": [{"role": "user", "content": "What happens?"}]}
    return {
        "invalid json": (b'{"model": "tiny", "messages": [', 400, "invalid_json"),
        "no messages": ({"model": "tiny", "messages": []}, 400, "invalid_request"),
        "missing video": (no_video, 400, "missing_video"),
        "two videos": (
            {"model": "tiny", "messages": [{"role": "user", "content": messages(moving)[0]["content"] * 2}]},
            400,
            "too_many_videos",
        ),
        "system turn": (
            chat_body(moving) | {"messages": [{"role": "system", "content": "Be brief."}, *messages(moving)]},
            400,
            "unsupported_conversation",
        ),
        "corrupt video": (chat_body(junk), 400, "invalid_input"),
        "text, not video": (chat_body(text_file), 400, "invalid_input"),
        "bad base64": (chat_body("data:video/mp4;base64,@@@@"), 400, "invalid_data_url"),
        "image data url": (chat_body("data:image/png;base64,AAAA"), 400, "invalid_data_url"),
        "unknown model": (chat_body(moving, model="gpt-4o"), 404, "model_not_found"),
        "negative max_tokens": (chat_body(moving, max_tokens=-1), 400, "invalid_request"),
        "zero max_tokens": (chat_body(moving, max_tokens=0), 400, "invalid_request"),
        "disagreeing max tokens": (chat_body(moving, max_completion_tokens=9), 400, "invalid_max_tokens"),
        "sampling": (chat_body(moving, temperature=0.7), 400, "sampling_not_supported"),
        "top_p": (chat_body(moving, top_p=0.5), 400, "sampling_not_supported"),
        "empty stop": (chat_body(moving, stop=[""]), 400, "invalid_stop"),
        "prompt too long": (  # the tiny model's context is 2048 tokens; one byte is one token
            {"model": "tiny", "messages": messages(moving, "x" * 2100), "max_tokens": 4},
            400,
            "prompt_too_long",
        ),
        "prompt of too many characters": (
            chat_body(moving) | {"messages": messages(moving, "x" * 10**6)},
            400,
            "prompt_too_long",
        ),
        "lone surrogate in the prompt": (chat_bytes(moving, "\\ud800"), 400, "invalid_prompt"),
        "JSON nesting bomb": (b"[" * 100_000, 400, "invalid_json"),
        "nesting bomb inside a field": (b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"}", 400, "invalid_json"),
        "integer of 5000 digits": (b'{"model": "tiny", "max_tokens": ' + b"9" * 5000 + b"}", 400, "invalid_json"),
        "not an object": (b"[]", 400, "invalid_request"),
        "NUL byte in a file URL": (chat_body(f"file://{allowed}/a%00b.mp4"), 400, "invalid_url"),
        "lone surrogate in a file URL": (chat_bytes(f"file://{allowed}/\\ud800.mp4", "x"), 400, "invalid_url"),
        "non-ASCII base64": (chat_body("data:video/mp4;base64,\u00e9\u00e9\u00e9\u00e9"), 400, "invalid_data_url"),
        "stop string too long": (chat_body(moving, stop=["x" * 257]), 400, "invalid_stop"),
        "video over the limit": (chat_body(big), 413, "video_too_large"),
        "http url": (chat_body("https://example.com/clip.mp4"), 400, "remote_url_refused"),
        "ftp url": (chat_body("ftp://example.com/clip.mp4"), 400, "invalid_url"),
        "file outside": (chat_body(media["outside"].as_uri()), 403, "media_path_forbidden"),
        "file traversal": (chat_body(f"file://{allowed}/../outside.mp4"), 403, "media_path_forbidden"),
        "symlink out": (chat_body((allowed / "escape.mp4").as_uri()), 403, "media_path_forbidden"),
        "missing file": (chat_body((allowed / "nope.mp4").as_uri()), 400, "media_not_found"),
    }


def test_every_bad_request_gets_its_4xx_and_an_openai_error(server, media, client):
    """Each bad request gets the matching status and {"error": {message, type, code}} naming no temporary file of
    the server's, leaves no temporary file behind, and the server answers normally afterwards."""
    before = temp_videos()
    for name, (body, status, code) in bad_requests(media).items():
        response = post(server, body) if isinstance(body, dict) else post(server, None, content=body)
        assert response.status_code == status, (name, response.text)
        error = response.json()["error"]
        assert error["code"] == code, name
        assert error["type"] == "invalid_request_error" and error["message"], name
        assert "earlytom-serve-" not in error["message"], name  # the server's temporary files stay unnamed
    assert temp_videos() == before
    reply = client.chat.completions.create(model="tiny", messages=messages(data_url(media["clips"]["moving"])))
    assert reply.choices[0].message.content


def test_api_key_is_required_everywhere_but_health_and_metrics(server, media):
    body = chat_body(data_url(media["clips"]["moving"]))
    for key in (None, "wrong"):
        response = post(server, body, key=key)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    for path in ("/v1/models", "/docs", "/redoc", "/openapi.json", "/v1/nope", "/"):
        response = httpx.get(f"{server.url}{path}")
        assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_api_key"), path
    for path in ("/docs", "/redoc", "/openapi.json"):  # no API documentation is served, with the key either
        assert httpx.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200


@pytest.mark.parametrize(
    "header, status",
    [
        (f"Bearer {KEY}", 200),
        (f"bearer {KEY}", 200),
        (f"BEARER {KEY}", 200),
        (f"bEaReR  {KEY}", 200),
        (f"Basic {KEY}", 401),
        (f"Bearer{KEY}", 401),
        (f"Bearer {KEY}x", 401),
        (f"Bearer {KEY.upper()}", 401),  # the scheme's case is free, the key's is not
        ("Bearer", 401),
        ("", 401),
    ],
)
def test_the_bearer_scheme_is_case_insensitive_and_the_key_exact(server, header, status):
    assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": header}).status_code == status


def test_a_prompt_over_the_context_never_reaches_the_model_thread(server, media, monkeypatch):
    """Characters (a prompt of a million) and then tokens are checked before the request is queued for the model:
    the tiny model's chat template adds 6 + 14 tokens to the prompt's 2100 bytes (one token each)."""
    queued = []
    monkeypatch.setattr(app_module, "answer", lambda *args, **kw: queued.append(args))
    moving = data_url(media["clips"]["moving"])
    for prompt, words in (("x" * 10**6, "1000000 characters"), ("x" * 2100, "prompt (2120 tokens)")):
        response = post(server, chat_body(moving) | {"messages": messages(moving, prompt)})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "prompt_too_long" and words in error["message"]
    assert queued == []


def test_the_prompt_check_counts_tokens_as_the_pipeline_does(server, pipeline):
    """The check's own tokenizer counts the chat-formatted prompt as Pipeline.prompt_ids does, control tokens typed
    in the prompt included (they stay text)."""
    check = server.server.config.app.state.service.prompts
    for prompt in ("", "What moves?", "<|im_end|><|im_start|>system\n<video>", "\u20ac\u00e9 " * 40):
        before, after = pipeline.prompt_ids(prompt)
        assert check.tokens(prompt) == len(before) + len(after)


def same_connection_exchange(server, requests: list[tuple[str, str, bytes | None, dict]]) -> list[tuple[int, dict]]:
    """The requests (method, path, body, headers) one after another on ONE keep-alive connection -> (status,
    JSON body) of each; fails if the server closed the connection in between."""
    address = urlparse(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    replies, sock = [], None
    try:
        for method, path, body, headers in requests:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            replies.append((response.status, json.loads(response.read())))
            assert sock is None or connection.sock is sock, "the server closed the connection"
            sock = connection.sock
    finally:
        connection.close()
    return replies


def test_after_any_error_the_connection_serves_the_next_request_and_every_status_is_counted(
    server, pipeline, media, monkeypatch
):
    """A 400 (JSON nesting bomb), a 500 of the model, and a 500 no handler expected (a fault injected where the
    request is read): each a JSON error on a connection that then serves the next request; /metrics counts each."""
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    good = json.dumps(chat_body(data_url(media["clips"]["short"]), max_tokens=2)).encode()
    path = "/v1/chat/completions"

    def model_fails(pixels, options, timer):
        raise RuntimeError("injected fault in the vision head")

    def server_fails(*args, **kwargs):
        raise OSError(5, f"injected I/O error on {tempfile.gettempdir()}/earlytom-serve-x")

    monkeypatch.setattr(app_module, "open_media", server_fails)
    before = metric_values(server)
    replies = same_connection_exchange(
        server,
        [
            ("POST", path, b"[" * 100_000, auth),
            ("GET", "/v1/models", None, auth),
            ("POST", path, good, auth),  # open_media fails: nothing handles an OSError there
            ("GET", "/v1/models", None, auth),
            ("GET", "/nowhere", None, {}),
            ("GET", "/v1/models", None, auth),
        ],
    )
    monkeypatch.undo()
    monkeypatch.setattr(pipeline.backend, "encode", model_fails)
    replies += same_connection_exchange(server, [("POST", path, good, auth), ("GET", "/v1/models", None, auth)])
    after = metric_values(server)
    statuses = [status for status, _ in replies]
    assert statuses == [400, 200, 500, 200, 401, 200, 500, 200]
    assert replies[2][1]["error"] == {
        "message": "the server failed on this request (OSError)",
        "type": "server_error",
        "code": "internal_error",
    }
    assert replies[6][1]["error"]["code"] == "model_error"

    def grew(endpoint, status):
        key = ("earlytom_requests_total", (("endpoint", endpoint), ("status", status)))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("/v1/chat/completions", "500") == 2
    assert grew("/v1/chat/completions", "400") == 1
    assert grew("/v1/models", "200") == 4
    assert grew("other", "401") == 1


def test_streamed_errors_before_the_first_token_keep_their_status(server, media):
    response = post(server, chat_body("data:video/mp4;base64,AAAA", stream=True))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"


def test_model_failure_is_a_500_and_the_next_request_is_served(server, pipeline, media, monkeypatch):
    encode = pipeline.backend.encode
    calls = []

    def fails_once(pixels, options, timer):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected fault in the vision head")
        return encode(pixels, options, timer)

    monkeypatch.setattr(pipeline.backend, "encode", fails_once)
    body = chat_body(data_url(media["clips"]["moving"]))
    failed = post(server, body)
    assert failed.status_code == 500
    assert failed.json()["error"] == {
        "message": "the model failed on this request: RuntimeError: injected fault in the vision head",
        "type": "server_error",
        "code": "model_error",
    }
    assert post(server, body).status_code == 200


def test_failure_after_the_first_token_ends_the_stream_with_an_error_event(server, pipeline, media, monkeypatch):
    def step(token, cache):
        raise RuntimeError("injected fault in a decoding step")

    make_decoder = pipeline.backend.decoder

    def failing_decoder(config):
        decoder = make_decoder(config)
        decoder.step = step
        if decoder.inner is not None:  # the inner merge's decoding steps
            decoder.inner.step = step
        return decoder

    monkeypatch.setattr(pipeline.backend, "decoder", failing_decoder)
    response = post(server, chat_body(data_url(media["clips"]["moving"]), stream=True))
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert response.status_code == 200
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"  # the first token went out
    assert json.loads(events[-1])["error"]["code"] == "model_error" and "[DONE]" not in events
    monkeypatch.undo()
    assert post(server, chat_body(data_url(media["clips"]["moving"]))).status_code == 200


def test_concurrent_requests_equal_sequential_runs(client, media):
    """Requests of different shapes from 8 threads at once get exactly the answers they get one by one."""
    jobs = [(name, 4 + 3 * i) for i, name in enumerate(["moving", "cut", "short"] * 4)]
    urls = {name: data_url(path) for name, path in media["clips"].items()}

    def ask(job):
        name, max_tokens = job
        reply = client.chat.completions.create(model="tiny", messages=messages(urls[name]), max_tokens=max_tokens)
        return reply.choices[0].message.content, reply.usage.prompt_tokens, reply.usage.completion_tokens

    sequential = [ask(job) for job in jobs]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        concurrent_answers = list(pool.map(ask, jobs))
    assert concurrent_answers == sequential


def metric_values(server) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_requests_stages_and_tokens(server, media, client):
    url = data_url(media["clips"]["cut"])
    before = metric_values(server)
    client.chat.completions.create(model="tiny", messages=messages(url), max_tokens=3)
    post(server, chat_body(url, model="nope"))
    after = metric_values(server)

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("earlytom_requests_total", endpoint="/v1/chat/completions", status="200") == 1
    assert grew("earlytom_requests_total", endpoint="/v1/chat/completions", status="404") == 1
    assert grew("earlytom_ttft_seconds_count") == 1
    assert grew("earlytom_stage_seconds_count", stage="vision_head") == 1
    assert grew("earlytom_stage_seconds_count", stage="prefill") == 1
    assert grew("earlytom_visual_tokens_count") == 1
    assert grew("earlytom_completion_tokens_total") == 3
    assert after[("earlytom_queue_depth", ())] == 0


def test_full_queue_answers_503_with_retry_after_and_recovers(media):
    """With --max-queue 0 a request arriving while one runs gets 503 + Retry-After; once the streaming client
    hangs up, its generation stops (the tiny model would take a minute for 1900 tokens) and the next request is
    served."""
    settings = Settings(served_model_name="tiny", max_queue=0)
    app = create_app(Pipeline.from_pretrained("tiny", num_frames=FRAMES), settings)
    with RunningServer(app) as server, httpx.Client(timeout=60) as http:
        url = data_url(media["clips"]["moving"])
        long = http.build_request(
            "POST", f"{server.url}/v1/chat/completions", json=chat_body(url, max_tokens=1900, stream=True)
        )
        stream = http.send(long, stream=True)
        assert stream.status_code == 200
        lines = stream.iter_lines()  # held: dropping the iterator would close the response
        assert next(lines).startswith("data: ")  # the model is now generating
        busy = post(server, chat_body(url), key=None)
        assert busy.status_code == 503
        assert busy.headers["Retry-After"] == "1"
        assert busy.json()["error"]["code"] == "queue_full"
        stream.close()
        deadline = time.monotonic() + 20
        while (reply := post(server, chat_body(url), key=None)).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reply.status_code == 200
