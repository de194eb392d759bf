"""Per-stage wall-clock timing of one request, synchronised with CUDA and marked with NVTX when CUDA is in use.

Stages may overlap: video decoding runs in a background thread (`timed`) while the vision encoder consumes its
first frames. `ttft` is therefore the wall time from the timer's creation to the end of the last stage (the
first token), not the sum of the stages; the sum minus `ttft` is the time the overlap hid.
"""

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

_END = object()


class StageTimer:
    """`with timer.stage("vision_head"): ...` adds that stage's milliseconds to `timer.ms` (from any thread)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self.cuda = torch.cuda.is_available()
        self.start = time.perf_counter()
        self.end = self.start  # when the last stage finished
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        """Add `seconds` to stage `name`, and note the time as the latest stage end."""
        with self._lock:
            self.ms[name] = self.ms.get(name, 0.0) + seconds * 1e3
            self.end = max(self.end, time.perf_counter())

    @contextmanager
    def stage(self, name: str):
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
        `video_decode` overlaps preprocess and vision_head, so the stages can sum to more than `ttft`."""
        stages = {name: round(ms, 3) for name, ms in self.ms.items()}
        return stages | {"ttft": round((self.end - self.start) * 1e3, 3)}
