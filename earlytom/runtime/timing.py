"""Per-stage wall-clock timing of one request, synchronised with CUDA and marked with NVTX when CUDA is in use."""

import time
from contextlib import contextmanager

import torch


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
        """Stage -> ms in the order the stages first ran, plus `ttft`: their sum, from the video to the first
        token. The vision stages are the chain's graphs (vision_head, vision_mid<i>, vision_tail) with
        frame_merge (every compression between them) and token_select."""
        stages = {name: round(ms, 3) for name, ms in self.ms.items()}
        return stages | {"ttft": round(sum(stages.values()), 3)}
