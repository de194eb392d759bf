"""Which frames to decode: LLaVA-OneVision's uniform samples, the frame grid of a constant-frame-rate stream, and the
forward runs (one seek each) the sorted samples group into."""

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

SAMPLINGS = ("uniform", "keyframe")
DECODES = ("seek", "full")


def uniform_indices(total: int, count: int) -> list[int]:
    """LLaVA-OneVision's sampling: linspace(0, total - 1, count) truncated to int; all frames if total <= count."""
    if total <= count:
        return list(range(total))
    return np.linspace(0, total - 1, count, dtype=int).tolist()


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
