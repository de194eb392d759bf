"""Selection scores and visual tokens checked against transformers' own forward, not against the adapter.

The oracle is HF's SigLIP vision tower run with attn_implementation="eager" and output_attentions=True: the
attention each token receives in layer l is that layer's attention map averaged over heads and queries, pooled to
the T grid by a bilinear 2x2 downscale written here (LLaVA-OV's pooling). Every graph of the chain is run without
merging, so each `attention_<l>` it outputs and the tail's scores must equal the oracle's layer l (paper: the last
used layer; official: each merge layer, the tail's scores being the last merge layer's)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from earlytom.compress import EarlyTomConfig
from earlytom.engine.layout import vision_chain
from earlytom.engine.stretch import Stretch
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.synthetic import moving_square_frames
from earlytom.runtime.timing import StageTimer

FRAMES = 3

GRID = 9  # the tiny model's patch grid: 72 px frames, 8 px patches


@pytest.fixture(scope="module")
def pixels(tiny):
    return tiny.processor(torch.from_numpy(moving_square_frames(FRAMES)))  # [3, 3, 72, 72]


@pytest.fixture(scope="module")
def hf_attentions(tiny, pixels):
    """HF's eager attention maps, one [B, H, L, L] per encoder layer (on a copy: the shared model is untouched)."""
    tower = copy.deepcopy(tiny.model.model.vision_tower)
    tower.set_attn_implementation("eager")
    with torch.inference_mode():
        out = tower(pixels, output_attentions=True, return_dict=True)
    assert len(out.attentions) == 4  # the tiny model's SigLIP layers, all used
    return out.attentions


def pooled(received: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, grid * grid] -> [B, T]: the 2x2 bilinear downscale LLaVA-OV applies to its patch map."""
    size = math.ceil(grid / 2)
    image = received.float().view(-1, 1, grid, grid)
    return F.interpolate(image, size=(size, size), mode="bilinear").flatten(1)


def received_in(hf_attentions, layer: int) -> torch.Tensor:
    """Attention each token receives in `layer`: mean over heads and queries of HF's map -> [B, L]."""
    return hf_attentions[layer].float().mean(dim=(1, 2))


def run_unmerged(adapter, variant: str, merge_layers: tuple[int, ...], pixels: torch.Tensor) -> dict:
    """Every stretch of the chain, each fed the previous one's outputs as they are -> all named tensors."""
    values = {"pixels": pixels}
    with torch.inference_mode():
        for spec in vision_chain(variant, merge_layers, adapter.dims.encoder_layers):
            values |= zip(spec.outputs, Stretch(adapter, spec)(*(values[n] for n in spec.inputs)), strict=True)
    return values


@pytest.mark.parametrize("merge_layers", [(0,), (1,), (2,)])
def test_paper_scores_are_the_last_layers_attention_received(tiny, pixels, hf_attentions, merge_layers):
    adapter = tiny.backbone()
    assert adapter.dims.encoder_layers == 4 and not adapter.drop_first_token
    scores = run_unmerged(adapter, "paper", merge_layers, pixels)["scores"]
    expected = pooled(received_in(hf_attentions, adapter.dims.encoder_layers - 1), GRID)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-7)
    for other in range(adapter.dims.encoder_layers - 1):  # no other layer would pass: the check tells layers apart
        assert not torch.allclose(scores, pooled(received_in(hf_attentions, other), GRID), rtol=1e-3)


@pytest.mark.parametrize("merge_layers", [(0, 2, 3), (1,), (0, 1), (2, 3)])
def test_official_chain_outputs_only_the_last_merge_layers_attention(tiny, pixels, hf_attentions, merge_layers):
    adapter = tiny.backbone()
    values = run_unmerged(adapter, "official", merge_layers, pixels)
    expected = received_in(hf_attentions, merge_layers[-1])
    torch.testing.assert_close(values[f"attention_{merge_layers[-1]}"], expected, rtol=1e-5, atol=1e-7)
    assert not [layer for layer in merge_layers[:-1] if f"attention_{layer}" in values]  # selection never reads them
    # Nothing merged: the tail's scores are the last merge layer's attention received, pooled.
    expected = pooled(received_in(hf_attentions, merge_layers[-1]), GRID)
    torch.testing.assert_close(values["scores"], expected, rtol=1e-5, atol=1e-7)


def hf_video_features(tiny, pixels: torch.Tensor) -> torch.Tensor:
    """transformers' get_video_features for one video: [B * T + 1, D'] (the image_newline last)."""
    config = tiny.model.config
    with torch.inference_mode():
        out = tiny.model.model.get_video_features(
            pixels[None],
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            output_hidden_states=True,
        )
    return out.pooler_output[0]


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_eager_full_method_tokens_are_transformers_video_features(tiny, pixels, variant):
    pipe = Pipeline.from_model(tiny, num_frames=FRAMES, method="full", config=EarlyTomConfig(variant=variant))
    with torch.inference_mode():
        visual = pipe.backend.encode([pixels], pipe.options, StageTimer())
    torch.testing.assert_close(visual.embeds, hf_video_features(tiny, pixels), rtol=1e-5, atol=1e-6)
