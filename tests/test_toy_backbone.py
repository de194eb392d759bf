"""A second model family, deliberately unlike LLaVA-OneVision, registered by this test alone and run end to end on
the eager and ONNX Runtime backends: two frames per encoder unit, a non-square patch grid (4 x 6 patches of
16 x 24 px frames), no suffix embedding after the visual tokens, and 3-D position ids for its decoder (a tiny
Qwen2.5-VL language model, which takes them). Nothing outside this file knows the family: that a family is one
module is what this proves."""

from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from earlytom.compress import EarlyTomConfig, default_merge_layers
from earlytom.engine_builder.build import build
from earlytom.models import registry
from earlytom.models.backbone import Family, VisionDims, VisualLayout
from earlytom.models.registry import LoadedModel
from earlytom.models.tokenizer import byte_level_tokenizer
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.synthetic import moving_square_frames

FRAME = (16, 24)  # height, width of a frame
PATCH = 4
GRID = (FRAME[0] // PATCH, FRAME[1] // PATCH)  # 4 x 6 patches
L, PER_UNIT, D, HEADS, LAYERS, DM = GRID[0] * GRID[1], 2, 16, 2, 3, 32
T = L // 2  # the projector averages horizontal pairs of patches: 4 x 3 tokens per unit
PLACEHOLDER = "<|toy_video|>"
SPECIAL = ("<|bos|>", "<|eos|>", PLACEHOLDER, "<pad>")  # ids 256 ... 259
TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ':' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'video' %}{{ '<|toy_video|>' }}"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ '<|eos|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class ToyProcessor:
    """uint8 frames [2u, 16, 24, 3] -> units [u, 24, 96]: each patch of both frames of a unit, flattened."""

    mean: float = 0.5
    std: float = 0.25
    frame_size: ClassVar[tuple[int, int]] = FRAME
    frames_per_unit: ClassVar[int] = PER_UNIT

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.shape[0] % PER_UNIT:
            raise ValueError(f"{frames.shape[0]} frames do not fill units of {PER_UNIT}")
        x = (frames.float() / 255 - self.mean) / self.std  # [2u, H, W, 3]
        x = x.view(-1, PER_UNIT, GRID[0], PATCH, GRID[1], PATCH, 3).permute(0, 2, 4, 1, 3, 5, 6)
        return x.reshape(-1, L, PER_UNIT * PATCH * PATCH * 3)

    def to_dict(self) -> dict:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm self-attention + MLP, written out so that the attention received is plain to compute."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.qkv, self.out = nn.LayerNorm(D), nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.mlp = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))

    def probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(self.norm(x)).view(*x.shape[:2], 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        return torch.softmax((q @ k.transpose(-1, -2)).float() / (D // HEADS) ** 0.5, -1), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs, v = self.probs(x)
        x = x + self.out((probs.to(v.dtype) @ v).transpose(1, 2).reshape(x.shape))
        return x + self.mlp(x)


class ToyVision(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(PER_UNIT * PATCH * PATCH * 3, D)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.projector = nn.Linear(D, DM)


class ToyConfig(Qwen2_5_VLConfig):
    model_type = "toy_slices"


class ToyModel(Qwen2_5_VLForConditionalGeneration):
    """A tiny Qwen2.5-VL language model (3-D positions) with the toy encoder beside it."""

    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.toy_vision = ToyVision()


DIMS = VisionDims("toy_slices", FRAME, PER_UNIT, (L, PER_UNIT * PATCH * PATCH * 3), L, D, HEADS, LAYERS, T, DM, 0)


class ToyBackbone(nn.Module):
    def __init__(self, model: ToyModel, processor: ToyProcessor) -> None:
        super().__init__()
        self.vision, self.dims = model.toy_vision, DIMS

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision.patch(pixels)

    def run_layers(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for block in self.vision.blocks[start:stop]:
            hidden = block(hidden)
        return hidden

    def received(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.vision.blocks[index].probs(hidden)[0].mean(dim=(1, 2))

    def project(self, hidden: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.vision.projector(hidden).view(-1, GRID[0], GRID[1] // 2, 2, DM).mean(3).reshape(-1, T, DM)
        return tokens, scores.float().view(-1, T, 2).mean(-1)

    def suffix(self) -> torch.Tensor:
        return torch.zeros(0, DM)


class ToySide:
    """3-D positions: text (i, i, i); a kept token (before + first source unit, before + row, before + column);
    the text after the video starts where the whole video's positions would end."""

    def positions(self, before: int, visual: VisualLayout, after: int) -> torch.Tensor:
        text = torch.arange(before).expand(3, before)
        unit = visual.source[visual.frame, 0]
        token = torch.stack([unit, visual.index // (GRID[1] // 2), visual.index % (GRID[1] // 2)]) + before
        start = before + max(visual.units, GRID[0], GRID[1] // 2)
        tail = torch.arange(start, start + after).expand(3, after)
        return torch.cat([text, token, tail], 1)[:, None]


TOY = Family(
    model_type="toy_slices",
    model_class=ToyModel,
    aliases={},
    chat_template=TEMPLATE,
    placeholder=PLACEHOLDER,
    special_tokens=SPECIAL,
    eos_token="<|eos|>",
    processor=lambda config, settings: ToyProcessor(),
    processor_from_dict=lambda fields: ToyProcessor(**fields),
    dims=lambda config, processor: DIMS,
    backbone=ToyBackbone,
    decoder_side=lambda config, dims: ToySide(),
    default_merge_layers=lambda variant, config: default_merge_layers(variant, 2),
    valid_merge_layers=lambda config: (0, 1),  # unlike LLaVA: never after the last layer
    save_decoder=lambda model, directory: model.save_pretrained(directory),
    load_decoder=lambda directory, dtype: ToyModel.from_pretrained(directory, dtype=dtype),
)
NO_INNER = EarlyTomConfig(inner_ratio=0.0)  # decoding with every visual token


@pytest.fixture(scope="module")
def toy():
    registry.register(TOY)
    torch.manual_seed(0)
    text = {
        "hidden_size": DM,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 272,
        "max_position_embeddings": 1024,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "eos_token_id": 257,
    }
    vision = {"depth": 1, "hidden_size": 16, "out_hidden_size": DM, "num_heads": 2, "fullatt_block_indexes": [0]}
    model = ToyModel(ToyConfig(text_config=text, vision_config=vision)).eval()
    tokenizer = byte_level_tokenizer(SPECIAL, TEMPLATE, eos="<|eos|>")
    yield LoadedModel("toy", "test", TOY, model, tokenizer, TEMPLATE, ToyProcessor(), random_init=True)
    del registry.FAMILIES[TOY.model_type]


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """8 frames (4 units) of 16 x 24 with a scene cut after frame 4."""
    return moving_square_frames(8, size=FRAME[1], cut_at=4)[:, : FRAME[0]]


@pytest.fixture(scope="module")
def engine(toy, tmp_path_factory):
    directory = tmp_path_factory.mktemp("toy") / "engine"
    build(toy, directory, backend="onnxruntime", config=NO_INNER, frames=8, progress=False)
    return directory


def test_the_manifest_stores_the_familys_dims(engine):
    pipe = Pipeline.from_engine_dir(engine)
    assert pipe.backend.manifest.vision == DIMS
    assert pipe.options.config.merge_layers == (0, 1)
    assert pipe.backend.suffix.shape == (0, DM)


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_eager_and_onnxruntime_agree_end_to_end(toy, engine, frames, variant):
    config = EarlyTomConfig(variant=variant, inner_ratio=0.0, merge_layers=(0, 1) if variant == "official" else (1,))
    eager = Pipeline.from_model(toy, config=config, num_frames=8)
    onnx = Pipeline.from_engine_dir(engine) if variant == "official" else None
    a = eager.generate(frames, "What changes?", 4)
    assert a.counts["frames_in"] == 8 and a.visual.units == 4
    assert a.visual.embeds.shape[1] == DM and len(a.visual.embeds) == len(a.visual.frame)  # no suffix
    if onnx is None:  # the engine was built for the official chain
        return
    b = onnx.generate(frames, "What changes?", 4)
    assert a.visual.frames_after == b.visual.frames_after
    assert torch.equal(a.visual.source, b.visual.source)
    assert torch.equal(a.visual.frame, b.visual.frame) and torch.equal(a.visual.index, b.visual.index)
    torch.testing.assert_close(a.visual.embeds, b.visual.embeds, rtol=1e-4, atol=1e-5)
    assert a.token_ids == b.token_ids


def test_positions_are_three_rows_from_the_decoder_side(toy):
    pipe = Pipeline.from_model(toy, config=NO_INNER, num_frames=8)
    layout = VisualLayout(
        length=2, frame=torch.tensor([0, 1]), index=torch.tensor([0, 5]), source=torch.tensor([[0, 1], [3, 3]]), units=4
    )
    positions = pipe.decoder.positions(2, layout, 3)
    # text 0, 1; tokens (2 + unit 0, row 0, col 0) and (2 + unit 3, row 1, col 2); after: 2 + max(4, 4, 3) = 6 ...
    expected = [[0, 1, 2, 5, 6, 7, 8], [0, 1, 2, 3, 6, 7, 8], [0, 1, 2, 4, 6, 7, 8]]
    assert positions[:, 0].tolist() == expected


def test_an_odd_frame_count_and_a_layer_the_family_refuses_are_clear_errors(toy):
    with pytest.raises(
        ValueError,
        match=r"^frames = 7: this model fuses 2 frames into one encoder unit; sample a "
        r"multiple of 2 \(e\.g\. --frames 8\)$",
    ):
        Pipeline.from_model(toy, config=NO_INNER, num_frames=7)
    with pytest.raises(ValueError, match=r"^merge_layers = \(2,\): this model compresses only after layers \(0, 1\)$"):
        Pipeline.from_model(toy, config=EarlyTomConfig(variant="paper", merge_layers=(2,)), num_frames=8)
