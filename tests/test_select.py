"""TokenSelect and the baselines: exact budgets, ordering, windows, ties, bad input."""

from fractions import Fraction

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_budget_oracle import paper_counts

from earlytom.compress import global_topk, selection_budget, token_select, uniform
from earlytom.compress.select import window_argmax


def test_primer_selection_example_corrected():
    # After the corrected merge: [F0 (head, dynamic), M12 (static), F3 (tail, dynamic)], T = 3, r = 0.5, B = 4.
    # K = round(0.5 * 4 * 3) = 6; m = round(6 / 3) = 2 for the static frame; K_d = 4 over F0 and F3.
    tokens = torch.arange(9.0).view(3, 3, 1)
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.7, 0.3], [0.4, 0.8, 0.6]])
    result = token_select(tokens, scores, torch.tensor([False, True, False]), retain_ratio=0.5, num_frames=4)
    # Static M12: windows {0, 1} and {2} -> tokens 1 and 2. Dynamic top-4 of (0.9 .1 .5 | .4 .8 .6) -> F0:0,2 F3:1,2.
    assert result.frame.tolist() == [0, 0, 1, 1, 2, 2]
    assert result.index.tolist() == [0, 2, 1, 2, 1, 2]
    assert result.tokens.flatten().tolist() == [0.0, 2.0, 4.0, 5.0, 7.0, 8.0]


def test_static_window_picks_best_of_each_window():
    # 12 tokens, 4 windows of 3: the best of each window survives even when a sink dominates elsewhere.
    scores = torch.tensor([[0.1, 0.2, 0.05, 9.0, 0.3, 0.1, 0.0, 0.15, 0.01, 0.3, 0.02, 0.01]])
    row, index = window_argmax(scores, torch.tensor([4]))
    assert row.tolist() == [0, 0, 0, 0]
    assert index.tolist() == [1, 3, 7, 9]


def test_budget_surplus_spreads_over_static_frames():
    # N = 4 (2 dynamic, 2 static), T = 10, K = round(1.0 * 6 * 10) = 60 capped at N * T = 40: all tokens kept.
    budget = selection_budget(
        torch.tensor([False, True, True, False]), tokens_per_frame=10, retain_ratio=1.0, num_frames=6
    )
    assert (budget.total, budget.static, budget.dynamic) == (40, [10, 10], 20)
    # K = round(0.5 * 4 * 10) = 20, m = round(20 / 3) = 7 for each of 2 static frames, K_d = 6 <= 10.
    budget = selection_budget(torch.tensor([True, False, True]), tokens_per_frame=10, retain_ratio=0.5, num_frames=4)
    assert (budget.total, budget.static, budget.dynamic) == (20, [7, 7], 6)
    # K = round(0.85 * 10 * 4) = 34, m = round(3.4) = 3 for 9 static frames, K_d = 7 > one dynamic frame's T = 4:
    # the surplus 3 goes to the static frames, earliest first.
    budget = selection_budget(torch.tensor([True] * 9 + [False]), tokens_per_frame=4, retain_ratio=0.85, num_frames=10)
    assert (budget.total, budget.static, budget.dynamic) == (34, [4, 4, 4, 3, 3, 3, 3, 3, 3], 4)


def test_budget_uses_python_rounding():
    # round(0.25 * 2 * 5) = round(2.5) = 2 (half to even), not 3.
    assert selection_budget(torch.tensor([False]), tokens_per_frame=5, retain_ratio=0.25, num_frames=2).total == 2


@st.composite
def selection_case(draw):
    B = draw(st.integers(1, 32))
    N = draw(st.integers(1, B))
    T = draw(st.integers(1, 40))
    is_static = draw(st.lists(st.booleans(), min_size=N, max_size=N))
    r = draw(st.floats(0.01, 1.0))
    tie_level = draw(st.sampled_from([None, 3]))  # None: continuous scores; 3: heavy ties
    seed = draw(st.integers(0, 2**16))
    return B, N, T, torch.tensor(is_static, dtype=torch.bool), r, tie_level, seed


