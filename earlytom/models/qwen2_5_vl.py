"""Qwen2.5-VL as the stages of DESIGN.md section 8, built from transformers' own modules.

The unit is a temporal slice: the Conv3d patch embedding fuses 2 frames into h x w patches (h, w: frame
height and width / 14). Every attention of the ViT stays inside one slice (window blocks inside 112-px
windows, full blocks over the slice), so B slices are a batch of B independent sequences and a merge of
slices leaves a valid video of N slices.

    frames uint8 [2N, H, W, 3] --QwenProcessor--> pixels [N, L, 3*2*14*14]     L = h*w, merge-group order
    pixels [N, L, C']    --embed--> hidden [N, L, D]                          patch embed, window order
    hidden [N, L, D]     --run_layers(start, stop)--> hidden [N, L, D]        ViT blocks [start, stop)
    hidden [N, L, D]     --received(i)--> attention [N, L]                    full-attention block i only
    hidden [N, L, D], scores [N, L] --project--> tokens [N, T, D'], scores [N, T]
                                                   merger, back to raster order; T = (h/2)(w/2)
    visual [K, D'] spliced between the prompt's text embeddings (no suffix), with `positions` (M-RoPE)

"Window order" is the order the ViT works in: merger groups (2x2 patches) permuted window by window
(transformers' window index); "raster order" is row-major over the (h/2) x (w/2) merger grid, the order of
`get_video_features`. Nothing in transformers is edited or monkey-patched.
"""

import json
import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.utils.generic import get_max_seqlen
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

from earlytom.models.registry import CHAT_TEMPLATE_FILES, PREPROCESSOR_FILES, ModelNotFound, checkpoint_file
from earlytom.models.tokenizer import byte_level_tokenizer

FAMILY = "qwen2_5_vl"
ALIASES = {
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2.5-vl-72b": "Qwen/Qwen2.5-VL-72B-Instruct",
}
TINY = "qwen-tiny"

# What the chat template renders for one video; its <|video_pad|> becomes one token per visual token.
VIDEO_PAD = "<|video_pad|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"

# Qwen2.5-VL's chat template (its chat_template.json), for checkpoints without one (tiny, random-init aliases).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Added to the byte-level stand-in tokenizer after its ids 0-261: 262-265, as configs/qwen-tiny.json expects.
STAND_IN_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", VIDEO_PAD]

# transformers' Qwen2VLVideoProcessor defaults (OpenAI CLIP normalisation; 128 to 768 merged tokens per frame).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
EAGER_MULTIPLE = 28  # patch 14 x merge 2: the eager path's frame sides
ENGINE_MULTIPLE = 112  # the ViT's window: engines need every window full (static attention shapes)


