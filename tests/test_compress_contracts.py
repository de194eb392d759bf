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
    official_budget,
    official_select,
    selection_budget,
    token_select,
    uniform,
    visual_budget,
)
from earlytom.models.presets import preset_config, with_preset


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


def test_budget_refusals_say_how_far_to_raise_the_ratio():
    with pytest.raises(ValueError, match=r"= 0 tokens; raise retain_ratio to at least 0.1$"):  # 0.5 / (B * T)
        visual_budget(retain_ratio=0.01, num_frames=1, tokens_per_frame=5, available=5)
    # K = round(0.3 * 2 * 5) = 3 for 4 static frames of N = 4: at least n_s / (B * T) = 0.4.
    with pytest.raises(ValueError, match=r"the 4 static frames among N = 4 one token; raise r to at least 0.4$"):
        selection_budget(torch.ones(4, dtype=torch.bool), tokens_per_frame=5, retain_ratio=0.3, num_frames=2)


def test_static_labels_may_be_given_as_integers():
    scores = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    tokens = torch.randn(3, 6, 2)
    as_bool = token_select(tokens, scores, torch.tensor([True, False, True]), retain_ratio=0.5, num_frames=3)
    as_int = token_select(tokens, scores, torch.tensor([1, 0, 1]), retain_ratio=0.5, num_frames=3)
    assert torch.equal(as_int.frame, as_bool.frame) and torch.equal(as_int.index, as_bool.index)


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        (torch.tensor([0, 2]), r"^segments must be 2-D \[S, 2\], got shape \[2\]$"),
        (torch.tensor([[0, 1, 2]]), r"^segments has shape \[1, 3\]; need \[S, 2\] with S >= 1 \(first, last\) pairs$"),
        (torch.zeros(0, 2, dtype=torch.int64), r"^segments has shape \[0, 2\]; need \[S, 2\] with S >= 1"),
        (
            torch.tensor([[0, 1], [3, 3]]),
            r"^segments \[\[0, 1\], \[3, 3\]\] must tile the N = 4 frames in order: first = previous last \+ 1, "
            r"starting at 0 and ending at 3$",
        ),
    ],
)
def test_bad_segments_are_refused_by_name(segments, message):
    with pytest.raises(ValueError, match=message):
        official_select(torch.randn(4, 5, 2), torch.rand(4, 5), segments, retain_ratio=0.5, num_frames=4)
    if segments.dim() == 2 and segments.shape[1] == 2 and len(segments) == 0:
        with pytest.raises(ValueError, match=message):
            official_budget(segments, tokens_per_frame=5, retain_ratio=0.5, num_frames=4)


def test_official_budget_needs_tokens():
    with pytest.raises(ValueError, match=r"^tokens_per_frame = 0; need T >= 1$"):
        official_budget(torch.tensor([[0, 1]]), tokens_per_frame=0, retain_ratio=0.5, num_frames=2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_selection_works_on_scores_of_any_float_dtype(dtype):
    """Scores that are exact in every dtype (multiples of 1/8 up to 4) pick the same tokens in each."""
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 32, (5, 9), generator=g).float() / 8
    tokens = torch.randn(5, 9, 2, generator=g)
    is_static, segments = torch.tensor([False, True, True, True, False]), torch.tensor([[0, 4]])
    for select, labels in ((token_select, is_static), (official_select, segments)):
        reference = select(tokens, scores, labels, retain_ratio=0.4, num_frames=5)
        other = select(tokens, scores.to(dtype), labels, retain_ratio=0.4, num_frames=5)
        assert torch.equal(other.frame, reference.frame) and torch.equal(other.index, reference.index)
