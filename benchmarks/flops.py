"""Analytic FLOPs of each TTFT stage of any registered model family, from its config's shapes and its VisionDims
(a multiply-add counts 2).

vision_<stretch>: each graph of the encoder chain over the units it sees (frames; Qwen2.5-VL: temporal slices of 2
                  frames), the head adding the patch embedding, the tail the projector (LLaVA-OneVision: the 2-layer
                  projector on every patch, pooling negligible; Qwen2.5-VL: the 2x2 merger on the merged tokens),
                  plus the attention-score passes. Encoder layers attend over the unit (full attention) or, in
                  Qwen2.5-VL's window blocks, inside 112-px windows; a gated MLP (Qwen2.5-VL) has 3 matrices.
prefill:          the decoder over S = text + K (+ suffix) + 1 tokens (causal attention), one logits row; with the
                  inner merge, layers from k_in on see the S' tokens left
compared methods: the whole encoder over every frame (nothing merged), the last layer's attention pass over every
                  frame (its keys are VisionZip's), SigLIP's pooling head per frame for FastVID; their token
                  selection is negligible; HoliTom's in-LLM merge is prefill_flops with inner_layer
"""

from dataclasses import dataclass

from earlytom.models.backbone import VisionDims
from earlytom.models.registry import family_of


def encoder_layer(tokens: int, hidden: int, mlp: int, *, mlp_matrices: int = 2, attended: int | None = None) -> int:
    """One ViT layer over one unit of `tokens`: q, k, v, o projections, QK^T and AV, the MLP (`mlp_matrices` of
    hidden x mlp: 2, or 3 gated). `attended`: the sum over queries of the keys each sees (None: tokens^2, full
    attention)."""
    attended = tokens * tokens if attended is None else attended
    return 2 * tokens * (4 * hidden * hidden + mlp_matrices * hidden * mlp) + 4 * attended * hidden


def default_dims(config) -> VisionDims:
    """The vision dims of `config` at its family's default processor (LLaVA-OneVision: its one size; Qwen2.5-VL:
    448 x 448)."""
    family = family_of(config.model_type)
    return family.dims(config, family.processor(config, None))


def window_sides(patches: int, window: int) -> list[int]:
    """The window extents, in patches, along one side of `patches` split into windows of `window` (the last
    partial)."""
    return [min(window, patches - start) for start in range(0, patches, window)]


@dataclass(frozen=True)
class VisionShape:
    """Per-unit FLOPs of a vision encoder: `layers` (one per encoder layer), the patch embedding, the projector,
    one attention-score pass."""

    layers: tuple[int, ...]
    patch: int
    projector: int
    score: int


def vision_shape(config, dims: VisionDims) -> VisionShape:
    """The per-unit FLOPs of `config`'s encoder at `dims` (its frame size, L patches per unit, D, D')."""
    v, L, D, out = config.vision_config, dims.patch_tokens, dims.hidden, dims.llm_hidden
    channels = getattr(v, "in_channels", None) or v.num_channels
    pixels = channels * getattr(v, "temporal_patch_size", 1) * v.patch_size**2  # of one patch (Qwen: 2 frames)
    patch = 2 * L * pixels * D  # the patch embedding: one linear map of each patch's pixels
    score = 2 * L * 2 * D * D + 2 * L * L * D  # q and k once more, QK^T
    merge = getattr(v, "spatial_merge_size", None)
    if merge is None:  # full attention everywhere, a 2-matrix MLP, the projector on every patch
        layer = encoder_layer(L, D, v.intermediate_size)
        return VisionShape((layer,) * dims.encoder_layers, patch, 2 * L * (D * out + out * out), score)
    side = v.window_size // v.patch_size  # window blocks attend inside side x side patches
    h, w = (size // v.patch_size for size in dims.frame_size)
    windowed = sum(r * r for r in window_sides(h, side)) * sum(c * c for c in window_sides(w, side))
    full = set(v.fullatt_block_indexes)
    layers = tuple(
        encoder_layer(L, D, v.intermediate_size, mlp_matrices=3, attended=None if i in full else windowed)
        for i in range(dims.encoder_layers)
    )
    width = D * merge * merge  # the merger: merge x merge patches concatenated, then an MLP to D'
    return VisionShape(layers, patch, 2 * dims.tokens_per_frame * (width * width + width * out), score)


def vision_flops(
    config, stretches: list[tuple[str, int, int]], *, score_frames: list[int], dims: VisionDims | None = None
) -> dict[str, int]:
    """stretches: (graph name, units it sees, encoder layers it runs) in chain order, covering the encoder from
    layer 0; score_frames: the units of each attention-received pass (q, k and QK^T once more); dims: the vision
    dims (None: the family's default processor) -> FLOPs per graph name (scores to the tail)."""
    shape = vision_shape(config, default_dims(config) if dims is None else dims)
    flops, start = {}, 0
    for name, units, count in stretches:
        flops[name] = units * sum(shape.layers[start : start + count])
        start += count
    (head, first_units, _), (tail, last_units, _) = stretches[0], stretches[-1]
    flops[head] += first_units * shape.patch
    flops[tail] += last_units * shape.projector + sum(score_frames) * shape.score
    return flops


def prefill_flops(config, sequence: int, *, inner_layer: int | None = None, kept: int | None = None) -> int:
    """The decoder over `sequence` tokens; with `inner_layer`, layers [inner_layer, n) see `kept` tokens."""
    t = config.get_text_config()
    head_dim = t.hidden_size // t.num_attention_heads
    kv = t.num_key_value_heads * head_dim
    per_token_layer = 2 * (
        t.hidden_size * (2 * t.hidden_size + 2 * kv)  # q, o and k, v projections
        + 3 * t.hidden_size * t.intermediate_size  # gated MLP
    )

    def layers(count: int, tokens: int) -> int:
        return count * (tokens * per_token_layer + 2 * tokens * tokens * t.hidden_size)  # causal QK^T + AV

    n = t.num_hidden_layers
    if inner_layer is None:
        return layers(n, sequence) + 2 * t.hidden_size * t.vocab_size
    return layers(inner_layer, sequence) + layers(n - inner_layer, kept) + 2 * t.hidden_size * t.vocab_size


def pooling_head_flops(config) -> int:
    """SigLIP's attention-pooling head over one frame (FastVID's global vector): the probe's q projection, k and v
    of the L patches, one query's scores and weighted sum, the output projection and the MLP of one vector."""
    v = config.vision_config
    L, D = (v.image_size // v.patch_size) ** 2, v.hidden_size
    return 2 * D * D + 2 * L * 2 * D * D + 4 * L * D + 2 * D * D + 2 * 2 * D * v.intermediate_size


def method_vision_flops(config, frames: int, *, head: bool) -> int:
    """The compared methods' vision side over `frames` frames: every encoder layer, one attention-received pass
    (vision_flops with a single stretch), and the pooling head on each frame when `head` (FastVID)."""
    layers = config.vision_config.num_hidden_layers
    vision = sum(vision_flops(config, [("vision", frames, layers)], score_frames=[frames]).values())
    return vision + (frames * pooling_head_flops(config) if head else 0)
