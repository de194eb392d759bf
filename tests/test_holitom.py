"""holitom and holitom_llm_merge (shared/BASELINES.md section 2): hand-computed static windows (ties, the window cap,
the strict threshold), two whole videos by hand (Python's half-to-even round, a density tie), a plain-Python oracle
on seeded videos with static regions (with and without the contract jitter), hypothesis properties, and the in-LLM
merge by hand (fold order, batch rows, round half to even)."""

import math

import pytest
import torch
from baseline_oracles import density_peak_scores, top
from hypothesis import given, settings
from hypothesis import strategies as st

from earlytom.compress import holitom, holitom_llm_merge, static_windows

# ---------------------------------------------------------------------------------------------------------------
# Static windows by hand: similarity rows of 1 (static) and 0 with tau = 0.5


@pytest.mark.parametrize(
    ("rows", "max_window", "windows", "saved"),
    [
        # gains (0,1) 3, (1,2) 2, (2,3) 4, (0,2) 4, (1,3) 4, (0,3) 6: dp = 0, 3, 4, 7
        ([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], 1024, [(0, 1), (2, 3)], 7.0),
        ([[0, 0], [0, 0]], 1024, [(0, 0), (1, 1), (2, 2)], 0.0),  # gain 0 ties a single frame: single frames
        # dp[2]: window (1,2) gives 0 + 2, window (0,2) gives 2 * 1: the tie keeps the shorter window
        ([[1, 0, 0], [1, 1, 0]], 1024, [(0, 0), (1, 2)], 2.0),
        ([[1], [1], [1]], 1024, [(0, 3)], 3.0),
        ([[1], [1], [1]], 2, [(0, 1), (2, 3)], 2.0),  # windows of at most 2 frames
        ([[1], [1], [1]], 1, [(0, 0), (1, 1), (2, 2), (3, 3)], 0.0),
    ],
)
def test_static_windows_by_hand(rows, max_window, windows, saved):
    result, total = static_windows(torch.tensor(rows, dtype=torch.float32), tau=0.5, max_window=max_window)
    assert result.tolist() == [list(w) for w in windows]
    assert total == saved


def test_static_threshold_is_strict():
    windows, saved = static_windows(torch.full((2, 3), 0.5), tau=0.5)
    assert windows.tolist() == [[0, 0], [1, 1], [2, 2]] and saved == 0.0


def test_one_frame_is_one_window():
    windows, saved = static_windows(torch.zeros(0, 5), tau=0.5)
    assert windows.tolist() == [[0, 0]] and saved == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Whole videos by hand


def test_all_static_round_half_to_even_and_a_density_tie():
    """T = 2 identical frames of L = 5 tokens (D = 2, (x, 1) for x = 0, 0.1, 5, 5.3, 10): one window, saved 5,
    r' = 0.25 / (5 / 10) = 0.5, k = round(5 * 0.5) = round(2.5) = 2 (half to even), no dynamic token.
    knn = min(7, 2) = 2. Tokens 0 and 1 share the highest density (neither is strictly denser), so both take the
    largest distance and the two best scores: centres 0 and 1. Tokens 2, 3, 4 are nearer to 0.1 than to 0: centre 1
    -> x = 0.6 * 0.1 + 0.4 * (5 + 5.3 + 10) / 3 = 2.7666..; centre 0 has no member and stays."""
    frame = torch.tensor([[0.0, 1.0], [0.1, 1.0], [5.0, 1.0], [5.3, 1.0], [10.0, 1.0]])
    features = torch.stack([frame, frame])
    result = holitom(features, torch.ones(2, 5), retain_ratio=0.25, tau=0.8, jitter=0)
    assert result.segments.tolist() == [[0, 1]]
    assert result.frame.tolist() == [0, 0] and result.index.tolist() == [0, 1]
    assert result.static.tolist() == [True, True]
    torch.testing.assert_close(result.tokens, torch.tensor([[0.0, 1.0], [0.06 + 0.4 * 20.3 / 3, 1.0]]))


