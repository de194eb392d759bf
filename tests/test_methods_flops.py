"""The compared methods' analytic FLOPs (benchmarks/flops.py) on the tiny config: SigLIP's pooling head counted
by hand, and their vision side equal to the paper chain's with nothing merged."""

from benchmarks.flops import method_vision_flops, pooling_head_flops, vision_flops
from earlytom.models.registry import packaged_config


def test_pooling_head_flops_by_hand():
    """L = 81 patches, D = 32, MLP 64: probe q 2*32*32, k and v 2*81*2*32*32, scores and sum 4*81*32, out projection
    2*32*32, MLP 2*2*32*64."""
    config = packaged_config("tiny")
    assert pooling_head_flops(config) == 2048 + 331776 + 10368 + 2048 + 8192


def test_method_vision_is_the_unmerged_chain_plus_the_head():
    config = packaged_config("tiny")
    unmerged = vision_flops(config, [("vision_head", 8, 1), ("vision_tail", 8, 3)], score_frames=[8])
    assert method_vision_flops(config, 8, head=False) == sum(unmerged.values())
    assert method_vision_flops(config, 8, head=True) - method_vision_flops(config, 8, head=False) == 8 * 354432
