"""An open stream of frames (Pipeline.open_stream, DESIGN.md section 9): frames are encoded by the vision chain's
cascade as they are pushed, and a question asked at any time costs the open segments' flush, selection and the
decoder's prefill.

    with pipe.open_stream(max_frames=64) as stream:
        stream.push(frames)                     # uint8 [b, H, W, 3], any b, as they arrive
        result = stream.ask("What happens?")    # as an offline request on the frames pushed so far
        stream.push(more)                       # goes on exactly where it was

ask() answers on a virtual flush: the cascade is forked (the open segments are a few frames per merge), the copy
finishes and selects, the stream keeps its state. An unbounded stream keeps a sliding window of the last
`max_frames` input frames: whole final segments leave once they fall outside it (the window holds at most
max_frames frames plus those of segments still open). Inside the window every frame was encoded when it arrived,
so the answer equals an offline request on the window's frames only while nothing has left it.
"""

import itertools
import math
import os
import select
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import torch

from earlytom.runtime.chain import Cascade
from earlytom.runtime.pipeline import CHUNK_FRAMES, Pipeline, Result
from earlytom.runtime.timing import StageTimer
from earlytom.video import VideoError, stack, stream_video
from earlytom.video.pyav import named_stream, to_rgb

# A later stretch runs on a merge's frames as soon as it emits them (an offline request gathers BATCH_FRAMES): an
# answer then waits only for the open segments, not for batches half full.
LIVE_BATCH = 1


class StreamClosed(RuntimeError):
    """push() or ask() on a stream after close()."""


def backend_chain(backend, options):
    """The backend's vision chain as the cascade runs it -> (stretches, specs, suffix [s, D'], device the pixels go
    to, the dtype and device of the decoder's visual embeddings). The eager backend runs Stretch modules on its
    model, the onnxruntime backend one session per graph; TensorRT plans compress whole videos (refused)."""
    if not hasattr(backend, "chain"):
        raise ValueError(
            f"open_stream runs on the eager and onnxruntime backends; the {backend.name} backend keeps whole-video "
            "plans (open the model with --model, or an onnxruntime engine directory)"
        )
    stretches, specs, suffix = backend.chain(options)
    return stretches, specs, suffix, backend.video_device, (backend.lm.device, backend.lm.dtype)


def check_fps(fps) -> None:
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < math.inf):
        raise ValueError(f"fps = {fps!r}: the rate of the frames pushed must be a finite number > 0 (or None)")


class VideoStream:
    """Frames in, answers out, memory bounded by the window (see the module docstring). Not thread-safe: push and
    ask from one thread (or hold a lock around them)."""

    def __init__(self, pipe: Pipeline, *, max_frames: int | None = None, fps: float | None = None) -> None:
        check_fps(fps)
        most = pipe.options.num_frames if max_frames is None else max_frames
        self.pipe = pipe.with_options(num_frames=most)  # checks max_frames as a request's frames are checked
        dims = self.pipe.backend.text.dims
        self.units_kept = dims.units(most)
        self.frames_per_unit = dims.frames_per_unit
        self.seconds_per_unit = None if fps is None else dims.frames_per_unit / fps
        stretches, specs, suffix, self.device, (self.embeds_device, self.embeds_dtype) = backend_chain(
            self.pipe.backend, self.pipe.options
        )
        self.timer = StageTimer()  # the encoding of every push, summed
        options = self.pipe.options
        self.cascade: Cascade | None = Cascade(stretches, specs, options, self.timer, suffix, batch=LIVE_BATCH)
        self.pending: list[torch.Tensor] = []  # frames [H, W, 3] of a unit not yet complete
        self.frames_pushed = 0

    def __enter__(self) -> "VideoStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self.cascade is None

    def open_cascade(self) -> Cascade:
        if self.cascade is None:
            raise StreamClosed("the stream is closed; open a new one with pipe.open_stream()")
        return self.cascade

    @torch.inference_mode()
    def push(self, frames) -> None:
        """frames: uint8 [b, H, W, 3] (a tensor or array, any b >= 1, any size: resized to the model's as an offline
        request resizes a frame array). Encoded now, as far as they decide; a model that fuses frames into units
        waits for a unit's last frame."""
        cascade = self.open_cascade()
        processor = self.pipe.backend.text.processor
        frames = torch.as_tensor(frames)
        if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8 or not len(frames):
            raise VideoError(
                f"push() takes uint8 frames [b, H, W, 3] with b >= 1 (one frame: frame[None]), got {frames.dtype} "
                f"{list(frames.shape)}"
            )
        resized = list(stream_video(frames, len(frames), size=processor.frame_size))
        self.frames_pushed += len(resized)
        self.pending += resized
        whole = len(self.pending) - len(self.pending) % self.frames_per_unit
        ready, self.pending = self.pending[:whole], self.pending[whole:]
        step = CHUNK_FRAMES * self.frames_per_unit
        for start in range(0, len(ready), step):
            with self.timer.stage("preprocess"):
                pixels = processor(stack(ready[start : start + step])).to(self.device)
            cascade.push(pixels)
        cascade.keep_last(self.units_kept)

    @torch.inference_mode()
    def ask(self, prompt: str, max_new_tokens: int = 32, *, on_token=None) -> Result:
        """Answer `prompt` about the frames in the window (those of a unit not yet complete wait) with up to
        `max_new_tokens` tokens, as an offline request on them; the stream goes on unchanged. Timings: the flush
        of the open segments, selection, prefill, first token; `ttft` is the answer latency."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens = {max_new_tokens!r}: generate at least 1 token (an integer >= 1)")
        cascade = self.open_cascade()
        if not cascade.units:
            raise ValueError(f"no frames to answer about: push at least {self.frames_per_unit} frame(s) first")
        timer = StageTimer()
        pipe, frames = self.pipe, (cascade.units - cascade.start) * self.frames_per_unit
        before, after = pipe.prompt_ids(prompt)
        decoder = pipe.decoder
        pipe.check_context(len(before) + len(after), max_new_tokens, decoder.context_length, frames)
        visual = cascade.fork(timer).finish()
        visual.embeds = visual.embeds.to(self.embeds_device, self.embeds_dtype)
        return pipe.respond(
            visual,
            before,
            after,
            decoder,
            timer=timer,
            max_new_tokens=max_new_tokens,
            on_token=on_token,
            frames_in=visual.units * self.frames_per_unit,
            seconds_per_unit=self.seconds_per_unit,
        )

    def close(self) -> None:
        """Drop the stream's state (idempotent)."""
        self.cascade, self.pending = None, []


