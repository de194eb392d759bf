"""Sizes the engine format implies, shared by the TensorRT builder and runtime: the selection's bounds and
tables at the largest request, and the shape of one frame (encoder unit) of each vision plan input."""

import torch

from earlytom.compress import EarlyTomConfig, official_budget, visual_budget
from earlytom.models.backbone import VisionDims


def k_target(config: EarlyTomConfig, dims: VisionDims, max_frames: int) -> int:
    """K = round(r * B * T) at the largest request."""
    T = dims.tokens_per_frame
    return visual_budget(
        retain_ratio=config.retain_ratio, num_frames=max_frames, tokens_per_frame=T, available=max_frames * T
    )


def selection_tables(config: EarlyTomConfig, dims: VisionDims, max_frames: int) -> tuple[tuple[int, ...], ...]:
    """The official selection's counts for N = 1 .. B frames after the last merge, B = max_frames frames in:
    (ceil(T * r_hat), ...) tokens per dynamic frame and (max(1, round(T * r_hat)), ...) windows per static
    frame, with official_budget's arithmetic (r_hat = min(r / (N / B), 1) in double precision)."""
    budgets = [
        official_budget(
            torch.tensor([[0, n - 1]]),  # the counts do not depend on the segmentation
            tokens_per_frame=dims.tokens_per_frame,
            retain_ratio=config.retain_ratio,
            num_frames=max_frames,
        )
        for n in range(1, max_frames + 1)
    ]
    return tuple(b.per_dynamic for b in budgets), tuple(b.windows for b in budgets)


def selected_bound(config: EarlyTomConfig, dims: VisionDims, max_frames: int) -> int:
    """The most tokens the TensorRT selection returns for B = max_frames frames in: paper K = round(r * B * T);
    official max over N of N * ceil(T * r_hat) (every frame dynamic; a static frame keeps
    max(1, round(T * r_hat)) <= ceil(T * r_hat) tokens)."""
    if config.variant == "paper":
        return k_target(config, dims, max_frames)
    per_dynamic, _ = selection_tables(config, dims, max_frames)
    return max(n * k for n, k in enumerate(per_dynamic, start=1))


def row_shape(name: str, dims: VisionDims) -> tuple[int, ...]:
    """The shape of one frame of a vision plan's input (dimension 0 of every input is the frame axis):
    pixels [*unit_shape], hidden_<l> [L, D], attention_<l> [L], is_static []."""
    if name == "pixels":
        return tuple(dims.unit_shape)
    if name.startswith("hidden_"):
        return (dims.patch_tokens, dims.hidden)
    if name.startswith("attention_"):
        return (dims.patch_tokens,)
    if name == "is_static":
        return ()
    raise ValueError(f"{name!r} is no vision plan input (pixels, hidden_<l>, attention_<l>, is_static)")
