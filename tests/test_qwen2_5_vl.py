"""The Qwen2.5-VL family (earlytom/models/qwen2_5_vl.py) against transformers' own model, on the tiny random
configuration in fp32: visual features equal get_video_features, the batched blocks equal transformers' block
modules, merged stretches equal the ViT on fewer slices, received attention equals a plain computation from the
block's weights, M-RoPE positions equal get_rope_index, and the eager pipeline's greedy tokens equal generate on a
local checkpoint with its tokenizer and processor files. Expected values come from transformers, from hand
computations or from plain loops written here, never from the module under test."""

import json
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index

from earlytom.compress import EarlyTomConfig
from earlytom.models.backbone import VisualLayout
from earlytom.models.qwen2_5_vl import (
    ALIASES,
    FAMILY,
    VIDEO_PAD,
    QwenBackbone,
    QwenProcessor,
    check_resolution,
    decoder_side,
    default_merge_layers,
    dims,
    processor,
    smart_resize,
    valid_merge_layers,
)
from earlytom.models.registry import family_of, load_model, packaged_config
from earlytom.runtime.decoder import next_position
from earlytom.runtime.pipeline import Pipeline, sampled_fps
from earlytom.video import stream_video

FRAME = (168, 140)  # height, width: 12 x 10 patches, 6 x 5 merger groups, 2 x 2 windows (partial ones included)
PATCHES = (12, 10)
FULL_WINDOWS = (112, 224)  # an engine's size: 8 x 16 patches, two full windows


@pytest.fixture(scope="module")
def qwen():
    return load_model("qwen-tiny")


@pytest.fixture(scope="module")
def backbone(qwen):
    return QwenBackbone(qwen.model, QwenProcessor(frame_size=FRAME))


@pytest.fixture(scope="module")
def proc():
    return QwenProcessor(frame_size=FRAME)


def random_frames(count: int, size=FRAME, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, *size, 3), dtype=torch.uint8, generator=generator)


def video_features(model, pixels: torch.Tensor, patches=PATCHES) -> torch.Tensor:
    """transformers' visual tokens [N * T, D'] for pixel slices [N, L, C'] as one video."""
    grid = torch.tensor([[pixels.shape[0], *patches]])
    return torch.cat(model.get_video_features(pixels.reshape(-1, pixels.shape[-1]), grid).pooler_output)


def window_order_patches(h: int, w: int, window: int = 8) -> list[tuple[int, int]]:
    """(row, col) of each patch in the ViT's window order, from its definition: windows of window x window
    patches (112 px) in raster order, their 2x2 merger groups in raster order, each group's patches in raster
    order."""
    order = []
    for wy in range(0, h, window):
        for wx in range(0, w, window):
            for gy in range(wy, min(wy + window, h), 2):
                for gx in range(wx, min(wx + window, w), 2):
                    order += [(gy + dy, gx + dx) for dy in range(2) for dx in range(2)]
    return order


# ---- the family, configurations and loading


def test_the_family_is_registered_under_its_model_type_with_its_aliases():
    assert family_of("qwen2_5_vl") is FAMILY
    assert set(ALIASES) == {"qwen2.5-vl-3b", "qwen2.5-vl-7b", "qwen2.5-vl-72b", "qwen-tiny"}
    assert ALIASES["qwen-tiny"] is None


def test_tiny_builds_in_well_under_a_second():
    config = packaged_config("qwen-tiny")
    start = time.perf_counter()
    Qwen2_5_VLForConditionalGeneration(config)
    assert time.perf_counter() - start < 1.0


