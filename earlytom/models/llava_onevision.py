"""LLaVA-OneVision as the stages of DESIGN.md section 1, built from transformers' own modules.

    pixels [B, 3, H, W] --embed--> hidden [B, L, D]                      patch embedding
    hidden [N, L, D]    --run_layers(start, stop)--> hidden [N, L, D]   encoder layers [start, stop)
    hidden [N, L, D]    --received(i)--> attention [N, L]               attention each token receives in layer i
    hidden [N, L, D], scores [N, L] --project--> tokens [N, T, D'], scores [N, T]
                                                   projector, 2x2 bilinear pooling (scores pooled alike)
    visual [K + 1, D'] (selected tokens + image_newline), spliced between the prompt's text embeddings for
    the Qwen2 decoder (earlytom.runtime.decoder)

`Stretch` composes them into one graph of the encoder chain (earlytom.engine.layout): the eager backend runs
it and the exporter traces it. n is the number of encoder layers the checkpoint's `vision_feature_layer` uses
(-1: all of them); layers after it are never run. Nothing in transformers is edited or monkey-patched.
"""

import torch
from torch import nn
from transformers import LlavaOnevisionForConditionalGeneration

from earlytom.engine.layout import GraphSpec


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


def pooled_tokens(grid: int) -> int:
    """T: tokens per frame after LLaVA-OV's 2x2 bilinear pooling of a grid x grid patch map (27 -> 14x14)."""
    return ((grid + 1) // 2) ** 2


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
    """The pipeline stages of one `LlavaOnevisionForConditionalGeneration`."""

    def __init__(self, model: LlavaOnevisionForConditionalGeneration) -> None:
        super().__init__()
        self.model = model
        config = model.config
        vision = model.model.vision_tower  # SiglipVisionModel: embeddings, encoder.layers
        self.num_layers = used_layers(len(vision.encoder.layers), config.vision_feature_layer)
        self.embeddings = vision.embeddings
        self.layers = vision.encoder.layers[: self.num_layers]
        self.drop_first_token = config.vision_feature_select_strategy == "default"
        self.grid = config.vision_config.image_size // config.vision_config.patch_size
        self.tokens_per_frame = pooled_tokens(self.grid)
        self.eval()

    @property
    def image_newline(self) -> torch.Tensor:
        """[D'] appended once after all visual tokens of a video."""
        return self.model.model.image_newline

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] -> hidden [B, L, D] entering layer 0."""
        weight = self.embeddings.patch_embedding.weight
        return self.embeddings(pixels.to(device=weight.device, dtype=weight.dtype))

    def run_layers(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """hidden [N, L, D] entering layer `start` -> leaving layer `stop - 1`."""
        for layer in self.layers[start:stop]:
            hidden = layer(hidden, attention_mask=None)
        return hidden

    def received(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, L, D] entering layer `index` -> the attention each token receives there [N, L] (fp32)."""
        return attention_received(self.layers[index], hidden)

    def project(self, hidden: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [N, L, D] leaving the last layer, scores [N, L] -> tokens [N, T, D'], scores [N, T]."""
        if self.drop_first_token:
            hidden, scores = hidden[:, 1:], scores[:, 1:]
        pool = self.model.model.apply_pooling
        tokens = pool(self.model.model.multi_modal_projector(hidden))  # [N, T, D']
        return tokens, pool(scores[..., None].float())[..., 0]


class Stretch(nn.Module):
    """One graph of the encoder chain (`spec`), computed with the adapter's modules: the eager backend runs it,
    the exporter traces it. Inputs and outputs follow `spec.inputs` / `spec.outputs` in order."""

    def __init__(self, adapter: LlavaOnevisionAdapter, spec: GraphSpec) -> None:
        super().__init__()
        self.adapter, self.spec = adapter, spec

    def with_received(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers [start, stop) -> (hidden leaving them, attention received in layer stop - 1)."""
        a, last = self.adapter, self.spec.stop - 1
        hidden = a.run_layers(hidden, self.spec.start, last)
        return a.run_layers(hidden, last, last + 1), a.received(last, hidden)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a, spec = self.adapter, self.spec
        hidden = a.embed(inputs[0]) if spec.inputs[0] == "pixels" else inputs[0]
        if spec.takes_attention:  # official tail: the last merge layer's merged attention is the score
            return a.project(a.run_layers(hidden, spec.start, spec.stop), inputs[1])
        if spec.final:  # paper tail: the attention received in the last layer is the score
            return a.project(*self.with_received(hidden))
        if spec.gives_attention:
            return self.with_received(hidden)
        return (a.run_layers(hidden, spec.start, spec.stop),)