# ---- live sources: frames sampled as they arrive (earlytom watch)

LOW_LATENCY = {"probesize": "32", "analyzeduration": "0"}  # a pipe or URL: start decoding on the first packets


class SourceStalled(VideoError):
    """A live source sent nothing for longer than the timeout."""


class SourceEnded(VideoError):
    """A live source ended (end of file, pipe closed, stream over)."""


@dataclass(frozen=True)
class LiveFrame:
    """A sampled frame: seconds (the source's time, from its first frame), index (in the source), frame uint8
    [H, W, 3] at the size asked for."""

    seconds: float
    index: int
    frame: torch.Tensor


class PipeReader:
    """A pipe (file descriptor) as PyAV reads it: read(n) waits at most `timeout` seconds for data and raises
    SourceStalled after that (FFmpeg's own timeouts do not reach a Python reader)."""

    def __init__(self, fd: int, name: str, timeout: float) -> None:
        self.fd, self.name, self.timeout = fd, name, timeout

    def read(self, size: int) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        if not ready:
            raise SourceStalled(f"{self.name} sent nothing for {self.timeout:g} s: the source stalled")
        return os.read(self.fd, size)


def open_source(source: str, timeout: float, stdin=None):
    """`-` (a pipe on stdin, or `stdin`: a binary file), a URL PyAV opens (rtsp://, http://, ...) or a file ->
    (the open container, whether to pace it at its own rate: files only)."""
    name = "the pipe on stdin" if source == "-" else source
    if source == "-":
        stream = sys.stdin.buffer if stdin is None else stdin
        opened, pace = PipeReader(stream.fileno(), name, timeout), False
    elif "://" in source:
        opened, pace = source, False
    else:
        path = Path(source)
        if not path.is_file():
            raise VideoError(f"video {source} is not a file; pass a video file, - for a pipe on stdin, or a URL")
        opened, pace = str(path), True
    try:
        container = av.open(opened, options=None if pace else LOW_LATENCY, timeout=None if pace else timeout)
    except av.FFmpegError as error:
        why = error.strerror or error
        raise VideoError(f"cannot read a video from {name}: {why}; send a video stream (e.g. MPEG-TS)") from error
    if not container.streams.video:
        container.close()
        raise VideoError(f"{name} has no video stream; send a video stream (e.g. MPEG-TS)")
    return container, pace


def sample_times(fps: float) -> Iterator[float]:
    """0, 1/fps, 2/fps, ... (seconds from the first frame), without accumulating rounding."""
    return (k / fps for k in itertools.count())


def live_frames(
    source: str, *, fps: float, size: tuple[int, int], timeout: float, stdin=None, stream: int | None = None
) -> Iterator[LiveFrame]:
    """Frames of `source` (see open_source) sampled at `fps` per second of its own time, resized to `size`, each
    yielded as soon as it is decoded; a file is played at its own rate (a frame waits for its time). `stream`: the
    video stream at that index among the source's streams (None: the first video stream: a live source's frames
    cannot be counted ahead). The iterator ends with the source; SourceStalled when nothing arrives for `timeout`
    seconds; closing it closes the source."""
    check_fps(fps)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
        raise ValueError(f"timeout = {timeout!r}: seconds to wait for data, a finite number > 0")
    container, pace = open_source(source, timeout, stdin)
    with container:
        video = container.streams.video[0] if stream is None else named_stream(container, stream, source)
        times, start, wall = sample_times(fps), None, time.monotonic()
        due = next(times)
        try:
            for index, frame in enumerate(container.decode(video)):
                seconds = float(frame.time) if frame.time is not None else index / float(video.average_rate or fps)
                start = seconds if start is None else start
                seconds -= start
                if seconds + 1e-9 < due:
                    continue
                while due <= seconds + 1e-9:
                    due = next(times)
                if pace:
                    time.sleep(max(0.0, wall + seconds - time.monotonic()))
                yield LiveFrame(seconds, index, to_rgb(frame, size))
        except av.FFmpegError as error:
            if isinstance(error, av.ExitError | TimeoutError) or "timed out" in str(error).lower():
                raise SourceStalled(f"{source} sent nothing for {timeout:g} s: the source stalled ({error})") from error
            raise VideoError(f"{source} sent data that does not decode as video: {error}") from error