def test_stand_in_tokenizer_renders_the_video_placeholder_as_the_configs_ids(qwen):
    config = qwen.model.config
    ids = qwen.tokenizer("<|vision_start|><|video_pad|><|vision_end|>", add_special_tokens=False).input_ids
    assert ids == [config.vision_start_token_id, config.video_token_id, config.vision_end_token_id]
    assert (
        qwen.tokenizer.eos_token_id
        == config.text_config.eos_token_id
        == qwen.tokenizer.convert_tokens_to_ids("<|im_end|>")
    )
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Why?"}]}]
    text = qwen.tokenizer.apply_chat_template(
        messages, chat_template=qwen.chat_template, tokenize=False, add_generation_prompt=True
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|>Why?<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("name", "llm_hidden", "vision_mlp", "decoder_layers", "vocab"),
    [
        ("qwen2.5-vl-3b", 2048, 3420, 36, 151936),
        ("qwen2.5-vl-7b", 3584, 3420, 28, 152064),
        ("qwen2.5-vl-72b", 8192, 3456, 80, 152064),
    ],
)
def test_published_configs(name, llm_hidden, vision_mlp, decoder_layers, vocab):
    config = packaged_config(name)
    vision, text = config.vision_config, config.text_config
    assert (vision.depth, vision.hidden_size, vision.num_heads, vision.intermediate_size) == (32, 1280, 16, vision_mlp)
    assert tuple(vision.fullatt_block_indexes) == (7, 15, 23, 31) and vision.window_size == 112
    assert vision.out_hidden_size == text.hidden_size == llm_hidden
    assert (text.num_hidden_layers, text.vocab_size) == (decoder_layers, vocab)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert (config.video_token_id, config.vision_start_token_id) == (151656, 151652)
    assert default_merge_layers("official", config) == (7, 15, 23)
    assert default_merge_layers("paper", config) == (7,)
    assert valid_merge_layers(config) == (7, 15, 23)
    assert ALIASES[name].startswith("Qwen/Qwen2.5-VL-")


def test_dims_of_the_7b_at_448():
    config = packaged_config("qwen2.5-vl-7b")
    got = dims(config, processor(config, None))
    assert got.family == "qwen2_5_vl" and got.frame_size == (448, 448) and got.frames_per_unit == 2
    assert (got.unit_shape, got.patch_tokens, got.hidden, got.heads) == ((1024, 1176), 1024, 1280, 16)
    assert (got.encoder_layers, got.tokens_per_frame, got.llm_hidden, got.suffix_tokens) == (32, 256, 3584, 0)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    assert QwenBackbone(model, processor(config, None)).dims == got


def test_load_a_local_checkpoint(tmp_path, qwen):
    qwen.model.save_pretrained(tmp_path)
    qwen.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{{ 'template from the checkpoint' }}")
    settings = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"longest_edge": 200704}}
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(settings))
    loaded = load_model(str(tmp_path))
    assert loaded.family is FAMILY and not loaded.random_init and loaded.notes == []
    assert loaded.chat_template == "{{ 'template from the checkpoint' }}"
    for (key, theirs), ours in zip(qwen.model.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(theirs, ours), key
    proc = loaded.processor
    assert (proc.mean, proc.std, proc.max_pixels, proc.frame_size) == ((0.5,) * 3, (0.5,) * 3, 200704, (448, 448))


# ---- processor


def test_processor_patch_layout_by_hand():
    """2 frames of 56 x 56: 4 x 4 patches in merge-group order; a patch vector is (channel, frame, row, col)."""
    processor = QwenProcessor(frame_size=(56, 56), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), rescale=1.0)
    frames = random_frames(2, (56, 56), seed=3)
    pixels = processor(frames)
    assert pixels.shape == (1, 16, 3 * 2 * 14 * 14) and pixels.dtype == torch.float32
    # patch (row, col) at each position: 2x2 groups in raster order, patches inside a group in raster order
    order = [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (0, 2),
        (0, 3),
        (1, 2),
        (1, 3),
        (2, 0),
        (2, 1),
        (3, 0),
        (3, 1),
        (2, 2),
        (2, 3),
        (3, 2),
        (3, 3),
    ]
    for k, channel, frame, y, x in [
        (0, 0, 0, 0, 0),
        (5, 2, 1, 13, 0),
        (6, 1, 0, 7, 9),
        (9, 0, 1, 3, 13),
        (15, 2, 1, 13, 13),
        (12, 1, 1, 0, 5),
    ]:
        row, col = order[k]
        offset = channel * 2 * 196 + frame * 196 + y * 14 + x
        assert pixels[0, k, offset] == frames[frame, row * 14 + y, col * 14 + x, channel]


