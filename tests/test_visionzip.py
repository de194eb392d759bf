"""visionzip (shared/BASELINES.md section 3) and pool_bilinear: a frame by hand (step targets, an argmax tie, a target
without members, "target + mean"), the scripts' tokens per frame, a plain-Python oracle on seeded inputs,
hypothesis properties; pool_bilinear by hand and against transformers' LlavaOnevisionModel.apply_pooling."""

import math
from types import SimpleNamespace

import pytest
import torch
from baseline_oracles import cosine, top
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

from earlytom.compress import pool_bilinear, spatial_tokens, visionzip


def test_a_frame_by_hand():
    """L = 16, r = 13/16: n = 13, dominant int(13 * 54/64) = 10 (tokens 0-9, most attended), contextual 3.
    The 6 others (10-15) are slots 0-5: step 6 // 3 = 2, targets slots 0, 2, 4 = tokens 10, 12, 14. By key cosine:
    11 = (1, 1) ties between 10 = (1, 0) and 12 = (0, 1) and joins 10 (first); 13 joins 12; 15 joins 10; 14 gets
    nobody. Contextual = target + mean: 10 -> 1 + (2 + 6) / 2 = 5, 12 -> 3 + 4 = 7, 14 -> 5 + 0 = 5."""
    features = torch.tensor([[[100.0 + i] for i in range(10)] + [[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]])
    attention = torch.tensor([[1.0 - 0.05 * i for i in range(10)] + [0.01] * 6])
    rest_keys = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0], [0.8, 0.3]]
    keys = torch.tensor([[[0.0, 0.0]] * 10 + rest_keys])
    result = visionzip(features, attention, keys, retain_ratio=13 / 16)
    assert result.index.tolist() == [*range(10), 10, 12, 14]
    assert result.frame.tolist() == [0] * 13
    assert result.tokens[:, 0].tolist() == [100.0 + i for i in range(10)] + [5.0, 7.0, 5.0]


@pytest.mark.parametrize(("r", "n"), [(0.10, 20), (0.15, 30), (0.20, 40), (0.25, 50)])
def test_the_scripts_tokens_per_frame(r, n):
    assert spatial_tokens(196, r) == n
    g = torch.Generator().manual_seed(0)
    result = visionzip(torch.randn(3, 196, 4, generator=g), torch.rand(3, 196, generator=g),
                       torch.randn(3, 196, 5, generator=g), retain_ratio=r)  # fmt: skip
    assert torch.bincount(result.frame).tolist() == [n] * 3


def test_other_ratios_round_half_to_even():
    assert spatial_tokens(196, 0.3) == 59  # round(58.8)
    assert spatial_tokens(9, 0.5) == 4  # round(4.5)
    assert spatial_tokens(100, 0.15) == 15  # the scripts' table is for L = 196 only
    with pytest.raises(ValueError, match="keeps round"):
        spatial_tokens(16, 0.01)


def test_refusals():
    features, attention, keys = torch.randn(2, 16, 3), torch.rand(2, 16), torch.randn(2, 16, 4)
    with pytest.raises(ValueError, match="contextual"):
        visionzip(features, attention, keys, retain_ratio=0.5, dominant_ratio=1.0)
    with pytest.raises(ValueError, match="keys"):
        visionzip(features, attention, keys[:, :9], retain_ratio=0.5)
    with pytest.raises(ValueError, match="retain_ratio"):
        visionzip(features, attention, keys, retain_ratio=1.5)