def make_inputs(N, T, tie_level, seed, D=3):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(N, T, generator=g)
    if tie_level is not None:
        scores = (scores * tie_level).floor()
    return torch.randn(N, T, D, generator=g), scores


def raster_windows(T: int, count: int) -> list[list[int]]:
    """The oracle's windows: T raster tokens cut into `count` contiguous runs of near-equal size, window w starting
    at the first token at or after w * T / count (exact fractions)."""
    starts = [next(t for t in range(T + 1) if Fraction(t) >= Fraction(w * T, count)) for w in range(count)]
    return [list(range(a, b)) for a, b in zip(starts, [*starts[1:], T], strict=True)]


def test_raster_windows_by_hand():
    assert raster_windows(7, 3) == [[0, 1, 2], [3, 4], [5, 6]]  # starts 0, 7/3 -> 3, 14/3 -> 5
    assert raster_windows(4, 4) == [[0], [1], [2], [3]]
    assert raster_windows(5, 2) == [[0, 1, 2], [3, 4]]


@settings(max_examples=400, deadline=None)
@given(selection_case())
def test_token_select_properties(case):
    """Per-frame counts from DESIGN section 4's arithmetic (test_budget_oracle.paper_counts), each static frame's
    picks the best token of each window of `raster_windows`, the dynamic picks a global top-K_d; none of the
    expectations comes from earlytom."""
    B, N, T, is_static, r, tie_level, seed = case
    K = min(round(r * B * T), N * T)
    assume(K >= 1)
    tokens, scores = make_inputs(N, T, tie_level, seed)
    expected = paper_counts(is_static.tolist(), B, T, r)
    if expected is None:
        with pytest.raises(ValueError, match="cannot give each of"):
            token_select(tokens, scores, is_static, retain_ratio=r, num_frames=B)
        return
    counts_per_frame, K_d = expected
    result = token_select(tokens, scores, is_static, retain_ratio=r, num_frames=B)
    flat = result.frame * T + result.index
    assert len(flat) == K  # exactly K
    assert bool((flat[1:] > flat[:-1]).all())  # temporal then raster order, no duplicates
    torch.testing.assert_close(result.tokens, tokens[result.frame, result.index])
    counts = torch.bincount(result.frame, minlength=N)
    assert int(counts[~is_static].sum()) == K_d
    for f in is_static.nonzero().flatten().tolist():
        assert counts[f] == counts_per_frame[f]
        picked = result.index[result.frame == f].tolist()
        best = []
        for members in raster_windows(T, counts_per_frame[f]):
            top = max(scores[f, t] for t in members)
            best.append(min(t for t in members if scores[f, t] == top))  # window argmax, lowest index on ties
        assert picked == best
    dynamic = ~is_static
    dyn_scores = scores[dynamic].flatten()
    chosen = torch.zeros(N, T, dtype=torch.bool)
    chosen[result.frame, result.index] = True
    chosen_dyn = chosen[dynamic].flatten()
    if chosen_dyn.any() and (~chosen_dyn).any():
        # Global top-K_d: every kept dynamic token scores >= every dropped one; ties go to the lower index.
        kept_min = dyn_scores[chosen_dyn].min()
        assert kept_min >= dyn_scores[~chosen_dyn].max()
        tied_dropped = (~chosen_dyn & (dyn_scores == kept_min)).nonzero()
        tied_kept = (chosen_dyn & (dyn_scores == kept_min)).nonzero()
        if len(tied_dropped):
            assert tied_kept.max() < tied_dropped.min()
    # Deterministic.
    again = token_select(tokens, scores, is_static, retain_ratio=r, num_frames=B)
    assert torch.equal(again.frame, result.frame) and torch.equal(again.index, result.index)


def test_all_equal_scores_pick_lowest_indices():
    tokens, scores = torch.randn(3, 8, 2), torch.ones(3, 8)
    result = token_select(tokens, scores, torch.tensor([False, True, False]), retain_ratio=0.25, num_frames=3)
    # K = 6, static m = 2 -> windows {0..3}, {4..7} -> tokens 0, 4; dynamic K_d = 4 -> first four of frame 0.
    assert result.frame.tolist() == [0, 0, 0, 0, 1, 1]
    assert result.index.tolist() == [0, 1, 2, 3, 0, 4]