def test_processor_normalises_like_clip():
    """A white pixel with OpenAI CLIP's mean and std: (1 - 0.48145466) / 0.26862954 = 1.930336 (red), a black one
    in blue: -0.40821073 / 0.27577711 = -1.480220."""
    frames = torch.zeros(2, 56, 56, 3, dtype=torch.uint8)
    frames[..., 0] = 255
    pixels = QwenProcessor(frame_size=(56, 56))(frames)
    assert pixels[0, 0, 0].item() == pytest.approx(1.930336, abs=1e-6)
    assert pixels[0, 0, 2 * 392].item() == pytest.approx(-1.480220, abs=1e-6)


@pytest.mark.parametrize(
    ("count", "fix"),
    [(0, "a clip needs at least 2"), (1, "a clip needs at least 2"), (3, "multiple of 2; sample 2 or 4 frames")],
)
def test_processor_refuses_odd_and_short_clips(count, fix):
    with pytest.raises(ValueError, match=fix):
        QwenProcessor(frame_size=(56, 56))(torch.zeros(count, 56, 56, 3, dtype=torch.uint8))


def test_processor_refuses_frames_of_another_size():
    with pytest.raises(ValueError, match="frames are 56 x 84, this processor takes 56 x 56"):
        QwenProcessor(frame_size=(56, 56))(torch.zeros(2, 56, 84, 3, dtype=torch.uint8))


def test_resolution_checks_name_the_nearest_valid_sizes():
    assert check_resolution(448, 336, for_engine=True) == (448, 336)
    assert check_resolution(56, 84, for_engine=False) == (56, 84)
    with pytest.raises(ValueError, match=r"multiple of 112 px; nearest valid: height 420 -> 336 or 448"):
        check_resolution(420, 448, for_engine=True)
    with pytest.raises(ValueError, match=r"width 50 -> 112$"):
        check_resolution(448, 50, for_engine=True)
    with pytest.raises(ValueError, match=r"multiple of 28 px; nearest valid: height 50 -> 28 or 56; width 90 -> 84"):
        QwenProcessor(frame_size=(50, 90))


def test_smart_resize_by_hand():
    # 480 x 640 rounds to 476 x 644 (17 and 23 x 28), inside [128, 768] x 28^2 px
    assert smart_resize(480, 640) == (476, 644)
    # 1080 x 1920 is too large: beta = sqrt(1080 * 1920 / 602112) = 1.8558; floor(20.78) x 28, floor(36.95) x 28
    assert smart_resize(1080, 1920) == (560, 1008)
    # 56 x 56 is too small: beta = sqrt(100352 / 3136) = 5.657; ceil(11.31) x 28
    assert smart_resize(56, 56) == (336, 336)


def test_processor_round_trips_through_json():
    processor = QwenProcessor(frame_size=(448, 336), min_pixels=3136)
    assert QwenProcessor.from_dict(json.loads(json.dumps(processor.to_dict()))) == processor


def test_processor_refuses_a_preprocessor_config_with_other_patch_sizes(qwen):
    with pytest.raises(ValueError, match="patch_size = 16 disagrees with the model's 14"):
        processor(qwen.model.config, {"patch_size": 16})


def torchvision_loads() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(
    not torchvision_loads(),
    reason="torchvision does not load beside this torch build, and transformers' Qwen2VLVideoProcessor needs it",
)
def test_processor_matches_transformers_video_processor():
    from transformers import Qwen2VLVideoProcessor

    frames = random_frames(4)
    ours = QwenProcessor(frame_size=FRAME)(frames)
    theirs = Qwen2VLVideoProcessor(do_resize=False, cap_pixels_per_frame=False)(
        videos=[frames.permute(0, 3, 1, 2)], return_tensors="pt"
    )
    assert theirs["video_grid_thw"].tolist() == [[2, *PATCHES]]
    torch.testing.assert_close(ours.reshape(-1, ours.shape[-1]), theirs["pixel_values_videos"])


def test_processor_resizes_for_the_eager_path_and_for_engines():
    proc = QwenProcessor(frame_size=(448, 448))
    assert proc.resized((56, 84), for_engine=False).frame_size == (56, 84)
    assert proc.resized((224, 336), for_engine=True) == replace(proc, frame_size=(224, 336))
    with pytest.raises(ValueError, match=r"^resolution 56 x 84: an engine needs each side a positive multiple of 112"):
        proc.resized((56, 84), for_engine=True)


