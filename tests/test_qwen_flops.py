"""benchmarks.flops for Qwen2.5-VL (windowed and full-attention ViT blocks, the 2x2 merger, the decoder) against
hand computations on the tiny configuration and the parameter counts of transformers' own modules."""

import torch

from benchmarks.flops import prefill_flops, vision_flops
from earlytom.models.registry import family_of, packaged_config


def tiny_dims(size):
    config = packaged_config("qwen-tiny")
    family = family_of(config.model_type)
    return config, family.dims(config, family.processor(config, None).resized(size, for_engine=False))


def test_qwen_tiny_vision_flops_by_hand():
    # qwen-tiny: D = 32, MLP 64 (gated: 3 matrices), 4 blocks, full attention in blocks 1 and 3, 112-px windows
    # (8 x 8 patches), merger 4D = 128 -> D' = 64. 224 x 224 px: 16 x 16 = 256 patches (4 full windows), T = 64.
    config, dims = tiny_dims((224, 224))
    linear = 256 * 2 * (4 * 32 * 32 + 3 * 32 * 64)  # 5_242_880 per block
    window = linear + 4 * (4 * 64 * 64) * 32  # 4 windows of 64 x 64 queries x keys: 7_340_032
    full = linear + 4 * 256 * 256 * 32  # 13_631_488
    patch = 2 * 256 * (3 * 2 * 14 * 14) * 32  # Conv3d over 2 frames: 19_267_584
    merger = 2 * 64 * (128 * 128 + 128 * 64)  # 3_145_728
    score = 2 * 256 * 2 * 32 * 32 + 2 * 256 * 256 * 32  # q, k and QK^T of a full block: 5_242_880
    # official chain for merge layer 1: blocks 0-1 over 4 slices, blocks 2-3 over the 3 left, scores on the 4
    flops = vision_flops(config, [("vision_0", 4, 2), ("vision_1", 3, 2)], score_frames=[4], dims=dims)
    assert flops == {
        "vision_0": 4 * (window + full) + 4 * patch,
        "vision_1": 3 * (window + full) + 3 * merger + 4 * score,
    }
    assert flops == {"vision_0": 160_956_416, "vision_1": 93_323_264}


def test_partial_windows_attend_inside_themselves():
    # 168 x 280 px: 12 x 20 patches; windows of 8 x 8 patches with the last row and column partial
    config, dims = tiny_dims((168, 280))
    attended = 0
    for rows in (8, 4):
        for cols in (8, 8, 4):
            attended += (rows * cols) ** 2  # every query of a window sees the window's keys
    assert attended == 11_520
    linear = 240 * 2 * (4 * 32 * 32 + 3 * 32 * 64)
    window, full = linear + 4 * attended * 32, linear + 4 * 240 * 240 * 32
    flops = vision_flops(config, [("vision_0", 1, 1), ("vision_1", 1, 3)], score_frames=[], dims=dims)
    patch, merger = 2 * 240 * 1176 * 32, 2 * 60 * (128 * 128 + 128 * 64)
    assert flops == {"vision_0": window + patch, "vision_1": full + window + full + merger}


def test_block_and_decoder_flops_match_transformers_parameter_counts():
    """Matmul FLOPs = 2 x tokens x the weights of transformers' own Linear layers (attention scores aside)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLDecoderLayer, Qwen2_5_VLVisionBlock

    config, dims = tiny_dims((224, 224))
    with torch.device("meta"):
        block = Qwen2_5_VLVisionBlock(config.vision_config)
        layer = Qwen2_5_VLDecoderLayer(config.get_text_config(), 0)
    block_weights = sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
    full = vision_flops(config, [("v", 1, 2)], score_frames=[], dims=dims)["v"]  # head and tail: patch and merger
    patch, window_scores, full_scores = 2 * 256 * 1176 * 32, 4 * 4 * 64 * 64 * 32, 4 * 256 * 256 * 32
    merger = 2 * 64 * (128 * 128 + 128 * 64)
    assert full == 2 * 2 * 256 * block_weights + window_scores + full_scores + patch + merger
    layer_weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    assert layer_weights == 36_864  # q 64x64, k and v 64x32, o 64x64, gate / up / down 64x128
    S = 10  # 2 layers, causal QK^T + AV over 10 tokens, one logits row of 320
    assert prefill_flops(config, S) == 2 * (2 * S * layer_weights + 2 * S * S * 64) + 2 * 64 * 320 == 1_541_120
