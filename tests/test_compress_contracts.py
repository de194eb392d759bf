"""Contracts of the compression ops that no output comparison sees: the streaming forms hold a bounded number of
frames (they are meant for long videos), refusals name the tensor and the shape they need, presets accept the
variant they are settings of."""

import random

import pytest
import torch

from earlytom.compress import (
    StreamingFrameMerge,
    StreamingOfficialCompress,
    global_topk,
    preset_config,
    uniform,
    with_preset,
)


def drifting(count: int, seed: int) -> torch.Tensor:
    """hidden [count, 4, 6]: each frame the previous plus noise of a random level (0: an exact repeat)."""
    rnd, g = random.Random(seed), torch.Generator().manual_seed(seed)
    frames = [torch.randn(4, 6, generator=g)]
    for _ in range(count - 1):
        frames.append(frames[-1] + rnd.choice([0.0, 0.05, 0.3, 2.0]) * torch.randn(4, 6, generator=g))
    return torch.stack(frames)


@pytest.mark.parametrize("options", [{}, {"tau_seg": -1.0, "tau_merge": 0.0}, {"tau_seg": 0.99}])
def test_streaming_frame_merge_holds_at_most_two_frames(options):
    """A frame is decided two frames after it arrived, so at most the two newest are held between pushes."""
    for seed in range(8):
        merger = StreamingFrameMerge(**options)
        for frame in drifting(20, seed):
            merger.push(frame)
            assert len(merger._frames) <= 2
        merger.finish()


@pytest.mark.parametrize("max_window", [2, 3, 6])
def test_streaming_official_holds_at_most_a_window(max_window):
    for seed in range(6):
        merger = StreamingOfficialCompress(tau_seg=0.5, max_window=max_window, final=True)
        hidden = drifting(20, seed)
        for h, a in zip(hidden, torch.rand(20, 4), strict=True):
            merger.push(h, a)
            assert len(merger._open) <= max_window - 1
        merger.finish()


def test_baselines_name_the_shape_they_need():
    with pytest.raises(ValueError, match=r"^tokens must be 3-D \[N, T, D\], got shape \[3, 4\]$"):
        uniform(torch.zeros(3, 4), retain_ratio=0.5, num_frames=3)
    with pytest.raises(ValueError, match=r"^scores must be 2-D \[N, T\], got shape \[3\]$"):
        global_topk(torch.zeros(3, 4, 2), torch.zeros(3), retain_ratio=0.5, num_frames=3)


def test_presets_take_the_official_variant_and_refuse_another():
    preset = preset_config("mvbench", 0.10)
    assert with_preset(preset, {"variant": "official", "tau_seg": None}) == preset | {"variant": "official"}
    message = (
        r"^variant = 'paper' with a preset: presets are settings of variant 'official'; drop the preset or the variant$"
    )
    with pytest.raises(ValueError, match=message):
        with_preset(preset, {"variant": "paper"})
