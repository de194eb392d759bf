"""Analytic FLOPs of each TTFT stage of LLaVA-OneVision, from the shapes (a multiply-add counts 2).

vision_head: patch embedding + k encoder layers over B frames
vision_tail: n - k layers over N frames, the attention-score pass, projector (pooling is negligible)
prefill:     the decoder over S = text + K + 1 tokens (causal attention), one logits row
"""

from transformers import LlavaOnevisionConfig


def encoder_layer(tokens: int, hidden: int, mlp: int) -> int:
    """One ViT layer over one frame of `tokens`: q, k, v, o projections, QK^T and AV, the MLP."""
    return 2 * tokens * (4 * hidden * hidden + 2 * hidden * mlp) + 4 * tokens * tokens * hidden


def vision_flops(
    config: LlavaOnevisionConfig, *, frames_in: int, frames_after_merge: int, merge_layer: int, layers: int
) -> dict[str, int]:
    v, text = config.vision_config, config.text_config
    L = (v.image_size // v.patch_size) ** 2
    per_layer = encoder_layer(L, v.hidden_size, v.intermediate_size)
    patch = 2 * L * 3 * v.patch_size**2 * v.hidden_size
    scores = 2 * L * 2 * v.hidden_size**2 + 2 * L * L * v.hidden_size  # q, k and QK^T again
    projector = 2 * L * (v.hidden_size * text.hidden_size + text.hidden_size**2)
    return {
        "vision_head": frames_in * (patch + merge_layer * per_layer),
        "vision_tail": frames_after_merge * ((layers - merge_layer) * per_layer + scores + projector),
    }


def prefill_flops(config: LlavaOnevisionConfig, sequence: int) -> int:
    t = config.text_config
    head_dim = t.hidden_size // t.num_attention_heads
    kv = t.num_key_value_heads * head_dim
    per_token = (
        2
        * t.num_hidden_layers
        * (
            t.hidden_size * (2 * t.hidden_size + 2 * kv)  # q, o and k, v projections
            + 3 * t.hidden_size * t.intermediate_size  # gated MLP
        )
    )
    attention = 2 * t.num_hidden_layers * sequence * sequence * t.hidden_size  # causal QK^T + AV
    return sequence * per_token + attention + 2 * t.hidden_size * t.vocab_size
