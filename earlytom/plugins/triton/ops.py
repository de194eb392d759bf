"""The compression ops through the Triton kernels, with the same results as earlytom.compress: the paper
variant's frame_merge / token_select, the official variant's official_compress / official_select, and
attention_received (the official merge layers' scores without an [H, L, L] map).

`KernelOps(run)` holds them over one way of launching a kernel: `run` here (Triton's JIT, the module functions
below), or the AOT-compiled cubins through earlytom.plugins.launcher (`aot_ops`). The JIT runs on CUDA tensors,
or on CPU tensors under TRITON_INTERPRET=1 (set before triton is imported), which is how the kernels are tested.
"""

from collections.abc import Callable

import torch

from earlytom.compress import MergeResult, SelectResult, selection_budget, visual_budget
from earlytom.compress.checks import check_finite
from earlytom.compress.config import DEFAULT_ALPHA, DEFAULT_TAU_MERGE, DEFAULT_TAU_SEG
from earlytom.compress.merge import check_hidden, check_thresholds
from earlytom.compress.official import CompressResult, check_inputs, check_options
from earlytom.compress.select import check_segments, check_tokens_scores, official_budget
from earlytom.plugins.triton import kernels, launch


def run(spec: launch.Launch, *args) -> None:
    """Launch `spec.kernel` with its tensors (pointer parameters, in order) and the spec's scalars."""
    ordered = launch.ordered_args(spec, args)
    getattr(kernels, spec.kernel)[spec.grid](*ordered, **spec.constexprs, num_warps=spec.num_warps, **spec.options)


