"""The compared methods (FastVID, HoliTom, VisionZip; shared/BASELINES.md) on the vision chain: the inputs they read,
the released scripts' parameters per retain ratio, their selection, and the decoder positions FastVID keeps.

They run the chain uncompressed (as `full` does); the last graph also gives what they read, beside tokens and scores:

    received [N, T]   attention each token receives in the last encoder layer (mean over heads and queries), pooled
    keys [N, T, d]    that layer's key states, mean over heads, pooled (VisionZip's metric)
    head_scores [N, T], global [N, G]   SigLIP's attention-pooling head: its probe's attention (pooled) and output
                      (FastVID; only for checkpoints that carry the head)

Every request draws its randomness (the density jitter) from a torch.Generator seeded with SEED, so the same
request gives the same answer.
"""

import math

import torch

from earlytom import compress
from earlytom.engine.layout import HEAD_READS, METHOD_READS, GraphSpec
from earlytom.models.backbone import VisualLayout

BASELINES = ("fastvid", "holitom", "visionzip")
SEED = 0  # the generator every request of a compared method draws its jitter from
# scripts/ov/eval_ov-7b_holitom.sh: tau 0.65 at r = 0.10, 0.80 at 0.15 / 0.20 / 0.25; in-LLM merge at k = 18, r = 0.5
HOLITOM_TAU = {0.10: 0.65}
HOLITOM_TAU_DEFAULT = 0.80
HOLITOM_LLM_RATIO = 0.5
NO_HEAD = (
    "method = 'fastvid' reads the vision encoder's attention-pooling head (its per-frame global vector and probe "
    "attention), which this model does not have (vision_use_head False: its checkpoint carries no weights for it); "
    "use --method holitom, visionzip, global_topk or earlytom"
)


def holitom_tau(retain_ratio: float) -> float:
    """The scripts' static threshold: 0.65 for retain ratios up to 0.10, 0.80 above (0.15, 0.20, 0.25)."""
    return HOLITOM_TAU[0.10] if retain_ratio <= 0.10 else HOLITOM_TAU_DEFAULT


def has_method_outputs(chain: tuple[GraphSpec, ...], method: str) -> bool:
    """Whether the last graph of `chain` gives what `method` reads."""
    needed = METHOD_READS + (HEAD_READS if method == "fastvid" else ())
    return set(needed) <= set(chain[-1].outputs)


def method_select(method: str, retain_ratio: float, values: dict[str, torch.Tensor]) -> compress.SelectResult:
    """The compared `method` on the last graph's outputs `values` (tokens [N, T, D'], received, keys, head_scores,
    global) at `retain_ratio`, with the released scripts' parameters and the jitter drawn from a generator seeded
    with SEED -> the kept tokens [K, D'] with their (frame, index)."""
    tokens = values["tokens"]
    generator = torch.Generator(tokens.device).manual_seed(SEED)
    if method == "fastvid":
        picked = compress.fastvid(
            tokens, values["head_scores"], values["global"], retain_ratio=retain_ratio, generator=generator
        )
    elif method == "holitom":
        tau = holitom_tau(retain_ratio)
        picked = compress.holitom(tokens, values["received"], retain_ratio=retain_ratio, tau=tau, generator=generator)
    elif method == "visionzip":
        return compress.visionzip(tokens, values["received"], values["keys"], retain_ratio=retain_ratio)
    else:
        raise ValueError(f"method = {method!r} is none of the compared methods {', '.join(BASELINES)}")
    return compress.SelectResult(tokens=picked.tokens, frame=picked.frame, index=picked.index)


def most_method_tokens(method: str, retain_ratio: float, units: int, tokens_per_unit: int) -> int:
    """An upper bound of the visual tokens `method` keeps of B units of T tokens: FastVID at most B * int(T * r);
    VisionZip B * spatial_tokens(T, r); HoliTom r * B * T, plus up to one per frame (ceil per frame) and one per
    window (round), ceil(r * B * T) + 2 B."""
    if method == "fastvid":
        return units * int(tokens_per_unit * retain_ratio)
    if method == "visionzip":
        return units * compress.spatial_tokens(tokens_per_unit, retain_ratio)
    return math.ceil(retain_ratio * units * tokens_per_unit) + 2 * units


def original_positions(before: int, visual: VisualLayout, after: int, tokens_per_unit: int) -> torch.Tensor:
    """FastVID's position ids [1, S]: each kept token at its place in the uncompressed prompt (before + frame * T +
    index), the suffix and the text after it where they would be with all B * T tokens (RoPE gaps kept)."""
    suffix = visual.length - len(visual.frame)
    full = visual.units * tokens_per_unit
    kept = before + visual.frame.cpu() * tokens_per_unit + visual.index.cpu()
    return torch.cat([torch.arange(before), kept, torch.arange(before + full, before + full + suffix + after)])[None]
