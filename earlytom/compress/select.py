"""Stage II, TokenSelect: the paper variant (DESIGN.md section 4), the official one (section 4b), and the two
baselines they are compared with.

paper:
    budget = selection_budget(is_static, tokens_per_frame=T, retain_ratio=r, num_frames=B)
    static frames:  window_argmax(scores [n_s, T], budget.static)   one token per raster window
    dynamic frames: stable_topk(scores [n_d * T], budget.dynamic)    one global top-K_d
    token_select(...) puts both together in temporal, then raster, order.
official:
    budget = official_budget(segments, tokens_per_frame=T, retain_ratio=r, num_frames=B)
    static frames:  argmax_per_window(scores, official_windows(T, budget.windows), ...)
    dynamic frames: stable_topk(scores [n_d, T], budget.per_dynamic)   a top-k per frame
    official_select(...) puts both together in temporal, then raster, order.

Every ranking breaks ties towards the lower index (earlier frame, then earlier token).
"""

import math
from dataclasses import dataclass

import torch

from earlytom.compress.checks import check_finite, check_mask, check_pair, check_range, check_rank, check_values


@dataclass(frozen=True)
class SelectResult:
    """K selected tokens: tokens [K, D], frame [K] (index into the N frames), index [K] (raster index in its frame)."""

    tokens: torch.Tensor
    frame: torch.Tensor
    index: torch.Tensor


@dataclass(frozen=True)
class Budget:
    """Token counts: total K = sum(static) + dynamic; static [n_s] per static frame (temporal order)."""

    total: int
    static: list[int]
    dynamic: int


def visual_budget(*, retain_ratio: float, num_frames: int, tokens_per_frame: int, available: int) -> int:
    """K = min(round(r * B * T), available): relative to the original B frames, capped by what exists."""
    check_range("retain_ratio", retain_ratio, 0.0, 1.0, low_open=True)
    if num_frames < 1:
        raise ValueError(f"num_frames = {num_frames}: the budget needs the original frame count B >= 1")
    k = min(round(retain_ratio * num_frames * tokens_per_frame), available)
    if k < 1:
        raise ValueError(
            f"retain_ratio = {retain_ratio} keeps round({retain_ratio} * B={num_frames} * T={tokens_per_frame}) = 0 "
            f"tokens; raise retain_ratio to at least {0.5 / (num_frames * tokens_per_frame):.2g}"
        )
    return k


