"""`earlytom serve --ray`: two replicas of the tiny model behind Ray Serve's one HTTP endpoint on 127.0.0.1, on a
local Ray instance the server starts (and stops with it). Slow (Ray and two replicas start in 30-90 s on two
cores): marked `ray`; deselect with -m "not ray"."""

import base64
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray.serve", reason="the [ray] extra is not installed")
openai = pytest.importorskip("openai", reason="the openai client (dev extra) is not installed")

import httpx  # noqa: E402

from earlytom.runtime.pipeline import Pipeline  # noqa: E402
from earlytom.runtime.synthetic import moving_square_frames, write_clip  # noqa: E402

pytestmark = pytest.mark.ray
STARTUP_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "server.log"
    argv = [
        sys.executable,
        "-m",
        "earlytom.serve",
        "--model",
        "tiny",
        "--frames",
        "4",
        "--port",
        str(port),
        "--ray",
        "--replicas",
        "2",
        "--cpus-per-replica",
        "0.5",
    ]
    # Ray Serve gives its HTTP proxy 5 s to report ready (10 s per health check): a 2-core machine busy starting
    # Ray and two replicas can miss that, so the test allows a minute.
    slow_machine = {f"RAY_SERVE_PROXY_{name}_TIMEOUT_S": "60" for name in ("READY_CHECK", "HEALTH_CHECK")}
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"} | slow_machine
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while not healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray server did not come up in {STARTUP_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)  # Ray's handler shuts the local instance down with the driver
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def replica_pids(url: str, tries: int = 16) -> set[int]:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return set(pool.map(lambda _: httpx.get(f"{url}/health", timeout=30).json()["pid"], range(tries)))


def test_two_replicas_answer_behind_one_endpoint(ray_server, tmp_path):
    deadline = time.monotonic() + 60
    while len(pids := replica_pids(ray_server)) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(pids) == 2

    clip = write_clip(tmp_path / "clip.mp4", moving_square_frames(12))
    url = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What moves?"}]
    client = openai.OpenAI(base_url=f"{ray_server}/v1", api_key="unused", max_retries=0, timeout=60)
    ask = dict(model="tiny", messages=[{"role": "user", "content": content}], max_tokens=6)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.chat.completions.create(**ask).choices[0].message.content, range(4)))
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**ask, stream=True))
    expected = Pipeline.from_pretrained("tiny", num_frames=4).generate(clip, "What moves?", 6).text
    assert answers == [expected] * 4 and streamed == expected

    bad = httpx.post(f"{ray_server}/v1/chat/completions", content=b"{", timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
