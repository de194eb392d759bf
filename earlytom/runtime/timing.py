"""Per-stage wall-clock timing of one request, synchronised with CUDA and marked with NVTX when CUDA is in use."""

import time
from contextlib import contextmanager

import torch

STAGES = (
    "video_decode",
    "preprocess",
    "vision_head",
    "frame_merge",
    "vision_tail",
    "token_select",
    "prefill",
    "first_token",
)


class StageTimer:
    """`with timer.stage("vision_head"): ...` adds that stage's milliseconds to `timer.ms`."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self.cuda = torch.cuda.is_available()

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
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3

    def breakdown(self) -> dict[str, float]:
        """Stage -> ms in pipeline order, plus `ttft`: their sum, from the video to the first token."""
        stages = {name: round(self.ms[name], 3) for name in STAGES if name in self.ms}
        return stages | {"ttft": round(sum(stages.values()), 3)}