# ---- ViT stages


@pytest.mark.parametrize("slices", [2, 3])
@torch.no_grad()
def test_full_encoder_equals_get_video_features(qwen, backbone, proc, slices):
    pixels = proc(random_frames(2 * slices, seed=slices))
    hidden = backbone.run_layers(backbone.embed(pixels), 0, backbone.dims.encoder_layers)
    tokens, scores = backbone.project(hidden, torch.zeros(slices, backbone.dims.patch_tokens))
    assert tokens.shape == (slices, 30, 64) and scores.shape == (slices, 30)
    torch.testing.assert_close(tokens.reshape(-1, 64), video_features(qwen.model, pixels))


def transformers_block(visual, index: int, hidden: torch.Tensor, patches: tuple[int, int]) -> torch.Tensor:
    """Block `index` of transformers' ViT on hidden [N, L, D] (window order) as one video of N slices, with the
    sequence boundaries, window tables and rotary embeddings its own forward computes."""
    n, length, dim = hidden.shape
    vision = visual.config
    grid = torch.tensor([[n, *patches]])
    cu_seqlens, max_seqlen = get_vision_attention_seqlens(grid, vision)
    window, cu_windows = get_vision_window_index(grid, vision.spatial_merge_size, vision.window_size, vision.patch_size)
    rotary = visual.rotary_pos_emb(hidden, get_vision_position_ids(grid, vision.spatial_merge_size))
    rotary = tuple(visual.permute_input_for_window_attn(f, window, n * length) for f in rotary)
    full = index in vision.fullatt_block_indexes
    bounds = cu_seqlens if full else cu_windows
    x = visual.blocks[index](hidden.reshape(n * length, dim), cu_seqlens=bounds, position_embeddings=rotary)
    return x.view(n, length, dim)


