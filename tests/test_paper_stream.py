"""The paper variant's FrameMerge, frame by frame (StreamingFrameMerge, what the cascade runs) against the whole video
at once (frame_merge, the whole-video chain), bit for bit at the encoders' own sizes: LLaVA-OV's 729 x 1152 and a
Qwen2.5-VL-like 196 x 896, where a batched dot product (the einsum this replaced) rounds a pair's similarity
differently from the pair alone; in both memory layouts (token-major, and the tiny encoder's channels-first, where
stacking a pair into a new tensor changed the reduction order). Small sizes too, with exact repeats and frames
differing only in scale (ties)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from earlytom.compress import StreamingFrameMerge, adjacent_similarity, frame_merge

SHAPES = [(729, 1152), (196, 896), (50, 64), (3, 7), (1, 1)]  # (L, D)
LEVELS = [0.0, 0.05, 0.2, 0.5, 1.0, 3.0]  # noise added to the previous frame; 0 repeats it exactly


def drifting(levels: list[float], scales: list[float], L: int, D: int, seed: int, channels_first: bool) -> torch.Tensor:
    """hidden [B, L, D] float32: frame t = (frame t-1 + levels[t] * noise) * scales[t] (a scale changes no cosine);
    channels_first: stored as [B, D, L] (the tiny encoder's layout: a token's D values L apart in memory)."""
    g = torch.Generator().manual_seed(seed)
    frames = [torch.randn(L, D, generator=g)]
    for level in levels[1:]:
        frames.append(frames[-1] + level * torch.randn(L, D, generator=g))
    hidden = torch.stack([f * s for f, s in zip(frames, scales, strict=True)])
    return hidden.transpose(1, 2).contiguous().transpose(1, 2) if channels_first else hidden


@st.composite
def videos(draw) -> torch.Tensor:
    L, D = draw(st.sampled_from(SHAPES))
    levels = draw(st.lists(st.sampled_from(LEVELS), min_size=1, max_size=6 if L * D > 10**5 else 24))
    scales = draw(st.lists(st.sampled_from([1.0, 0.5, 3.0]), min_size=len(levels), max_size=len(levels)))
    return drifting(levels, scales, L, D, draw(st.integers(0, 2**16)), draw(st.booleans()))


def streamed(hidden: torch.Tensor, **options) -> list:
    merger = StreamingFrameMerge(**options)
    out = []
    for frame in hidden:
        out += merger.push(frame)
    return out + merger.finish()


@settings(max_examples=30, deadline=None)
@given(hidden=videos())
def test_adjacent_similarity_of_the_whole_video_is_that_of_each_pair(hidden):
    whole = adjacent_similarity(hidden)
    pairs = [adjacent_similarity(hidden[t : t + 2]) for t in range(len(hidden) - 1)]
    assert torch.equal(whole, torch.cat([torch.empty(0), *pairs]))


@settings(max_examples=30, deadline=None)
@given(
    hidden=videos(),
    alpha=st.sampled_from([0.6, 0.9]),
    thresholds=st.sampled_from([(0.5, 0.8), (0.8, 0.9), (0.9, 0.95), (-1.0, 0.0)]),
)
def test_streaming_frame_merge_equals_the_whole_video_bit_for_bit(hidden, alpha, thresholds):
    tau_seg, tau_merge = thresholds
    batch = frame_merge(hidden, alpha=alpha, tau_seg=tau_seg, tau_merge=tau_merge)
    stream = streamed(hidden, alpha=alpha, tau_seg=tau_seg, tau_merge=tau_merge)
    assert [[f.first, f.last] for f in stream] == batch.source.tolist()
    assert [f.segment for f in stream] == batch.segment.tolist()
    assert [f.is_static for f in stream] == batch.is_static.tolist()
    assert torch.equal(torch.stack([f.hidden for f in stream]), batch.hidden)


def test_adjacent_similarity_is_the_mean_of_the_token_cosines():
    """Against a float64 plain loop: the mean over tokens of each token's cosine, not the cosine of the flattened
    frames (which weighs tokens by their norms: token 1 here is 10x token 0 in frame 0 only)."""
    hidden = torch.tensor(
        [
            [[1.0, 0.0], [10.0, 0.0]],  # frame 0
            [[1.0, 1.0], [0.0, 2.0]],  # frame 1: cos 1/sqrt(2) and 0 with frame 0
            [[2.0, 2.0], [0.0, 5.0]],  # frame 2: cos 1 and 1 with frame 1
        ]
    )
    expected = []
    for t in range(2):
        cosines = []
        for a, b in zip(hidden[t].double().tolist(), hidden[t + 1].double().tolist(), strict=True):
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            cosines.append(dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5))
        expected.append(sum(cosines) / len(cosines))
    assert expected == pytest.approx([0.5**0.5 / 2, 1.0])  # the hand values
    torch.testing.assert_close(adjacent_similarity(hidden), torch.tensor(expected, dtype=torch.float32))
    assert adjacent_similarity(hidden[:1]).shape == (0,)
