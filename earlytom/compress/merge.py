"""Stage I, FrameMerge (DESIGN.md section 3): streaming segmentation and weighted merging of frames.

The batch path is three small steps, each usable alone:

    similarity = adjacent_similarity(hidden)          # [B, L, D] -> [B-1], per token, one pass
    plan = plan_merge(similarity, alpha, tau_seg, tau_merge)   # decisions over B scalars
    merged = apply_merge(hidden, plan)                # [B, L, D] -> [N, L, D], one weighted gather

`StreamingFrameMerge` takes one frame at a time and reaches the same decisions, emitting each output
frame as soon as it is decided (at most two frames after it arrived).
"""

from dataclasses import dataclass

import torch

from earlytom.compress.checks import check_rank, check_values
from earlytom.compress.config import DEFAULT_ALPHA, DEFAULT_TAU_MERGE, DEFAULT_TAU_SEG, check_value

# A merged pair is weighted by its similarities; clamping them at this floor keeps a negative
# similarity from contributing negative weight and the two weights from summing to zero.
MIN_MERGE_WEIGHT = 1e-6
NORM_EPS = 1e-12  # the cosine's denominator is clamped here


@dataclass(frozen=True)
class MergePlan:
    """The FrameMerge decisions for B input frames producing N output frames.

    source: [N, 2] int64, first and last input frame of each output frame (equal when not merged).
    weight: [N, 2] float32, weights of those two frames (1, 0 when not merged).
    segment: [N] int64, segment id of each output frame, 0-based and non-decreasing.
    is_static: [N] bool, True for middle frames (merged or not), False for segment heads and tails.
    """

    source: torch.Tensor
    weight: torch.Tensor
    segment: torch.Tensor
    is_static: torch.Tensor


@dataclass(frozen=True)
class MergeResult:
    """FrameMerge output: hidden [N, L, D], source [N, 2], segment [N], is_static [N], similarity [B-1]."""

    hidden: torch.Tensor
    source: torch.Tensor
    segment: torch.Tensor
    is_static: torch.Tensor
    similarity: torch.Tensor


def float32(x: float) -> float:
    """x rounded to float32: similarities are float32, so thresholds are compared at that precision (a
    similarity equal to the threshold in float32 does not exceed it, on every backend)."""
    return float(torch.tensor(x, dtype=torch.float32))


def check_thresholds(alpha: float, tau_seg: float, tau_merge: float) -> None:
    for name, value in (("alpha", alpha), ("tau_seg", tau_seg), ("tau_merge", tau_merge)):
        check_value(name, value)


def pair_weights(s_first: float, s_second: float) -> tuple[float, float]:
    """Weights of a merged pair (i, i+1): (s_i, s_{i+1}) normalised to sum 1, each floored at MIN_MERGE_WEIGHT."""
    w0, w1 = max(s_first, MIN_MERGE_WEIGHT), max(s_second, MIN_MERGE_WEIGHT)
    return w0 / (w0 + w1), w1 / (w0 + w1)


def adjacent_similarity(hidden: torch.Tensor) -> torch.Tensor:
    """s_t = mean over tokens l of cos(H_t[l], H_{t+1}[l]).

    hidden: [B, L, D] (any float dtype; computed in float32) -> similarity [B-1] float32; refuses NaN/Inf.

    Per token, as the official variant computes it: the distance-1 band of window_similarity (each token's cosine,
    then the mean over the L tokens), on the frames in token-major order (a reduction's rounding depends on the
    memory layout, and SigLIP's hidden states are channels-first in memory), so s_t has the same bits whether
    computed over the whole video or frame by frame (StreamingFrameMerge).
    """
    check_rank("hidden", hidden, "[B, L, D]")
    check_values("hidden", hidden, "[B, L, D]")
    from earlytom.compress.official import window_similarity  # official builds on this module: imported on use

    return window_similarity(hidden.contiguous(), min(1, hidden.shape[0] - 1))[1:].flatten()