def hand_video() -> tuple[torch.Tensor, torch.Tensor]:
    """Frames 0 and 1 share tokens 0-2 (a = (1, 0), b = (1.2, 0), c = (0, 3)); token 3 turns by 90 degrees;
    frame 2 is orthogonal to frame 1 everywhere."""
    f0 = [[1.0, 0.0], [1.2, 0.0], [0.0, 3.0], [-1.0, 0.0]]
    f1 = [[1.0, 0.0], [1.2, 0.0], [0.0, 3.0], [0.0, -1.0]]
    f2 = [[0.0, 2.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0]]
    attention = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.4, 0.3, 0.2]])
    return torch.tensor([f0, f1, f2]), attention


def test_window_and_single_frame_by_hand():
    """Windows (0, 1) and (2, 2), saved 3 of 12: r' = 0.375 / (9 / 12) = 0.5. Window: 3 static tokens -> round(1.5)
    = 2 clusters; 1 dynamic token per frame -> ceil(0.5) = 1 each. Frame 2: ceil(4 * 0.5) = 2, tokens 1 and 2.
    Clusters (knn = 2): a and b are each other's nearest (0.2 apart, equal densities), c is far: scores a = b > c,
    centres a, b; c is nearer to a (sqrt 10 < sqrt 10.44): a -> 0.6 a + 0.4 c = (0.6, 1.2); b stays."""
    features, attention = hand_video()
    result = holitom(features, attention, retain_ratio=0.375, tau=0.8, jitter=0)
    assert result.segments.tolist() == [[0, 1], [2, 2]]
    assert result.frame.tolist() == [0, 0, 0, 1, 2, 2]
    assert result.index.tolist() == [0, 1, 3, 3, 1, 2]
    assert result.static.tolist() == [True, True, False, False, False, False]
    expected = [[0.6, 1.2], [1.2, 0.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 1.0], [1.0, 0.0]]
    torch.testing.assert_close(result.tokens, torch.tensor(expected))


def test_jitter_draws_once_per_clustered_window():
    features, attention = hand_video()
    generator, reference = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    global_state = torch.get_rng_state()
    holitom(features, attention, retain_ratio=0.375, tau=0.8, generator=generator)
    torch.rand([1, 3], generator=reference, dtype=torch.float32)  # the one window's 3 static tokens
    assert torch.equal(generator.get_state(), reference.get_state())
    holitom(features, attention, retain_ratio=0.375, tau=0.8, jitter=0, generator=generator)
    assert torch.equal(generator.get_state(), reference.get_state())  # jitter = 0: no draw
    assert torch.equal(torch.get_rng_state(), global_state)


# ---------------------------------------------------------------------------------------------------------------
# Plain-Python oracle of BASELINES.md section 2 (vision side)


def oracle_windows(above: list[list[bool]], T: int, max_window: int) -> tuple[list[tuple[int, int]], int]:
    def gain(s, e):
        return (e - s) * sum(all(above[f][t] for f in range(s, e)) for t in range(len(above[0])))

    dp, first = [0] * T, list(range(T))
    for i in range(T):
        best = dp[i - 1] if i else 0
        for w in range(2, min(i + 1, max_window) + 1):
            value = (dp[i - w] if i - w >= 0 else 0) + gain(i - w + 1, i)
            if value > best:
                best, first[i] = value, i - w + 1
        dp[i] = best
    windows, i = [], T - 1
    while i >= 0:
        windows.append((first[i], i))
        i = first[i] - 1
    return windows[::-1], dp[-1]


def oracle_cluster(tokens, k, knn, beta, noise):
    score, dist = density_peak_scores(tokens, min(knn, k), noise)
    centres = sorted(top(score, k))
    members = {c: [] for c in centres}
    for i in range(len(tokens)):
        if i not in members:
            members[min(centres, key=lambda c: dist[i][c])].append(tokens[i])
    out = []
    for c in centres:
        m = members[c]
        mean = [sum(col) / len(m) for col in zip(*m, strict=True)] if m else None
        out.append([beta * x + (1 - beta) * y for x, y in zip(tokens[c], mean, strict=True)] if m else tokens[c])
    return centres, out


