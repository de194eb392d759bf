"""Exact ties: videos with identical frames in a row (a paused or static shot) make similarities exactly equal,
where `>` versus `>=` and the order of float32 operations decide. Streaming must reach the batch's decisions
bit for bit, in both variants."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from earlytom.compress import StreamingFrameMerge, StreamingOfficialCompress, frame_merge, official_compress

L, D = 5, 8


def repeated(runs: list[int], seed: int, dtype=torch.float32) -> torch.Tensor:
    """hidden [sum(runs), L, D]: run k is runs[k] copies of one random frame (near the previous run's, so the EMA
    does not cut at every run)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(L, D, generator=g)
    frames = []
    for count in runs:
        base = base + 0.4 * torch.randn(L, D, generator=g)
        frames += [base] * count
    return torch.stack(frames).to(dtype)


def paper_stream(hidden, **options):
    merger = StreamingFrameMerge(**options)
    out = [f for frame in hidden for f in merger.push(frame)]
    return out + merger.finish()


def official_stream(hidden, attention, **options):
    merger = StreamingOfficialCompress(**options)
    chunks = [merger.push(h, a) for h, a in zip(hidden, attention, strict=True)]
    return [c for c in chunks if c is not None] + [merger.finish()]


def test_identical_frames_give_equal_similarities():
    similarity = frame_merge(repeated([4], 0)).similarity
    assert torch.equal(similarity, similarity[:1].expand(3))  # ties, exactly


def test_paper_tie_between_adjacent_similarities_does_not_merge():
    """Frames 1-5 identical: s_1 == s_2 == s_3 == s_4, so frames 1-3 are no strict local peak and stay; frame 4
    is one (s_4 > s_5, frame 5 a middle) and merges with 5."""
    hidden = repeated([1, 5, 1], 1)
    batch = frame_merge(hidden, tau_seg=-1.0, tau_merge=0.0)
    streamed = paper_stream(hidden, tau_seg=-1.0, tau_merge=0.0)
    assert batch.source.tolist() == [[0, 0], [1, 1], [2, 2], [3, 3], [4, 5], [6, 6]]
    assert [[f.first, f.last] for f in streamed] == batch.source.tolist()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=7),
    st.integers(0, 2**16),
    st.sampled_from([0.3, 0.6, 1.0]),
    st.sampled_from([-1.0, 0.75, 0.95]),
    st.sampled_from([0.5, 0.8, 0.999]),
    st.sampled_from([torch.float32, torch.float16]),
)
def test_paper_streaming_equals_batch_on_repeated_frames(runs, seed, alpha, tau_seg, tau_merge, dtype):
    hidden = repeated(runs, seed, dtype)
    batch = frame_merge(hidden, alpha=alpha, tau_seg=tau_seg, tau_merge=tau_merge)
    streamed = paper_stream(hidden, alpha=alpha, tau_seg=tau_seg, tau_merge=tau_merge)
    assert [[f.first, f.last] for f in streamed] == batch.source.tolist()
    assert [f.segment for f in streamed] == batch.segment.tolist()
    assert [f.is_static for f in streamed] == batch.is_static.tolist()
    assert torch.equal(torch.stack([f.hidden for f in streamed]), batch.hidden)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=6),
    st.integers(0, 2**16),
    st.sampled_from([0.5, 0.9]),
    st.sampled_from([0.0, 0.5, 0.9]),
    st.sampled_from([2, 3, 6]),
    st.booleans(),
    st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_official_streaming_equals_batch_on_repeated_frames(runs, seed, alpha, tau_seg, max_window, final, dtype):
    hidden = repeated(runs, seed, dtype)
    g = torch.Generator().manual_seed(seed)
    attention = torch.rand(hidden.shape[:2], generator=g)
    attention[1::2] = attention[0::2][: attention[1::2].shape[0]]  # tied attention rows too
    options = {"alpha": alpha, "tau_seg": tau_seg, "max_window": max_window, "final": final}
    batch = official_compress(hidden, attention, **options)
    chunks = official_stream(hidden, attention, **options)
    assert torch.equal(torch.cat([c.source for c in chunks]), batch.source)
    assert torch.equal(torch.cat([c.hidden for c in chunks]), batch.hidden)
    assert torch.equal(torch.cat([c.attention for c in chunks]), batch.attention)
    if final:
        assert torch.equal(torch.cat([c.segments for c in chunks]), batch.segments)


def test_official_identical_middles_tie_and_keep_their_order():
    """A 5-frame segment of one repeated frame: every sig_j equals tau_m (all cosines are the same float), so no
    pair is strictly above tau_m: the head, the middles but the last (the released quirk), the tail are kept."""
    hidden = repeated([5], 2)
    attention = torch.rand(5, L, generator=torch.Generator().manual_seed(2))
    batch = official_compress(hidden, attention, tau_seg=0.5, max_window=6)
    assert batch.source.tolist() == [[0, 0], [1, 1], [2, 2], [4, 4]]
    chunks = official_stream(hidden, attention, tau_seg=0.5, max_window=6)
    assert torch.equal(torch.cat([c.source for c in chunks]), batch.source)
