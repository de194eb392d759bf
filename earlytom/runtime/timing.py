"""Per-stage timing of one request, marked with NVTX when CUDA is in use: wall clock with CUDA synchronised around
each stage (the default), or CUDA events recorded at each stage boundary (inside `cuda_event_timing()`).

Stages may overlap: video decoding runs in a background thread (`timed`) while the vision encoder consumes its
first frames. `ttft` is therefore the time from the timer's creation to the end of the last stage (the first
token), not the sum of the stages; the sum minus `ttft` is the time the overlap hid.
"""

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_END = object()
_CUDA_EVENTS = ContextVar("earlytom_cuda_event_timing", default=False)


@contextmanager
def cuda_event_timing():
    """StageTimers created inside this block on a machine with CUDA time their stages with CUDA events recorded at
    each stage boundary (on the current stream) instead of synchronising before and after each one: nothing waits
    for the GPU until `breakdown` synchronises once, so the CPU queues work ahead as it does untimed. Stages timed
    with `timed` (decoding, CPU work in a background thread) stay on the wall clock."""
    token = _CUDA_EVENTS.set(True)
    try:
        yield
    finally:
        _CUDA_EVENTS.reset(token)


def event_breakdown(marks: Iterable[tuple[str, float, float]], wall_ms: dict[str, float]) -> dict[str, float]:
    """marks: (stage, start, end) in ms since the request's origin event, as recorded -> stage -> ms: the wall-clock
    stages `wall_ms` first, then each marked stage's durations summed (a stage may run many times: per chunk), in
    the order the stages first ran, and `ttft`: the latest end (origin to the end of the last stage, GPU clock)."""
    stages, last = dict(wall_ms), 0.0
    for name, start, end in marks:
        stages[name] = stages.get(name, 0.0) + end - start
        last = max(last, end)
    return {name: round(ms, 3) for name, ms in stages.items()} | {"ttft": round(last, 3)}


def recorded_event() -> "torch.cuda.Event":
    """A timing CUDA event, recorded now on the current stream."""
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


class StageTimer:
    """`with timer.stage("vision_head"): ...` adds that stage's milliseconds to `timer.ms` (from any thread), or with
    CUDA events (cuda_event_timing) its start and end events to `timer.marks`."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self.cuda = torch.cuda.is_available()
        self.events = self.cuda and _CUDA_EVENTS.get()  # see cuda_event_timing
        self.marks: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []  # (stage, start, end) events
        self.origin = recorded_event() if self.events else None
        self.start = time.perf_counter()
        self.end = self.start  # when the last stage finished
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        """Add `seconds` to stage `name`, and note the time as the latest stage end."""
        with self._lock:
            self.ms[name] = self.ms.get(name, 0.0) + seconds * 1e3
            self.end = max(self.end, time.perf_counter())

    def stage(self, name: str):
        """A context manager timing stage `name`: synchronised wall clock, or CUDA events (cuda_event_timing)."""
        return self._event_stage(name) if self.events else self._synced_stage(name)

    @contextmanager
    def _synced_stage(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.nvtx.range_push(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.nvtx.range_pop()
            self.add(name, time.perf_counter() - start)

    @contextmanager
    def _event_stage(self, name: str):
        start = recorded_event()
        torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            end = recorded_event()
            torch.cuda.nvtx.range_pop()
            with self._lock:
                self.marks.append((name, start, end))
                self.end = max(self.end, time.perf_counter())  # the stage's end as the CPU saw it

    def timed(self, items: Iterable, name: str) -> Iterator:
        """`items`, with the time spent producing each one added to stage `name` (in whichever thread iterates)."""
        source = iter(items)
        try:
            while True:
                start = time.perf_counter()
                item = next(source, _END)
                self.add(name, time.perf_counter() - start)
                if item is _END:
                    return
                yield item
        finally:
            if hasattr(source, "close"):  # a generator: closes its file when the consumer stops early
                source.close()

    def breakdown(self) -> dict[str, float]:
        """Stage -> ms in the order the stages first ran, plus `ttft`: wall time from the timer's creation to the
        end of its last stage (the first token). The vision stages are the chain's graphs (vision_head,
        vision_mid<i>, vision_tail) with frame_merge (every compression between them) and token_select;
        `video_decode` overlaps preprocess and vision_head, so the stages can sum to more than `ttft`.

        With CUDA events (cuda_event_timing): synchronises once, then the stages and `ttft` on the GPU's clock
        (event_breakdown), and `ttft_wall`: the wall time to the end of the last stage as the CPU saw it (the first
        token's id is read on the CPU, which waits for the GPU)."""
        wall_ttft = round((self.end - self.start) * 1e3, 3)
        if not self.events:
            return {name: round(ms, 3) for name, ms in self.ms.items()} | {"ttft": wall_ttft}
        torch.cuda.synchronize()
        marks = [(name, self.origin.elapsed_time(s), self.origin.elapsed_time(e)) for name, s, e in self.marks]
        return event_breakdown(marks, self.ms) | {"ttft_wall": wall_ttft}