def ema_boundaries(similarity: list[float], alpha: float, tau_seg: float) -> list[bool]:
    """boundary[t] is True iff a segment ends after frame t: e_t < tau_seg, with e_0 = s_0 and
    e_t = alpha * s_t + (1 - alpha) * e_{t-1} running across boundaries. [B-1] floats -> [B-1] bools."""
    boundaries, ema = [], None
    for s in similarity:
        ema = s if ema is None else alpha * s + (1 - alpha) * ema
        boundaries.append(ema < tau_seg)
    return boundaries


def plan_merge(
    similarity: torch.Tensor,
    *,
    alpha: float = DEFAULT_ALPHA,
    tau_seg: float = DEFAULT_TAU_SEG,
    tau_merge: float = DEFAULT_TAU_MERGE,
) -> MergePlan:
    """Segment the B frames, then scan each segment's middle frames for local-peak pairs to merge.

    similarity: [B-1] adjacent similarities (B = len + 1). In a segment a..b the head a and tail b are
    kept; a middle frame i merges with i+1 iff i+1 <= b-1, s_i > tau_merge and s_i > s_{i+1}.
    """
    check_thresholds(alpha, tau_seg, tau_merge)
    s = similarity.tolist()
    num_frames = len(s) + 1
    cuts = [t + 1 for t, cut in enumerate(ema_boundaries(s, alpha, tau_seg)) if cut]
    starts, ends = [0, *cuts], [*cuts, num_frames]

    rows = []  # (first, last, w_first, w_last, segment, is_static)
    for seg, (a, end) in enumerate(zip(starts, ends, strict=True)):
        b = end - 1
        rows.append((a, a, 1.0, 0.0, seg, False))
        i = a + 1
        while i < b:
            if i + 1 <= b - 1 and s[i] > float32(tau_merge) and s[i] > s[i + 1]:
                rows.append((i, i + 1, *pair_weights(s[i], s[i + 1]), seg, True))
                i += 2
            else:
                rows.append((i, i, 1.0, 0.0, seg, True))
                i += 1
        if b > a:
            rows.append((b, b, 1.0, 0.0, seg, False))

    first, last, w0, w1, segment, is_static = zip(*rows, strict=True)
    return MergePlan(
        source=torch.tensor([first, last], dtype=torch.int64).T.contiguous(),
        weight=torch.tensor([w0, w1], dtype=torch.float32).T.contiguous(),
        segment=torch.tensor(segment, dtype=torch.int64),
        is_static=torch.tensor(is_static, dtype=torch.bool),
    )


def apply_merge(hidden: torch.Tensor, plan: MergePlan) -> torch.Tensor:
    """hidden: [B, L, D] -> [N, L, D], row n = w[n,0] * H[first[n]] + w[n,1] * H[last[n]] (any trailing shape:
    [B, L] attention rows combine the same way). Uses only plan.source [N, 2] and plan.weight [N, 2].

    One gather of the N output frames, then the weighted sum on the merged pairs only (in float32, stored
    in hidden's dtype).
    """
    first, last = plan.source.to(hidden.device).unbind(1)  # [N], [N]
    merged = (first != last).nonzero().flatten()  # [P]
    weight = plan.weight[merged.cpu()].to(hidden.device)  # [P, 2]
    weight = weight.view(*weight.shape, *[1] * (hidden.dim() - 1))  # [P, 2, 1, ...]
    out = hidden.index_select(0, first)
    pair_sum = hidden[first[merged]].float() * weight[:, 0] + hidden[last[merged]].float() * weight[:, 1]
    out[merged] = pair_sum.to(hidden.dtype)
    return out


def check_hidden(hidden: torch.Tensor) -> None:
    check_rank("hidden", hidden, "[B, L, D]")
    if hidden.shape[0] == 0:
        raise ValueError("hidden has B = 0 frames; FrameMerge needs at least 1 frame")
    check_values("hidden", hidden, "[B, L, D]")


def frame_merge(
    hidden: torch.Tensor,
    *,
    alpha: float = DEFAULT_ALPHA,
    tau_seg: float = DEFAULT_TAU_SEG,
    tau_merge: float = DEFAULT_TAU_MERGE,
) -> MergeResult:
    """FrameMerge on the hidden states entering the merge layer: hidden [B, L, D] -> MergeResult with N <= B frames."""
    check_hidden(hidden)
    check_thresholds(alpha, tau_seg, tau_merge)
    similarity = adjacent_similarity(hidden)
    plan = plan_merge(similarity.cpu(), alpha=alpha, tau_seg=tau_seg, tau_merge=tau_merge)
    return MergeResult(
        hidden=apply_merge(hidden, plan),
        source=plan.source,
        segment=plan.segment,
        is_static=plan.is_static,
        similarity=similarity,
    )


