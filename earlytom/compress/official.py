"""FrameMerge of the official variant (DESIGN.md section 4b): what the authors' released EarlyTom code does after
each merge layer, quirks included.

The batch path is small steps, each usable alone (the Triton kernels are checked against each):

    similarity = window_similarity(hidden, width)     # [F, L, D] -> [F, W]: mean_l cos(H[i-d], H[i]), d = 1..W
    segments = plan_segments(similarity, ...)          # [S, 2] inclusive (first, last): resetting EMA, window cap
    plan = plan_compress(similarity, segments)         # which rows to combine, with which weights
    hidden = apply_merge(hidden, plan)                 # [F, L, D] -> [N, L, D]; attention [F, L] -> [N, L] alike

A segment holds at most M - 1 frames and its EMA is compared with frames since its first one, so every similarity
the plan reads lies within M - 1 frames: one banded similarity pass of width W = min(M - 1, F - 1) serves it all.
The tensor work (similarities, merges) runs once over all F frames; only the decisions, each depending on the one
before (the EMA's reset, the scan's j += 2 or j += 1), are a loop, over the F floats of that band.

Scalar arithmetic is float32 throughout (as the similarities are): the EMA is e = f32(f32(a * c) + f32(b * e))
with a = f32(alpha), b = f32(1 - alpha); thresholds are rounded to float32 before comparing; a merge weight is
w = f32(sig_j / f32(sig_j + sig_j+1)) and its partner 1 - w in float32.

`StreamingOfficialCompress` takes one frame at a time and emits a segment's output frames when it closes.
"""

from dataclasses import dataclass

import numpy as np
import torch

from earlytom.compress.checks import check_finite, check_pair, check_rank, check_values
from earlytom.compress.config import check_int, check_value
from earlytom.compress.merge import NORM_EPS, apply_merge

f32 = np.float32
ONE = f32(1.0)


@dataclass(frozen=True)
class CompressPlan:
    """The decisions for F input frames producing N output frames.

    source: [N, 2] int64, the two input rows combined into each output row (equal when the row is kept as is).
    weight: [N, 2] float32, their weights (w, 1 - w); (1, 0) for a kept row and for the last middle pair's merge.
    segments: [S, 2] int64, the segmentation of the input frames, inclusive (first, last), in order.
    """

    source: torch.Tensor
    weight: torch.Tensor
    segments: torch.Tensor


@dataclass(frozen=True)
class CompressResult:
    """official_compress output.

    hidden: [N, L, D] in the input dtype; attention: [N, L], rows combined with the same weights as hidden (None
    when official_compress was given None).
    source: [N, 2] int64, first and last input frame each output row came from (equal when kept as is).
    segments: [S, 2] int64, the re-segmentation of the N output frames (inclusive (first, last)) when final=True,
    else None.
    """

    hidden: torch.Tensor
    attention: torch.Tensor | None
    source: torch.Tensor
    segments: torch.Tensor | None


def check_options(alpha: float, tau_seg: float, max_window: int) -> None:
    check_value("alpha", alpha)
    check_value("tau_seg", tau_seg)
    check_int("max_window", max_window, 2, why=" (a segment holds at most max_window - 1 frames)")


# Bytes of float32 frames per token block in window_similarity: small enough that a block's W products stay in
# cache, large enough that the per-block op overhead is small.
BLOCK_BYTES = 1 << 22


def check_norms(norm: torch.Tensor) -> None:
    """Refuse NaN/Inf by the per-token norms [..., L] (a non-finite value anywhere in a token makes its norm
    non-finite)."""
    if not bool(torch.isfinite(norm).all()):
        bad = int((~torch.isfinite(norm)).sum())
        raise ValueError(f"hidden contains NaN/Inf in {bad} of {norm.numel()} tokens; all values must be finite")


def token_norms(hidden: torch.Tensor) -> torch.Tensor:
    """hidden: [..., L, D] float32 -> per-token norms [..., L]; refuses NaN/Inf."""
    norm = torch.linalg.vector_norm(hidden, dim=-1)
    check_norms(norm)
    return norm


def token_cosine(a: torch.Tensor, b: torch.Tensor, norm_a: torch.Tensor, norm_b: torch.Tensor) -> torch.Tensor:
    """cos(a[l], b[l]) per token: a, b [..., L, D] float32 with norms [..., L] -> [..., L]."""
    return (a * b).sum(-1) / (norm_a * norm_b).clamp_min(NORM_EPS)


def frame_cosine(a: torch.Tensor, b: torch.Tensor, norm_a: torch.Tensor, norm_b: torch.Tensor) -> torch.Tensor:
    """mean over tokens l of cos(a[l], b[l]): a, b [..., L, D] float32 with norms [..., L] -> [...].
    Each token's cosine first, then the mean over L (the released code's F.cosine_similarity(...).mean())."""
    return token_cosine(a, b, norm_a, norm_b).mean(-1)


