"""Qwen2.5-VL as a backbone (earlytom.models.backbone, DESIGN.md section 8), built from transformers' own modules.

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
    visual [K, D'] spliced between the prompt's text embeddings (no suffix), at M-RoPE positions [3, 1, S]

"Window order" is the order the ViT works in: merger groups (2x2 patches) permuted window by window
(transformers' window index); "raster order" is row-major over the (h/2) x (w/2) merger grid, the order of
`get_video_features`. The blocks run batched over slices and windows (`QwenBackbone.block`): transformers' own
block forward loops in Python over the sequences of its packed batch, which an exported graph would freeze at
the export's slice count. Nothing in transformers is edited or monkey-patched.
"""

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from earlytom.models.backbone import Family, VisionDims, VisualLayout

ALIASES = {  # short name -> Hugging Face id; each has a packaged config, configs/<alias>.json
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2.5-vl-72b": "Qwen/Qwen2.5-VL-72B-Instruct",
    "qwen-tiny": None,  # random weights only, for tests and demos (configs/qwen-tiny.json)
}

# What the chat template renders for one video is <|vision_start|><|video_pad|><|vision_end|>: the prompt is split
# at <|video_pad|>, which stands for the visual tokens.
VIDEO_PAD = "<|video_pad|>"

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
# The stand-in byte-level tokenizer's special tokens, ids 256 ... in this order (matching configs/qwen-tiny.json).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<pad>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    VIDEO_PAD,
)

# transformers' Qwen2VLVideoProcessor defaults (OpenAI CLIP normalisation; 128 to 768 merged tokens per frame).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
EAGER_MULTIPLE = 28  # patch 14 x merge 2: the eager path's frame sides
ENGINE_MULTIPLE = 112  # the ViT's window: engines need every window full (static attention shapes)
DEFAULT_FRAME_SIZE = (448, 448)  # 32 x 32 patches, T = 256 (DESIGN 8); --resolution chooses another
DEFAULT_PARAMS = {"retain_ratio": 0.15}  # DESIGN 8: no released presets; Table 7's r for Qwen2.5-VL-7B
DEFAULT_FPS = 2.0  # the rate of sampled frames when the caller gives none (arrays, image folders)


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

    def resized(self, frame_size: tuple[int, int], *, for_engine: bool) -> "QwenProcessor":
        """This processor at another frame size (height, width): multiples of 28 px for the eager path, of 112 px
        for an engine (ValueError naming the nearest valid sizes)."""
        factor = self.patch_size * self.merge_size
        return replace(self, frame_size=check_resolution(*frame_size, for_engine=for_engine, factor=factor))

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


def processor(config: Qwen2_5_VLConfig, settings: dict | None, frame_size=DEFAULT_FRAME_SIZE) -> QwenProcessor:
    """The checkpoint's normalisation and resize bounds (its (video_)preprocessor_config.json `settings`; None: the
    video processor's defaults) with the model's patch sizes, at `frame_size` (448 x 448 unless given)."""
    vision, settings = config.vision_config, settings or {}
    sizes = {
        "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size,
        "merge_size": vision.spatial_merge_size,
    }
    for key, value in sizes.items():
        if settings.get(key, value) != value:
            raise ValueError(f"preprocessor config {key} = {settings[key]} disagrees with the model's {value}")
    size = settings.get("size") or {}
    return QwenProcessor(
        frame_size=tuple(frame_size),
        **sizes,
        mean=tuple(settings.get("image_mean", CLIP_MEAN)),
        std=tuple(settings.get("image_std", CLIP_STD)),
        rescale=float(settings.get("rescale_factor", 1 / 255)),
        min_pixels=int(size.get("shortest_edge", settings.get("min_pixels", VIDEO_MIN_PIXELS))),
        max_pixels=int(size.get("longest_edge", settings.get("max_pixels", VIDEO_MAX_PIXELS))),
    )


