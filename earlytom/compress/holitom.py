"""HoliTom as the EarlyTom paper ran it on LLaVA-OneVision (shared/BASELINES.md section 2), decision for decision.

Vision side, on the pooled projector output:

    similarity = token_similarity(features)                        # [T, L, D] -> [T-1, L] per-token cosines
    windows, saved = static_windows(similarity, tau=tau)            # DP over frame windows -> [S, 2], tokens saved
    result = holitom(features, attention, retain_ratio=r, tau=tau)  # static tokens clustered, dynamic ones top-k

In the LLM (HOLITOM_k = 18, HOLITOM_r = 0.5), at prefill, after layer 17:

    merged = holitom_llm_merge(hidden, attention, image_start=s, image_len=n)   # .hidden [B, N', D], .positions

Only the released default D = 0 (all dynamic tokens by attention) is defined: the released code fails for D > 0.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from earlytom.compress.baseline import check_float, check_frames, density_peaks
from earlytom.compress.checks import check_range
from earlytom.compress.config import check_int
from earlytom.compress.inner import average_into

f32 = np.float32


@dataclass(frozen=True)
class HoliTomResult:
    """K tokens, window by window in time order; in a window its clustered static tokens (ascending position) come
    first, then the kept dynamic tokens of each of its frames (raster order). tokens [K, D]; frame [K], index [K]
    int64 (a static token: the window's first frame and its cluster centre's position); static [K] bool;
    segments [S, 2] int64, the inclusive (first, last) frame windows (first == last: a single frame)."""

    tokens: torch.Tensor
    frame: torch.Tensor
    index: torch.Tensor
    static: torch.Tensor
    segments: torch.Tensor


@dataclass(frozen=True)
class HoliTomMergeResult:
    """holitom_llm_merge output: hidden [B, N', D] the kept rows; positions [N'] int64, their original positions
    (ascending), to be the position ids of the later layers (cache_position becomes arange(N'))."""

    hidden: torch.Tensor
    positions: torch.Tensor


def token_similarity(features: torch.Tensor) -> torch.Tensor:
    """features [T, L, D] -> [T - 1, L]: cosine of token l in frames f and f + 1 (of the L2-normalised tokens, in the
    input dtype, as released)."""
    unit = F.normalize(features, p=2, dim=-1)
    return F.cosine_similarity(unit[:-1], unit[1:], dim=-1)


def static_counts(above: torch.Tensor) -> list[list[int]]:
    """above [T - 1, L] bool (similarity > tau) -> count[s][e] (e > s): positions static over frames s..e, i.e.
    above in every row s .. e - 1; 0 where e <= s."""
    T = above.shape[0] + 1
    count = torch.zeros(T, T, dtype=torch.int64)
    for s in range(T - 1):
        count[s, s + 1 :] = torch.cumprod(above[s:].long(), dim=0).sum(dim=1).cpu()
    return count.tolist()


def static_windows(similarity: torch.Tensor, *, tau: float, max_window: int = 1024) -> tuple[torch.Tensor, float]:
    """The released DP over windows of up to max_window frames. similarity [T - 1, L] -> (windows [S, 2] int64
    inclusive (first, last) in order, saved).

    gain(s, e) = (e - s) * count[s][e] tokens saved by a window s..e; dp[i] = max(dp[i - 1], dp[i - w] +
    gain(i - w + 1, i) for w = 2 .. min(i + 1, max_window)), dp[-1] = 0, in float32 as released; an update needs a
    strictly larger value (scanned w = 2, 3, ...): ties keep the single frame, then the shortest window.
    """
    check_range("tau", tau, -1.0, 1.0)
    check_int("max_window", max_window, 1, why=" (frames per static window)")
    T = similarity.shape[0] + 1
    count = static_counts(similarity > tau)
    dp, first = [f32(0)] * T, list(range(T))
    for i in range(T):
        best, start = (dp[i - 1] if i > 0 else f32(0)), i
        for w in range(2, min(i + 1, max_window) + 1):
            j = i - w
            value = (dp[j] if j >= 0 else f32(0)) + f32(count[j + 1][i]) * f32(w - 1)
            if value > best:
                best, start = value, j + 1
        dp[i], first[i] = best, start
    windows, i = [], T - 1
    while i >= 0:
        windows.append((first[i], i))
        i = first[i] - 1
    return torch.tensor(windows[::-1], dtype=torch.int64), float(dp[-1])


def cluster_static(
    tokens: torch.Tensor, k: int, *, beta: float, knn: int, jitter: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN clustering of a window's n static tokens [n, D] into k <= n -> (tokens [k, D], centre [k] ascending
    indices into n). Centres: the k best density-peak scores (density from min(knn, k) nearest); every other token
    joins its nearest centre (float32 distance, first on ties); a centre with members becomes
    beta * centre + (1 - beta) * mean(members), one without stays."""
    score, dist = density_peaks(tokens[None], knn=min(knn, k), jitter=jitter, generator=generator)
    centre = score.topk(k, dim=-1).indices[0].sort().values
    is_other = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    is_other[centre] = False
    other = is_other.nonzero()[:, 0]
    nearest = dist[0][other][:, centre].argmin(dim=-1)  # [n - k]
    merged = []
    for i in range(k):
        members = tokens[other[nearest == i]]
        centre_token = tokens[centre[i]]
        merged.append(beta * centre_token + (1 - beta) * members.mean(dim=0) if len(members) else centre_token)
    return torch.stack(merged), centre


def top_attended(attention: torch.Tensor, m: int) -> torch.Tensor:
    """attention [F, n] -> [F, m] the m most attended per row (torch.topk), in ascending (raster) order."""
    return attention.topk(m, dim=1).indices.sort(dim=1).values


def check_options(retain_ratio: float, beta: float, knn: int, jitter: float) -> None:
    check_range("retain_ratio", retain_ratio, 0.0, 1.0, low_open=True)
    check_range("beta", beta, 0.0, 1.0)
    check_int("knn", knn, 1, why=" (neighbours of the static-token density)")
    check_range("jitter", jitter, 0.0, 1.0)


class Emitted:
    """Tokens collected window by window: tokens [n, D], frame, index, static (none at all is possible: a static
    window whose round(n_static * r') is 0)."""

    def __init__(self, features: torch.Tensor) -> None:
        nothing = torch.zeros(0, dtype=torch.int64, device=features.device)
        self.tokens, self.frame, self.index = [features[:0, 0]], [nothing], [nothing]
        self.static = [nothing.bool()]

    def add(self, tokens: torch.Tensor, frame: torch.Tensor, index: torch.Tensor, static: bool) -> None:
        self.tokens.append(tokens)
        self.frame.append(frame)
        self.index.append(index)
        self.static.append(torch.full(index.shape, static, dtype=torch.bool, device=index.device))


def holitom(
    features: torch.Tensor,
    attention: torch.Tensor,
    *,
    retain_ratio: float,
    tau: float,
    max_window: int = 1024,
    beta: float = 0.6,
    knn: int = 7,
    jitter: float = 1e-6,
    generator: torch.Generator | None = None,
) -> HoliTomResult:
    """HoliTom's vision side on one video. features: [T, L, D] the pooled projector output; attention: [T, L] the
    pooled attention each patch receives in the last SigLIP layer (mean over heads and queries).

    r' = min(r / ((T*L - saved) / (T*L)), 1). A single frame keeps its ceil(L * r') most attended tokens. A window
    s..e averages its static positions (similarity > tau between all its adjacent frames) over its frames and
    clusters them into round(n_static * r') tokens (Python round), and keeps ceil(n_dynamic * r') most attended
    dynamic tokens per frame. jitter > 0 draws one torch.rand([1, n_static]) (float32) from `generator` (the
    global RNG when None) per clustered window, in window order; jitter = 0 draws nothing.
    """
    check_float("features", features, "[T, L, D]")
    T, L, _ = features.shape
    check_frames("attention", attention, "[T, L]", features, 2)
    check_options(retain_ratio, beta, knn, jitter)
    device = features.device
    similarity = token_similarity(features)
    windows, saved = static_windows(similarity, tau=tau, max_window=max_window)
    total = T * L
    ratio = min(retain_ratio / ((total - saved) / total), 1)

    out = Emitted(features)
    for s, e in windows.tolist():
        positions = torch.arange(L, device=device)
        dynamic = positions
        if e > s:
            is_static = (similarity[s:e] > tau).all(dim=0)
            static, dynamic = positions[is_static], positions[~is_static]
            k = round(len(static) * ratio)
            if k > 0:
                mean = features[s : e + 1, static].mean(dim=0)
                tokens, centre = cluster_static(mean, k, beta=beta, knn=knn, jitter=jitter, generator=generator)
                out.add(tokens, torch.full((k,), s, device=device), static[centre], True)
        m = math.ceil(len(dynamic) * ratio)
        if m > 0:
            kept = dynamic[top_attended(attention[s : e + 1][:, dynamic], m)]  # [e - s + 1, m]
            frames = torch.arange(s, e + 1, device=device)[:, None].expand_as(kept)
            out.add(features[frames, kept].flatten(0, 1), frames.flatten(), kept.flatten(), False)

    return HoliTomResult(
        tokens=torch.cat(out.tokens),
        frame=torch.cat(out.frame),
        index=torch.cat(out.index),
        static=torch.cat(out.static),
        segments=windows,
    )


def holitom_llm_merge(
    hidden: torch.Tensor, attention: torch.Tensor, *, image_start: int, image_len: int, r: float = 0.5
) -> HoliTomMergeResult:
    """HoliTom's merge inside the LLM, at prefill. hidden: [B, N, D] the output of layer HOLITOM_k - 1 (17);
    attention: [B, H, N] that layer's attention probabilities of the LAST query token (eager softmax), per head;
    the video span is [image_start, image_start + image_len), its trailing newline included.

    Batch row 0's head-mean attention keeps round(image_len * (1 - r)) span tokens (torch.topk); every other span
    token, in ascending position, is folded into the kept token of highest cosine in its row (similarities from
    `hidden` before folding, input dtype, torch.max: first on ties): kept = (kept + other) / 2.
    """
    check_float("hidden", hidden, "[B, N, D]")
    check_float("attention", attention, "[B, H, N]")
    B, N, _ = hidden.shape
    if attention.shape[0] != B or attention.shape[2] != N:
        raise ValueError(
            f"attention [B, H, N] = {list(attention.shape)} disagrees with hidden [B, N, D] = "
            f"{list(hidden.shape)} on B or N"
        )
    check_int("image_start", image_start, 0, N - 1)
    check_int("image_len", image_len, 1, N - image_start, why=" (the video span must lie inside the N tokens)")
    check_range("r", r, 0.0, 1.0)
    keep = round(image_len * (1 - r))
    if keep == 0:
        raise ValueError(
            f"r = {r} keeps round({image_len} * (1 - r)) = 0 of the video tokens; lower r (the released code crashes)"
        )
    end = image_start + image_len
    scores = attention[0].mean(dim=0)[image_start:end]
    ranked = scores.topk(keep).indices + image_start  # most attended first
    is_dropped = torch.zeros(N, dtype=torch.bool, device=hidden.device)
    is_dropped[image_start:end] = True
    is_dropped[ranked] = False
    dropped = is_dropped.nonzero()[:, 0]  # ascending

    kept_states, dropped_states = hidden[:, ranked], hidden[:, dropped]
    dot = torch.bmm(dropped_states, kept_states.transpose(1, 2))
    norms = dropped_states.norm(dim=-1, keepdim=True) * kept_states.norm(dim=-1, keepdim=True).transpose(1, 2)
    target = (dot / norms).max(dim=-1).indices  # [B, len(dropped)]: a position in `ranked`

    merged = hidden.clone()
    for b in range(B):
        merged[b, ranked] = average_into(hidden[b], ranked, dropped, target[b])
    positions = (~is_dropped).nonzero()[:, 0]
    return HoliTomMergeResult(hidden=merged[:, positions], positions=positions)