@dataclass(frozen=True)
class MergedFrame:
    """One output frame of the streaming merger: hidden [L, D], its first and last source frame, segment, label."""

    hidden: torch.Tensor
    first: int
    last: int
    segment: int
    is_static: bool


class StreamingFrameMerge:
    """FrameMerge one frame at a time: `push(frame [L, D])` returns the output frames decided so far,
    `finish()` the rest. A frame's fate is known once the frame two after it has arrived (or the stream
    ended), because a middle frame's merge test needs s_{i+1} and whether frame i+1 is its segment's tail.
    """

    def __init__(
        self, *, alpha: float = DEFAULT_ALPHA, tau_seg: float = DEFAULT_TAU_SEG, tau_merge: float = DEFAULT_TAU_MERGE
    ) -> None:
        check_thresholds(alpha, tau_seg, tau_merge)
        self.alpha, self.tau_seg, self.tau_merge = alpha, tau_seg, float32(tau_merge)
        self._frames: dict[int, torch.Tensor] = {}  # frames not yet emitted, by index
        self._sims: list[float] = []  # s_t, known once frame t+1 arrived
        self._cuts: list[bool] = []  # boundary after frame t, known with s_t
        self._ema: float | None = None
        self._previous = None  # the last frame pushed, as a BufferedFrame (its float32 copy and token norms)
        self._count = 0  # frames pushed
        self._next = 0  # first frame not yet decided
        self._segment = -1
        self._finished = False

    def push(self, frame: torch.Tensor) -> list[MergedFrame]:
        if self._finished:
            raise RuntimeError("push() after finish(); start a new StreamingFrameMerge for a new video")
        from earlytom.compress.official import BufferedFrame  # official builds on this module: imported on use

        check_hidden(frame[None])
        current = BufferedFrame.of(frame.contiguous(), None)  # token-major float32 and token norms; rejects NaN/Inf
        if self._count:
            s = self._previous.cosine(current)  # adjacent_similarity's s_t: the same per-token cosines, same mean
            self._ema = s if self._ema is None else self.alpha * s + (1 - self.alpha) * self._ema
            self._sims.append(s)
            self._cuts.append(self._ema < self.tau_seg)
        self._frames[self._count] = frame
        self._previous = current
        self._count += 1
        return self._drain(final=False)

    def finish(self) -> list[MergedFrame]:
        self._finished = True
        return self._drain(final=True)

    def _emit(self, first: int, last: int, is_static: bool) -> MergedFrame:
        if first == last:
            hidden = self._frames[first]
        else:
            w0, w1 = pair_weights(self._sims[first], self._sims[last])
            merged = w0 * self._frames[first].float() + w1 * self._frames[last].float()
            hidden = merged.to(self._frames[first].dtype)
        for index in [i for i in self._frames if i <= last]:
            del self._frames[index]
        self._next = last + 1
        return MergedFrame(hidden, first, last, self._segment, is_static)

    def _drain(self, final: bool) -> list[MergedFrame]:
        out = []
        known = len(self._cuts)  # boundaries known after frames 0 .. known-1
        while self._next < self._count:
            j = self._next
            is_head = j == 0 or self._cuts[j - 1]
            if j >= known and not final:
                break  # cannot tell yet whether j is a tail
            is_tail = j >= known or self._cuts[j]
            if is_head:
                self._segment += 1
            if is_head or is_tail:
                out.append(self._emit(j, j, is_static=False))
                continue
            if j + 1 >= known and not final:
                break  # cannot tell yet whether j+1 is a middle frame
            next_is_middle = j + 1 < known and not self._cuts[j + 1]
            s = self._sims
            if next_is_middle and s[j] > self.tau_merge and s[j] > s[j + 1]:
                out.append(self._emit(j, j + 1, is_static=True))
            else:
                out.append(self._emit(j, j, is_static=True))
        return out
