"""LLaVA-OneVision (and LLaVA-Video, the same architecture) as a backbone (earlytom.models.backbone), built from
transformers' own modules:

    frames uint8 [B, H, W, 3] --processor--> pixels [B, 3, S, S]            resize, rescale, normalise
    pixels [B, 3, S, S] --embed--> hidden [B, L, D]                          SigLIP patch embedding
    hidden [N, L, D]    --run_layers(start, stop)--> hidden [N, L, D]       encoder layers [start, stop)
    hidden [N, L, D]    --received(i)--> attention [N, L]                   attention each token receives in layer i
    hidden [N, L, D], scores [N, L] --project--> tokens [N, T, D'], scores [N, T]
                                                   projector, 2x2 bilinear pooling (scores pooled alike)
    suffix() = image_newline [1, D'], appended once after the selected tokens of a video
    hidden [N, L, D]    --keys(i)--> keys [N, L, d]                         layer i's key states, mean over heads
    x [N, L, C]         --pool--> [N, T, C]                                 the projector's pooling alone
    hidden [N, L, D]    --head--> attention [N, L], global [N, D]           SigLIP's attention-pooling head (when
                                                                             the checkpoint has one: has_head)

n is the number of encoder layers the checkpoint's `vision_feature_layer` uses (-1: all of them); layers after it
are never run. The decoder is the Qwen2 language model, positions 0..S-1 (kept tokens keep theirs through the
inner merge). Nothing in transformers is edited or monkey-patched.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlavaOnevisionForConditionalGeneration

from earlytom.compress.config import default_merge_layers
from earlytom.models.backbone import Family, VisionDims, VisualLayout
from earlytom.video import resize_rgb

ALIASES = {  # short name -> Hugging Face id; each has a packaged config, configs/<alias>.json
    "llava-ov-0.5b": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
    "llava-ov-7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "llava-ov-72b": "llava-hf/llava-onevision-qwen2-72b-ov-hf",
    "llava-video-7b": "llava-hf/LLaVA-Video-7B-Qwen2-hf",
    "tiny": None,  # random weights only, for tests and demos (configs/tiny.json)
}

# LLaVA-OneVision's processor template (Qwen2 im_start/im_end turns, visual placeholders before the text).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# The stand-in byte-level tokenizer's special tokens, ids 256 ... in this order (matching configs/tiny.json).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>", "<image>", "<video>")
SIGLIP_NORMALIZE = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class LlavaProcessor:
    """How frames become pixels: resize to size x size, scale by rescale, then (x - mean) / std per channel."""

    size: int
    mean: tuple[float, float, float] = SIGLIP_NORMALIZE
    std: tuple[float, float, float] = SIGLIP_NORMALIZE
    rescale: float = 1 / 255
    frames_per_unit: ClassVar[int] = 1

    @property
    def frame_size(self) -> tuple[int, int]:
        return (self.size, self.size)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [B, H, W, 3] -> pixels [B, 3, S, S] float32: bicubic resize (antialiased; skipped when
        frames are already S x S, as decoding at frame_size gives them), rescale, normalise. One frame at a time is
        float at its own size."""
        mean = torch.tensor(self.mean, device=frames.device)[:, None, None]
        std = torch.tensor(self.std, device=frames.device)[:, None, None]
        out = torch.empty(frames.shape[0], 3, self.size, self.size, dtype=torch.float32, device=frames.device)
        for n, frame in enumerate(frames):
            out[n] = (resize_rgb(frame, self.size) * self.rescale - mean) / std
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "LlavaProcessor":
        return cls(size=fields["size"], mean=tuple(fields["mean"]), std=tuple(fields["std"]), rescale=fields["rescale"])


def processor(config, settings: dict | None) -> LlavaProcessor:
    """The checkpoint's resize and normalisation (its preprocessor config `settings`); SigLIP's without one."""
    image_size = config.vision_config.image_size
    if settings is None:
        return LlavaProcessor(size=image_size)
    size = settings.get("size", {})
    size = size.get("height", size.get("shortest_edge", image_size)) if isinstance(size, dict) else size
    return LlavaProcessor(
        size=int(size),
        mean=tuple(settings.get("image_mean", SIGLIP_NORMALIZE)),
        std=tuple(settings.get("image_std", SIGLIP_NORMALIZE)),
        rescale=float(settings.get("rescale_factor", 1 / 255)),
    )


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


def encoder_layers(config) -> int:
    return used_layers(config.vision_config.num_hidden_layers, config.vision_feature_layer)


def dims(config, proc: LlavaProcessor) -> VisionDims:
    vision = config.vision_config
    grid = vision.image_size // vision.patch_size
    return VisionDims(
        family=config.model_type,
        frame_size=proc.frame_size,
        frames_per_unit=1,
        unit_shape=(3, vision.image_size, vision.image_size),
        patch_tokens=grid * grid,
        hidden=vision.hidden_size,
        heads=vision.num_attention_heads,
        encoder_layers=encoder_layers(config),
        tokens_per_frame=pooled_tokens(grid),
        llm_hidden=config.text_config.hidden_size,
        suffix_tokens=1,
    )


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


