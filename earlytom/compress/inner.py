"""The inner merge of the released EarlyTom (DESIGN.md section 4b), as token math on one request.

Inside the decoder, at prefill, the visual tokens the last prompt token attends to least are averaged into
the most similar of those it attends to most, then dropped:

    ranked = rank_by_attention(attention, kept_count(n, ratio))     # [k] most attended first
    merged = inner_merge(tokens, attention, ratio)                  # .index [k], .tokens [k, D]

The decoder side (running the layers around it) is earlytom/runtime/inner_merge.py.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from earlytom.compress.checks import check_rank
from earlytom.compress.merge import NORM_EPS


@dataclass(frozen=True)
class InnerMerged:
    """The kept visual tokens: index [k] (ascending, into the n visual tokens), tokens [k, D] in that order."""

    index: torch.Tensor
    tokens: torch.Tensor


def check_inner_ratio(ratio: float) -> None:
    """Raise unless 0 <= ratio < 1 (the share of visual tokens merged away)."""
    if not (math.isfinite(ratio) and 0.0 <= ratio < 1.0):
        raise ValueError(f"inner_ratio = {ratio} is outside the valid range [0, 1)")


def kept_count(n: int, ratio: float) -> int:
    """round(n * (1 - ratio)) as the released code computes it (Python's round: halves go to the even
    neighbour, round(2.5) = 2), but at least 1 when n > 0: with nothing kept the others have nowhere to go."""
    check_inner_ratio(ratio)
    return min(n, max(1, round(n * (1 - ratio))))


def rank_by_attention(attention: torch.Tensor, count: int) -> torch.Tensor:
    """attention [n] -> the `count` most attended indices [count], most attended first, ties to the lower index."""
    return torch.sort(attention, descending=True, stable=True).indices[:count]


def most_similar(tokens: torch.Tensor, ranked: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """tokens [n, D] -> for each dropped token, the position in `ranked` [k] of the kept token with the highest
    cosine similarity [m] (float32; ties to the earlier in `ranked`, i.e. the more attended, as released)."""
    unit = F.normalize(tokens.float(), dim=-1, eps=NORM_EPS)
    return (unit[dropped] @ unit[ranked].T).argmax(dim=1)


def average_into(tokens: torch.Tensor, ranked: torch.Tensor, dropped: torch.Tensor, target: torch.Tensor):
    """tokens [n, D] -> kept tokens [k, D] in `ranked` order after, for each dropped token in the given order,
    kept[target] = (kept[target] + dropped token) / 2 (a running average: later merges weigh more)."""
    merged = tokens[ranked].clone()
    for other, slot in zip(dropped.tolist(), target.tolist(), strict=True):
        merged[slot] = (merged[slot] + tokens[other]) / 2
    return merged


def inner_merge(tokens: torch.Tensor, attention: torch.Tensor, ratio: float) -> InnerMerged:
    """tokens [n, D] (hidden states of the visual tokens), attention [n] (what the last prompt token gives
    each, mean over heads) -> the kept_count(n, ratio) most attended, each with the less attended tokens most
    similar to it averaged in, in ascending position order (similarities measured once, before merging)."""
    check_rank("tokens", tokens, "[n, D]")
    check_rank("attention", attention, "[n]")
    if attention.shape[0] != tokens.shape[0]:
        raise ValueError(f"attention has {attention.shape[0]} entries for {tokens.shape[0]} tokens; give one each")
    ranked = rank_by_attention(attention, kept_count(tokens.shape[0], ratio))
    if len(ranked) == 0:  # no visual tokens: nothing to merge (the released code skips such prompts)
        return InnerMerged(index=ranked, tokens=tokens)
    is_kept = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    is_kept[ranked] = True
    dropped = (~is_kept).nonzero().squeeze(1)  # ascending
    merged = average_into(tokens, ranked, dropped, most_similar(tokens, ranked, dropped))
    order = ranked.argsort()
    return InnerMerged(index=ranked[order], tokens=merged[order])
