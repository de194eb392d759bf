"""fastvid (shared/BASELINES.md section 1): hand-computed DySeg cuts, budgets and a merged frame; a plain-Python
oracle of the whole method on seeded inputs (with and without the density jitter); hypothesis properties (counts,
order, ranges, determinism, the randomness contract); the released code's crashes refused."""

import math

import pytest
import torch
from baseline_oracles import cosine, density_peak_scores, top
from hypothesis import event, given, settings
from hypothesis import strategies as st

from earlytom.compress import dyseg, fastvid, fastvid_budget
from earlytom.compress.fastvid import merge_into_targets


def unit_path(cosines: list[float]) -> torch.Tensor:
    """[T, 2] unit vectors whose adjacent cosines are `cosines` (each step turns by acos(s))."""
    angles = [0.0]
    for s in cosines:
        angles.append(angles[-1] + math.acos(s))
    return torch.tensor([[math.cos(a), math.sin(a)] for a in angles])


# ---------------------------------------------------------------------------------------------------------------
# Plain-Python oracle of BASELINES.md section 1


def oracle_merge(pool: list[list[float]], targets: list[list[float]], beta: float) -> list[list[float]]:
    members = [[] for _ in targets]
    for x in pool:
        sims = [cosine(x, t) for t in targets]
        members[sims.index(max(sims))].append(x)
    merged = []
    for t, m in zip(targets, members, strict=True):
        w = max(1 / (len(m) + 1), beta)
        mean = [sum(col) / len(m) for col in zip(*m, strict=True)] if m else [0.0] * len(t)
        merged.append([w * a + (1 - w) * b for a, b in zip(t, mean, strict=True)])
    return merged


def oracle_fastvid(features, attention, global_features, *, r, c, tau, d, p, beta, noise):
    """(frame, index) -> token over lists, in (frame, index) order; noise [T][L - S] or None."""
    T, L = len(features), len(features[0])
    R = int(L * r)
    S = R - int(R * d)
    C = R - S
    unit = [[x / math.hypot(*g) for x in g] for g in global_features]
    s = [sum(a * b for a, b in zip(unit[i], unit[i + 1], strict=True)) for i in range(T - 1)]
    cuts = set(sorted(range(T - 1), key=lambda i: s[i])[: c - 1]) | {i for i in range(T - 1) if s[i] < tau}
    lasts = [*sorted(cuts), T - 1]
    segments = list(zip([0, *(x + 1 for x in lasts[:-1])], lasts, strict=True))
    budget = {}
    for first, last in segments:
        n = last - first + 1
        for f in range(first, last + 1):
            budget[f] = C * n // math.ceil(n / p) if (last - f) % p == 0 else 0

    out = {}
    rest, score = [], []
    for f in range(T):
        salient = top(attention[f], S)
        out.update({(f, i): features[f][i] for i in salient})
        rest.append([i for i in range(L) if i not in salient])
        points = [features[f][i] for i in rest[f]]
        score.append(density_peak_scores(points, 4, None if noise is None else noise[f])[0])
    for f in range(T):
        if budget[f] == C:
            picked = top(score[f], C)
            pool = [features[f][i] for i in rest[f]]
            for j, token in zip(picked, oracle_merge(pool, [pool[j] for j in picked], beta), strict=True):
                out[(f, rest[f][j])] = token
    for first, last in segments:
        pool = [features[g][i] for g in range(first, last + 1) for i in rest[g]]
        for f in range(first, last + 1):
            if budget[f] > C:
                picked = top(score[f], budget[f])
                targets = [features[f][rest[f][j]] for j in picked]
                for j, token in zip(picked, oracle_merge(pool, targets, beta), strict=True):
                    out[(f, rest[f][j])] = token
    return dict(sorted(out.items())), segments


def assert_matches(result, expected: dict, segments: list) -> None:
    assert list(zip(result.frame.tolist(), result.index.tolist(), strict=True)) == list(expected)
    torch.testing.assert_close(result.tokens, torch.tensor(list(expected.values())), atol=1e-5, rtol=1e-5)
    assert result.segments.tolist() == [list(x) for x in segments]


