"""The analytic FLOPs and timing statistics the benchmarks print."""

import pytest
import torch

from benchmarks.common import summary
from benchmarks.flops import encoder_layer, prefill_flops, vision_flops
from earlytom.models.registry import packaged_config


def test_encoder_layer_flops_match_the_parameter_count():
    """Matmul FLOPs = 2 x tokens x weights of the layer's linear maps (attention scores added separately)."""
    config = packaged_config("llava-ov-7b").vision_config
    with torch.device("meta"):
        from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

        layer = SiglipEncoderLayer(config)
    weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    L, D = 729, config.hidden_size
    assert encoder_layer(L, D, config.intermediate_size) == 2 * L * weights + 4 * L * L * D


def test_merging_and_selection_reduce_flops_as_the_shapes_say():
    config = packaged_config("llava-ov-0.5b")
    full = vision_flops(config, frames_in=32, frames_after_merge=32, merge_layer=6, layers=26)
    merged = vision_flops(config, frames_in=32, frames_after_merge=20, merge_layer=6, layers=26)
    assert merged["vision_head"] == full["vision_head"]
    assert merged["vision_tail"] == pytest.approx(full["vision_tail"] * 20 / 32)
    assert prefill_flops(config, 6300) > 6 * prefill_flops(config, 1000)  # linear terms plus quadratic attention


def test_summary_statistics():
    stats = summary([float(x) for x in range(1, 101)])
    assert stats == {"min": 1.0, "mean": 50.5, "median": 50.5, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert summary([7.0])["p99"] == 7.0