def selection_budget(is_static: torch.Tensor, *, tokens_per_frame: int, retain_ratio: float, num_frames: int) -> Budget:
    """Split K between static and dynamic frames exactly as DESIGN.md section 4 orders it.

    is_static: [N] bool. Each static frame gets m = min(T, max(1, round(K / N))) (lowered to K // n_s if the
    static frames would exceed K); the dynamic frames share the rest; what they cannot hold (more than
    n_d * T) is spread over the static frames in temporal order.
    """
    check_mask("is_static", is_static)
    T, N = tokens_per_frame, int(is_static.numel())
    n_s = int(is_static.sum())
    n_d = N - n_s
    K = visual_budget(retain_ratio=retain_ratio, num_frames=num_frames, tokens_per_frame=T, available=N * T)
    if n_s == 0:
        return Budget(total=K, static=[], dynamic=K)
    m = min(T, max(1, round(K / N)))
    if n_s * m > K:
        m = K // n_s
        if m == 0:
            raise ValueError(
                f"budget K = {K} (retain_ratio r = {retain_ratio}, B = {num_frames}, T = {T}) cannot give each of "
                f"the {n_s} static frames among N = {N} one token; raise r to at least {n_s / (num_frames * T):.3g}"
            )
    dynamic = K - n_s * m
    surplus = max(0, dynamic - n_d * T)
    static = [m + surplus // n_s + (i < surplus % n_s) for i in range(n_s)]
    return Budget(total=K, static=static, dynamic=dynamic - surplus)


def argmax_per_window(
    scores: torch.Tensor, window: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The highest-scoring token of each window (lowest index on ties).

    scores: [F, T]; window: [F, T] (or [T] for every row) int64, the window of each token, non-decreasing along a
    row; counts: [F] int64, windows 0 .. counts[f] - 1 are kept -> (row [sum counts], index [sum counts]) sorted by
    row, then index.
    """
    F, T = scores.shape
    token = torch.arange(T, device=scores.device)
    group = (torch.arange(F, device=scores.device)[:, None] * T + window).flatten()  # unique per (row, window)
    flat = scores.flatten()
    best = torch.full((F * T,), float("-inf"), dtype=flat.dtype, device=flat.device)
    best = best.scatter_reduce(0, group, flat, reduce="amax")
    is_best = flat == best[group]
    candidate = torch.where(is_best, token.repeat(F), T)  # the lowest index wins ties
    first = torch.full((F * T,), T, dtype=torch.int64, device=flat.device)
    first = first.scatter_reduce(0, group, candidate, reduce="amin").view(F, T)
    valid = token[None, :] < counts[:, None]  # windows 0 .. counts[f]-1 exist
    row = torch.arange(F, device=scores.device)[:, None].expand(F, T)[valid]
    return row, first[valid]


def window_argmax(scores: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row f, cut the T tokens into counts[f] contiguous raster windows of near-equal size (token t is in
    window t * counts[f] // T) and keep the highest-scoring token of each (lowest index on ties).

    scores: [F, T], counts: [F] int64 in [0, T] -> (row [sum counts], index [sum counts]) sorted by row, index.
    """
    token = torch.arange(scores.shape[1], device=scores.device)
    return argmax_per_window(scores, token[None, :] * counts[:, None] // scores.shape[1], counts)


def official_windows(tokens_per_frame: int, windows: int) -> torch.Tensor:
    """Window of each of T raster tokens cut into n windows (section 4b): sizes T // n, the first T % n one
    larger. -> [T] int64. Needs 1 <= n <= T."""
    T, n = tokens_per_frame, windows
    if not 1 <= n <= T:
        raise ValueError(f"windows = {n} must lie in [1, T = {T}]")
    size, larger = divmod(T, n)
    token = torch.arange(T)
    split = larger * (size + 1)  # tokens in the larger windows
    return torch.where(token < split, token // (size + 1), larger + (token - split) // size)


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest of scores [..., M] along the last dim, lowest index first among equals, returned in
    ascending order: [..., k]."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    return order.sort(dim=-1).values


def check_tokens_scores(tokens: torch.Tensor, scores: torch.Tensor) -> None:
    check_pair("tokens", tokens, "[N, T, D]", "scores", scores, "[N, T]")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens has shape {list(tokens.shape)}; need N >= 1 frames and T >= 1 tokens per frame")
    check_values("tokens", tokens, "[N, T, D]")
    check_values("scores", scores, "[N, T]")
    check_finite("scores", scores)
    check_finite("tokens", tokens)


def gather(tokens: torch.Tensor, frame: torch.Tensor, index: torch.Tensor) -> SelectResult:
    """Pick tokens[frame[k], index[k]] for (frame, index) pairs already in temporal then raster order."""
    return SelectResult(tokens=tokens[frame, index], frame=frame, index=index)


def token_select(
    tokens: torch.Tensor, scores: torch.Tensor, is_static: torch.Tensor, *, retain_ratio: float, num_frames: int
) -> SelectResult:
    """Decoupled selection: window argmax in static frames, one global top-K_d over the dynamic frames.

    tokens: [N, T, D], scores: [N, T], is_static: [N] bool, num_frames: B before merging -> K tokens.
    """
    check_tokens_scores(tokens, scores)
    check_mask("is_static", is_static)
    if is_static.shape != scores.shape[:1]:
        raise ValueError(f"is_static has shape {list(is_static.shape)}; need [N] = [{scores.shape[0]}]")
    N, T = scores.shape
    is_static = is_static.to(device=scores.device, dtype=torch.bool)
    budget = selection_budget(is_static, tokens_per_frame=T, retain_ratio=retain_ratio, num_frames=num_frames)

    static_frames = is_static.nonzero().flatten()  # [n_s]
    counts = torch.tensor(budget.static, dtype=torch.int64, device=scores.device)
    row, static_index = window_argmax(scores[static_frames], counts)
    static_flat = static_frames[row] * T + static_index

    dynamic_frames = (~is_static).nonzero().flatten()  # [n_d]
    picked = stable_topk(scores[dynamic_frames].flatten(), budget.dynamic)  # index into [n_d * T]
    dynamic_flat = dynamic_frames[picked // T] * T + picked % T

    flat = torch.cat([static_flat, dynamic_flat]).sort().values  # [K], temporal then raster order
    return gather(tokens, flat // T, flat % T)


def global_topk(tokens: torch.Tensor, scores: torch.Tensor, *, retain_ratio: float, num_frames: int) -> SelectResult:
    """Baseline (VisionZip-like, after the encoder): one top-K over all N * T tokens by score.

    tokens: [N, T, D], scores: [N, T] -> K = min(round(r * B * T), N * T) tokens.
    """
    check_tokens_scores(tokens, scores)
    N, T = scores.shape
    k = visual_budget(retain_ratio=retain_ratio, num_frames=num_frames, tokens_per_frame=T, available=N * T)
    flat = stable_topk(scores.flatten(), k)
    return gather(tokens, flat // T, flat % T)


def uniform(tokens: torch.Tensor, *, retain_ratio: float, num_frames: int) -> SelectResult:
    """Baseline: K evenly spaced tokens over the N * T tokens in temporal then raster order (scores unused).

    tokens: [N, T, D] -> K = min(round(r * B * T), N * T) tokens.
    """
    check_rank("tokens", tokens, "[N, T, D]")
    check_values("tokens", tokens, "[N, T, D]")
    N, T = tokens.shape[:2]
    k = visual_budget(retain_ratio=retain_ratio, num_frames=num_frames, tokens_per_frame=T, available=N * T)
    flat = torch.arange(k, device=tokens.device) * (N * T) // k
    return gather(tokens, flat // T, flat % T)


@dataclass(frozen=True)
class OfficialBudget:
    """Section 4b's counts for N frames (after the last merge) of B, T tokens each, retain ratio r.

    r_hat: min(r / (N / B), 1) in double precision. per_dynamic: ceil(T * r_hat) tokens per dynamic frame.
    windows: max(1, round(T * r_hat)) windows, one token each, per static frame. is_static: [N] labels.
    total: the number of tokens official_select returns (about r * B * T; the ceilings make it larger).
    """

    r_hat: float
    per_dynamic: int
    windows: int
    is_static: list[bool]
    total: int


def check_segments(segments: torch.Tensor, num_frames: int) -> None:
    """Raise unless segments [S, 2] tiles frames 0 .. num_frames - 1 with inclusive (first, last) pairs in order."""
    check_rank("segments", segments, "[S, 2]")
    pairs = segments.tolist()
    if segments.shape[1] != 2 or not pairs:
        raise ValueError(f"segments has shape {list(segments.shape)}; need [S, 2] with S >= 1 (first, last) pairs")
    starts = [0] + [last + 1 for _, last in pairs[:-1]]
    if (
        [first for first, _ in pairs] != starts
        or any(last < first for first, last in pairs)
        or pairs[-1][1] != (num_frames - 1)
    ):
        raise ValueError(
            f"segments {pairs} must tile the N = {num_frames} frames in order: first = previous last + 1, "
            f"starting at 0 and ending at {num_frames - 1}"
        )


def segment_labels(segments: list[tuple[int, int]] | list[list[int]]) -> list[bool]:
    """is_static per frame: the middle frames of segments of >= 3 frames; heads, tails and 1-2 frame segments are
    dynamic."""
    return [first < i < last for first, last in segments for i in range(first, last + 1)]


def official_budget(
    segments: torch.Tensor, *, tokens_per_frame: int, retain_ratio: float, num_frames: int
) -> OfficialBudget:
    """Counts for official_select; segments [S, 2] of the N frames after the last merge, B = num_frames >= N."""
    check_range("retain_ratio", retain_ratio, 0.0, 1.0, low_open=True)
    pairs = segments.tolist()
    N = pairs[-1][1] + 1 if pairs else 0
    check_segments(segments, N)
    if not N <= num_frames:
        raise ValueError(f"num_frames = {num_frames} is the frame count before merging; it must be >= N = {N}")
    T = tokens_per_frame
    if T < 1:
        raise ValueError(f"tokens_per_frame = {T}; need T >= 1")
    r_hat = min(retain_ratio / (N / num_frames), 1.0)
    per_dynamic, windows = math.ceil(T * r_hat), max(1, round(T * r_hat))
    is_static = segment_labels(pairs)
    n_s = sum(is_static)
    return OfficialBudget(r_hat, per_dynamic, windows, is_static, (N - n_s) * per_dynamic + n_s * windows)


def official_select(
    tokens: torch.Tensor, scores: torch.Tensor, segments: torch.Tensor, *, retain_ratio: float, num_frames: int
) -> SelectResult:
    """Section 4b's selection: a top-ceil(T * r_hat) per dynamic frame, the best token of each of
    max(1, round(T * r_hat)) raster windows per static frame.

    tokens: [N, T, D], scores: [N, T], segments: [S, 2] (the re-segmentation after the last merge), num_frames: B
    -> official_budget(...).total tokens in temporal, then raster order; ties go to the lower index.
    """
    check_tokens_scores(tokens, scores)
    N, T = scores.shape
    check_segments(segments, N)
    budget = official_budget(segments, tokens_per_frame=T, retain_ratio=retain_ratio, num_frames=num_frames)
    is_static = torch.tensor(budget.is_static, dtype=torch.bool, device=scores.device)

    dynamic_frames = (~is_static).nonzero().flatten()  # [n_d]
    picked = stable_topk(scores[dynamic_frames], budget.per_dynamic)  # [n_d, per_dynamic]
    dynamic_flat = (dynamic_frames[:, None] * T + picked).flatten()

    static_frames = is_static.nonzero().flatten()  # [n_s]
    window = official_windows(T, budget.windows).to(scores.device)
    counts = torch.full_like(static_frames, budget.windows)
    row, static_index = argmax_per_window(scores[static_frames], window, counts)
    static_flat = static_frames[row] * T + static_index

    flat = torch.cat([static_flat, dynamic_flat]).sort().values  # temporal then raster order
    return gather(tokens, flat // T, flat % T)