def smart_resize(
    height: int,
    width: int,
    factor: int = EAGER_MULTIPLE,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
) -> tuple[int, int]:
    """Qwen's resize rule (transformers' qwen2_vl `smart_resize`, whose modules import torchvision, which does
    not load beside the CPU torch build here): both sides multiples of `factor`, the area within [min_pixels,
    max_pixels], the aspect ratio kept as closely as possible."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"frame {height} x {width}: the aspect ratio must be below 200")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def nearest_multiples(value: int, multiple: int) -> tuple[int, ...]:
    """The multiples of `multiple` just below and above `value` (one if they coincide; never below `multiple`)."""
    low = max(multiple, value // multiple * multiple)
    high = max(multiple, -(-value // multiple) * multiple)
    return (low,) if low == high else (low, high)


def check_resolution(height: int, width: int, for_engine: bool, *, factor: int = EAGER_MULTIPLE) -> tuple[int, int]:
    """(height, width) if valid: each side a positive multiple of `factor` px (the eager path), or of 112 px for an
    engine (every ViT window full). Otherwise ValueError naming the nearest valid sizes."""
    multiple = ENGINE_MULTIPLE if for_engine else factor
    sides = {"height": height, "width": width}
    bad = {name: side for name, side in sides.items() if not isinstance(side, int) or side <= 0 or side % multiple}
    if not bad:
        return height, width
    where = "an engine" if for_engine else "Qwen2.5-VL's ViT"
    nearest = "; ".join(
        f"{name} {side} -> {' or '.join(map(str, nearest_multiples(int(side), multiple)))}"
        for name, side in bad.items()
        if isinstance(side, int | float)
    )
    raise ValueError(
        f"resolution {height} x {width}: {where} needs each side a positive multiple of {multiple} px; "
        f"nearest valid: {nearest or 'a positive integer'}"
    )


@dataclass(frozen=True)
class QwenProcessor:
    """Decoded frames -> pixel slices, as transformers' Qwen2VLVideoProcessor does after its resize (rescale and
    normalise fused as there, then its patch layout), at one frame size. Saved as JSON in engine directories."""

    frame_size: tuple[int, int]  # (height, width) px, multiples of patch_size * merge_size
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    rescale: float = 1 / 255
    min_pixels: int = VIDEO_MIN_PIXELS  # Qwen's resize rule for the eager path's dynamic sizes
    max_pixels: int = VIDEO_MAX_PIXELS

    def __post_init__(self) -> None:
        object.__setattr__(self, "frame_size", tuple(self.frame_size))
        check_resolution(*self.frame_size, for_engine=False, factor=self.patch_size * self.merge_size)

    @property
    def frames_per_unit(self) -> int:
        return self.temporal_patch_size

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w): patches per slice along height and width."""
        return self.frame_size[0] // self.patch_size, self.frame_size[1] // self.patch_size

    @property
    def unit_shape(self) -> tuple[int, int]:
        """(L, C'): patches per slice and values per patch."""
        return self.grid[0] * self.grid[1], 3 * self.temporal_patch_size * self.patch_size**2

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """The frame size Qwen's rule picks for a video of height x width (the eager path's dynamic size)."""
        return smart_resize(height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [b, H, W, 3] at frame_size, b even -> pixels [b / 2, h * w, 3 * 2 * p * p] float32."""
        if frames.dim() != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 [b, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        if tuple(frames.shape[1:3]) != self.frame_size:
            raise ValueError(
                f"frames are {frames.shape[1]} x {frames.shape[2]}, this processor takes {self.frame_size[0]} x "
                f"{self.frame_size[1]}: resize them first (size_for gives Qwen's own choice)"
            )
        b, tp = frames.shape[0], self.temporal_patch_size
        if b < tp:
            raise ValueError(f"{b} frames: Qwen2.5-VL fuses {tp} frames into one slice; a clip needs at least {tp}")
        if b % tp:
            raise ValueError(
                f"{b} frames: Qwen2.5-VL fuses {tp} frames into one slice, so the frame count must be a multiple "
                f"of {tp}; sample {b // tp * tp} or {(b // tp + 1) * tp} frames"
            )
        mean = torch.tensor(self.mean, device=frames.device) * (1.0 / self.rescale)
        std = torch.tensor(self.std, device=frames.device) * (1.0 / self.rescale)
        x = (frames.permute(0, 3, 1, 2).float() - mean[:, None, None]) / std[:, None, None]  # [b, 3, H, W]
        p, m, (h, w) = self.patch_size, self.merge_size, self.grid
        x = x.reshape(b // tp, tp, 3, h // m, m, p, w // m, m, p)
        # (slice, merged row, merged col, row in group, col in group, channel, frame, patch row, patch col)
        return x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(b // tp, *self.unit_shape)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "QwenProcessor":
        tuples = {key: tuple(fields[key]) for key in ("frame_size", "mean", "std")}
        return cls(**{**fields, **tuples})

    @classmethod
    def from_checkpoint(
        cls, config: Qwen2_5_VLConfig, preprocessor_config: dict | None, frame_size: tuple[int, int]
    ) -> "QwenProcessor":
        """The checkpoint's normalisation and resize bounds (its (video_)preprocessor_config.json; None: the video
        processor's defaults) with the model's patch sizes, at frame_size."""
        vision, settings = config.vision_config, preprocessor_config or {}
        sizes = {
            "patch_size": vision.patch_size,
            "temporal_patch_size": vision.temporal_patch_size,
            "merge_size": vision.spatial_merge_size,
        }
        for key, value in sizes.items():
            if settings.get(key, value) != value:
                raise ValueError(f"preprocessor config {key} = {settings[key]} disagrees with the model's {value}")
        size = settings.get("size") or {}
        return cls(
            frame_size=tuple(frame_size),
            **sizes,
            mean=tuple(settings.get("image_mean", CLIP_MEAN)),
            std=tuple(settings.get("image_std", CLIP_STD)),
            rescale=float(settings.get("rescale_factor", 1 / 255)),
            min_pixels=int(size.get("shortest_edge", settings.get("min_pixels", VIDEO_MIN_PIXELS))),
            max_pixels=int(size.get("longest_edge", settings.get("max_pixels", VIDEO_MAX_PIXELS))),
        )


def valid_merge_layers(vision_config) -> tuple[int, ...]:
    """Blocks after which slices may merge: the full-attention ones (their received attention covers the slice)
    except the last block."""
    return tuple(sorted(i for i in vision_config.fullatt_block_indexes if i < vision_config.depth - 1))


def default_merge_layers(vision_config, variant: str) -> tuple[int, ...]:
    """official: every valid merge layer ((7, 15, 23) for depth 32, DESIGN 8); paper: one merge, after the first
    full-attention block (7 of 32: layers 0..7 see all slices, as the package's paper default n // 4 - 1)."""
    valid = valid_merge_layers(vision_config)
    if not valid:
        raise ValueError(f"this ViT has no full-attention block before its last ({vision_config.depth - 1})")
    if variant == "paper":
        return valid[:1]
    if variant == "official":
        return valid
    raise ValueError(f"variant = {variant!r} is not one of official, paper")


class QwenBackbone(nn.Module):
    """The pipeline stages of one `Qwen2_5_VLForConditionalGeneration` at one frame size (height, width)."""

    def __init__(self, model: Qwen2_5_VLForConditionalGeneration, frame_size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.visual = model.model.visual  # Qwen2_5_VisionTransformerPretrainedModel
        vision = model.config.vision_config
        height, width = check_resolution(
            *frame_size, for_engine=False, factor=vision.patch_size * vision.spatial_merge_size
        )
        self.grid = (height // vision.patch_size, width // vision.patch_size)  # (h, w) patches
        self.group = vision.spatial_merge_size**2  # patches per merger group
        self.full_blocks = frozenset(vision.fullatt_block_indexes)
        one_slice = torch.tensor([[1, *self.grid]])
        window, _ = get_vision_window_index(one_slice, vision.spatial_merge_size, vision.window_size, vision.patch_size)
        self.register_buffer("window_order", window, persistent=False)  # [T]: raster group at each window slot
        self.register_buffer("raster_order", torch.argsort(window), persistent=False)  # [T]: its inverse
        h, w = self.grid
        self.dims = {
            "family": FAMILY,
            "frame_size": (height, width),
            "frames_per_unit": vision.temporal_patch_size,
            "unit_shape": (h * w, vision.in_channels * vision.temporal_patch_size * vision.patch_size**2),
            "patch_tokens": h * w,
            "hidden": vision.hidden_size,
            "heads": vision.num_heads,
            "encoder_layers": vision.depth,
            "tokens_per_unit": len(window),
            "llm_hidden": vision.out_hidden_size,
            "suffix_tokens": 0,
        }
        self.eval()

    def vit_inputs(self, slices: int) -> dict:
        """What the blocks take for a video of `slices` slices, computed as transformers' ViT forward does for
        video_grid_thw [[slices, h, w]]: {"full": cu_seqlens (one sequence per slice) and max_seqlen, "window":
        the same over the windows, "position_embeddings": rotary (cos, sin) [slices * L, head_dim] in window
        order}."""
        visual, vision = self.visual, self.visual.config
        weight = visual.patch_embed.proj.weight
        grid = torch.tensor([[slices, *self.grid]], device=weight.device)
        cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid, vision)
        window, cu_windows = get_vision_window_index(
            grid, vision.spatial_merge_size, vision.window_size, vision.patch_size
        )
        rotary = visual.rotary_pos_emb(weight, get_vision_position_ids(grid, vision.spatial_merge_size))
        length = slices * self.dims["patch_tokens"]
        return {
            "full": {"cu_seqlens": cu_seqlens, "max_seqlen": max_seqlen},
            "window": {"cu_seqlens": cu_windows, "max_seqlen": get_max_seqlen(cu_windows, vision)},
            "position_embeddings": tuple(visual.permute_input_for_window_attn(f, window, length) for f in rotary),
        }

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, L, C'] (QwenProcessor's layout) -> hidden [N, L, D] entering block 0, in window order."""
        n, length, values = pixels.shape
        if (length, values) != self.dims["unit_shape"]:
            raise ValueError(
                f"pixels [N, L, C'] = {list(pixels.shape)}: this backbone takes L, C' = "
                f"{self.dims['unit_shape']} (frame size {self.dims['frame_size']})"
            )
        hidden = self.visual.patch_embed(pixels.reshape(n * length, values))  # casts to the weights' dtype
        return hidden.view(n, -1, self.group, hidden.shape[-1])[:, self.window_order].reshape(n, length, -1)

    def run_layers(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """hidden [N, L, D] entering block `start` -> leaving block `stop - 1`, the N slices as one video."""
        n, length, dim = hidden.shape
        inputs = self.vit_inputs(n)
        x = hidden.reshape(n * length, dim)
        for index in range(start, stop):
            kind = "full" if index in self.full_blocks else "window"
            x = self.visual.blocks[index](x, position_embeddings=inputs["position_embeddings"], **inputs[kind])
        return x.view(n, length, dim)

    def received(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, L, D] entering full-attention block `index` -> the attention each token receives there,
        averaged over heads and queries within its slice [N, L] (window order, float32 softmax)."""
        if index not in self.full_blocks:
            raise ValueError(
                f"block {index} attends within 112-px windows, not over the slice: the received attention is "
                f"defined in the full-attention blocks {tuple(sorted(self.full_blocks))}"
            )
        block = self.visual.blocks[index]
        attn = block.attn
        n, length, _ = hidden.shape
        q, k, _ = attn.qkv(block.norm1(hidden)).reshape(n, length, 3, attn.num_heads, -1).unbind(2)  # [N, L, H, d]
        cos, sin = (f[:length] for f in self.vit_inputs(1)["position_embeddings"])
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        logits = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)).float() * attn.scaling  # [N, H, L(query), L(key)]
        return torch.softmax(logits, dim=-1).mean(dim=(1, 2))

    def project(self, hidden: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [N, L, D] leaving the last block, scores [N, L] (window order) -> tokens [N, T, D'] and scores
        [N, T] (the mean over each 2x2 merger group), both in raster order as get_video_features returns them."""
        n = hidden.shape[0]
        tokens = self.visual.merger(hidden).view(n, len(self.raster_order), -1)
        pooled = scores.float().view(n, -1, self.group).mean(dim=-1)
        return tokens[:, self.raster_order], pooled[:, self.raster_order]

    def suffix(self) -> torch.Tensor:
        """[0, D']: Qwen2.5-VL appends nothing after a video's visual tokens (<|vision_end|> is text)."""
        weight = self.visual.merger.mlp[-1].weight
        return weight.new_zeros(0, weight.shape[0])

    def valid_merge_layers(self) -> tuple[int, ...]:
        return valid_merge_layers(self.model.config.vision_config)

    def default_merge_layers(self, variant: str) -> tuple[int, ...]:
        return default_merge_layers(self.model.config.vision_config, variant)

    def check_merge_layers(self, layers: tuple[int, ...]) -> tuple[int, ...]:
        """`layers` if each is a valid merge layer; a window block (or the last block) -> ValueError naming them."""
        valid = self.valid_merge_layers()
        bad = [layer for layer in layers if layer not in valid]
        if bad:
            raise ValueError(
                f"merge layers {tuple(layers)}: {bad} not full-attention blocks before the last; Qwen2.5-VL merges "
                f"only after full-attention blocks (their attention covers the slice): choose from {valid}"
            )
        return tuple(layers)


def unit_times(config: Qwen2_5_VLConfig, units: int, seconds_per_unit: float) -> torch.Tensor:
    """[units] long: the temporal M-RoPE index of each slice relative to the video's start, as get_rope_index
    computes it: slice x tokens_per_second x seconds_per_unit (temporal_patch_size / fps) in float32, truncated."""
    interval = config.vision_config.tokens_per_second * torch.tensor(seconds_per_unit, dtype=torch.float32)
    return (torch.arange(units) * interval).long()


def text_after_start(config: Qwen2_5_VLConfig, before: int, grid: tuple[int, int, int]) -> int:
    """Where the text after the video starts, as transformers' get_rope_index (5.x) advances it: past the video's
    larger merged side (not past its temporal extent)."""
    merge = config.vision_config.spatial_merge_size
    return before + max(grid[1], grid[2]) // merge


def positions(
    config: Qwen2_5_VLConfig,
    *,
    before: int,
    grid: tuple[int, int, int],
    kept_frame: torch.Tensor,
    kept_index: torch.Tensor,
    source_first: torch.Tensor,
    after: int,
    seconds_per_unit: float,
) -> torch.Tensor:
    """M-RoPE position ids [3, before + K + after] (rows t, h, w) for `before` text tokens, K kept visual tokens,
    `after` text tokens. grid = (B, h, w): the uncompressed video (slices, patches per side). Kept token k lies in
    output slice kept_frame[k] at raster index kept_index[k] of its (h/2) x (w/2) grid; output slice f starts at
    source slice source_first[f] [N]. Each kept token keeps the position it has in the uncompressed video (a merged
    slice takes the time of its first source slice); the text after starts where the uncompressed video's does."""
    units, h, w = grid
    merge = config.vision_config.spatial_merge_size
    width, tokens = w // merge, (h // merge) * (w // merge)
    if len(source_first) and not 0 <= int(source_first.min()) <= int(source_first.max()) < units:
        raise ValueError(f"source_first must index the {units} source slices, got {source_first.tolist()}")
    if (
        len(kept_frame) != len(kept_index)
        or len(kept_frame)
        and (
            int(kept_frame.min()) < 0
            or int(kept_frame.max()) >= len(source_first)
            or int(kept_index.min()) < 0
            or int(kept_index.max()) >= tokens
        )
    ):
        raise ValueError(
            f"kept_frame / kept_index must pair output slices in [0, {len(source_first)}) with token indices in "
            f"[0, {tokens}), got {len(kept_frame)} / {len(kept_index)} values"
        )
    time = unit_times(config, units, seconds_per_unit)[source_first.cpu()[kept_frame.cpu()]]
    index = kept_index.cpu()
    visual = torch.stack([time, index // width, index % width]) + before
    start = text_after_start(config, before, grid)
    text = torch.cat([torch.arange(before), torch.arange(start, start + after)])
    return torch.cat([text[:before].expand(3, -1), visual, text[before:].expand(3, -1)], dim=1)


def decode_start(
    config: Qwen2_5_VLConfig, *, before: int, grid: tuple[int, int, int], after: int, seconds_per_unit: float
) -> int:
    """The position (all three rows) of the first token fed back after prefill; the n-th next is this + n. As
    generate's rope_deltas give it for the uncompressed prompt: its largest position id + 1."""
    units, h, w = grid
    merge = config.vision_config.spatial_merge_size
    video_end = before + max(int(unit_times(config, units, seconds_per_unit)[-1]), h // merge - 1, w // merge - 1)
    text_end = text_after_start(config, before, grid) + after - 1
    return max(video_end, text_end) + 1


@dataclass
class QwenLoaded:
    name: str  # what the caller asked for
    source: str  # HF id or directory the weights (or, with random_init, the config) came from
    model: Qwen2_5_VLForConditionalGeneration
    tokenizer: object  # a transformers tokenizer
    chat_template: str
    preprocessor_config: dict | None  # the checkpoint's (video_)preprocessor_config.json, for QwenProcessor
    random_init: bool
    notes: list[str]  # what the user should know (random weights, stand-in tokenizer)


def packaged_config(name: str) -> Qwen2_5_VLConfig:
    """The architecture of an alias (published config.json numbers) or of `qwen-tiny`, in earlytom/models/configs/."""
    text = resources.files("earlytom.models").joinpath("configs", f"{name}.json").read_text()
    return Qwen2_5_VLConfig.from_dict(json.loads(text))


def stand_in_tokenizer():
    """The byte-level tokenizer with Qwen2.5-VL's vision tokens (ids 262-265) and chat template."""
    tokenizer = byte_level_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": STAND_IN_TOKENS})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def read_chat_template(files: str | None, tokenizer) -> str:
    """The checkpoint's processor chat template, else its tokenizer's, else Qwen2.5-VL's own."""
    path = checkpoint_file(files, CHAT_TEMPLATE_FILES) if files else None
    if path is not None and path.suffix == ".jinja":
        return path.read_text()
    template = json.loads(path.read_text()).get("chat_template") if path is not None else None
    return template or getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE


def check_family(config, source: str) -> None:
    if config.model_type != FAMILY:
        raise ValueError(f"{source} is a {config.model_type!r} checkpoint, not Qwen2.5-VL ({FAMILY!r})")


def load(
    source: str | Qwen2_5_VLConfig, *, random_init: bool = False, dtype: torch.dtype = torch.float32, seed: int = 0
) -> QwenLoaded:
    """A Qwen2.5-VL model for inference (eval mode, `dtype`) with its tokenizer, chat template and preprocessor
    settings. `source`: an alias (qwen2.5-vl-3b|7b|72b), `qwen-tiny` (always random), a local checkpoint
    directory or a Hugging Face id (weights from the directory or the HF cache), or a config (random weights).
    `random_init` builds the exact architecture with random weights: honest for latency, never for accuracy."""
    notes = []
    if isinstance(source, Qwen2_5_VLConfig):
        name, origin, config, files, random_init = "config", "config", source, None, True
    elif source in ALIASES or source == TINY:
        random_init = random_init or source == TINY
        name, origin = source, ALIASES.get(source, TINY)
        config = packaged_config(source) if random_init else None
        files = None if random_init else origin  # a packaged architecture has no checkpoint files
    else:
        name = source
        origin = files = str(Path(source).resolve()) if Path(source).is_dir() else source
        config = None
    try:
        config = config or AutoConfig.from_pretrained(origin)
        check_family(config, origin)
        if random_init:
            torch.manual_seed(seed)
            model = Qwen2_5_VLForConditionalGeneration(config)
            notes.append(f"{name}: random weights (--random-init): timings are real, answers are noise")
        else:
            model = Qwen2_5_VLForConditionalGeneration.from_pretrained(origin, dtype=dtype, attn_implementation="sdpa")
    except OSError as error:
        raise ModelNotFound(
            f"cannot load {name!r} ({origin}): not a checkpoint directory and not in the Hugging Face cache, and it "
            f"could not be downloaded ({str(error).splitlines()[0]}). Download it on a connected machine "
            "(huggingface-cli download ...), pass a local directory, or use --random-init for latency work"
        ) from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(files) if files else None
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is None:
        tokenizer = stand_in_tokenizer()
        notes.append(f"{name}: no tokenizer in the checkpoint; using the built-in byte-level tokenizer")
    path = checkpoint_file(files, PREPROCESSOR_FILES) if files else None
    return QwenLoaded(
        name=name,
        source=origin,
        model=model.to(dtype).eval(),
        tokenizer=tokenizer,
        chat_template=read_chat_template(files, tokenizer),
        preprocessor_config=json.loads(path.read_text()) if path is not None else None,
        random_init=random_init,
        notes=notes,
    )