def oracle_holitom(features, attention, *, r, tau, max_window=1024, beta=0.6, knn=7, noise=None):
    """([(frame, index, static, token)] in output order, windows); noise(n) -> n density offsets, called once per
    clustered window in order (None: no offsets)."""
    T, L = len(features), len(features[0])
    unit = [[[x / math.hypot(*t) for x in t] for t in frame] for frame in features]
    above = [[sum(a * b for a, b in zip(unit[f][t], unit[f + 1][t], strict=True)) > tau for t in range(L)]
             for f in range(T - 1)]  # fmt: skip
    windows, saved = oracle_windows(above, T, max_window)
    ratio = min(r / ((T * L - saved) / (T * L)), 1)
    out = []
    for s, e in windows:
        static = [t for t in range(L) if e > s and all(above[f][t] for f in range(s, e))]
        dynamic = [t for t in range(L) if t not in static]
        k = round(len(static) * ratio)
        if k > 0:
            mean = [[sum(features[f][t][c] for f in range(s, e + 1)) / (e - s + 1) for c in range(len(features[0][0]))]
                    for t in static]  # fmt: skip
            centres, tokens = oracle_cluster(mean, k, knn, beta, noise and noise(len(static)))
            out += [(s, static[c], True, t) for c, t in zip(centres, tokens, strict=True)]
        m = math.ceil(len(dynamic) * ratio)
        for f in range(s, e + 1):
            picked = sorted(top([attention[f][t] for t in dynamic], m))
            out += [(f, dynamic[j], False, features[f][dynamic[j]]) for j in picked]
    return out, windows