def band_width(max_window: int, num_frames: int) -> int:
    """W = min(M - 1, F - 1): the farthest pair of frames section 4b compares lies within one segment."""
    return min(max_window - 1, num_frames - 1)


def token_blocks(num_frames: int, num_tokens: int, dim: int) -> list[slice]:
    """Slices covering the L tokens, each holding at most BLOCK_BYTES of F float32 frames (at least 1 token)."""
    size = max(1, BLOCK_BYTES // (4 * num_frames * dim))
    return [slice(start, start + size) for start in range(0, num_tokens, size)]


def window_similarity(hidden: torch.Tensor, width: int) -> torch.Tensor:
    """similarity[i, d - 1] = mean_l cos(H[i - d][l], H[i][l]) for d = 1 .. width, NaN where i < d.

    hidden: [F, L, D] (any float dtype; computed in float32) -> [F, width] float32, width <= F - 1.

    All frame pairs of all W distances at once, block of tokens by block of tokens: a block's products stay in
    cache, so hidden is read about once rather than W times. Each token's cosine is token_cosine's and each mean
    frame_cosine's, so every value equals frame_cosine on its pair bit for bit (the streaming form's value).
    """
    num_frames, num_tokens, dim = hidden.shape
    cos = torch.full((width, num_frames, num_tokens), float("nan"), dtype=torch.float32, device=hidden.device)
    norm = torch.empty(num_frames, num_tokens, dtype=torch.float32, device=hidden.device)  # [F, L]
    for tokens in token_blocks(num_frames, num_tokens, dim):
        h = hidden[:, tokens].float().contiguous()  # [F, l, D] token-major, as each streamed frame is read
        n = norm[:, tokens] = torch.linalg.vector_norm(h, dim=-1)
        for d in range(1, width + 1):
            cos[d - 1, d:, tokens] = token_cosine(h[:-d], h[d:], n[:-d], n[d:])
    check_norms(norm)
    return cos.mean(-1).T.contiguous()


class Segmenter:
    """Section 4b's segmentation over frames offered one at a time: the EMA of the similarity to the segment's
    first frame, reset to 1 at each new segment; a segment closes when the EMA < tau_seg or it would reach
    max_window frames (so it holds at most max_window - 1)."""

    def __init__(self, *, alpha: float, tau_seg: float, max_window: int) -> None:
        self.alpha, self.beta, self.tau_seg = f32(alpha), f32(1 - alpha), f32(tau_seg)
        self.max_window = max_window
        self.start, self.ema = 0, ONE

    def offer(self, i: int, similarity: float) -> tuple[int, int] | None:
        """Frame i (> start) with similarity = mean_l cos(H[start], H[i]): the segment it closes, (start, i - 1),
        or None when frame i joins the open segment."""
        self.ema = self.alpha * f32(similarity) + self.beta * self.ema
        if self.ema < self.tau_seg or i - self.start + 1 >= self.max_window:
            closed = (self.start, i - 1)
            self.start, self.ema = i, ONE
            return closed
        return None


def plan_segments(similarity: torch.Tensor, *, alpha: float, tau_seg: float, max_window: int) -> torch.Tensor:
    """similarity: [F, W] from window_similarity with W >= band_width(max_window, F) -> segments [S, 2] int64."""
    check_options(alpha, tau_seg, max_window)
    num_frames, sims = similarity.shape[0], similarity.tolist()
    segmenter = Segmenter(alpha=alpha, tau_seg=tau_seg, max_window=max_window)
    segments = []
    for i in range(1, num_frames):
        closed = segmenter.offer(i, sims[i][i - segmenter.start - 1])
        if closed is not None:
            segments.append(closed)
    segments.append((segmenter.start, num_frames - 1))
    return torch.tensor(segments, dtype=torch.int64)


def plan_middles(tau_m: float, sig: list[float]) -> list[tuple[int, int, float, float]]:
    """Section 4b's scan of a segment's J >= 2 middle frames m_0 .. m_{J-1}, given sig_j = mean_l cos(m_j, m_j+1)
    (J - 1 values) and tau_m: rows (j, j', w, 1 - w) in middle indices, emitting w * m_j + (1 - w) * m_j'.

    A pair merges when sig_j > tau_m and sig_j > sig_j+1 (the last pair: sig_j > tau_m alone, with w = 1). The scan
    stops before m_{J-1} is considered alone, so the last middle frame is dropped unless it was merged (the
    released code's quirk). w = sig_j / (sig_j + sig_j+1), or 1 when that denominator is exactly 0 (the released
    code divides by zero there).
    """
    tau, s = f32(tau_m), [f32(x) for x in sig]
    rows, j, last = [], 0, len(s) - 1  # last: index of the final pair (m_last, m_last+1)
    while j <= last:
        if j < last:
            merge, total = s[j] > tau and s[j] > s[j + 1], s[j] + s[j + 1]
            w = s[j] / total if total != 0 else ONE
        else:
            merge, w = s[j] > tau, ONE
        if merge:
            rows.append((j, j + 1, float(w), float(ONE - w)))
            j += 2
        else:
            rows.append((j, j, 1.0, 0.0))
            j += 1
    return rows


def segment_rows(first: int, last: int, tau_m: float | None, sig: list[float]) -> list[tuple[int, int, float, float]]:
    """Output rows (row, row', w, 1 - w) of the segment [first, last] in input-frame indices: 1-2 frames and a
    single middle frame are kept; otherwise head, plan_middles' rows, tail. tau_m = mean_l cos(H[first], H[last])
    and sig (the middles' adjacent similarities) are read only when the segment has >= 2 middle frames."""
    if last - first + 1 <= 3:
        return [(i, i, 1.0, 0.0) for i in range(first, last + 1)]
    middle = [(first + 1 + j, first + 1 + k, w, v) for j, k, w, v in plan_middles(tau_m, sig)]
    return [(first, first, 1.0, 0.0), *middle, (last, last, 1.0, 0.0)]


def rows_to_plan(rows: list[tuple[int, int, float, float]], segments: torch.Tensor) -> CompressPlan:
    first, second, w0, w1 = zip(*rows, strict=True)
    return CompressPlan(
        source=torch.tensor([first, second], dtype=torch.int64).T.contiguous(),
        weight=torch.tensor([w0, w1], dtype=torch.float32).T.contiguous(),
        segments=segments,
    )


def plan_compress(similarity: torch.Tensor, segments: torch.Tensor) -> CompressPlan:
    """similarity: [F, W] from window_similarity, segments: [S, 2] from plan_segments -> CompressPlan.

    A segment [s, t] reads tau_m = similarity[t, t - s - 1] and sig_j = similarity[s + 2 + j, 0].
    """
    sims = similarity.tolist()
    rows = []
    for s, t in segments.tolist():
        tau_m = sims[t][t - s - 1] if t - s >= 3 else None
        rows += segment_rows(s, t, tau_m, [sims[i][0] for i in range(s + 2, t)])
    return rows_to_plan(rows, segments)


def segment_frames(hidden: torch.Tensor, *, alpha: float, tau_seg: float, max_window: int) -> torch.Tensor:
    """Segments [S, 2] of hidden [F, L, D] by section 4b's rule (used again on the output after the last merge)."""
    similarity = window_similarity(hidden, band_width(max_window, hidden.shape[0]))
    return plan_segments(similarity, alpha=alpha, tau_seg=tau_seg, max_window=max_window)


def check_inputs(hidden: torch.Tensor, attention: torch.Tensor | None) -> None:
    if attention is None:
        check_rank("hidden", hidden, "[F, L, D]")
    else:
        check_pair("hidden", hidden, "[F, L, D]", "attention", attention, "[F, L]")
    if hidden.shape[0] == 0:
        raise ValueError("hidden has F = 0 frames; compression needs at least 1 frame")
    check_values("hidden", hidden, "[F, L, D]")
    if attention is not None:
        check_values("attention", attention, "[F, L]")
        check_finite("attention", attention)


def official_compress(
    hidden: torch.Tensor,
    attention: torch.Tensor | None,
    *,
    tau_seg: float,
    alpha: float = 0.9,
    max_window: int = 6,
    final: bool = False,
) -> CompressResult:
    """Compression after one merge layer (section 4b). hidden: [F, L, D] that layer's output, attention: [F, L] the
    attention each token received in it, or None where no selection reads it (a merge layer before the last) ->
    CompressResult with N <= F frames (attention None when None came in); final=True (after the last merge layer)
    also re-segments the N output frames for official_select."""
    check_inputs(hidden, attention)
    check_options(alpha, tau_seg, max_window)
    similarity = window_similarity(hidden, band_width(max_window, hidden.shape[0]))
    segments = plan_segments(similarity, alpha=alpha, tau_seg=tau_seg, max_window=max_window)
    plan = plan_compress(similarity, segments)
    merged = apply_merge(hidden, plan)
    return CompressResult(
        hidden=merged,
        attention=None if attention is None else apply_merge(attention, plan),
        source=plan.source,
        segments=segment_frames(merged, alpha=alpha, tau_seg=tau_seg, max_window=max_window) if final else None,
    )


@dataclass
class BufferedFrame:
    """A frame held by the streaming form: hidden [L, D] (input dtype), attention [L] (None for output frames held
    for the re-segmentation), hidden's float32 copy and token norms [L]."""

    hidden: torch.Tensor
    attention: torch.Tensor | None
    h32: torch.Tensor
    norm: torch.Tensor

    @classmethod
    def of(cls, hidden: torch.Tensor, attention: torch.Tensor | None) -> "BufferedFrame":
        h32 = hidden.float().contiguous()  # token-major whatever the layout: the whole-video form reads it so
        return cls(hidden, attention, h32, token_norms(h32))

    def cosine(self, other: "BufferedFrame") -> float:
        return float(frame_cosine(self.h32, other.h32, self.norm, other.norm))


class StreamingOfficialCompress:
    """official_compress one frame at a time, with the same decisions: `push(hidden [L, D], attention [L])` returns
    the output frames of the segment that frame closed (a CompressResult with global input indices in .source),
    or None; `finish()` closes the last segment. A segment closes when the frame after it arrives, so at most
    max_window - 1 frames are held.

    With final=True each returned chunk's .segments lists the re-segments of the output frames (inclusive,
    global output indices) that closed by then ([0, 2] when none did); finish() closes the last. Concatenating
    the chunks gives official_compress's result.
    """

    def __init__(self, *, tau_seg: float, alpha: float = 0.9, max_window: int = 6, final: bool = False) -> None:
        check_options(alpha, tau_seg, max_window)
        self.options = {"alpha": alpha, "tau_seg": tau_seg, "max_window": max_window}
        self.final = final
        self._segmenter = Segmenter(**self.options)
        self._open: list[BufferedFrame] = []  # frames start .. count-1 of the open segment
        self._count = 0  # input frames pushed
        self._resegmenter = Segmenter(**self.options)  # final=True: over the output frames
        self._out_ref: BufferedFrame | None = None  # first output frame of the open re-segment
        self._out_count = 0
        self._finished = False

    def push(self, hidden: torch.Tensor, attention: torch.Tensor) -> CompressResult | None:
        if self._finished:
            raise RuntimeError("push() after finish(); start a new StreamingOfficialCompress for a new video")
        check_rank("hidden", hidden, "[L, D]")
        check_rank("attention", attention, "[L]")
        check_inputs(hidden[None], attention[None])
        if self._open and (hidden.shape, hidden.dtype) != (self._open[0].hidden.shape, self._open[0].hidden.dtype):
            raise ValueError(
                f"frame {self._count} has shape {list(hidden.shape)} {hidden.dtype}; earlier frames have "
                f"{list(self._open[0].hidden.shape)} {self._open[0].hidden.dtype}"
            )
        frame = BufferedFrame.of(hidden, attention)
        index, self._count = self._count, self._count + 1
        if index == 0:
            self._open = [frame]
            return None
        closed = self._segmenter.offer(index, self._open[0].cosine(frame))
        if closed is None:
            self._open.append(frame)
            return None
        chunk = self._close(closed)
        self._open = [frame]
        return chunk

    def finish(self) -> CompressResult:
        if self._finished:
            raise RuntimeError("finish() called twice")
        if not self._count:
            raise ValueError("finish() before any push(): compression needs at least 1 frame")
        self._finished = True
        return self._close((self._segmenter.start, self._count - 1))

    def _close(self, segment: tuple[int, int]) -> CompressResult:
        first, last = segment
        frames = self._open
        tau_m = frames[0].cosine(frames[-1]) if len(frames) >= 4 else None
        sig = [frames[j].cosine(frames[j + 1]) for j in range(1, len(frames) - 2)]
        plan = rows_to_plan(segment_rows(0, last - first, tau_m, sig), torch.tensor([segment]))
        hidden = apply_merge(torch.stack([f.hidden for f in frames]), plan)
        attention = apply_merge(torch.stack([f.attention for f in frames]), plan)
        segments = self._resegment(hidden) if self.final else None
        return CompressResult(hidden=hidden, attention=attention, source=plan.source + first, segments=segments)

    def _resegment(self, hidden: torch.Tensor) -> torch.Tensor:
        """Offer the new output frames hidden [n, L, D] to the re-segmentation: the re-segments they closed, plus
        the last one once the stream finished."""
        closed = []
        for row in hidden:
            frame = BufferedFrame.of(row, None)
            index, self._out_count = self._out_count, self._out_count + 1
            if index == 0:
                self._out_ref = frame
                continue
            segment = self._resegmenter.offer(index, self._out_ref.cosine(frame))
            if segment is not None:
                closed.append(segment)
                self._out_ref = frame
        if self._finished:
            closed.append((self._resegmenter.start, self._out_count - 1))
        return torch.tensor(closed, dtype=torch.int64).view(-1, 2)