def video(seed: int, T: int, L: int, D: int, stillness: float):
    """Features, attention and global features; `stillness` in [0, 1) makes adjacent global features alike."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(T, L, D, generator=g)
    attention = torch.rand(T, L, generator=g)
    base = torch.randn(1, 6, generator=g)
    global_features = stillness * base + (1 - stillness) * torch.randn(T, 6, generator=g)
    return features, attention, global_features


CASES = [  # seed, T, L, D, stillness, retain_ratio, c, tau, d, p
    (0, 9, 16, 4, 0.8, 0.5, 3, 0.95, 0.4, 2),
    (1, 12, 20, 3, 0.9, 0.45, 2, 0.97, 0.4, 3),
    (2, 6, 12, 5, 0.0, 0.6, 6, 0.9, 0.4, 4),  # every frame its own segment
    (3, 10, 25, 2, 0.95, 0.4, 1, -1.0, 0.5, 4),  # one segment of 10 frames: anchors 9, 5, 1
    (4, 7, 16, 3, 0.9, 0.5, 2, 0.9, 0.4, 1),  # p = 1: every frame takes the single-frame path
]


@pytest.mark.parametrize("case", CASES)
def test_matches_the_oracle_without_jitter(case):
    seed, T, L, D, still, r, c, tau, d, p = case
    features, attention, global_features = video(seed, T, L, D, still)
    lists = features.tolist(), attention.tolist(), global_features.tolist()
    expected, segments = oracle_fastvid(*lists, r=r, c=c, tau=tau, d=d, p=p, beta=0.6, noise=None)
    result = fastvid(features, attention, global_features, retain_ratio=r, c=c, tau=tau, d=d, p=p, jitter=0)
    assert_matches(result, expected, segments)


@pytest.mark.parametrize("case", CASES[:2])
def test_matches_the_oracle_with_the_contract_jitter(case):
    """jitter > 0: one torch.rand([T, L - S]) in float32 from the generator, times jitter, added to the densities."""
    seed, T, L, D, still, r, c, tau, d, p = case
    features, attention, global_features = video(seed, T, L, D, still)
    R = int(L * r)
    S = R - int(R * d)
    noise = torch.rand([T, L - S], generator=torch.Generator().manual_seed(99), dtype=torch.float32) * 0.01
    lists = features.tolist(), attention.tolist(), global_features.tolist()
    expected, segments = oracle_fastvid(*lists, r=r, c=c, tau=tau, d=d, p=p, beta=0.6, noise=noise.tolist())
    generator = torch.Generator().manual_seed(99)
    result = fastvid(
        features, attention, global_features, retain_ratio=r, c=c, tau=tau, d=d, p=p, jitter=0.01, generator=generator
    )
    assert_matches(result, expected, segments)


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed cases


@pytest.mark.parametrize(
    ("cosines", "c", "tau", "segments"),
    [
        ([0.99, 0.5, 0.95, 0.97], 2, 0.9, [(0, 1), (2, 4)]),  # the smallest is also below tau
        ([0.8, 0.99, 0.95, 0.97], 3, 0.9, [(0, 0), (1, 2), (3, 4)]),  # 2 smallest: 0.8 and 0.95
        ([0.99, 0.98, 0.97, 0.96], 1, 0.975, [(0, 2), (3, 3), (4, 4)]),  # no top-k cut, tau cuts 2 and 3
        ([0.99, 0.98, 0.97, 0.96], 5, 0.0, [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]),  # c = T: every frame alone
    ],
)
def test_dyseg_cuts(cosines, c, tau, segments):
    assert dyseg(unit_path(cosines), c=c, tau=tau).tolist() == [list(x) for x in segments]


def test_dyseg_threshold_is_strict():
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # cosine exactly 1
    assert dyseg(same, c=1, tau=1.0).tolist() == [[0, 1]]


@pytest.mark.parametrize(
    ("r", "expected"), [(0.10, (19, 12, 7)), (0.15, (29, 18, 11)), (0.20, (39, 24, 15)), (0.25, (49, 30, 19))]
)
def test_budgets_of_the_published_ratios(r, expected):
    b = fastvid_budget(196, retain_ratio=r, d=0.4)
    assert (b.retained, b.salient, b.context) == expected


def test_count_with_a_long_segment():
    """T = 12, c = 8, no tau cut: the 7 smallest similarities are 0..6, so frames 0..6 stand alone and 7..11 form one
    segment (n = 5, p = 4: anchors 11 and 7, C * 5 // 2 = 17 each). K = 12 * 12 + 7 * 7 + 2 * 17 = 227."""
    features, attention, _ = video(5, 12, 196, 4, 0.0)
    global_features = unit_path([0.5] * 7 + [0.99] * 4)
    result = fastvid(features, attention, global_features, retain_ratio=0.10, tau=-1.0)
    assert result.segments.tolist() == [[f, f] for f in range(7)] + [[7, 11]]
    per_frame = torch.bincount(result.frame, minlength=12).tolist()
    assert per_frame == [19] * 7 + [29, 12, 12, 12, 29]
    assert len(result.tokens) == 227


def test_single_frame_merge_by_hand():
    """L = 8, r = 0.75, d = 0.4: R = 6, S = 4, C = 2. Salient: tokens 0-3. The other four (D = 2):
    x4 = (4, 0), x5 = (4, 0.2), x6 = (0, 4), x7 = (0.3, 4). Mean squared distance / D over all four (4 nearest):
    x7 7.23875 < x5 7.32625 < x4 7.71625 < x6 7.81625, so x7 is the densest; to the nearest denser token: x7 4 (the
    largest distance), x5 3.75, x4 0.141, x6 0.212: targets x7 and x5. x4 joins x5, x6 joins x7 (cosine), each
    target joins itself: w = max(1/3, 0.6) = 0.6. x5 -> 0.6 (4, 0.2) + 0.4 (4, 0.1) = (4, 0.16);
    x7 -> 0.6 (0.3, 4) + 0.4 (0.15, 4) = (0.24, 4)."""
    salient = [[1.0, 1.0], [2.0, -1.0], [-3.0, 0.5], [0.5, 0.5]]
    rest = [[4.0, 0.0], [4.0, 0.2], [0.0, 4.0], [0.3, 4.0]]
    features = torch.tensor([salient + rest])
    attention = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.4]])
    result = fastvid(features, attention, torch.ones(1, 3), retain_ratio=0.75, c=1, jitter=0)
    assert result.index.tolist() == [0, 1, 2, 3, 5, 7]
    assert result.frame.tolist() == [0] * 6
    expected = torch.tensor(salient + [[4.0, 0.16], [0.24, 4.0]])
    torch.testing.assert_close(result.tokens, expected)


