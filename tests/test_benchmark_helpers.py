"""The analytic FLOPs and timing statistics the benchmarks print."""

import pytest
import torch

from benchmarks.common import gemm_fraction, summary
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
    full = vision_flops(config, [("vision_head", 32, 6), ("vision_tail", 32, 20)], score_frames=[32])
    merged = vision_flops(config, [("vision_head", 32, 6), ("vision_tail", 20, 20)], score_frames=[20])
    assert merged["vision_head"] == full["vision_head"]
    assert merged["vision_tail"] == pytest.approx(full["vision_tail"] * 20 / 32)
    chain = vision_flops(
        config, [("vision_head", 32, 9), ("vision_mid1", 20, 13), ("vision_tail", 12, 4)], score_frames=[32, 20]
    )
    v = config.vision_config
    assert chain["vision_mid1"] == 20 * 13 * encoder_layer(729, v.hidden_size, v.intermediate_size)  # layers only
    assert prefill_flops(config, 6300) > 6 * prefill_flops(config, 1000)  # linear terms plus quadratic attention
    half = prefill_flops(config, 1000, inner_layer=12, kept=500)
    assert prefill_flops(config, 500) < half < prefill_flops(config, 1000)


def test_summary_statistics():
    stats = summary([float(x) for x in range(1, 101)])
    assert stats == {"min": 1.0, "mean": 50.5, "median": 50.5, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert summary([7.0])["p99"] == 7.0


def test_gemm_fraction_is_flops_per_second_over_the_gemm_figure():
    # 2 TFLOP in 20 s is 100 GFLOP/s: 80% of a 125 GFLOP/s GEMM.
    assert gemm_fraction(2e12, 20.0, 125.0) == pytest.approx(0.8)
    # Issue 28's row: 8.66 TFLOP in 100.5 s = 86.169 GFLOP/s, over 136.4 GFLOP/s = 0.63174.
    assert gemm_fraction(8.66e12, 100.5, 136.4) == pytest.approx(0.63174, abs=1e-5)
