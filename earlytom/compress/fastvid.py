"""FastVID as the EarlyTom paper ran it on LLaVA-OneVision (shared/BASELINES.md section 1), decision for decision.

    segments = dyseg(global_features, c=8, tau=0.9)             # [T, G] -> [S, 2] inclusive (first, last)
    budget = fastvid_budget(L, retain_ratio=r, d=0.4)            # R, S salient, C context tokens per frame
    context = context_budgets(segments, budget.context, p=4)     # context tokens per frame (anchors only)
    result = fastvid(features, attention, global_features, retain_ratio=r)

Per frame the S most attended tokens are kept unchanged; the other L - S are scored by density peaks
(baseline.density_peaks, 4 nearest) and merged into targets: a single-frame segment's frame into its own C
targets, a longer segment's whole pool into each anchor's targets. Where the released code would crash (C = 0,
T < c, a budget over L - S, fewer than 4 tokens to score) this refuses with a ValueError instead.
"""

from dataclasses import dataclass

import torch

from earlytom.compress.baseline import check_float, check_frames, density_peaks
from earlytom.compress.checks import check_range
from earlytom.compress.config import check_int

DENSITY_NEIGHBOURS = 4  # the released FastVID's k for the density


@dataclass(frozen=True)
class FastVidBudget:
    """Tokens per frame of L: retained R = int(L * r), salient S = R - int(R * d), context C = R - S."""

    retained: int
    salient: int
    context: int


@dataclass(frozen=True)
class FastVidResult:
    """K tokens in (frame, index) order: tokens [K, D]; frame [K], index [K] int64 (a context token carries its
    target's); segments [S, 2] int64, DySeg's inclusive (first, last) frame ranges."""

    tokens: torch.Tensor
    frame: torch.Tensor
    index: torch.Tensor
    segments: torch.Tensor


def fastvid_budget(tokens_per_frame: int, *, retain_ratio: float, d: float) -> FastVidBudget:
    """Python int() floors, as released: L = 196 and r = .10 / .15 / .20 / .25 give (R, S, C) = (19, 12, 7) /
    (29, 18, 11) / (39, 24, 15) / (49, 30, 19)."""
    check_range("retain_ratio", retain_ratio, 0.0, 1.0, low_open=True)
    check_range("d", d, 0.0, 1.0)
    retained = int(tokens_per_frame * retain_ratio)
    salient = retained - int(retained * d)
    context = retained - salient
    if context == 0:
        raise ValueError(
            f"retain_ratio = {retain_ratio} and d = {d} leave C = R - S = {retained} - {salient} = 0 context tokens "
            f"per frame of L = {tokens_per_frame} (R = int(L * r), S = R - int(R * d)); the released FastVID crashes "
            "there: raise retain_ratio or d"
        )
    return FastVidBudget(retained, salient, context)


def dyseg(global_features: torch.Tensor, *, c: int, tau: float) -> torch.Tensor:
    """DySeg: global_features [T, G] -> segments [S, 2] int64, inclusive (first, last), in order.

    s[i] = cosine of frames i and i + 1 (in the input dtype); a segment ends at frame i for the c - 1 smallest s
    (torch.topk) and for every s[i] < tau; so at least c segments. Needs c <= T.
    """
    check_float("global_features", global_features, "[T, G]")
    T = global_features.shape[0]
    check_int("c", c, 1, why=" (DySeg's minimum number of segments)")
    check_range("tau", tau, -1.0, 1.0)
    if c > T:
        raise ValueError(f"c = {c} segments need at least c frames, got T = {T}; lower c (the released code crashes)")
    unit = global_features / global_features.norm(dim=1, keepdim=True)
    similarity = (unit[:-1] * unit[1:]).sum(dim=1)  # [T - 1]
    smallest = torch.topk(similarity, c - 1, largest=False).indices
    below = torch.nonzero(similarity < tau).squeeze(1)
    lasts = [*torch.unique(torch.cat([smallest, below])).tolist(), T - 1]  # unique() sorts
    firsts = [0, *(last + 1 for last in lasts[:-1])]
    return torch.tensor(list(zip(firsts, lasts, strict=True)), dtype=torch.int64)


