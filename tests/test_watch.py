"""`earlytom watch`: frames sampled as they arrive from a pipe fed in real time by a writer thread and from a file
played at its own rate, answers every few seconds of video; a source that ends, stalls or sends garbage gives one
clear error and leaves no file descriptor or thread behind."""

import io
import json
import os
import threading
import time

import av
import numpy as np
import pytest

from earlytom.cli import main
from earlytom.runtime.synthetic import moving_square_frames, write_clip

FPS = 8  # of the clips


def ts_bytes(frames: np.ndarray) -> bytes:
    """uint8 frames [n, H, W, 3] as an MPEG-TS stream at FPS (H.264 without B-frames, as a camera sends it)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"tune": "zerolatency"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


class Pipe:
    """A pipe whose read end stands in for stdin, written by a thread: `data` in `pieces` slices, one every
    `interval` seconds (real time), then closed, or (stall=True) left open after half of it until stop()."""

    def __init__(self, data: bytes, *, pieces: int, interval: float, stall: bool = False) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.stdin = io.TextIOWrapper(os.fdopen(self.read_fd, "rb"))
        self.stopped = threading.Event()
        size = -(-len(data) // pieces)
        slices = [data[i : i + size] for i in range(0, len(data), size)]
        self.thread = threading.Thread(target=self.write, args=(slices, interval, stall), daemon=True)

    def write(self, slices: list[bytes], interval: float, stall: bool) -> None:
        for n, piece in enumerate(slices):
            if stall and n == len(slices) // 2:
                self.stopped.wait()
                break
            os.write(self.write_fd, piece)
            time.sleep(interval)
        os.close(self.write_fd)

    def __enter__(self) -> "Pipe":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        self.stdin.close()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def watch(*args: str) -> int:
    return main(["watch", "--prompt", "What moves?", "--max-new-tokens", "2", "--json", *args])


def answers(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_a_pipe_fed_in_real_time(monkeypatch, capsys):
    """3 s of video written over 3 s: answers at 1 s and 2 s of video and when it ends; 4 frames sampled per
    second of the 8 the pipe sends."""
    data = ts_bytes(moving_square_frames(24, cut_at=12))
    with Pipe(data, pieces=24, interval=1 / FPS) as pipe:
        monkeypatch.setattr("sys.stdin", pipe.stdin)
        start = time.perf_counter()
        status = watch("--video", "-", "--fps", "4", "--every", "1")
        elapsed = time.perf_counter() - start
    out, err = capsys.readouterr()
    assert status == 2 and err.strip().endswith("error: - ended after 12 sampled frames (2.8 s of video)")
    got = answers(out)
    assert [a["seconds"] for a in got] == [1.0, 2.0, 2.75]
    assert [a["counts"]["frames_in"] for a in got] == [5, 9, 12]
    assert all(a["latency_ms"] > 0 and a["timings_ms"]["ttft"] > 0 for a in got)
    assert elapsed >= 24 / FPS - 0.2  # the frames arrived in real time


def test_a_file_plays_at_its_own_rate(tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.mp4", moving_square_frames(16), fps=FPS)
    start = time.perf_counter()
    status = watch("--video", str(clip), "--fps", "2", "--every", "1")
    elapsed = time.perf_counter() - start
    out, err = capsys.readouterr()
    assert status == 2 and f"error: {clip} ended after 4 sampled frames (1.5 s of video)" in err
    assert [(a["seconds"], a["counts"]["frames_in"]) for a in answers(out)] == [(1.0, 3), (1.5, 4)]
    assert elapsed >= 1.5  # its last sampled frame is shown at 1.5 s


def failing_watch(monkeypatch, capsys, data: bytes, stall: bool) -> tuple[int, str, str]:
    """watch on a pipe that sends `data` (and stalls half way if asked), checking that it leaves nothing open."""

    def run() -> tuple[int, str, str]:
        with Pipe(data, pieces=8, interval=0.01, stall=stall) as pipe:
            monkeypatch.setattr("sys.stdin", pipe.stdin)
            status = watch("--video", "-", "--fps", "4", "--every", "100", "--timeout", "1")
            out, err = capsys.readouterr()
        return status, out, err

    run()  # loads what stays loaded (libraries, thread pools)
    fds, threads = open_fds(), set(threading.enumerate())
    result = run()
    assert open_fds() == fds and set(threading.enumerate()) == threads
    return result


def test_a_stalled_pipe_times_out(monkeypatch, capsys):
    data = ts_bytes(moving_square_frames(24))
    start = time.perf_counter()
    status, out, err = failing_watch(monkeypatch, capsys, data, stall=True)
    assert status == 2
    assert err.strip().splitlines()[-1] == "error: the pipe on stdin sent nothing for 1 s: the source stalled"
    assert time.perf_counter() - start < 30


def test_garbage_on_the_pipe(monkeypatch, capsys):
    garbage = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    status, out, err = failing_watch(monkeypatch, capsys, garbage, stall=False)
    assert status == 2 and out == ""
    assert err.strip().splitlines()[-1] == (
        "error: cannot read a video from the pipe on stdin: Invalid data found when processing input; send a video "
        "stream (e.g. MPEG-TS)"
    )


def test_a_missing_file(tmp_path, capsys):
    assert watch("--video", str(tmp_path / "none.mp4")) == 2
    assert (
        f"error: video {tmp_path / 'none.mp4'} is not a file; pass a video file, - for a pipe"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(("flag", "value", "message"), [("--every", "0", "--every 0.0"), ("--fps", "-1", "fps = -1")])
def test_bad_rates_are_refused(tmp_path, capsys, flag, value, message):
    clip = write_clip(tmp_path / "clip.mp4", moving_square_frames(4), fps=FPS)
    assert watch("--video", str(clip), flag, value) == 2
    assert message in capsys.readouterr().err


def test_a_url(tmp_path, capsys):
    """An http:// URL (a local server sending MPEG-TS), through PyAV's network protocols."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    (tmp_path / "clip.ts").write_bytes(ts_bytes(moving_square_frames(16)))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = partial(Quiet, directory=str(tmp_path))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.ts"
        try:
            status = watch("--video", url, "--fps", "2", "--every", "1")
        finally:
            server.shutdown()
            thread.join()
    out, err = capsys.readouterr()
    assert status == 2 and f"error: {url} ended after 4 sampled frames (1.5 s of video)" in err
    assert [a["seconds"] for a in answers(out)] == [1.0, 1.5]
