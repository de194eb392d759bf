"""FrameMerge and TokenSelect through the Triton kernels, with the same results as earlytom.compress.

Runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (set before triton is imported), which is
how the kernels are tested here.
"""

import torch

from earlytom.compress import MergeResult, SelectResult, selection_budget, visual_budget
from earlytom.compress.config import DEFAULT_ALPHA, DEFAULT_TAU_MERGE, DEFAULT_TAU_SEG
from earlytom.compress.merge import check_hidden, check_thresholds
from earlytom.compress.select import check_tokens_scores
from earlytom.plugins.triton import kernels, launch


def run(spec: launch.Launch, *args) -> None:
    """Launch `spec.kernel` with its tensors (pointer parameters, in order) and the spec's scalars."""
    ordered = launch.ordered_args(spec, args)
    getattr(kernels, spec.kernel)[spec.grid](*ordered, **spec.constexprs, num_warps=spec.num_warps)


def frame_merge(
    hidden: torch.Tensor,
    *,
    alpha: float = DEFAULT_ALPHA,
    tau_seg: float = DEFAULT_TAU_SEG,
    tau_merge: float = DEFAULT_TAU_MERGE,
) -> MergeResult:
    """hidden [B, L, D] -> MergeResult, as earlytom.compress.frame_merge."""
    check_hidden(hidden)
    check_thresholds(alpha, tau_seg, tau_merge)
    hidden = hidden.contiguous()
    B, L, D = hidden.shape
    i32 = {"dtype": torch.int32, "device": hidden.device}
    cos = torch.empty(max(B - 1, 1), L, dtype=torch.float32, device=hidden.device)
    s = torch.empty(max(B - 1, 1), dtype=torch.float32, device=hidden.device)
    first, last, segment, is_static = (torch.empty(B, **i32) for _ in range(4))
    weight = torch.empty(B, 2, dtype=torch.float32, device=hidden.device)
    count = torch.zeros(1, **i32)
    merged = torch.empty_like(hidden)
    run(launch.token_cosine(B, L, D), hidden, cos)
    plan = launch.merge_plan(B, L, alpha=alpha, tau_seg=tau_seg, tau_merge=tau_merge)
    run(plan, cos, s, first, last, weight, segment, is_static, count)
    run(launch.weighted_merge(B, L, D), hidden, first, last, weight, count, merged)
    similarity = s[: B - 1]
    if not bool(torch.isfinite(similarity).all()):
        raise ValueError("hidden contains NaN/Inf values; all values must be finite")
    N = int(count)
    return MergeResult(
        hidden=merged[:N],
        source=torch.stack([first[:N], last[:N]], 1).long(),
        segment=segment[:N].long(),
        is_static=is_static[:N].bool(),
        similarity=similarity,
    )


def token_select(
    tokens: torch.Tensor,
    scores: torch.Tensor,
    is_static: torch.Tensor,
    *,
    retain_ratio: float,
    num_frames: int,
    max_frames: int | None = None,
) -> SelectResult:
    """As earlytom.compress.token_select; `max_frames` (default N) sizes the single-program blocks."""
    check_tokens_scores(tokens, scores)
    N, T, DM = tokens.shape
    budget = selection_budget(is_static.cpu(), tokens_per_frame=T, retain_ratio=retain_ratio, num_frames=num_frames)
    K = budget.total  # validated: every static frame gets a token
    k_target = visual_budget(
        retain_ratio=retain_ratio, num_frames=num_frames, tokens_per_frame=T, available=num_frames * T
    )  # round(r * B * T); the kernels cap it at N * T
    max_frames = N if max_frames is None else max_frames
    if max_frames < N:
        raise ValueError(f"max_frames = {max_frames} is below the {N} frames given; pass at least N (or None)")
    i32 = {"dtype": torch.int32, "device": tokens.device}
    flags = is_static.to(**i32).contiguous()
    keep = torch.empty(N * T, **i32)
    frame, index = torch.empty(K, **i32), torch.empty(K, **i32)
    count = torch.zeros(1, **i32)
    selected = torch.empty(K, DM, dtype=tokens.dtype, device=tokens.device)
    scores, tokens = scores.contiguous(), tokens.contiguous()
    run(launch.window_select(N, T, k_target, max_frames), scores, flags, keep)
    run(launch.dynamic_topk(N, T, k_target, max_frames), scores, flags, keep, frame, index, count)
    run(launch.gather_tokens(K, T, DM), tokens, frame, index, count, selected)
    return SelectResult(tokens=selected, frame=frame.long(), index=index.long())