def context_budgets(segments: torch.Tensor, context: int, p: int) -> list[int]:
    """Context tokens of each frame: in a segment of n frames the frames n - 1, n - 1 - p, ... before its last one
    (ceil(n / p) anchors) get C * n // ceil(n / p) each, the others 0."""
    budgets = []
    for first, last in segments.tolist():
        n = last - first + 1
        anchors = -(-n // p)
        budgets += [context * n // anchors if (last - f) % p == 0 else 0 for f in range(first, last + 1)]
    return budgets


def merge_into_targets(pool: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """pool [G, M, D], targets [G, k, D] (each a row of its pool) -> [G, k, D], in the input dtype.

    Every pool token joins the target of highest cosine (argmax: the first on ties); a target with `count` members
    becomes w * target + (1 - w) * mean(members), w = max(1 / (count + 1), beta).
    """
    unit_pool = pool / pool.norm(dim=-1, keepdim=True)
    unit_targets = targets / targets.norm(dim=-1, keepdim=True)
    choice = torch.bmm(unit_pool, unit_targets.transpose(1, 2)).argmax(dim=2)  # [G, M]
    member = torch.zeros(*choice.shape, targets.shape[1], dtype=pool.dtype, device=pool.device)
    member.scatter_(2, choice.unsqueeze(-1), 1)  # [G, M, k] one-hot
    count = member.sum(dim=1).unsqueeze(-1)  # [G, k, 1]
    weight = (1 / (count + 1)).clamp(min=beta)
    mean = torch.bmm(member.transpose(1, 2), pool) / count.clamp(min=1)
    return weight * targets + (1 - weight) * mean


def check_options(p: int, beta: float, jitter: float) -> None:
    check_int("p", p, 1, why=" (anchor frames are p apart)")
    check_range("beta", beta, 0.0, 1.0)
    check_range("jitter", jitter, 0.0, 1.0)


def fastvid(
    features: torch.Tensor,
    attention: torch.Tensor,
    global_features: torch.Tensor,
    *,
    retain_ratio: float,
    c: int = 8,
    tau: float = 0.9,
    d: float = 0.4,
    p: int = 4,
    beta: float = 0.6,
    jitter: float = 1e-6,
    generator: torch.Generator | None = None,
) -> FastVidResult:
    """FastVID on one video. features: [T, L, D] the pooled projector output (the LLM's video embeddings);
    attention: [T, L] the pooled attention of SigLIP's pooling-head probe; global_features: [T, G] that head's
    output -> FastVidResult with K = T * S + sum over frames of their context budget tokens.

    jitter > 0 draws one torch.rand([T, L - S]) (float32) from `generator` (the global RNG when None) for the
    densities; jitter = 0 draws nothing.
    """
    check_float("features", features, "[T, L, D]")
    T, L, _ = features.shape
    check_frames("attention", attention, "[T, L]", features, 2)
    check_frames("global_features", global_features, "[T, G]", features, 1)
    check_options(p, beta, jitter)
    budget = fastvid_budget(L, retain_ratio=retain_ratio, d=d)
    S, C = budget.salient, budget.context
    if L - S < DENSITY_NEIGHBOURS:
        raise ValueError(
            f"L - S = {L} - {S} = {L - S} tokens per frame left to score; the density needs at least "
            f"{DENSITY_NEIGHBOURS} (more tokens per frame, a smaller retain_ratio or a larger d)"
        )
    segments = dyseg(global_features, c=c, tau=tau)
    per_frame = context_budgets(segments, C, p)
    if max(per_frame) > L - S:
        raise ValueError(
            f"an anchor frame's context budget {max(per_frame)} exceeds its L - S = {L - S} candidate tokens "
            f"(C = {C}, p = {p}); lower p or retain_ratio (the released code crashes)"
        )

    device = features.device
    frames = torch.arange(T, device=device)[:, None]
    salient = torch.topk(attention, S, dim=1).indices  # [T, S]
    is_rest = torch.ones(T, L, dtype=torch.bool, device=device).scatter_(1, salient, False)
    rest = torch.arange(L, device=device).expand(T, L)[is_rest].view(T, L - S)  # raster order
    pool = features[frames, rest]  # [T, L - S, D]
    score, _ = density_peaks(pool, knn=DENSITY_NEIGHBOURS, jitter=jitter, generator=generator)

    frame, index, tokens = [frames.expand(T, S)], [salient], [features[frames, salient]]

    own = torch.topk(score, C, dim=1).indices  # [T, C]: every frame's own targets
    merged = merge_into_targets(pool, pool[frames, own], beta)
    single = torch.tensor([b == C for b in per_frame], device=device)
    frame.append(frames.expand(T, C)[single])
    index.append(rest[frames, own][single])
    tokens.append(merged[single])

    for first, last in segments.tolist():
        anchors = [f for f in range(first, last + 1) if per_frame[f] > C]
        if not anchors:  # single frame segments, and every segment when p = 1
            continue
        anchor = torch.tensor(anchors, device=device)[:, None]
        picked = torch.topk(score[anchor[:, 0]], per_frame[last], dim=1).indices
        seg_pool = pool[first : last + 1].reshape(1, -1, pool.shape[-1]).expand(len(anchors), -1, -1)
        frame.append(anchor.expand_as(picked))
        index.append(rest[anchor, picked])
        tokens.append(merge_into_targets(seg_pool, pool[anchor, picked], beta))

    frame, index = torch.cat([f.reshape(-1) for f in frame]), torch.cat([i.reshape(-1) for i in index])
    tokens = torch.cat([t.reshape(-1, t.shape[-1]) for t in tokens])
    order = torch.argsort(frame * L + index)  # keys are unique
    return FastVidResult(tokens=tokens[order], frame=frame[order], index=index[order], segments=segments)