class KernelOps:
    """The ops over one way of launching the kernels: `run(spec, *tensors)` launches `spec` with its tensors
    (pointer parameters, in order); `max_frames` sizes the single-program selection blocks (None: each request's
    frame count, as the JIT compiles per shape; AOT cubins: the frame count they were compiled for)."""

    def __init__(self, run: Callable[..., None], *, max_frames: int | None = None) -> None:
        self.run = run
        self.max_frames = max_frames

    def selection_frames(self, N: int, max_frames: int | None = None) -> int:
        """The frame count the selection blocks are sized for: `max_frames`, else this object's, else N."""
        most = self.max_frames if max_frames is None else max_frames
        most = N if most is None else most
        if most < N:
            raise ValueError(f"max_frames = {most} is below the {N} frames given; pass at least N (or None)")
        return most

    def frame_merge(
        self,
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
        self.run(launch.token_cosine(B, L, D), hidden, cos)
        plan = launch.merge_plan(B, L, alpha=alpha, tau_seg=tau_seg, tau_merge=tau_merge)
        self.run(plan, cos, s, first, last, weight, segment, is_static, count)
        self.run(launch.weighted_merge(B, L, D), hidden, first, last, weight, count, merged)
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
        self,
        tokens: torch.Tensor,
        scores: torch.Tensor,
        is_static: torch.Tensor,
        *,
        retain_ratio: float,
        num_frames: int,
        max_frames: int | None = None,
    ) -> SelectResult:
        """As earlytom.compress.token_select; `max_frames` (default: selection_frames) sizes the single-program
        blocks."""
        check_tokens_scores(tokens, scores)
        N, T, DM = tokens.shape
        budget = selection_budget(is_static.cpu(), tokens_per_frame=T, retain_ratio=retain_ratio, num_frames=num_frames)
        K = budget.total  # validated: every static frame gets a token
        k_target = visual_budget(
            retain_ratio=retain_ratio, num_frames=num_frames, tokens_per_frame=T, available=num_frames * T
        )  # round(r * B * T); the kernels cap it at N * T
        max_frames = self.selection_frames(N, max_frames)
        i32 = {"dtype": torch.int32, "device": tokens.device}
        flags = is_static.to(**i32).contiguous()
        keep = torch.empty(N * T, **i32)
        frame, index = torch.empty(K, **i32), torch.empty(K, **i32)
        count = torch.zeros(1, **i32)
        selected = torch.empty(K, DM, dtype=tokens.dtype, device=tokens.device)
        scores, tokens = scores.contiguous(), tokens.contiguous()
        self.run(launch.window_select(N, T, k_target, max_frames), scores, flags, keep)
        self.run(launch.dynamic_topk(N, T, k_target, max_frames), scores, flags, keep, frame, index, count)
        self.run(launch.gather_tokens(K, T, DM), tokens, frame, index, count, selected)
        return SelectResult(tokens=selected, frame=frame.long(), index=index.long())

    def attention_received(self, q: torch.Tensor, k: torch.Tensor, *, scale: float) -> torch.Tensor:
        """q, k: [F, H, L, d] (a layer's projections) -> [F, L] float32: the attention each token receives, softmax
        rows in float32 over scale * q k^T, mean over heads and queries, streamed over blocks."""
        if q.dim() != 4 or q.shape != k.shape:
            raise ValueError(f"q and k must both be [F, H, L, d], got {list(q.shape)} and {list(k.shape)}")
        q, k = q.contiguous(), k.contiguous()
        F, H, L, HD = q.shape
        row_max, row_sum = (torch.empty(F, H, L, dtype=torch.float32, device=q.device) for _ in range(2))
        attention = torch.empty(F, L, dtype=torch.float32, device=q.device)
        self.run(launch.attention_row_stats(F, H, L, HD, scale), q, k, row_max, row_sum)
        self.run(launch.attention_received(F, H, L, HD, scale), q, k, row_max, row_sum, attention)
        return attention

    def official_plan(self, hidden: torch.Tensor, *, alpha: float, tau_seg: float, max_window: int) -> dict:
        """hidden [F, L, D] -> the plan tensors of official_plan (first, last [F], weight [F, 2], segments [F, 2],
        label [F]; valid up to N and S) and counts = (N, S), read to the host."""
        F, L, D = hidden.shape
        W = launch.similarity_width(F, max_window)
        device = hidden.device
        i32 = {"dtype": torch.int32, "device": device}
        cos = torch.empty(F, W, L, dtype=torch.float32, device=device)
        similarity = torch.empty(F, W, dtype=torch.float32, device=device)
        plan = {
            "first": torch.empty(F, **i32),
            "last": torch.empty(F, **i32),
            "weight": torch.empty(F, 2, dtype=torch.float32, device=device),
            "segments": torch.empty(F, 2, **i32),
            "label": torch.empty(F, **i32),
            "counts": torch.zeros(2, **i32),
        }
        self.run(launch.window_cosine(F, L, D, W), hidden.contiguous(), cos)
        spec = launch.official_plan(F, L, W, alpha=alpha, tau_seg=tau_seg, max_window=max_window)
        self.run(
            spec,
            cos,
            similarity,
            plan["first"],
            plan["last"],
            plan["weight"],
            plan["segments"],
            plan["label"],
            plan["counts"],
        )
        return plan

    def merge_rows(self, x: torch.Tensor, plan: dict) -> torch.Tensor:
        """x: [F, ...] -> [N, ...]: row n = weight[n, 0] x[first[n]] + weight[n, 1] x[last[n]] (float32 math)."""
        F = x.shape[0]
        flat = x.contiguous().view(F, -1)
        merged = torch.empty_like(flat)
        self.run(
            launch.weighted_merge(F, 1, flat.shape[1]),
            flat,
            plan["first"],
            plan["last"],
            plan["weight"],
            plan["counts"],
            merged,
        )
        N = int(plan["counts"][0])
        return merged[:N].view(N, *x.shape[1:])

    def official_compress(
        self,
        hidden: torch.Tensor,
        attention: torch.Tensor | None,
        *,
        tau_seg: float,
        alpha: float = 0.9,
        max_window: int = 6,
        final: bool = False,
    ) -> CompressResult:
        """As earlytom.compress.official_compress: hidden [F, L, D], attention [F, L] or None -> CompressResult."""
        check_inputs(hidden, attention)
        check_finite("hidden", hidden)
        check_options(alpha, tau_seg, max_window)
        options = {"alpha": alpha, "tau_seg": tau_seg, "max_window": max_window}
        plan = self.official_plan(hidden, **options)
        merged = self.merge_rows(hidden, plan)
        N = merged.shape[0]
        segments = None
        if final:
            again = self.official_plan(merged, **options)
            segments = again["segments"][: int(again["counts"][1])].long()
        return CompressResult(
            hidden=merged,
            attention=None if attention is None else self.merge_rows(attention, plan),
            source=torch.stack([plan["first"][:N], plan["last"][:N]], 1).long(),
            segments=segments,
        )

    def official_select(
        self,
        tokens: torch.Tensor,
        scores: torch.Tensor,
        segments: torch.Tensor,
        *,
        retain_ratio: float,
        num_frames: int,
    ) -> SelectResult:
        """As earlytom.compress.official_select: tokens [N, T, D'], scores [N, T], segments [S, 2] -> SelectResult.
        The counts (r_hat's ceilings) come from official_budget on the host."""
        check_tokens_scores(tokens, scores)
        N, T, DM = tokens.shape
        check_segments(segments.cpu(), N)
        budget = official_budget(segments.cpu(), tokens_per_frame=T, retain_ratio=retain_ratio, num_frames=num_frames)
        i32 = {"dtype": torch.int32, "device": tokens.device}
        label = torch.tensor(budget.is_static, **i32)
        keep = torch.empty(N * T, **i32)
        frame, index = torch.empty(budget.total, **i32), torch.empty(budget.total, **i32)
        count = torch.zeros(1, **i32)
        selected = torch.empty(budget.total, DM, dtype=tokens.dtype, device=tokens.device)
        self.run(launch.official_keep(N, T, budget.per_dynamic, budget.windows), scores.contiguous(), label, keep)
        self.run(launch.compact_keep(N, T, self.selection_frames(N)), keep, frame, index, count)
        self.run(launch.gather_tokens(budget.total, T, DM), tokens.contiguous(), frame, index, count, selected)
        return SelectResult(tokens=selected, frame=frame.long(), index=index.long())


# The JIT kernels (compiled by Triton per shape on first use), as module functions.
JIT = KernelOps(run)
frame_merge, token_select, attention_received = JIT.frame_merge, JIT.token_select, JIT.attention_received
official_plan, merge_rows = JIT.official_plan, JIT.merge_rows
official_compress, official_select = JIT.official_compress, JIT.official_select
