"""official_select (DESIGN.md section 4b): a per-segment plain-Python oracle, hand-computed counts (r_hat's last
bit, windows of unequal size), ties to the lower index, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from earlytom.compress import official_budget, official_select, official_windows, segment_labels


def oracle_select(scores: list, segments: list, r: float, B: int) -> list:
    """(frame, index) pairs by section 4b, in plain Python: scores [N][T] lists."""
    N, T = len(scores), len(scores[0])
    r_hat = min(r / (N / B), 1)
    top = math.ceil(T * r_hat)
    n = max(1, round(T * r_hat))
    sizes = [T // n + (i < T % n) for i in range(n)]
    picked = []
    for s, t in segments:
        for f in range(s, t + 1):
            if t - s + 1 <= 2 or f in (s, t):
                order = sorted(range(T), key=lambda i: (-scores[f][i], i))  # ties: the lower index first
                picked += [(f, i) for i in sorted(order[:top])]
            else:
                start = 0
                for size in sizes:
                    window = range(start, start + size)
                    picked.append((f, max(window, key=lambda i: (scores[f][i], -i))))
                    start += size
    return picked


@st.composite
def selection_case(draw):
    B = draw(st.integers(1, 40))
    N = draw(st.integers(1, B))
    cuts = sorted(draw(st.sets(st.integers(1, N - 1), max_size=N - 1))) if N > 1 else []
    bounds = [0, *cuts, N]
    segments = [(a, b - 1) for a, b in zip(bounds, bounds[1:], strict=False)]
    T = draw(st.integers(1, 30))
    r = draw(st.sampled_from([0.1, 0.15, 0.2, 0.25, 0.05, 0.5, 1.0]) | st.floats(0.01, 1.0))
    ties = draw(st.booleans())
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scores = torch.rand(N, T, generator=g)
    if ties:
        scores = (scores * 3).floor()
    return B, T, r, segments, scores, torch.randn(N, T, 2, generator=g)


@settings(max_examples=300, deadline=None)
@given(selection_case())
def test_matches_the_section_4b_oracle(case):
    B, T, r, segments, scores, tokens = case
    expected = oracle_select(scores.tolist(), segments, r, B)
    result = official_select(tokens, scores, torch.tensor(segments), retain_ratio=r, num_frames=B)
    assert list(zip(result.frame.tolist(), result.index.tolist(), strict=True)) == expected
    assert torch.equal(result.tokens, tokens[result.frame, result.index])
    budget = official_budget(torch.tensor(segments), tokens_per_frame=T, retain_ratio=r, num_frames=B)
    assert budget.total == len(expected)


def test_counts_by_hand():
    # B = 32, N = 20, T = 196, r = 0.2: r_hat = 0.2 / 0.625 = 0.32; ceil(62.72) = 63 per dynamic frame,
    # round(62.72) = 63 windows per static frame. Segments [0, 4] [5, 5] [6, 7] [8, 19]: static frames 1-3 and
    # 9-18 (13), dynamic 7: 7 * 63 + 13 * 63 = 1260.
    segments = torch.tensor([[0, 4], [5, 5], [6, 7], [8, 19]])
    budget = official_budget(segments, tokens_per_frame=196, retain_ratio=0.2, num_frames=32)
    assert (budget.per_dynamic, budget.windows, budget.total) == (63, 63, 1260)
    assert budget.r_hat == pytest.approx(0.32)
    # T = 196, r = 0.1, N = B: r_hat = 0.1, T * r_hat = 19.6 -> 20 per dynamic frame, 20 windows.
    budget = official_budget(torch.tensor([[0, 2]]), tokens_per_frame=196, retain_ratio=0.1, num_frames=3)
    assert (budget.per_dynamic, budget.windows, budget.total) == (20, 20, 60)
    # T = 25, r = 0.1, N = B = 4 in one segment: 2.5 -> ceil 3 per dynamic, round(2.5) = 2 windows (half to even).
    budget = official_budget(torch.tensor([[0, 3]]), tokens_per_frame=25, retain_ratio=0.1, num_frames=4)
    assert (budget.per_dynamic, budget.windows, budget.total) == (3, 2, 10)
    # r_hat capped at 1: N = 2 of B = 32 at r = 0.25 keeps everything.
    assert official_budget(torch.tensor([[0, 1]]), tokens_per_frame=9, retain_ratio=0.25, num_frames=32).total == 18


def test_r_hat_is_computed_as_written_in_double():
    # T = 25, B = 3, N = 1, r = 0.2: r / (N / B) = 0.2 / 0.333... = 0.6000000000000001 in double, so
    # T * r_hat = 15.000000000000002 and the ceiling is 16 (the exact rational gives 15). The released code
    # computes the same double (r / ((N*T)/(B*T))).
    budget = official_budget(torch.tensor([[0, 0]]), tokens_per_frame=25, retain_ratio=0.2, num_frames=3)
    assert budget.r_hat == 0.2 / (1 / 3)
    assert budget.per_dynamic == 16
    # T = 25, B = N = 3, r = 0.2: r / (N / B) = 0.2 exactly, ceil(5.000...) = 5; computing r * B / N instead gives
    # 0.20000000000000004 and 6.
    budget = official_budget(torch.tensor([[0, 1], [2, 2]]), tokens_per_frame=25, retain_ratio=0.2, num_frames=3)
    assert budget.per_dynamic == 5


def test_windows_of_unequal_size_first_ones_larger():
    # T = 10, n = 4: sizes 3, 3, 2, 2.
    assert official_windows(10, 4).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert official_windows(7, 7).tolist() == list(range(7))
    assert official_windows(5, 1).tolist() == [0] * 5
    with pytest.raises(ValueError, match=r"windows = 0 must lie in \[1, T = 5\]"):
        official_windows(5, 0)


def test_static_window_picks_and_ties():
    # One 3-frame segment, T = 10, B = N = 3, r = 0.4: r_hat = 0.4, 4 per dynamic frame, 4 windows (3, 3, 2, 2).
    scores = torch.zeros(3, 10)
    scores[1] = torch.tensor([0.1, 0.5, 0.5, 0.9, 0.2, 0.9, 0.3, 0.3, 0.0, 0.7])
    tokens = torch.arange(30.0).view(3, 10, 1)
    result = official_select(tokens, scores, torch.tensor([[0, 2]]), retain_ratio=0.4, num_frames=3)
    # Heads and tails with all-equal scores keep their first 4 tokens; the middle frame keeps 1 (0.5 over 0.5:
    # the lower index), 3 (0.9 over 0.9 later in its window), 6 (0.3 tie), 9.
    assert result.frame.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert result.index.tolist() == [0, 1, 2, 3, 1, 3, 6, 9, 0, 1, 2, 3]
    assert result.tokens.flatten().tolist() == [0, 1, 2, 3, 11, 13, 16, 19, 20, 21, 22, 23]


def test_segment_labels():
    assert segment_labels([(0, 0), (1, 2), (3, 6)]) == [False, False, False, False, True, True, False]


@pytest.mark.parametrize(
    ("segments", "match"),
    [
        ([[0, 1], [3, 4]], r"must tile the N = 5 frames in order"),
        ([[0, 3]], r"must tile the N = 5 frames"),
        ([[0, 2], [3, 2], [3, 4]], r"must tile"),
    ],
)
def test_bad_segments_are_refused(segments, match):
    with pytest.raises(ValueError, match=match):
        official_select(torch.randn(5, 4, 2), torch.rand(5, 4), torch.tensor(segments), retain_ratio=0.5, num_frames=5)


def test_bad_options_are_refused():
    tokens, scores, segments = torch.randn(4, 4, 2), torch.rand(4, 4), torch.tensor([[0, 3]])
    with pytest.raises(ValueError, match=r"retain_ratio = 0.0 is outside the valid range \(0.0, 1.0\]"):
        official_select(tokens, scores, segments, retain_ratio=0.0, num_frames=4)
    with pytest.raises(ValueError, match=r"num_frames = 3 .* must be >= N = 4"):
        official_select(tokens, scores, segments, retain_ratio=0.5, num_frames=3)
    with pytest.raises(ValueError, match=r"disagree on N or T"):
        official_select(tokens, scores[:, :3], segments, retain_ratio=0.5, num_frames=4)