def still_video(seed: int, T: int, L: int, D: int, keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each frame copies each token of the previous one with probability `keep`, else draws a new one."""
    g = torch.Generator().manual_seed(seed)
    frames = [torch.randn(L, D, generator=g)]
    for _ in range(T - 1):
        copy = torch.rand(L, 1, generator=g) < keep
        frames.append(torch.where(copy, frames[-1], torch.randn(L, D, generator=g)))
    return torch.stack(frames), torch.rand(T, L, generator=g)


def assert_matches(result, expected, windows):
    assert result.segments.tolist() == [list(w) for w in windows]
    assert result.frame.tolist() == [x[0] for x in expected]
    assert result.index.tolist() == [x[1] for x in expected]
    assert result.static.tolist() == [x[2] for x in expected]
    torch.testing.assert_close(result.tokens, torch.tensor([x[3] for x in expected]), atol=1e-5, rtol=1e-5)


CASES = [  # seed, T, L, D, keep, retain_ratio, tau, max_window
    (0, 8, 16, 3, 0.8, 0.25, 0.8, 1024),
    (1, 10, 25, 4, 0.95, 0.1, 0.65, 1024),
    (2, 9, 16, 2, 0.9, 0.3, 0.8, 3),
    (3, 6, 9, 3, 0.0, 0.2, 0.8, 1024),  # nothing static: single frames only
]


@pytest.mark.parametrize("case", CASES)
def test_matches_the_oracle_without_jitter(case):
    seed, T, L, D, keep, r, tau, max_window = case
    features, attention = still_video(seed, T, L, D, keep)
    expected, windows = oracle_holitom(features.tolist(), attention.tolist(), r=r, tau=tau, max_window=max_window)
    result = holitom(features, attention, retain_ratio=r, tau=tau, max_window=max_window, jitter=0)
    assert_matches(result, expected, windows)


@pytest.mark.parametrize("case", CASES[:2])
def test_matches_the_oracle_with_the_contract_jitter(case):
    """One torch.rand([1, n_static]) per clustered window, in window order, from the generator."""
    seed, T, L, D, keep, r, tau, max_window = case
    features, attention = still_video(seed, T, L, D, keep)
    reference = torch.Generator().manual_seed(5)

    def noise(n):
        return (torch.rand([1, n], generator=reference, dtype=torch.float32) * 0.05)[0].tolist()

    expected, windows = oracle_holitom(features.tolist(), attention.tolist(), r=r, tau=tau, noise=noise)
    result = holitom(
        features, attention, retain_ratio=r, tau=tau, jitter=0.05, generator=torch.Generator().manual_seed(5)
    )
    assert_matches(result, expected, windows)


# ---------------------------------------------------------------------------------------------------------------
# Properties


@st.composite
def holitom_case(draw):
    return {
        "seed": draw(st.integers(0, 2**16)),
        "T": draw(st.integers(1, 8)),
        "L": draw(st.integers(1, 30)),
        "D": draw(st.integers(1, 4)),
        "keep": draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])),
        "r": draw(st.sampled_from([0.1, 0.15, 0.25, 1.0]) | st.floats(0.01, 1.0)),
        "tau": draw(st.sampled_from([0.65, 0.8, 0.99])),
        "max_window": draw(st.integers(1, 9)),
        "knn": draw(st.integers(1, 8)),
    }


@settings(max_examples=60, deadline=None)
@given(holitom_case())
def test_properties(case):
    T, L = case["T"], case["L"]
    features, attention = still_video(case["seed"], T, L, case["D"], case["keep"])
    options = {key: case[key] for key in ("tau", "max_window", "knn")}
    result = holitom(features, attention, retain_ratio=case["r"], generator=torch.Generator().manual_seed(3), **options)
    windows = result.segments.tolist()
    assert [a for a, _ in windows] == [0] + [b + 1 for _, b in windows[:-1]] and windows[-1][1] == T - 1
    assert all(b - a + 1 <= case["max_window"] for a, b in windows)
    above = torch.nn.functional.cosine_similarity(features[:-1], features[1:], dim=-1) > case["tau"]  # [T - 1, L]
    n_static = [0 if a == b else int(above[a:b].all(dim=0).sum()) for a, b in windows]
    saved = sum((b - a) * n for (a, b), n in zip(windows, n_static, strict=True))
    ratio = min(case["r"] / ((T * L - saved) / (T * L)), 1)
    frame, index, static = result.frame.tolist(), result.index.tolist(), result.static.tolist()
    start = 0
    for (a, b), n in zip(windows, n_static, strict=True):
        k, m = round(n * ratio), math.ceil((L - n) * ratio)
        block = range(start, start + k + (b - a + 1) * m)
        start = block.stop
        assert [static[i] for i in block] == [True] * k + [False] * (len(block) - k)
        assert [frame[i] for i in block] == [a] * k + [f for f in range(a, b + 1) for _ in range(m)]
        assert index[block.start : block.start + k] == sorted(set(index[block.start : block.start + k]))
        for f in range(a, b + 1):  # each frame's kept dynamic tokens: ascending, unchanged
            run = list(block[k + (f - a) * m : k + (f - a + 1) * m])
            kept = [index[i] for i in run]
            assert kept == sorted(set(kept)) and torch.equal(result.tokens[run], features[f, kept])
    assert len(result.tokens) == start
    assert all(0 <= i < L for i in index)
    again = holitom(features, attention, retain_ratio=case["r"], generator=torch.Generator().manual_seed(3), **options)
    assert torch.equal(again.tokens, result.tokens)


# ---------------------------------------------------------------------------------------------------------------
# Refusals and bad input


def test_refusals():
    features, attention = hand_video()
    with pytest.raises(ValueError, match="retain_ratio"):
        holitom(features, attention, retain_ratio=0.0, tau=0.8)
    with pytest.raises(ValueError, match="tau"):
        holitom(features, attention, retain_ratio=0.1, tau=1.5)
    with pytest.raises(ValueError, match="knn"):
        holitom(features, attention, retain_ratio=0.1, tau=0.8, knn=0)
    with pytest.raises(ValueError, match="max_window"):
        holitom(features, attention, retain_ratio=0.1, tau=0.8, max_window=0)
    with pytest.raises(ValueError, match="disagree on T and L"):
        holitom(features, attention[:2], retain_ratio=0.1, tau=0.8)
    with pytest.raises(ValueError, match="floating-point"):
        holitom(features.int(), attention, retain_ratio=0.1, tau=0.8)


# ---------------------------------------------------------------------------------------------------------------
# In-LLM merge by hand


def test_llm_merge_by_hand():
    """N = 6, span [1, 5), r = 0.5: keep round(4 * 0.5) = 2. Head-mean attention on the span: 0.4, 0.1, 0.3, 0.2
    -> keep positions 1 and 3. Dropped 2 = (1, 0.1) and 4 = (0.9, 0.2) are both nearest (cosine) to 1 = (1, 0):
    folded in ascending order, ((1, 0) + (1, 0.1)) / 2 = (1, 0.05), then ((1, 0.05) + (0.9, 0.2)) / 2."""
    hidden = torch.tensor([[[5.0, 5.0], [1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.9, 0.2], [7.0, -7.0]]])
    span = [[0.0, 0.5, 0.1, 0.2, 0.3, 0.0], [0.0, 0.3, 0.1, 0.4, 0.1, 0.0]]  # two heads; means 0.4 0.1 0.3 0.2
    attention = torch.tensor([span])
    result = holitom_llm_merge(hidden, attention, image_start=1, image_len=4)
    assert result.positions.tolist() == [0, 1, 3, 5]
    expected = [[5.0, 5.0], [0.95, 0.125], [0.0, 1.0], [7.0, -7.0]]
    torch.testing.assert_close(result.hidden, torch.tensor([expected]))


def test_llm_merge_uses_row_0_for_the_kept_set_and_each_row_for_similarity():
    """Row 1's attention would keep other tokens: ignored. Row 1's dropped token 2 = (0, 1) is nearest to kept 3."""
    hidden = torch.tensor(
        [
            [[1.0, 0.0], [1.0, 0.0], [1.0, 0.1], [0.0, 1.0]],
            [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0]],
        ]
    )
    attention = torch.tensor([[[0.0, 0.6, 0.1, 0.3]], [[0.0, 0.1, 0.8, 0.1]]])
    result = holitom_llm_merge(hidden, attention, image_start=1, image_len=3, r=0.5)  # keep round(1.5) = 2
    assert result.positions.tolist() == [0, 1, 3]
    expected = [[[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0], [0.05, 1.0]]]
    torch.testing.assert_close(result.hidden, torch.tensor(expected))


def test_llm_merge_rounds_half_to_even_and_keeps_text():
    hidden = torch.randn(1, 9, 3, generator=torch.Generator().manual_seed(0))
    attention = torch.rand(1, 2, 9, generator=torch.Generator().manual_seed(1))
    result = holitom_llm_merge(hidden, attention, image_start=2, image_len=5)  # round(2.5) = 2
    assert len(result.positions) == 2 + 2 + 2
    assert result.positions[:2].tolist() == [0, 1] and result.positions[-2:].tolist() == [7, 8]
    torch.testing.assert_close(result.hidden[:, [0, 1, 4, 5]], hidden[:, [0, 1, 7, 8]])
    same = holitom_llm_merge(hidden, attention, image_start=2, image_len=5, r=0.0)
    assert same.positions.tolist() == list(range(9)) and torch.equal(same.hidden, hidden)


def test_llm_merge_refusals():
    hidden, attention = torch.randn(1, 6, 2), torch.rand(1, 2, 6)
    with pytest.raises(ValueError, match="keeps round"):
        holitom_llm_merge(hidden, attention, image_start=1, image_len=1, r=0.6)  # round(0.4) = 0
    with pytest.raises(ValueError, match="image_len"):
        holitom_llm_merge(hidden, attention, image_start=2, image_len=5)
    with pytest.raises(ValueError, match="disagrees"):
        holitom_llm_merge(hidden, attention[:, :, :5], image_start=1, image_len=2)


def test_a_video_can_keep_no_token():
    """T = 2 identical frames of one token: one window saving 1 of 2, r' = 0.1 / (1 / 2) = 0.2, round(1 * 0.2) = 0
    static tokens and no dynamic one: K = 0 (the released code then emits only the newline)."""
    features = torch.ones(2, 1, 3)
    result = holitom(features, torch.ones(2, 1), retain_ratio=0.1, tau=0.8)
    assert result.tokens.shape == (0, 3) and result.frame.tolist() == [] and result.segments.tolist() == [[0, 1]]


def test_half_precision_in_half_precision_out():
    features, attention = still_video(0, 8, 16, 3, 0.8)
    result = holitom(features.bfloat16(), attention.bfloat16(), retain_ratio=0.25, tau=0.8)
    assert result.tokens.dtype == torch.bfloat16 and len(result.tokens) == len(result.index)
    merged = holitom_llm_merge(features.bfloat16()[None, 0], attention.bfloat16()[None, :2], image_start=2, image_len=9)
    assert merged.hidden.dtype == torch.bfloat16 and merged.hidden.shape == (1, 16 - 9 + 4, 3)
