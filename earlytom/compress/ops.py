"""The compression operations as one interface, `CompressOps`: FrameMerge and TokenSelect of both variants. The
vision chain calls only these; the PyTorch reference (`REFERENCE`, this package's functions), the Triton JIT
kernels and the AOT-compiled kernels (earlytom.plugins.triton.ops.KernelOps over either launcher) implement it
with the same results."""

from dataclasses import dataclass
from typing import Protocol

import torch

from earlytom.compress.merge import MergeResult, frame_merge
from earlytom.compress.official import CompressResult, official_compress
from earlytom.compress.select import SelectResult, official_select, token_select


class CompressOps(Protocol):
    def frame_merge(self, hidden: torch.Tensor, *, alpha: float, tau_seg: float, tau_merge: float) -> MergeResult:
        """paper FrameMerge: hidden [B, L, D] -> merged [N, L, D], source [N, 2], is_static [N]."""

    def token_select(
        self,
        tokens: torch.Tensor,
        scores: torch.Tensor,
        is_static: torch.Tensor,
        *,
        retain_ratio: float,
        num_frames: int,
    ) -> SelectResult:
        """paper TokenSelect: tokens [N, T, D'], scores [N, T], is_static [N] -> K tokens with (frame, index)."""

    def official_compress(
        self,
        hidden: torch.Tensor,
        attention: torch.Tensor | None,
        *,
        tau_seg: float,
        alpha: float,
        max_window: int,
        final: bool,
    ) -> CompressResult:
        """official compression after a merge layer: hidden [F, L, D] (attention [F, L] or None) -> merged rows,
        source [N, 2], and with `final` the re-segmentation [S, 2] that drives selection."""

    def official_select(
        self,
        tokens: torch.Tensor,
        scores: torch.Tensor,
        segments: torch.Tensor,
        *,
        retain_ratio: float,
        num_frames: int,
    ) -> SelectResult:
        """official selection: tokens [N, T, D'], scores [N, T], segments [S, 2] -> the kept tokens."""


@dataclass(frozen=True)
class ReferenceOps:
    """CompressOps in plain PyTorch: the functions of earlytom.compress."""

    frame_merge = staticmethod(frame_merge)
    token_select = staticmethod(token_select)
    official_compress = staticmethod(official_compress)
    official_select = staticmethod(official_select)


REFERENCE = ReferenceOps()