@settings(max_examples=100, deadline=None)
@given(B=st.integers(1, 16), T=st.integers(1, 30), r=st.floats(0.01, 1.0), seed=st.integers(0, 999))
def test_baselines_keep_k_in_order(B, T, r, seed):
    K = round(r * B * T)
    assume(K >= 1)
    tokens, scores = make_inputs(B, T, 3, seed)
    top = global_topk(tokens, scores, retain_ratio=r, num_frames=B)
    even = uniform(tokens, retain_ratio=r, num_frames=B)
    for result in (top, even):
        flat = result.frame * T + result.index
        assert len(flat) == K and bool((flat[1:] > flat[:-1]).all())
        torch.testing.assert_close(result.tokens, tokens[result.frame, result.index])
    kept = torch.zeros(B * T, dtype=torch.bool)
    kept[top.frame * T + top.index] = True
    if not kept.all():
        assert scores.flatten()[kept].min() >= scores.flatten()[~kept].max()
    gaps = (even.frame * T + even.index).diff()
    if len(gaps):
        assert int(gaps.max() - gaps.min()) <= 1  # evenly spaced


def test_decoupled_selection_resists_a_sink():
    # One sink position scores highest in every frame; global top-K takes it everywhere, the static
    # windows still cover the whole frame.
    N, T = 6, 16
    scores = torch.rand(N, T) * 0.1
    scores[:, 5] = 10.0
    tokens = torch.randn(N, T, 2)
    is_static = torch.tensor([False, True, True, True, True, False])
    ours = token_select(tokens, scores, is_static, retain_ratio=0.25, num_frames=N)
    top = global_topk(tokens, scores, retain_ratio=0.25, num_frames=N)
    assert len(ours.frame) == len(top.frame) == 24
    static_picks = ours.index[is_static[ours.frame]]
    assert static_picks.unique().numel() > 4  # spread over windows, not one sink column
    assert (top.index == 5).sum() == N


@pytest.mark.parametrize(
    "tokens, scores, is_static, kw, match",
    [
        (torch.randn(2, 4), torch.rand(2, 4), [False, False], {}, r"tokens must be 3-D \[N, T, D\]"),
        (torch.randn(2, 4, 3), torch.rand(2, 5), [False, False], {}, "disagree on N or T"),
        (torch.randn(2, 4, 3), torch.rand(2, 4), [False], {}, r"is_static has shape \[1\]; need \[N\] = \[2\]"),
        (torch.randn(2, 4, 3), torch.tensor([[float("nan")] * 4] * 2), [False, False], {}, "scores contains 8 NaN"),
        (torch.randn(2, 4, 3), torch.rand(2, 4), [False, False], {"retain_ratio": 0.0}, r"outside the valid range \(0"),
        (torch.randn(2, 4, 3), torch.rand(2, 4), [False, False], {"retain_ratio": 1.2}, "retain_ratio = 1.2"),
        (torch.randn(2, 4, 3), torch.rand(2, 4), [False, False], {"retain_ratio": 0.01}, "keeps round"),
        (torch.randn(0, 4, 3), torch.rand(0, 4), [], {}, "need N >= 1"),
        # K = round(0.1 * 4 * 4) = 2 cannot give one token to each of 3 static frames.
        (
            torch.randn(4, 4, 3),
            torch.rand(4, 4),
            [False, True, True, True],
            {"retain_ratio": 0.1},
            r"budget K = 2 \(retain_ratio r = 0.1, B = 4, T = 4\) cannot give each of the 3 static frames among N = 4",
        ),
    ],
)
def test_bad_selection_input(tokens, scores, is_static, kw, match):
    kw = {"retain_ratio": 0.5, "num_frames": max(len(is_static), 1)} | kw
    with pytest.raises(ValueError, match=match):
        token_select(tokens, scores, torch.tensor(is_static, dtype=torch.bool), **kw)
