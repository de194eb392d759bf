"""Half-precision hidden states are compared in float32: inputs where float16 arithmetic provably fails.

Tokens of D = 512 values around 12 have dot products and squared norms near 144 * 512 = 73728, above float16's
largest finite value 65504: a product or sum kept in float16 overflows to inf and the cosine is lost (NaN or a
refusal), while float32 gives the float64 answer to ~1e-7. The expected values are computed here in float64."""

import torch

from earlytom.compress import (
    StreamingFrameMerge,
    StreamingOfficialCompress,
    adjacent_similarity,
    frame_merge,
    official_compress,
    window_similarity,
)
from earlytom.compress.inner import inner_merge

FP16_MAX = 65504.0


def large_tokens(frames: int, tokens: int = 16, dim: int = 512, seed: int = 0) -> torch.Tensor:
    """[frames, tokens, dim] float16, values ~ 12 +- 2 (exactly representable in float16 after the cast)."""
    g = torch.Generator().manual_seed(seed)
    base = 12 + 2 * torch.randn(1, tokens, dim, generator=g)
    return (base + 1.5 * torch.randn(frames, tokens, dim, generator=g)).half()


def cosine_mean64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float64 oracle: mean over tokens of cos(a[l], b[l]); a, b [..., L, D]."""
    a, b = a.double(), b.double()
    return ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).mean(-1)


def test_the_inputs_overflow_float16():
    hidden = large_tokens(2)
    assert float((hidden[0].double() * hidden[1].double()).sum(-1).min()) > FP16_MAX
    assert not torch.isfinite((hidden[0] * hidden[1]).sum(-1)).all()  # float16 arithmetic: inf


def test_adjacent_similarity_of_half_inputs_is_exact_in_float32():
    hidden = large_tokens(6)
    similarity = adjacent_similarity(hidden)
    assert similarity.dtype == torch.float32
    torch.testing.assert_close(similarity.double(), cosine_mean64(hidden[:-1], hidden[1:]), rtol=0, atol=1e-6)


def test_window_similarity_of_half_inputs_is_exact_in_float32():
    hidden = large_tokens(5)
    similarity = window_similarity(hidden, 3)
    assert similarity.dtype == torch.float32
    for d in range(1, 4):
        expected = cosine_mean64(hidden[:-d], hidden[d:])
        torch.testing.assert_close(similarity[d:, d - 1].double(), expected, rtol=0, atol=1e-6)


def test_paper_merge_of_half_inputs_decides_as_float32():
    hidden = large_tokens(8, seed=1)
    options = {"tau_seg": 0.5, "tau_merge": 0.9}
    half, full = frame_merge(hidden, **options), frame_merge(hidden.float(), **options)
    assert torch.equal(half.source, full.source) and torch.equal(half.is_static, full.is_static)
    assert half.hidden.dtype == torch.float16 and bool(torch.isfinite(half.hidden).all())
    assert (half.source[:, 0] != half.source[:, 1]).any()  # something merged: the weighted sum ran
    torch.testing.assert_close(half.hidden.float(), full.hidden, rtol=1e-3, atol=0)
    merger = StreamingFrameMerge(**options)
    streamed = [f for frame in hidden for f in merger.push(frame)] + merger.finish()
    # Same decisions; the merged values agree to float16 rounding (the streaming form measures each similarity
    # on its own pair, the batch in one pass, so the weights may differ in float32's last bit).
    assert [[f.first, f.last] for f in streamed] == half.source.tolist()
    torch.testing.assert_close(torch.stack([f.hidden for f in streamed]), half.hidden, rtol=1e-3, atol=0)


def test_official_compress_of_half_inputs_decides_as_float32():
    hidden = large_tokens(10, seed=2)
    attention = torch.rand(10, 16, generator=torch.Generator().manual_seed(2))
    options = {"tau_seg": 0.5, "max_window": 6, "final": True}
    half = official_compress(hidden, attention, **options)
    full = official_compress(hidden.float(), attention, **options)
    assert torch.equal(half.source, full.source) and torch.equal(half.segments, full.segments)
    assert half.hidden.dtype == torch.float16 and bool(torch.isfinite(half.hidden).all())
    merger = StreamingOfficialCompress(**options)
    chunks = [c for h, a in zip(hidden, attention, strict=True) if (c := merger.push(h, a)) is not None]
    chunks.append(merger.finish())
    assert torch.equal(torch.cat([c.source for c in chunks]), half.source)


def test_inner_merge_similarity_of_half_tokens_is_float32():
    """Token 2 is closest in direction to token 0 (cosine ~0.9999) but its float16 dot products overflow."""
    g = torch.Generator().manual_seed(3)
    kept = 12 + 2 * torch.randn(2, 512, generator=g)
    dropped = kept[0] + 0.05 * torch.randn(512, generator=g)
    tokens = torch.cat([kept, dropped[None]]).half()
    merged = inner_merge(tokens, torch.tensor([0.5, 0.4, 0.1]), 1 / 3)
    assert merged.index.tolist() == [0, 1]
    torch.testing.assert_close(merged.tokens[0], ((tokens[0].float() + tokens[2].float()) / 2).half())
    torch.testing.assert_close(merged.tokens[1], tokens[1])