def key_states(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Key states of `layer` (a SigLIP encoder layer) averaged over heads, VisionZip's `metric`: hidden [N, L, D]
    entering the layer -> [N, L, d] (d the head size)."""
    attn = layer.self_attn
    N, L, _ = hidden.shape
    keys = attn.k_proj(layer.layer_norm1(hidden)).view(N, L, attn.num_heads, attn.head_dim)
    return keys.mean(dim=2)


def pooling_head(vision: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SigLIP's attention-pooling head (the MAP probe) on post_layernorm(hidden [N, L, D]) -> (the probe's attention
    over the L patches, head-averaged [N, L] float32; the head's output [N, D], one global vector per unit)."""
    head = vision.head
    x = vision.post_layernorm(hidden)
    probe = head.probe.expand(x.shape[0], 1, -1)
    pooled, weights = head.attention(probe, x, x, need_weights=True)  # [N, 1, D], [N, 1, L]
    pooled = pooled + head.mlp(head.layernorm(pooled))
    return weights[:, 0].float(), pooled[:, 0]


class LlavaOnevisionBackbone(nn.Module):
    """The encoder stages of one `LlavaOnevisionForConditionalGeneration`."""

    def __init__(self, model: LlavaOnevisionForConditionalGeneration, proc: LlavaProcessor) -> None:
        super().__init__()
        self.model = model
        self.dims = dims(model.config, proc)
        vision = model.model.vision_tower  # SiglipVisionModel: embeddings, encoder.layers
        self.embeddings = vision.embeddings
        self.layers = vision.encoder.layers[: self.dims.encoder_layers]
        self.drop_first_token = model.config.vision_feature_select_strategy == "default"
        # SigLIP's attention-pooling head: llava-hf checkpoints set vision_use_head False and carry no weights for it
        self.has_head = hasattr(vision, "head")
        self.vision = vision
        self.eval()

    def suffix(self) -> torch.Tensor:
        """image_newline [1, D'], appended once after all visual tokens of a video."""
        return self.model.model.image_newline[None]

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

    def keys(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, L, D] entering layer `index` -> its key states, mean over heads [N, L, d]."""
        return key_states(self.layers[index], hidden)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, L, C] per patch -> [N, T, C]: the patches `project` keeps, pooled as it pools them."""
        return self.model.model.apply_pooling(x[:, 1:] if self.drop_first_token else x)

    def head(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [N, L, D] leaving the last layer -> (the pooling head's attention [N, L], its output [N, D]);
        ValueError when the checkpoint has no head (has_head False)."""
        if not self.has_head:
            raise ValueError(
                "this checkpoint has no SigLIP attention-pooling head (vision_use_head is False: llava-hf LLaVA-OV "
                "checkpoints carry no weights for it), so FastVID's per-frame global vector and probe attention "
                "do not exist; use --method holitom, visionzip, global_topk or earlytom"
            )
        return pooling_head(self.vision, hidden)

    def project(self, hidden: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [N, L, D] leaving the last layer, scores [N, L] -> tokens [N, T, D'], scores [N, T]."""
        if self.drop_first_token:
            hidden, scores = hidden[:, 1:], scores[:, 1:]
        pool = self.model.model.apply_pooling
        tokens = pool(self.model.model.multi_modal_projector(hidden))  # [N, T, D']
        return tokens, pool(scores[..., None].float())[..., 0]


@dataclass(frozen=True)
class LlavaDecoderSide:
    """The Qwen2 decoder's view of a prompt: 1-D positions 0..S-1."""

    def positions(self, before: int, visual: VisualLayout, after: int) -> torch.Tensor:
        """-> position ids [1, S], S = before + the visual embeddings (suffix included) + after."""
        return torch.arange(before + visual.length + after)[None]


def save_decoder(model: LlavaOnevisionForConditionalGeneration, directory: Path) -> None:
    """The Qwen2 decoder as a standard transformers checkpoint (safetensors), the format TensorRT-LLM's
    converters read too."""
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(model.config.text_config)
    lm.model, lm.lm_head = model.model.language_model, model.lm_head  # shared, not copied
    lm.save_pretrained(directory)


def load_decoder(directory: Path, dtype: torch.dtype):
    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)


FAMILY = Family(
    model_type="llava_onevision",
    model_class=LlavaOnevisionForConditionalGeneration,
    aliases=ALIASES,
    chat_template=CHAT_TEMPLATE,
    placeholder="<video>",
    special_tokens=SPECIAL_TOKENS,
    eos_token="<|im_end|>",
    processor=processor,
    processor_from_dict=LlavaProcessor.from_dict,
    dims=dims,
    backbone=LlavaOnevisionBackbone,
    decoder_side=lambda config, dims: LlavaDecoderSide(),
    default_merge_layers=lambda variant, config: default_merge_layers(variant, encoder_layers(config)),
    valid_merge_layers=lambda config: None,  # any layer of the encoder
    save_decoder=save_decoder,
    load_decoder=load_decoder,
)