@pytest.mark.parametrize("frame", [FRAME, FULL_WINDOWS])
@pytest.mark.parametrize("index", [0, 1])  # a window block, a full-attention block
@torch.no_grad()
def test_batched_blocks_equal_transformers_block_modules(qwen, frame, index):
    """Both the padded windows (168 x 140: windows of 64, 32, 48 and 24 patches) and the full ones (112 x 224)."""
    backbone = QwenBackbone(qwen.model, QwenProcessor(frame_size=frame))
    assert backbone.partial == (frame == FRAME)
    hidden = backbone.embed(QwenProcessor(frame_size=frame)(random_frames(6, frame, seed=index)))
    patches = (frame[0] // 14, frame[1] // 14)
    expected = transformers_block(qwen.model.model.visual, index, hidden, patches)
    torch.testing.assert_close(backbone.block(index, hidden), expected)


@torch.no_grad()
def test_full_windows_encoder_equals_get_video_features(qwen):
    proc = QwenProcessor(frame_size=FULL_WINDOWS)
    backbone = QwenBackbone(qwen.model, proc)
    pixels = proc(random_frames(4, FULL_WINDOWS, seed=5))
    tokens, _ = backbone.project(backbone.run_layers(backbone.embed(pixels), 0, 4), torch.zeros(2, 128))
    torch.testing.assert_close(tokens.reshape(-1, 64), video_features(qwen.model, pixels, (8, 16)))


@torch.no_grad()
def test_dropping_a_slice_at_a_merge_layer_equals_the_vit_on_fewer_slices(qwen, backbone, proc):
    pixels = proc(random_frames(8, seed=7))
    (layer,) = default_merge_layers("official", qwen.model.config)
    hidden = backbone.run_layers(backbone.embed(pixels), 0, layer + 1)[[0, 1, 3]]
    tokens, _ = backbone.project(backbone.run_layers(hidden, layer + 1, 4), torch.zeros(3, 120))
    torch.testing.assert_close(tokens.reshape(-1, 64), video_features(qwen.model, pixels[[0, 1, 3]]))


@torch.no_grad()
def test_merged_slices_continue_as_independent_slices(qwen, backbone, proc):
    """After a weighted merge (4 -> 3 slices) the tail runs the 3 slices as one video: each equals itself run
    alone."""
    pixels = proc(random_frames(8, seed=8))
    (layer,) = default_merge_layers("paper", qwen.model.config)
    hidden = backbone.run_layers(backbone.embed(pixels), 0, layer + 1)
    merged = torch.stack([hidden[0], 0.3 * hidden[1] + 0.7 * hidden[2], hidden[3]])
    together = backbone.run_layers(merged, layer + 1, 4)
    alone = torch.cat([backbone.run_layers(merged[[i]], layer + 1, 4) for i in range(3)])
    torch.testing.assert_close(together, alone)


def plain_received(block, hidden: torch.Tensor, heads: int, theta: float) -> torch.Tensor:
    """Attention received per key in one slice [L, D] (window order), from the block's weights by definition:
    RMSNorm, q and k of the fused qkv, 2-D rotary on (row, col), softmax per head, mean over heads and queries."""
    length, dim = hidden.shape
    d = dim // heads
    x = hidden.double()
    x = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * block.norm1.weight.double()
    qkv = x @ block.attn.qkv.weight.double().T + block.attn.qkv.bias.double()
    inv_freq = 1.0 / theta ** (torch.arange(0, d // 2, 2, dtype=torch.float64) / (d // 2))
    patches = window_order_patches(*PATCHES)
    received = torch.zeros(length, dtype=torch.float64)
    for head in range(heads):
        rotated = []
        for part in (0, 1):  # q, k
            v = qkv[:, part * dim + head * d : part * dim + (head + 1) * d]
            angles = torch.stack([torch.cat([r * inv_freq, c * inv_freq]) for r, c in patches])
            angles = torch.cat([angles, angles], dim=-1)
            half = torch.cat([-v[:, d // 2 :], v[:, : d // 2]], dim=-1)
            rotated.append(v * angles.cos() + half * angles.sin())
        probs = torch.softmax(rotated[0] @ rotated[1].T / d**0.5, dim=-1)
        received += probs.mean(dim=0) / heads
    return received


@torch.no_grad()
def test_received_equals_a_plain_computation(qwen, backbone, proc):
    vision = qwen.model.config.vision_config
    hidden = backbone.run_layers(backbone.embed(proc(random_frames(4, seed=4))), 0, 1)
    ours = backbone.received(1, hidden)
    assert ours.dtype == torch.float32 and ours.shape == (2, 120)
    theta = vision.rope_parameters["rope_theta"]
    for s in range(2):
        expected = plain_received(qwen.model.model.visual.blocks[1], hidden[s], vision.num_heads, theta)
        torch.testing.assert_close(ours[s].double(), expected, rtol=1e-5, atol=1e-7)


def test_window_blocks_are_refused_as_merge_layers_and_for_received(qwen, backbone):
    assert valid_merge_layers(qwen.model.config) == (1,)
    for layers in [(0,), (3,)]:  # a window block; the last block (nothing runs after it)
        message = rf"^merge_layers = \({layers[0]},\): this model compresses only after layers \(1,\)$"
        with pytest.raises(ValueError, match=message):
            qwen.resolve(EarlyTomConfig(variant="paper", merge_layers=layers))
    assert qwen.resolve(EarlyTomConfig()).merge_layers == (1,)
    with pytest.raises(ValueError, match=r"full-attention blocks \(1, 3\)"):
        backbone.received(2, torch.zeros(1, 120, 32))


def test_project_pools_scores_per_merger_group_in_raster_order(backbone):
    scores = torch.arange(120, dtype=torch.float32)[None] ** 2  # window-order slot s scores s^2
    patches = window_order_patches(*PATCHES)
    expected = torch.zeros(30)
    for slot, (row, col) in enumerate(patches):
        expected[(row // 2) * 5 + col // 2] += slot**2 / 4
    _, pooled = backbone.project(torch.zeros(1, 120, 32), scores)
    torch.testing.assert_close(pooled[0], expected)


def test_suffix_is_empty(backbone):
    assert backbone.suffix().shape == (0, 64)


# ---- decoder side


def rope_index(model, before: int, grid: tuple[int, int, int], after: int, seconds: float):
    """transformers' positions [3, S] and rope delta for `before` text tokens, the video, `after` text tokens."""
    video = grid[0] * (grid[1] // 2) * (grid[2] // 2)
    types = torch.tensor([[0] * before + [2] * video + [0] * after])
    ids = torch.where(types == 2, model.config.video_token_id, 7)
    position_ids, delta = model.model.get_rope_index(
        ids, types, video_grid_thw=torch.tensor([grid]), second_per_grid_ts=torch.tensor([seconds])
    )
    return position_ids[:, 0], int(delta)


def truncates_seconds(model) -> bool:
    """Whether the installed get_rope_index casts a video's seconds per slice to int before scaling (transformers
    5.17 among others, until huggingface/transformers#48669: 0.5 s per slice puts every slice at t = 0). Qwen's
    released code, transformers 5.24 and earlytom floor after scaling; on such a version the oracle holds for
    whole seconds only."""
    positions, _ = rope_index(model, 0, (2, 2, 2), 0, 0.5)  # one token per slice: t = 0, then 0.5 * 2 = 1
    return positions[0, 1].item() == 0


def layout(frame, index, firsts, units: int, seconds: float | None) -> VisualLayout:
    source = torch.stack([firsts, firsts], 1)  # the last source slice does not enter positions
    return VisualLayout(len(frame), frame, index, source, units, seconds)


grids = st.tuples(st.integers(1, 5), st.sampled_from([2, 4, 6, 8]), st.sampled_from([2, 4, 6, 10]))
seconds = st.sampled_from([1.0, 0.5, 2 / 3, 4.0, 0.3])


@settings(max_examples=30, deadline=None)
@given(before=st.integers(0, 4), grid=grids, after=st.integers(0, 3), seconds_per_unit=seconds, data=st.data())
def test_positions_equal_get_rope_index(qwen, before, grid, after, seconds_per_unit, data):
    assume(float(seconds_per_unit).is_integer() or not truncates_seconds(qwen.model))
    config = qwen.model.config
    expected, delta = rope_index(qwen.model, before, grid, after, seconds_per_unit)
    units, h, w = grid
    side = decoder_side(config, dims(config, QwenProcessor(frame_size=(h * 14, w * 14))))
    tokens = (h // 2) * (w // 2)
    every = torch.arange(units * tokens)
    full = side.positions(
        before, layout(every // tokens, every % tokens, torch.arange(units), units, seconds_per_unit), after
    )
    assert full.shape == (3, 1, before + units * tokens + after)
    assert torch.equal(full[:, 0], expected)
    length = before + units * tokens + after
    assert next_position(full).flatten().tolist() == [length + delta] * 3  # where generate decodes on
    # compressed: output slices start at increasing source slices, a subset of tokens is kept (temporal order)
    firsts = sorted(data.draw(st.sets(st.integers(0, units - 1), min_size=1)))
    kept = torch.tensor(sorted(data.draw(st.sets(st.integers(0, len(firsts) * tokens - 1)))), dtype=torch.long)
    ours = side.positions(
        before, layout(kept // tokens, kept % tokens, torch.tensor(firsts), units, seconds_per_unit), after
    )
    columns = [before + firsts[k // tokens] * tokens + k % tokens for k in kept.tolist()]
    gathered = [*range(before), *columns, *range(length - after, length)]
    assert torch.equal(ours[:, 0], expected[:, gathered])


def test_positions_default_to_448_px_frames_at_2_fps(qwen):
    """Without the vision dims the side assumes 448 x 448 frames (16 x 16 merged tokens); without a time, slices of
    2 frames at 2 fps (1 s each, tokens_per_second 2: slice 1 at t = 2). Token 17 of slice 1: row 1, column 1."""
    side = decoder_side(qwen.model.config)
    ids = side.positions(1, layout(torch.tensor([0, 1]), torch.tensor([0, 17]), torch.tensor([0, 1]), 2, None), 1)
    assert ids[:, 0].tolist() == [[0, 1, 3, 17], [0, 1, 2, 17], [0, 1, 2, 17]]


def test_positions_refuse_indexes_outside_the_video(qwen):
    side = decoder_side(qwen.model.config, dims(qwen.model.config, QwenProcessor(frame_size=(56, 56))))
    with pytest.raises(ValueError, match="token indices in \\[0, 4\\)"):
        side.positions(1, layout(torch.tensor([0]), torch.tensor([4]), torch.tensor([0, 1]), 2, 1.0), 1)
    with pytest.raises(ValueError, match="source_first must index the 2 source slices"):
        side.positions(1, layout(torch.tensor([0]), torch.tensor([0]), torch.tensor([0, 2]), 2, 1.0), 1)


# ---- end to end


@pytest.fixture(scope="module")
def checkpoint(qwen, tmp_path_factory):
    """The tiny model as a local HF-format checkpoint: weights, tokenizer, chat template, video processor."""
    directory = tmp_path_factory.mktemp("qwen-checkpoint")
    qwen.model.save_pretrained(directory)
    qwen.tokenizer.save_pretrained(directory)
    (directory / "chat_template.jinja").write_text(qwen.chat_template)
    settings = {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3], "temporal_patch_size": 2}
    (directory / "video_preprocessor_config.json").write_text(json.dumps(settings))
    return directory


@torch.no_grad()
def test_full_tokens_equal_get_video_features_and_greedy_tokens_equal_generate(checkpoint):
    """Method full on a local checkpoint: the visual embeddings equal get_video_features and the greedy tokens
    equal generate's on the same frames and prompt (a frame array: 2 fps, 1 s per slice)."""
    loaded = load_model(str(checkpoint))
    model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.model.config
    slices, new_tokens, prompt = 3, 8, "What happens?"
    frames = random_frames(2 * slices, (448, 448), seed=11)
    result = Pipeline.from_model(loaded, method="full", num_frames=2 * slices).generate(frames, prompt, new_tokens)

    pixels = loaded.processor(frames)  # tested against transformers' video processor above, where it loads
    torch.testing.assert_close(result.visual.embeds, video_features(model, pixels, (32, 32)))
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    head, tail = text.split(VIDEO_PAD)
    video = [config.video_token_id] * (slices * 256)
    input_ids = torch.tensor([tokenizer(head).input_ids + video + tokenizer(tail).input_ids])
    theirs = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        mm_token_type_ids=(input_ids == config.video_token_id).int() * 2,
        pixel_values_videos=pixels.reshape(-1, pixels.shape[-1]),
        video_grid_thw=torch.tensor([[slices, 32, 32]]),
        second_per_grid_ts=torch.tensor([1.0]),
        do_sample=False,
        max_new_tokens=new_tokens,
    )
    assert result.token_ids == theirs[0, input_ids.shape[1] :].tolist()


def test_pretrained_tiny_answers_a_video_file_with_earlytom(clips):
    pipe = Pipeline.from_pretrained("qwen-tiny", num_frames=8)
    result = pipe.generate(clips["cut"], "What changes?", max_new_tokens=4)
    counts = result.counts
    assert counts["frames_in"] == 8 and result.visual.units == 4
    assert counts["frames_after_layer_1"] == counts["frames_after_merge"] <= 4
    assert counts["visual_tokens"] == len(result.visual.embeds) > 0
    assert counts["visual_embeds_after_inner"] < counts["visual_embeds_before_inner"] == counts["visual_tokens"]
    assert 1 <= len(result.token_ids) <= 4


def test_seconds_per_slice_come_from_the_sampled_frames(clips, tmp_path):
    """A file: its sampled frames over the seconds they span (24 frames at 8 fps, 8 sampled at frames 0, 3, 6, 9,
    13, 16, 19, 23: 7 intervals in 23/8 s); arrays and image folders: 2 fps."""
    stream = stream_video(clips["cut"], 8)
    assert stream.indices == [0, 3, 6, 9, 13, 16, 19, 23]
    assert sampled_fps(clips["cut"], stream.timestamps) == pytest.approx(7 / (23 / 8))
    assert sampled_fps(np.zeros((4, 8, 8, 3), np.uint8), [0.0, 1.0, 2.0, 3.0]) == 2.0
    assert sampled_fps(str(tmp_path), [0.0, 10.0]) == 2.0
