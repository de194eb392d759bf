"""VisionZip's LLaVA-OneVision video variant as the EarlyTom paper ran it (shared/BASELINES.md section 3).

Per frame, n = spatial_tokens(L, retain_ratio) tokens are kept (20/30/40/50 of 196 for r = .10/.15/.20/.25):
int(n * 54/64) dominant ones, the most attended, unchanged, in raster order; the rest contextual: every step-th
remaining token is a target, the others join the target of highest SigLIP-key cosine, contextual = target + mean.

    result = visionzip(features, attention, keys, retain_ratio=r)   # .tokens [T*n, D], .frame [T*n], .index [T*n]
"""

import torch

from earlytom.compress.baseline import check_float, check_frames
from earlytom.compress.checks import check_range
from earlytom.compress.select import SelectResult

# scripts/ov/eval_ov-7b_visionzip.sh: SPATIAL_TOKENS per frame of LLaVA-OV's 196 for each published retain ratio.
SCRIPT_SPATIAL_TOKENS = {0.10: 20, 0.15: 30, 0.20: 40, 0.25: 50}
SCRIPT_TOKENS_PER_FRAME = 196
DOMINANT_RATIO = 54 / 64  # the released default of DOMINANT_RATIO


def spatial_tokens(tokens_per_frame: int, retain_ratio: float) -> int:
    """Tokens kept per frame: the scripts' SPATIAL_TOKENS for a published ratio with L = 196, else round(L * r)."""
    check_range("retain_ratio", retain_ratio, 0.0, 1.0, low_open=True)
    if tokens_per_frame == SCRIPT_TOKENS_PER_FRAME and retain_ratio in SCRIPT_SPATIAL_TOKENS:
        return SCRIPT_SPATIAL_TOKENS[retain_ratio]
    n = round(tokens_per_frame * retain_ratio)
    if n < 1:
        raise ValueError(
            f"retain_ratio = {retain_ratio} keeps round({tokens_per_frame} * r) = 0 tokens per frame; raise it to at "
            f"least {0.5 / tokens_per_frame:.2g}"
        )
    return n


def visionzip(
    features: torch.Tensor,
    attention: torch.Tensor,
    keys: torch.Tensor,
    *,
    retain_ratio: float,
    dominant_ratio: float = DOMINANT_RATIO,
) -> SelectResult:
    """VisionZip on one video. features: [T, L, D] the pooled projector output; attention: [T, L] the pooled
    attention each patch receives in the last SigLIP layer (mean over heads and queries); keys: [T, L, Dk] that
    layer's key states, mean over heads, pooled alike.

    -> T * n tokens, frame by frame: the frame's dominant tokens (raster order), then its contextual tokens (target
    order). A contextual token = target + mean of the tokens that joined it (argmax of the key cosine, first on
    ties; the targets do not join themselves); its index is the target's.
    """
    check_float("features", features, "[T, L, D]")
    T, L, D = features.shape
    check_frames("attention", attention, "[T, L]", features, 2)
    check_frames("keys", keys, "[T, L, Dk]", features, 2)
    check_range("dominant_ratio", dominant_ratio, 0.0, 1.0)
    n = spatial_tokens(L, retain_ratio)
    dominant = int(n * dominant_ratio)
    contextual = n - dominant
    if contextual < 1 or n > L:
        raise ValueError(
            f"{n} tokens per frame (retain_ratio = {retain_ratio}) with dominant_ratio = {dominant_ratio} give "
            f"{dominant} dominant + {contextual} contextual of L = {L}; need >= 1 contextual and n <= L "
            "(the released code crashes otherwise)"
        )

    device = features.device
    frames = torch.arange(T, device=device)[:, None]
    top = attention.topk(dominant, dim=1).indices
    is_rest = torch.ones(T, L, dtype=torch.bool, device=device).scatter_(1, top, False)
    positions = torch.arange(L, device=device).expand(T, L)
    dominant_index = positions[~is_rest].view(T, dominant)  # raster order
    rest = positions[is_rest].view(T, L - dominant)

    step = max(1, (L - dominant) // contextual)
    slot = torch.arange(L - dominant, device=device)
    target = slot[::step][:contextual]
    other = slot[~torch.isin(slot, target)]
    rest_keys = keys[frames, rest]
    unit = rest_keys / rest_keys.norm(dim=-1, keepdim=True)
    choice = torch.bmm(unit[:, other], unit[:, target].transpose(1, 2)).argmax(dim=2)  # [T, len(other)]
    member = torch.zeros(T, len(other), contextual, dtype=features.dtype, device=device)
    member.scatter_(2, choice.unsqueeze(-1), 1)
    count = member.sum(dim=1).clamp(min=1).unsqueeze(-1)
    rest_tokens = features[frames, rest]
    mean = torch.bmm(member.transpose(1, 2), rest_tokens[:, other]) / count
    context = rest_tokens[:, target] + mean

    tokens = torch.cat([features[frames, dominant_index], context], dim=1)  # [T, n, D]
    index = torch.cat([dominant_index, rest[:, target]], dim=1)
    return SelectResult(tokens=tokens.reshape(-1, D), frame=frames.expand(T, n).reshape(-1), index=index.reshape(-1))
