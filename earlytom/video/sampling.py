"""Which frames to decode: LLaVA-OneVision's uniform samples, Qwen2.5-VL's frame count by rate (`--fps 2
--max-frames 768`), the frame grid of a constant-frame-rate stream, and the forward runs (one seek each) the sorted
samples group into."""

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

SAMPLINGS = ("uniform", "keyframe")
DECODES = ("seek", "full")
# Qwen2.5-VL's sampling by rate (qwen-vl-utils, vision_process.py): 2 frames per second, 4 to 768 frames, even.
RATE_FPS, RATE_MAX_FRAMES, RATE_MIN_FRAMES, RATE_FACTOR = 2.0, 768, 4, 2


def uniform_indices(total: int, count: int) -> list[int]:
    """LLaVA-OneVision's sampling: linspace(0, total - 1, count) truncated to int; all frames if total <= count."""
    if total <= count:
        return list(range(total))
    return np.linspace(0, total - 1, count, dtype=int).tolist()


def rate_frame_count(total: int, video_fps: float, *, fps: float = RATE_FPS, max_frames: int = RATE_MAX_FRAMES) -> int:
    """Frames sampled from a clip of `total` frames at `video_fps` by Qwen2.5-VL's rule (qwen-vl-utils'
    smart_nframes): its duration times `fps`, at least 4, at most `max_frames` and `total` (each floored to an even
    number), rounded to the nearest even number. Unlike qwen-vl-utils, a clip of 2 or 3 frames gives 2 (it refuses
    those); a clip shorter than 2 frames is refused (ValueError)."""
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < float("inf"):
        raise ValueError(f"fps = {fps!r}: sample at a finite rate > 0 frames per second (Qwen2.5-VL: --fps 2)")
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < RATE_FACTOR:
        raise ValueError(f"max_frames = {max_frames!r}: must be an integer >= 2 (Qwen2.5-VL: --max-frames 768)")
    if total < RATE_FACTOR:
        raise ValueError(
            f"the video has {total} frame(s): Qwen2.5-VL fuses 2 frames into one temporal slice; give a clip of at "
            "least 2 frames"
        )
    if not 0 < video_fps < float("inf"):
        raise ValueError(f"video_fps = {video_fps!r}: the clip's frame rate must be a finite number > 0")
    most = min(max_frames, total) // RATE_FACTOR * RATE_FACTOR
    least = min(RATE_MIN_FRAMES, most)
    count = min(max(total / video_fps * fps, least), most)
    return round(count / RATE_FACTOR) * RATE_FACTOR


def file_timing(source) -> tuple[int, float]:
    """(frames, frames per second) of a video file (a path, or a VideoFile naming its stream; by default the video
    stream pyav.video_stream decodes) from its stream header: the frame grid where it states one, else the header's
    frame count and average rate (VideoError for a file that states neither)."""
    from earlytom.video.frames import VideoError, VideoFile
    from earlytom.video.pyav import open_container, video_stream  # imports this module

    source = source if isinstance(source, VideoFile) else VideoFile(Path(source))
    path = Path(source.path)
    if path.is_dir():
        raise VideoError(f"{path} is an image directory, without a frame rate: sample it with --frames N, not --fps")
    with open_container(path) as container:
        stream = video_stream(container, source)
        grid = stream_grid(stream)
        if grid is not None:
            return grid.total, float(1 / (grid.step * grid.time_base))
        if not stream.frames or not stream.average_rate:
            raise VideoError(f"{path} states no frame count and frame rate: sample it with --frames N instead of --fps")
        return stream.frames, float(stream.average_rate)


def shortfall_note(available: int, requested: int, what: str) -> list[str]:
    if available >= requested:
        return []
    return [f"{what} has only {available} decodable frames; using {available} instead of the {requested} requested"]


@dataclass(frozen=True)
class Grid:
    """The timing of a constant-frame-rate stream: frame i is shown at pts start + i * step (time_base units)."""

    start: int
    step: Fraction
    total: int
    time_base: Fraction

    def pts(self, index: int) -> int:
        return self.start + round(index * self.step)

    def index(self, pts: int) -> int:
        return round((pts - self.start) / self.step)

    def seconds(self, index: int) -> float:
        return float(self.pts(index) * self.time_base)


def stream_grid(stream) -> Grid | None:
    """The stream's frame grid when its header states a frame count and a constant frame rate that agree with its
    duration (within one frame); None otherwise (variable rate, or a container without those fields)."""
    rate, total, duration = stream.average_rate, stream.frames, stream.duration
    if not rate or not total or duration is None or stream.time_base is None:
        return None
    step = 1 / (Fraction(rate) * Fraction(stream.time_base))
    if abs(duration - total * step) > step:
        return None
    return Grid(stream.start_time or 0, step, total, Fraction(stream.time_base))


def forward_runs(indices: list[int], keys: list[int | None]) -> list[list[int]]:
    """The sampled `indices` (sorted) grouped into runs decoded in one forward pass: a new run, and a seek, where
    the keyframe before a sample (`keys`, None when unknown) is past the previous sample."""
    runs = []
    for n, (index, key) in enumerate(zip(indices, keys, strict=True)):
        if n == 0 or key is None or key > indices[n - 1]:
            runs.append([])
        runs[-1].append(index)
    return runs


def run_starts(runs: list[list[int]]) -> list[int]:
    """Where each run's first frame is among the samples (the runs flattened in order)."""
    return [sum(len(run) for run in runs[:r]) for r in range(len(runs))]