def dims(config: Qwen2_5_VLConfig, proc: QwenProcessor) -> VisionDims:
    vision = config.vision_config
    h, w = proc.frame_size[0] // vision.patch_size, proc.frame_size[1] // vision.patch_size
    merge = vision.spatial_merge_size
    return VisionDims(
        family=config.model_type,
        frame_size=proc.frame_size,
        frames_per_unit=vision.temporal_patch_size,
        unit_shape=(h * w, vision.in_channels * vision.temporal_patch_size * vision.patch_size**2),
        patch_tokens=h * w,
        hidden=vision.hidden_size,
        heads=vision.num_heads,
        encoder_layers=vision.depth,
        tokens_per_frame=(h // merge) * (w // merge),
        llm_hidden=vision.out_hidden_size,
        suffix_tokens=0,
    )


def valid_merge_layers(config: Qwen2_5_VLConfig) -> tuple[int, ...]:
    """Blocks after which slices may merge: the full-attention ones (their received attention covers the slice)
    except the last block."""
    vision = config.vision_config
    return tuple(sorted(i for i in vision.fullatt_block_indexes if i < vision.depth - 1))


def default_merge_layers(variant: str, config: Qwen2_5_VLConfig) -> tuple[int, ...]:
    """official: every valid merge layer ((7, 15, 23) for depth 32, DESIGN 8); paper: one merge, after the first
    full-attention block (7 of 32: layers 0..7 see all slices, as the package's paper default n // 4 - 1)."""
    valid = valid_merge_layers(config)
    if not valid:
        raise ValueError(f"this ViT has no full-attention block before its last ({config.vision_config.depth - 1})")
    if variant == "paper":
        return valid[:1]
    if variant == "official":
        return valid
    raise ValueError(f"variant = {variant!r} is not one of official, paper")


def window_layout(grid: tuple[int, int], vision) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of one slice of grid = (h, w) patches: (window_order [T], the raster merger group at each
    window-order slot; lengths [W], patches per window, window after window in window order)."""
    one_slice = torch.tensor([[1, *grid]])
    order, bounds = get_vision_window_index(one_slice, vision.spatial_merge_size, vision.window_size, vision.patch_size)
    return order, bounds.diff().long()


class QwenBackbone(nn.Module):
    """The encoder stages of one `Qwen2_5_VLForConditionalGeneration` at the processor's frame size."""

    def __init__(self, model: Qwen2_5_VLForConditionalGeneration, proc: QwenProcessor) -> None:
        super().__init__()
        self.model = model
        self.visual = model.model.visual  # Qwen2_5_VisionTransformerPretrainedModel
        vision = model.config.vision_config
        self.dims = dims(model.config, proc)
        grid = (proc.frame_size[0] // vision.patch_size, proc.frame_size[1] // vision.patch_size)
        self.group = vision.spatial_merge_size**2  # patches per merger group
        self.full_blocks = frozenset(vision.fullatt_block_indexes)
        weight = self.visual.patch_embed.proj.weight  # the tables are built on the CPU, kept beside the weights
        order, lengths = window_layout(grid, vision)
        self.window = (vision.window_size // vision.patch_size) ** 2  # P, patches of a full window
        self.partial = bool((lengths < self.window).any())
        tables = {"window_order": order, "raster_order": torch.argsort(order)}  # [T] each: the permutation, inverse
        if self.partial:  # pad every window to P patches; padded keys are masked, padded queries dropped
            slot = torch.arange(self.window)
            starts = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
            valid = slot < lengths[:, None]  # [W, P]
            tables["window_gather"] = torch.where(valid, starts[:, None] + slot, starts[:, None]).flatten()  # [W * P]
            tables["window_mask"] = valid[:, None, None]  # [W, 1, 1, P]
            tables["window_valid"] = valid.flatten().nonzero()[:, 0]  # [L]: the slots holding patches
        for name, table in tables.items():
            self.register_buffer(name, table.to(weight.device), persistent=False)
        position_ids = get_vision_position_ids(torch.tensor([[1, *grid]]), vision.spatial_merge_size)
        cos, sin = self.visual.rotary_pos_emb(weight, position_ids.to(weight.device))  # [L, d], raster group order
        self.register_buffer("rotary_cos", self.window_ordered(cos), persistent=False)
        self.register_buffer("rotary_sin", self.window_ordered(sin), persistent=False)
        self.eval()

    def window_ordered(self, x: torch.Tensor) -> torch.Tensor:
        """[..., L, C] in merge-group order -> window order (the groups permuted by window_order)."""
        grouped = x.unflatten(-2, (-1, self.group))
        return grouped[..., self.window_order, :, :].flatten(-3, -2)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, L, C'] (QwenProcessor's layout) -> hidden [N, L, D] entering block 0, in window order."""
        n, length, values = pixels.shape
        if (length, values) != self.dims.unit_shape:
            raise ValueError(
                f"pixels [N, L, C'] = {list(pixels.shape)}: this backbone takes L, C' = "
                f"{self.dims.unit_shape} (frame size {self.dims.frame_size})"
            )
        hidden = self.visual.patch_embed(pixels.reshape(n * length, values))  # casts to the weights' dtype
        return self.window_ordered(hidden.view(n, length, -1))

    def qkv(self, index: int, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Block `index`'s rotated queries and keys and its values for hidden [N, L, D]: each [N, L, H, d]."""
        block = self.visual.blocks[index]
        attn = block.attn
        n, length, _ = hidden.shape
        q, k, v = attn.qkv(block.norm1(hidden)).view(n, length, 3, attn.num_heads, -1).unbind(2)
        q, k = apply_rotary_pos_emb_vision(q, k, self.rotary_cos, self.rotary_sin)
        return q, k, v

    def windowed(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, H, d] in window order -> [N * W, H, P, d], one row per window (padded windows: P patches)."""
        if self.partial:
            x = x[:, self.window_gather]
        return x.reshape(-1, self.window, *x.shape[2:]).transpose(1, 2)

    def attention(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """The attention output of block `index` (its proj included) for hidden [N, L, D] entering it: over each
        slice in a full-attention block, over each 112-px window otherwise, batched."""
        attn = self.visual.blocks[index].attn
        q, k, v = self.qkv(index, hidden)
        n, length, heads, d = q.shape
        if index in self.full_blocks:
            out = scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), scale=attn.scaling)
            return attn.proj(out.transpose(1, 2).reshape(n, length, heads * d))
        mask = None
        if self.partial:
            mask = self.window_mask.expand(n, -1, -1, -1, -1).flatten(0, 1)  # [N * W, 1, 1, P]
        out = scaled_dot_product_attention(*map(self.windowed, (q, k, v)), attn_mask=mask, scale=attn.scaling)
        out = out.transpose(1, 2).reshape(n, -1, heads * d)  # [N, W * P, H * d]
        if self.partial:
            out = out[:, self.window_valid]
        return attn.proj(out)

    def block(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """ViT block `index` on hidden [N, L, D] (N slices, window order) with its own submodules: what
        transformers' block forward computes for these slices as one video, without a loop over slices."""
        block = self.visual.blocks[index]
        hidden = hidden + self.attention(index, hidden)
        return hidden + block.mlp(block.norm2(hidden))

    def run_layers(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """hidden [N, L, D] entering block `start` -> leaving block `stop - 1`."""
        for index in range(start, stop):
            hidden = self.block(index, hidden)
        return hidden

    def received(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, L, D] entering full-attention block `index` -> the attention each token receives there,
        averaged over heads and queries within its slice [N, L] (window order, float32 softmax)."""
        if index not in self.full_blocks:
            raise ValueError(
                f"block {index} attends within 112-px windows, not over the slice: the received attention is "
                f"defined in the full-attention blocks {tuple(sorted(self.full_blocks))}"
            )
        q, k, _ = self.qkv(index, hidden)
        logits = (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)).float() * self.visual.blocks[index].attn.scaling
        return torch.softmax(logits, dim=-1).mean(dim=(1, 2))  # [N, H, L(query), L(key)] -> [N, L]

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


@dataclass(frozen=True)
class QwenDecoderSide:
    """The Qwen2.5-VL decoder's view of a prompt: M-RoPE positions [3, 1, S] for videos of `grid` = (h, w)
    patches per slice (the processor's frame size / patch size)."""

    config: Qwen2_5_VLConfig
    grid: tuple[int, int]

    def positions(self, before: int, visual: VisualLayout, after: int) -> torch.Tensor:
        """-> position ids [3, 1, before + K + after]: text, the K kept tokens at their uncompressed positions, text
        from where the uncompressed video would end. Time between slices: visual.seconds_per_unit (None: slices
        of frames sampled at 2 fps)."""
        if visual.length != len(visual.frame):
            raise ValueError(
                f"{visual.length} visual embeddings for {len(visual.frame)} kept tokens: Qwen2.5-VL appends none"
            )
        seconds = visual.seconds_per_unit
        if seconds is None:
            seconds = self.config.vision_config.temporal_patch_size / DEFAULT_FPS
        ids = positions(
            self.config,
            before=before,
            grid=(visual.units, *self.grid),
            kept_frame=visual.frame,
            kept_index=visual.index,
            source_first=visual.source[:, 0],
            after=after,
            seconds_per_unit=seconds,
        )
        return ids[:, None]


def decoder_side(config: Qwen2_5_VLConfig, vision: VisionDims | None = None) -> QwenDecoderSide:
    """The decoder side for videos of `vision`'s frame size (None: the default processor's, 448 x 448)."""
    frame_size = DEFAULT_FRAME_SIZE if vision is None else vision.frame_size
    patch = config.vision_config.patch_size
    return QwenDecoderSide(config, (frame_size[0] // patch, frame_size[1] // patch))


def save_decoder(model: Qwen2_5_VLForConditionalGeneration, directory: Path) -> None:
    """The whole model as a standard transformers checkpoint (safetensors): the language model with its M-RoPE,
    loaded back by class, and the layout TensorRT-LLM's Qwen2-VL converter reads. The ViT weights ride along
    (about a tenth of the 7B's bytes) and are never run from here."""
    model.save_pretrained(directory)


def load_decoder(directory: Path, dtype: torch.dtype) -> Qwen2_5_VLForConditionalGeneration:
    """The saved model: a causal LM taking inputs_embeds and position_ids [3, 1, S]."""
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(directory, dtype=dtype)


FAMILY = Family(
    model_type="qwen2_5_vl",
    model_class=Qwen2_5_VLForConditionalGeneration,
    aliases=ALIASES,
    chat_template=CHAT_TEMPLATE,
    placeholder=VIDEO_PAD,
    special_tokens=SPECIAL_TOKENS,
    eos_token="<|im_end|>",
    processor=processor,
    processor_from_dict=QwenProcessor.from_dict,
    dims=dims,
    backbone=QwenBackbone,
    decoder_side=decoder_side,
    default_merge_layers=default_merge_layers,
    valid_merge_layers=valid_merge_layers,
    save_decoder=save_decoder,
    load_decoder=load_decoder,
    default_params=DEFAULT_PARAMS,
)