def test_a_target_without_members_stays():
    """Two targets in the same direction: every token of that direction joins the first (argmax: first on ties),
    so the second has count 0 and weight max(1 / 1, beta) = 1."""
    pool = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]])
    targets = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    merged = merge_into_targets(pool, targets, 0.6)
    # first target: members (1, 0), (2, 0), (0, 1): 0.6 (1, 0) + 0.4 (1, 1/3)
    torch.testing.assert_close(merged, torch.tensor([[[1.0, 0.4 / 3], [2.0, 0.0]]]))


# ---------------------------------------------------------------------------------------------------------------
# Refusals where the released code crashes, and bad input


@pytest.mark.parametrize(
    ("kwargs", "shape", "match"),
    [
        ({"retain_ratio": 0.01}, (8, 196), "C = R - S"),  # R = 1: int(0.4) = 0, C = 0
        ({"retain_ratio": 0.1, "c": 9}, (8, 196), "c = 9 segments need"),
        ({"retain_ratio": 1.0, "d": 0.1}, (8, 16), "the density needs at least 4"),  # S = 15
        ({"retain_ratio": 0.5, "c": 1, "tau": -1.0, "p": 8}, (8, 16), "context budget"),  # 3 * 8 = 24 > 11
        ({"retain_ratio": 0.0}, (8, 196), "retain_ratio"),
        ({"retain_ratio": 0.1, "p": 0}, (8, 196), "p = 0"),
        ({"retain_ratio": 0.1, "jitter": -1e-6}, (8, 196), "jitter"),
    ],
)
def test_refusals(kwargs, shape, match):
    features, attention, global_features = video(0, *shape, 4, 0.9)
    with pytest.raises(ValueError, match=match):
        fastvid(features, attention, global_features, **kwargs)


def test_bad_tensors():
    features, attention, global_features = video(0, 8, 16, 4, 0.9)
    with pytest.raises(ValueError, match="features"):
        fastvid(features.long(), attention, global_features, retain_ratio=0.5)
    with pytest.raises(ValueError, match="disagree on T and L"):
        fastvid(features, attention[:, :-1], global_features, retain_ratio=0.5)
    with pytest.raises(ValueError, match="global_features"):
        fastvid(features, attention, global_features[:-1], retain_ratio=0.5)
    with pytest.raises(ValueError, match="NaN"):
        fastvid(features, attention.clone().fill_(float("nan")), global_features, retain_ratio=0.5)


# ---------------------------------------------------------------------------------------------------------------
# Properties


