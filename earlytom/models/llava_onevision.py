"""LLaVA-OneVision as the separate calls of DESIGN.md section 1, built from transformers' own modules.

    pixels [B, 3, H, W] --encode_head--> hidden [B, L, D]      patch embedding + encoder layers [0, k)
    hidden [N, L, D]    --encode_tail--> tokens [N, T, D'],     layers [k, n), projector, 2x2 bilinear pooling,
                                         scores [N, T]          attention received in layer n-1, pooled alike
    visual [K + 1, D'] (selected tokens + image_newline), spliced between the prompt's text embeddings for
    the Qwen2 decoder (earlytom.runtime.decoder)

n is the number of encoder layers the checkpoint's `vision_feature_layer` actually uses (-1: all of them);
layers after it are never run. Nothing in transformers is edited or monkey-patched.
"""

import torch
from torch import nn
from transformers import LlavaOnevisionForConditionalGeneration


def used_layers(num_layers: int, vision_feature_layer: int) -> int:
    """Encoder layers whose output is the feature: hidden_states[i] is the output of i layers (0: embeddings)."""
    if not isinstance(vision_feature_layer, int):
        raise ValueError(
            f"vision_feature_layer = {vision_feature_layer}: only a single feature layer is supported "
            "(LLaVA-OneVision checkpoints use -1)"
        )
    index = vision_feature_layer if vision_feature_layer >= 0 else num_layers + 1 + vision_feature_layer
    if not 1 <= index <= num_layers:
        raise ValueError(f"vision_feature_layer = {vision_feature_layer} selects no encoder layer of {num_layers}")
    return index


def default_merge_layer(num_used: int) -> int:
    """k = n // 4: layer 6 of LLaVA-OV's 26 (the early layer of the paper's Figure 5), 1 for the tiny model."""
    return max(1, num_used // 4)


def attention_received(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Attention each token receives in `layer` (a SigLIP encoder layer), averaged over heads and queries.

    hidden: [N, L, D] entering the layer -> [N, L] float32. Uses the layer's own norm and q/k projections;
    the softmax runs in float32.
    """
    attn = layer.self_attn
    x = layer.layer_norm1(hidden)
    N, L, _ = x.shape
    q = attn.q_proj(x).view(N, L, attn.num_heads, attn.head_dim).transpose(1, 2)  # [N, H, L, d]
    k = attn.k_proj(x).view(N, L, attn.num_heads, attn.head_dim).transpose(1, 2)  # [N, H, L, d]
    probs = torch.softmax((q @ k.transpose(-1, -2)).float() * attn.scale, dim=-1)  # [N, H, L(query), L(key)]
    return probs.mean(dim=(1, 2))


class LlavaOnevisionAdapter(nn.Module):
    """The pipeline stages of one `LlavaOnevisionForConditionalGeneration`, split at merge layer k."""

    def __init__(self, model: LlavaOnevisionForConditionalGeneration, merge_layer: int | None = None) -> None:
        super().__init__()
        self.model = model
        config = model.config
        vision = model.model.vision_tower  # SiglipVisionModel: embeddings, encoder.layers
        self.num_layers = used_layers(len(vision.encoder.layers), config.vision_feature_layer)
        k = default_merge_layer(self.num_layers) if merge_layer is None else merge_layer
        if not 1 <= k <= self.num_layers - 1:
            raise ValueError(
                f"merge layer = {k} is outside [1, {self.num_layers - 1}]: this encoder uses {self.num_layers} "
                "layers and FrameMerge must have at least one layer before and after it"
            )
        self.merge_layer = k
        self.embeddings = vision.embeddings
        self.head_layers = vision.encoder.layers[:k]
        self.tail_layers = vision.encoder.layers[k : self.num_layers]
        self.drop_first_token = config.vision_feature_select_strategy == "default"
        self.grid = config.vision_config.image_size // config.vision_config.patch_size
        self.tokens_per_frame = ((self.grid + 1) // 2) ** 2
        self.eval()

    @property
    def image_newline(self) -> torch.Tensor:
        """[D'] appended once after all visual tokens of a video."""
        return self.model.model.image_newline

    def encode_head(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] -> hidden [B, L, D] entering layer k."""
        weight = self.embeddings.patch_embedding.weight
        hidden = self.embeddings(pixels.to(device=weight.device, dtype=weight.dtype))
        for layer in self.head_layers:
            hidden = layer(hidden, attention_mask=None)
        return hidden

    def encode_tail(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [N, L, D] entering layer k -> tokens [N, T, D'], scores [N, T] (attention received in layer n-1)."""
        for layer in self.tail_layers[:-1]:
            hidden = layer(hidden, attention_mask=None)
        scores = attention_received(self.tail_layers[-1], hidden)  # [N, L]
        hidden = self.tail_layers[-1](hidden, attention_mask=None)
        if self.drop_first_token:
            hidden, scores = hidden[:, 1:], scores[:, 1:]
        pool = self.model.model.apply_pooling
        tokens = pool(self.model.model.multi_modal_projector(hidden))  # [N, T, D']
        scores = pool(scores[..., None])[..., 0]  # [N, T]
        return tokens, scores
