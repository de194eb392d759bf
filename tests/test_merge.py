"""FrameMerge: the primer's example as DESIGN.md corrects it, structural properties, streaming == batch."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from earlytom.compress import StreamingFrameMerge, adjacent_similarity, frame_merge, plan_merge

torch.manual_seed(0)


def frames_with_drift(levels: list[float], L: int = 6, D: int = 8, seed: int = 0) -> torch.Tensor:
    """hidden [B, L, D]: frame t = frame t-1 + levels[t] * noise, so similarity falls as a level grows
    (a level of 0 repeats the previous frame exactly)."""
    g = torch.Generator().manual_seed(seed)
    frames = [torch.randn(L, D, generator=g)]
    for level in levels[1:]:
        frames.append(frames[-1] + level * torch.randn(L, D, generator=g))
    return torch.stack(frames)


def streaming(hidden: torch.Tensor, **kw) -> list:
    merger = StreamingFrameMerge(**kw)
    out = []
    for frame in hidden:
        out += merger.push(frame)
    return out + merger.finish()


def test_primer_example_corrected():
    # s = (0.92, 0.85, 0.78): EMA 0.92, 0.878, 0.8192 stays above tau_seg, so F0..F3 form one segment.
    # Algorithm 1 keeps head F0 and tail F3; middle F1 is a local peak (0.85 > 0.78) above tau_merge,
    # so F1 and F2 merge (the primer's text merges the head F0, which DESIGN.md rules out).
    plan = plan_merge(torch.tensor([0.92, 0.85, 0.78]), alpha=0.6, tau_seg=0.75, tau_merge=0.80)
    assert plan.source.tolist() == [[0, 0], [1, 2], [3, 3]]
    assert plan.segment.tolist() == [0, 0, 0]
    assert plan.is_static.tolist() == [False, True, False]
    torch.testing.assert_close(plan.weight[1], torch.tensor([0.85 / 1.63, 0.78 / 1.63]))


def test_threshold_ties_compare_in_float32():
    # s_1 is float32(0.8); tau_merge = 0.8 rounds to the same float32, so s_1 does not exceed it.
    plan = plan_merge(torch.tensor([0.2, 0.8, 0.5]), tau_seg=-1.0, tau_merge=0.8)
    assert plan.source.tolist() == [[0, 0], [1, 1], [2, 2], [3, 3]]
    assert plan_merge(torch.tensor([0.2, 0.8, 0.5]), tau_seg=-1.0, tau_merge=0.79).source.tolist()[1] == [1, 2]


def test_ema_runs_across_boundaries():
    # e = 0.9, 0.6*0.1+0.4*0.9 = 0.42 (cut), 0.6*0.9+0.4*0.42 = 0.708 (cut: the EMA is not reset to 0.9),
    # 0.6*0.9+0.4*0.708 = 0.8232 (no cut).
    plan = plan_merge(torch.tensor([0.9, 0.1, 0.9, 0.9]), alpha=0.6, tau_seg=0.75, tau_merge=0.8)
    assert plan.segment.tolist() == [0, 0, 1, 2, 2]
    assert plan.is_static.tolist() == [False, False, False, False, False]


def test_merged_pair_is_weighted_average():
    """Two different frames, merged with weights worked out by hand. Token 0 of the frames: F0 = (1, 0),
    F1 = (0.8, 0.6), F2 = (0.6, 0.8), F3 = (0, 1); token 1 is twice token 0 (same cosines). So s = (0.8, 0.96,
    0.8): F1 is a local peak above tau_merge and merges with F2, weights 0.96 / 1.76 = 6/11 and 0.8 / 1.76 = 5/11:
    token 0 -> (6 * 0.8 + 5 * 0.6, 6 * 0.6 + 5 * 0.8) / 11 = (7.8, 7.6) / 11."""
    token = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    hidden = torch.stack([token, 2 * token], dim=1)  # [4, L = 2, D = 2]
    result = frame_merge(hidden, tau_seg=-1.0, tau_merge=0.9)
    torch.testing.assert_close(result.similarity, torch.tensor([0.8, 0.96, 0.8]))
    assert result.source.tolist() == [[0, 0], [1, 2], [3, 3]]
    merged = torch.tensor([[7.8 / 11, 7.6 / 11], [15.6 / 11, 15.2 / 11]])
    torch.testing.assert_close(result.hidden, torch.stack([hidden[0], merged, hidden[3]]))


def test_identical_frames_merge_into_that_frame():
    hidden = frames_with_drift([0.0, 0.1, 0.0, 0.2, 0.1, 0.1])  # F1 == F2, followed by a smaller similarity
    result = frame_merge(hidden)
    assert [1, 2] in result.source.tolist()
    merged = result.source.tolist().index([1, 2])
    torch.testing.assert_close(result.hidden[merged], hidden[1])
    assert result.similarity[1] == pytest.approx(1.0)


def test_orthogonal_frames_never_merge():
    B, L = 7, 4
    basis = torch.eye(B * L).view(B, L, B * L)  # every token orthogonal to every token of every other frame
    result = frame_merge(basis, tau_seg=-0.5, tau_merge=0.0)
    torch.testing.assert_close(result.similarity, torch.zeros(B - 1))
    assert result.source[:, 0].tolist() == result.source[:, 1].tolist() == list(range(B))
    torch.testing.assert_close(result.hidden, basis)


@pytest.mark.parametrize("B", [1, 2])
def test_one_or_two_frames_pass_through_as_dynamic(B):
    hidden = torch.randn(B, 5, 4)
    result = frame_merge(hidden)
    assert result.hidden.shape == hidden.shape
    assert result.is_static.tolist() == [False] * B
    torch.testing.assert_close(result.hidden, hidden)
    assert result.similarity.shape == (B - 1,)


def test_half_precision_similarity_accumulates_in_fp32():
    hidden = torch.randn(4, 729, 64)
    reference = adjacent_similarity(hidden)
    half = adjacent_similarity(hidden.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, reference, atol=2e-3, rtol=0)


similarities = st.lists(st.floats(-1, 1, allow_nan=False), min_size=0, max_size=40)
thresholds = st.floats(-1, 1, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(s=similarities, alpha=st.floats(0.05, 1), tau_seg=thresholds, tau_merge=thresholds)
def test_plan_structure(s, alpha, tau_seg, tau_merge):
    s = torch.tensor(s, dtype=torch.float32).tolist()  # the values plan_merge compares
    plan = plan_merge(torch.tensor(s), alpha=alpha, tau_seg=tau_seg, tau_merge=tau_merge)
    B = len(s) + 1
    first, last = plan.source[:, 0].tolist(), plan.source[:, 1].tolist()
    # Every input frame lands in exactly one output frame, in temporal order, pairs at most.
    assert [f for a, b in zip(first, last, strict=True) for f in range(a, b + 1)] == list(range(B))
    assert all(b - a in (0, 1) for a, b in zip(first, last, strict=True))
    torch.testing.assert_close(plan.weight.sum(1), torch.ones(len(first)))
    segment = plan.segment.tolist()
    assert segment == sorted(segment) and segment[0] == 0
    for seg in set(segment):
        rows = [i for i, g in enumerate(segment) if g == seg]
        head, tail = rows[0], rows[-1]
        # Heads and tails are never merged and are the only dynamic frames.
        assert first[head] == last[head] and first[tail] == last[tail]
        assert plan.is_static[rows].tolist() == [r not in (head, tail) for r in rows]
    for a, b in zip(first, last, strict=True):
        if b > a:
            assert s[a] > tau_merge and s[a] > s[b]


@settings(max_examples=60, deadline=None)
@given(
    levels=st.lists(st.sampled_from([0.0, 0.02, 0.1, 0.3, 1.0, 5.0]), min_size=1, max_size=24),
    seed=st.integers(0, 1000),
    tau_seg=st.floats(0.0, 1.0),
    tau_merge=st.floats(0.5, 1.0),
)
def test_streaming_equals_batch(levels, seed, tau_seg, tau_merge):
    hidden = frames_with_drift(levels, seed=seed)
    batch = frame_merge(hidden, tau_seg=tau_seg, tau_merge=tau_merge)
    stream = streaming(hidden, tau_seg=tau_seg, tau_merge=tau_merge)
    assert [[f.first, f.last] for f in stream] == batch.source.tolist()
    assert [f.segment for f in stream] == batch.segment.tolist()
    assert [f.is_static for f in stream] == batch.is_static.tolist()
    torch.testing.assert_close(torch.stack([f.hidden for f in stream]), batch.hidden)


def test_streaming_emits_each_frame_within_two_frames():
    hidden = frames_with_drift([0.0, 0.05, 0.0, 0.3, 0.05, 0.02, 0.05, 1.0, 0.05])
    merger = StreamingFrameMerge()
    for t, frame in enumerate(hidden):
        merger.push(frame)
        assert merger._next >= t - 1  # every frame up to t-2 is decided
    merger.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        merger.push(hidden[0])


@pytest.mark.parametrize(
    "hidden, match",
    [
        (torch.randn(4, 5), r"3-D \[B, L, D\]"),
        (torch.randn(0, 5, 4), "B = 0"),
        (torch.tensor([[[1.0, float("nan")]]]).expand(3, 2, 2), "NaN/Inf"),
        (torch.tensor([[[1.0, float("inf")]]]).expand(3, 2, 2), "NaN/Inf"),
    ],
)
def test_bad_hidden(hidden, match):
    with pytest.raises(ValueError, match=match):
        frame_merge(hidden)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"tau_seg": 1.5}, r"tau_seg = 1.5 is outside the valid range \[-1.0, 1.0\]"),
        ({"tau_merge": -2.0}, r"tau_merge = -2.0 is outside"),
        ({"alpha": 0.0}, r"alpha = 0.0 is outside the valid range \(0.0, 1.0\]"),
        ({"tau_seg": float("nan")}, "tau_seg = nan"),
    ],
)
def test_bad_thresholds(kw, match):
    with pytest.raises(ValueError, match=match):
        frame_merge(torch.randn(3, 2, 2), **kw)
    with pytest.raises(ValueError, match=match):
        StreamingFrameMerge(**kw)


def test_streaming_rejects_non_finite_first_frame():
    with pytest.raises(ValueError, match="NaN/Inf in 1 of 1 tokens"):
        StreamingFrameMerge().push(torch.tensor([[float("nan"), 1.0]]))
