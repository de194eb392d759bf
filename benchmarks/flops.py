"""Analytic FLOPs of each TTFT stage of a LLaVA-OneVision-shaped model (a ViT of full-attention layers, a 2-layer
projector), from its config's shapes (a multiply-add counts 2).

vision_<stretch>: each graph of the encoder chain over the frames it sees (the head adds the patch
                  embedding, the tail the projector; pooling is negligible), plus the attention-score passes
prefill:          the decoder over S = text + K + 1 tokens (causal attention), one logits row; with the inner
                  merge, layers from k_in on see the S' tokens left
compared methods: the whole encoder over every frame (nothing merged), the last layer's attention pass over every
                  frame (its keys are VisionZip's), SigLIP's pooling head per frame for FastVID; their token
                  selection is negligible; HoliTom's in-LLM merge is prefill_flops with inner_layer
"""


def encoder_layer(tokens: int, hidden: int, mlp: int) -> int:
    """One ViT layer over one frame of `tokens`: q, k, v, o projections, QK^T and AV, the MLP."""
    return 2 * tokens * (4 * hidden * hidden + 2 * hidden * mlp) + 4 * tokens * tokens * hidden


def vision_flops(config, stretches: list[tuple[str, int, int]], *, score_frames: list[int]) -> dict[str, int]:
    """stretches: (graph name, frames it sees, encoder layers it runs) in chain order; score_frames: the frames
    of each attention-received pass (q, k and QK^T once more) -> FLOPs per graph name (scores to the tail)."""
    v, text = config.vision_config, config.text_config
    L = (v.image_size // v.patch_size) ** 2
    per_layer = encoder_layer(L, v.hidden_size, v.intermediate_size)
    patch = 2 * L * 3 * v.patch_size**2 * v.hidden_size
    score = 2 * L * 2 * v.hidden_size**2 + 2 * L * L * v.hidden_size
    projector = 2 * L * (v.hidden_size * text.hidden_size + text.hidden_size**2)
    flops = {name: frames * layers * per_layer for name, frames, layers in stretches}
    (head, first_frames, _), (tail, last_frames, _) = stretches[0], stretches[-1]
    flops[head] += first_frames * patch
    flops[tail] += last_frames * projector + sum(score_frames) * score
    return flops


def prefill_flops(config, sequence: int, *, inner_layer: int | None = None, kept: int | None = None) -> int:
    """The decoder over `sequence` tokens; with `inner_layer`, layers [inner_layer, n) see `kept` tokens."""
    t = config.text_config
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