def oracle_visionzip(features, attention, keys, n, dominant_ratio=54 / 64):
    """[(frame, index, token)] in output order, plain Python."""
    out = []
    L = len(features[0])
    dominant = int(n * dominant_ratio)
    contextual = n - dominant
    for f in range(len(features)):
        kept = sorted(top(attention[f], dominant))
        rest = [i for i in range(L) if i not in kept]
        step = max(1, (L - dominant) // contextual)
        targets = list(range(0, L - dominant, step))[:contextual]
        members = {t: [] for t in targets}
        for j in range(L - dominant):
            if j not in members:
                sims = [cosine(keys[f][rest[j]], keys[f][rest[t]]) for t in targets]
                members[targets[sims.index(max(sims))]].append(features[f][rest[j]])
        out += [(f, i, features[f][i]) for i in kept]
        for t in targets:
            m = members[t]
            mean = [sum(col) / len(m) for col in zip(*m, strict=True)] if m else [0.0] * len(features[f][0])
            out.append((f, rest[t], [a + b for a, b in zip(features[f][rest[t]], mean, strict=True)]))
    return out


@pytest.mark.parametrize(("seed", "T", "L", "r"), [(0, 4, 49, 0.25), (1, 3, 36, 0.5), (2, 2, 16, 1.0), (3, 5, 25, 0.1)])
def test_matches_the_oracle(seed, T, L, r):
    g = torch.Generator().manual_seed(seed)
    features, attention = torch.randn(T, L, 3, generator=g), torch.rand(T, L, generator=g)
    keys = torch.randn(T, L, 4, generator=g)
    n = round(L * r)
    expected = oracle_visionzip(features.tolist(), attention.tolist(), keys.tolist(), n)
    result = visionzip(features, attention, keys, retain_ratio=r)
    assert list(zip(result.frame.tolist(), result.index.tolist(), strict=True)) == [(f, i) for f, i, _ in expected]
    torch.testing.assert_close(result.tokens, torch.tensor([t for _, _, t in expected]), atol=1e-5, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**16),
    st.integers(1, 5),
    st.integers(2, 40),
    st.floats(0.02, 1.0),
    st.sampled_from([54 / 64, 0.5, 0.0]),
)
def test_properties(seed, T, L, r, dominant_ratio):
    g = torch.Generator().manual_seed(seed)
    features, attention = torch.randn(T, L, 3, generator=g), torch.rand(T, L, generator=g)
    keys = torch.randn(T, L, 2, generator=g)
    n = round(L * r)
    if n < 1:
        with pytest.raises(ValueError):
            visionzip(features, attention, keys, retain_ratio=r, dominant_ratio=dominant_ratio)
        return
    result = visionzip(features, attention, keys, retain_ratio=r, dominant_ratio=dominant_ratio)
    dominant = int(n * dominant_ratio)
    assert result.frame.tolist() == [f for f in range(T) for _ in range(n)]
    for f in range(T):
        index = result.index[f * n : (f + 1) * n].tolist()
        kept = attention[f].topk(dominant).indices.sort().values
        assert index[:dominant] == kept.tolist()  # the most attended, raster order, unchanged
        assert torch.equal(result.tokens[f * n : f * n + dominant], features[f, kept])
        assert index[dominant:] == sorted(set(index[dominant:])) and not set(index[dominant:]) & set(index[:dominant])
    assert len(result.tokens) == T * n and all(0 <= i < L for i in result.index.tolist())


# ---------------------------------------------------------------------------------------------------------------
# pool_bilinear


def test_pool_by_hand():
    """2 x 2 -> 1 x 1 samples the centre: the mean. 3 x 3 -> 2 x 2 (align_corners=False) samples at 0.25 and 1.75:
    out[0] = 0.75 a + 0.25 b and out[1] = 0.25 b + 0.75 c along each axis."""
    assert pool_bilinear(torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])).tolist() == [[[2.5]]]
    grid = torch.tensor([[0.0, 4.0, 8.0], [0.0, 4.0, 8.0], [0.0, 4.0, 8.0]])  # varies along x only
    pooled = pool_bilinear(grid.reshape(1, 9, 1))
    assert pooled.reshape(2, 2).tolist() == [[1.0, 7.0], [1.0, 7.0]]


@pytest.mark.parametrize(("h", "channels"), [(27, 5), (4, 3), (5, 1)])
def test_pool_matches_transformers(h, channels):
    """LLaVA-OV's own pooling (transformers' LlavaOnevisionModel.apply_pooling) on a grid of h x h patches."""
    x = torch.randn(3, h * h, channels, generator=torch.Generator().manual_seed(h))
    config = SimpleNamespace(vision_config=SimpleNamespace(image_size=h, patch_size=1))
    expected = LlavaOnevisionModel.apply_pooling(SimpleNamespace(config=config), x)
    assert pool_bilinear(x).shape == (3, math.ceil(h / 2) ** 2, channels)
    assert torch.equal(pool_bilinear(x), expected)


def test_pool_refusals():
    with pytest.raises(ValueError, match="not a square"):
        pool_bilinear(torch.randn(2, 10, 3))
    with pytest.raises(ValueError, match="floating-point"):
        pool_bilinear(torch.ones(2, 9, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="stride"):
        pool_bilinear(torch.randn(2, 9, 3), stride=0)


def test_half_precision_in_half_precision_out():
    g = torch.Generator().manual_seed(0)
    features, attention, keys = (torch.randn(2, 25, 3, generator=g), torch.rand(2, 25, generator=g),
                                 torch.randn(2, 25, 4, generator=g))  # fmt: skip
    result = visionzip(features.bfloat16(), attention.bfloat16(), keys.bfloat16(), retain_ratio=0.25)
    assert result.tokens.dtype == torch.bfloat16 and len(result.tokens) == 2 * 6
    assert pool_bilinear(features.bfloat16()).dtype == torch.bfloat16
