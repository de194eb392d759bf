"""Token budgets checked against numbers computed here from DESIGN.md's arithmetic (sections 4 and 4b), never from
`selection_budget` / `official_budget`: the counts each selection actually returns per frame must equal them."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from earlytom.compress import official_select, token_select, visual_budget
from earlytom.compress.select import official_windows


def paper_counts(is_static: list[bool], B: int, T: int, r: float) -> list[int] | None:
    """DESIGN section 4, step by step: (tokens per static frame, K_d), or None when a static frame would get no
    token (a refusal). K / N is an exact fraction; surplus tokens go to static frames one at a time, in order."""
    N, n_s = len(is_static), sum(is_static)
    n_d = N - n_s
    K = min(round(r * B * T), N * T)  # Python's round: halves to the even neighbour
    m = min(T, max(1, round(Fraction(K, N))))
    if n_s * m > K:
        m = K // n_s
        if m == 0:
            return None
    K_d = K - n_s * m
    counts = [m if s else 0 for s in is_static]
    if K_d > n_d * T:  # dynamic frames keep everything; the rest goes round the static frames
        surplus = K_d - n_d * T
        static = [i for i, s in enumerate(is_static) if s]
        for step in range(surplus):
            counts[static[step % n_s]] += 1
        K_d = n_d * T
    return counts, K_d


def paper_case():
    return st.tuples(
        st.integers(1, 12),  # B
        st.integers(1, 30),  # T
        st.floats(0.01, 1.0),  # r
        st.lists(st.booleans(), min_size=1, max_size=12),  # labels of the N <= B frames
        st.integers(0, 2**16),
    )


@settings(max_examples=200, deadline=None)
@given(paper_case())
def test_paper_counts_per_frame_match_design(case):
    B, T, r, labels, seed = case
    labels = labels[:B]
    N = len(labels)
    assume(round(r * B * T) >= 1)
    g = torch.Generator().manual_seed(seed)
    tokens, scores = torch.randn(N, T, 2, generator=g), torch.rand(N, T, generator=g)
    is_static = torch.tensor(labels)
    expected = paper_counts(labels, B, T, r)
    if expected is None:
        with pytest.raises(ValueError, match="cannot give each of"):
            token_select(tokens, scores, is_static, retain_ratio=r, num_frames=B)
        return
    counts, K_d = expected
    result = token_select(tokens, scores, is_static, retain_ratio=r, num_frames=B)
    got = torch.bincount(result.frame, minlength=N).tolist()
    assert [c for c, s in zip(got, labels, strict=True) if s] == [c for c, s in zip(counts, labels, strict=True) if s]
    assert sum(c for c, s in zip(got, labels, strict=True) if not s) == K_d
    assert len(result.frame) == min(round(r * B * T), N * T)


@pytest.mark.parametrize(
    ("labels", "B", "T", "r", "static_counts", "dynamic"),
    [
        # K = round(0.5 * 4 * 10) = 20, N = 3, m = round(20 / 3) = 7: statics 7 + 7, the dynamic frame 6.
        ([True, False, True], 4, 10, 0.5, [7, 7], 6),
        # K = round(0.85 * 10 * 4) = 34, m = round(34 / 10) = 3: 27 static, K_d = 7 > 4 -> 3 surplus to frames 0-2.
        ([True] * 9 + [False], 10, 4, 0.85, [4, 4, 4, 3, 3, 3, 3, 3, 3], 4),
        # K = round(0.2 * 8 * 5) = 8, N = 8: m = 1 each; 3 static, K_d = 5 over 5 dynamic frames.
        ([False, True, True, False, True, False, False, False], 8, 5, 0.2, [1, 1, 1], 5),
        # K = round(0.25 * 2 * 5) = round(2.5) = 2 (half to even), one dynamic frame.
        ([False], 2, 5, 0.25, [], 2),
    ],
)
def test_paper_counts_by_hand(labels, B, T, r, static_counts, dynamic):
    N = len(labels)
    result = token_select(torch.randn(N, T, 2), torch.rand(N, T), torch.tensor(labels), retain_ratio=r, num_frames=B)
    got = torch.bincount(result.frame, minlength=N).tolist()
    assert [c for c, s in zip(got, labels, strict=True) if s] == static_counts
    assert sum(c for c, s in zip(got, labels, strict=True) if not s) == dynamic


def test_visual_budget_is_python_round_capped():
    assert visual_budget(retain_ratio=0.25, num_frames=2, tokens_per_frame=5, available=10) == 2  # round(2.5)
    assert visual_budget(retain_ratio=0.35, num_frames=2, tokens_per_frame=5, available=10) == 4  # round(3.5)
    assert visual_budget(retain_ratio=1.0, num_frames=4, tokens_per_frame=5, available=7) == 7
    with pytest.raises(ValueError, match=r"keeps round\(0.01 \* B=1 \* T=5\) = 0 tokens"):
        visual_budget(retain_ratio=0.01, num_frames=1, tokens_per_frame=5, available=5)
    with pytest.raises(ValueError, match=r"num_frames = 0"):
        visual_budget(retain_ratio=0.5, num_frames=0, tokens_per_frame=5, available=5)


def segments_of(lengths: list[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in lengths:
        out.append((start, start + n - 1))
        start += n
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=6),
    st.integers(0, 10),
    st.integers(1, 40),
    st.floats(0.01, 1.0),
    st.integers(0, 2**16),
)
def test_official_counts_per_frame_match_design(lengths, extra, T, r, seed):
    """r_hat = min(r / (N / B), 1) in double; dynamic frames (heads, tails, 1-2 frame segments) keep
    ceil(T * r_hat), middle frames max(1, round(T * r_hat)) (one per window)."""
    segments = segments_of(lengths)
    N = sum(lengths)
    B = N + extra
    r_hat = min(r / (N / B), 1.0)
    dynamic, static = math.ceil(T * r_hat), max(1, round(T * r_hat))
    middle = [first < i < last for first, last in segments for i in range(first, last + 1)]
    g = torch.Generator().manual_seed(seed)
    result = official_select(
        torch.randn(N, T, 2, generator=g),
        torch.rand(N, T, generator=g),
        torch.tensor(segments),
        retain_ratio=r,
        num_frames=B,
    )
    got = torch.bincount(result.frame, minlength=N).tolist()
    assert got == [static if m else dynamic for m in middle]
    for f in [i for i, m in enumerate(middle) if m]:  # one token per window
        window = official_windows(T, static)[result.index[result.frame == f]]
        assert window.tolist() == list(range(static))


def test_official_counts_by_hand():
    # T = 25, r = 0.1, B = N = 4 in one segment: T * r_hat = 2.5 -> ceil 3 for head and tail, round(2.5) = 2 windows.
    result = official_select(
        torch.randn(4, 25, 2), torch.rand(4, 25), torch.tensor([[0, 3]]), retain_ratio=0.1, num_frames=4
    )
    assert torch.bincount(result.frame, minlength=4).tolist() == [3, 2, 2, 3]
    # B = 32 frames merged to N = 2 (one segment): r_hat = min(0.25 * 16, 1) = 1: every token of both frames.
    result = official_select(
        torch.randn(2, 9, 2), torch.rand(2, 9), torch.tensor([[0, 1]]), retain_ratio=0.25, num_frames=32
    )
    assert torch.bincount(result.frame).tolist() == [9, 9]
    # r_hat = 0.2 / (1 / 3) = 0.6000000000000001 in double: ceil(25 * r_hat) = 16, not 15.
    result = official_select(
        torch.randn(1, 25, 2), torch.rand(1, 25), torch.tensor([[0, 0]]), retain_ratio=0.2, num_frames=3
    )
    assert len(result.frame) == 16


@pytest.mark.parametrize(("T", "n", "sizes"), [(25, 2, [13, 12]), (25, 7, [4, 4, 4, 4, 3, 3, 3]), (5, 5, [1] * 5)])
def test_official_window_sizes(T, n, sizes):
    """Sizes T // n, the first T % n one larger, in raster order."""
    window = official_windows(T, n)
    assert torch.bincount(window).tolist() == sizes
    assert bool((window.diff() >= 0).all())