@st.composite
def fastvid_case(draw):
    T = draw(st.integers(1, 10))
    L = draw(st.integers(8, 40))
    r = draw(st.sampled_from([0.1, 0.25, 0.5, 0.75]) | st.floats(0.15, 1.0))
    return {
        "seed": draw(st.integers(0, 2**16)),
        "T": T,
        "L": L,
        "D": draw(st.integers(1, 4)),
        "still": draw(st.sampled_from([0.0, 0.9, 0.99])),
        "kwargs": {
            "retain_ratio": r,
            "c": draw(st.integers(1, T)),
            "tau": draw(st.sampled_from([-1.0, 0.5, 0.9, 0.99])),
            "d": draw(st.sampled_from([0.4, 0.5, 1.0])),  # d = 0 leaves C = 0: refused
            "p": draw(st.integers(1, 4)),
        },
    }


def expected_count(segments: list, S: int, C: int, p: int) -> int:
    """K = T * S + C per single frame + ceil(n / p) * (C * n // ceil(n / p)) per longer segment, by a plain loop."""
    total = 0
    for first, last in segments:
        n = last - first + 1
        total += n * S + (C if n == 1 else math.ceil(n / p) * (C * n // math.ceil(n / p)))
    return total


@settings(max_examples=60, deadline=None)
@given(fastvid_case())
def test_properties(case):
    T, L, kwargs = case["T"], case["L"], case["kwargs"]
    features, attention, global_features = video(case["seed"], T, L, case["D"], case["still"])
    R = int(L * kwargs["retain_ratio"])
    S = R - int(R * kwargs["d"])
    C = R - S
    doomed = C == 0 or L - S < 4
    try:
        result = fastvid(features, attention, global_features, generator=torch.Generator().manual_seed(1), **kwargs)
    except ValueError as error:
        event("refused")
        if not doomed:  # the only other refusal: an anchor's budget over the L - S candidates
            assert "context budget" in str(error)
            segments = dyseg(global_features, c=kwargs["c"], tau=kwargs["tau"]).tolist()
            assert any(C * n // math.ceil(n / kwargs["p"]) > L - S for n in (b - a + 1 for a, b in segments))
        return
    assert not doomed
    event(f"{len(result.segments)} segments, longest {max(b - a + 1 for a, b in result.segments.tolist())}")
    segments = result.segments.tolist()
    assert [a for a, _ in segments] == [0] + [b + 1 for _, b in segments[:-1]] and segments[-1][1] == T - 1
    assert len(segments) >= min(kwargs["c"], T)
    assert len(result.tokens) == expected_count(segments, S, C, kwargs["p"]) <= T * R
    keys = (result.frame * L + result.index).tolist()
    assert keys == sorted(set(keys))  # (frame, index) order, no repeats
    assert 0 <= min(result.index.tolist()) and max(result.index.tolist()) < L
    for f in range(T):  # the S most attended tokens of each frame are kept unchanged
        salient = attention[f].topk(S).indices
        row = result.frame == f
        assert set(salient.tolist()) <= set(result.index[row].tolist())
        for i in salient.tolist():
            assert torch.equal(result.tokens[row][result.index[row] == i][0], features[f, i])
    again = fastvid(features, attention, global_features, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(again.tokens, result.tokens) and torch.equal(again.index, result.index)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from([0.0, 1e-6]))
def test_randomness_contract(seed, jitter):
    """jitter > 0: exactly one rand([T, L - S]) from the generator, the global RNG untouched; jitter = 0: no draw."""
    features, attention, global_features = video(seed, 6, 20, 3, 0.9)
    generator = torch.Generator().manual_seed(seed)
    global_state = torch.get_rng_state()
    fastvid(features, attention, global_features, retain_ratio=0.5, c=2, p=2, jitter=jitter, generator=generator)
    reference = torch.Generator().manual_seed(seed)
    if jitter:
        torch.rand([6, 20 - 6], generator=reference, dtype=torch.float32)  # R = 10, S = 6
    assert torch.equal(generator.get_state(), reference.get_state())
    assert torch.equal(torch.get_rng_state(), global_state)


def test_half_precision_in_half_precision_out():
    features, attention, global_features = video(0, 9, 16, 4, 0.8)
    result = fastvid(features.bfloat16(), attention.bfloat16(), global_features.bfloat16(), retain_ratio=0.5, c=3, p=2)
    assert result.tokens.dtype == torch.bfloat16 and len(result.tokens) == len(result.index)
