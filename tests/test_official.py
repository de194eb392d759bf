"""official_compress (DESIGN.md section 4b): a plain-Python re-implementation of the pseudocode is the oracle;
hand-made cases pin the quirks (dropped last middle frame, window cap, EMA reset anchored on the segment's first
frame); the streaming form makes the batch decisions."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from earlytom.compress import (
    StreamingOfficialCompress,
    official_compress,
    plan_compress,
    plan_middles,
    plan_segments,
    window_similarity,
)

# ---------------------------------------------------------------- the oracle: section 4b, plain Python in double


def cos_mean(a: list, b: list) -> float:
    """mean over tokens of cos(a[l], b[l]); a, b: [L][D] lists of floats."""
    total = 0.0
    for x, y in zip(a, b, strict=True):
        dot = sum(p * q for p, q in zip(x, y, strict=True))
        norm = math.sqrt(sum(p * p for p in x)) * math.sqrt(sum(q * q for q in y))
        total += dot / max(norm, 1e-12)
    return total / len(a)


def oracle_segments(H: list, alpha: float, tau_seg: float, M: int, margins: list) -> list:
    start, ref, e = 0, H[0], 1.0
    segments = []
    for i in range(1, len(H)):
        c = cos_mean(ref, H[i])
        e = alpha * c + (1 - alpha) * e
        margins.append(abs(e - tau_seg))
        if e < tau_seg or (i - start + 1) >= M:
            segments.append((start, i - 1))
            start, ref, e = i, H[i], 1.0
    segments.append((start, len(H) - 1))
    return segments


def oracle_rows(H: list, s: int, t: int, margins: list, ties: list) -> list:
    """(first, second, w) per output row of segment [s, t]: w * H[first] + (1 - w) * H[second]."""
    if t - s + 1 <= 2:
        return [(i, i, 1.0) for i in range(s, t + 1)]
    J = t - s - 1
    m = list(range(s + 1, t))
    if J == 1:
        return [(s, s, 1.0), (m[0], m[0], 1.0), (t, t, 1.0)]
    tau_m = cos_mean(H[s], H[t])
    sig = [cos_mean(H[m[j]], H[m[j + 1]]) for j in range(J - 1)]
    rows, j = [(s, s, 1.0)], 0
    while j < J - 1:
        if j + 1 < J - 1:
            merge = sig[j] > tau_m and sig[j] > sig[j + 1]
            w = sig[j] / (sig[j] + sig[j + 1])
            ties += [sig[j] - tau_m, sig[j] - sig[j + 1]]
            if merge:
                margins.append(abs(sig[j] + sig[j + 1]))  # the weight's denominator
        else:
            merge, w = sig[j] > tau_m, 1.0
            ties.append(sig[j] - tau_m)
        if merge:
            rows.append((m[j], m[j + 1], w))
            j += 2
        else:
            rows.append((m[j], m[j], 1.0))
            j += 1
    rows.append((t, t, 1.0))
    return rows


def oracle(hidden: torch.Tensor, alpha: float, tau_seg: float, M: int):
    """-> (segments, rows, merged hidden [N][L][D] lists, margins, ties)."""
    H = hidden.double().tolist()
    margins, ties = [], []
    segments = oracle_segments(H, alpha, tau_seg, M, margins)
    rows = [row for s, t in segments for row in oracle_rows(H, s, t, margins, ties)]
    merged = [
        [[w * p + (1 - w) * q for p, q in zip(x, y, strict=True)] for x, y in zip(H[a], H[b], strict=True)]
        for a, b, w in rows
    ]
    return segments, rows, merged, margins, ties


# ---------------------------------------------------------------- generated clips


@st.composite
def clip(draw):
    """hidden [F, L, D]: frames drift from their predecessor by a drawn level (0 repeats it exactly: ties), or cut
    to a fresh frame; an offset keeps most cosines positive, as in real encoders."""
    F, L, D = draw(st.integers(1, 14)), draw(st.integers(1, 3)), draw(st.integers(2, 5))
    steps = draw(st.lists(st.sampled_from([0.0, 0.0, 0.05, 0.2, 0.5, 1.0, "cut"]), min_size=F, max_size=F))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    offset = torch.randn(L, D, generator=g)
    frames = [torch.randn(L, D, generator=g)]
    for step in steps[1:]:
        noise = torch.randn(L, D, generator=g)
        frames.append(noise if step == "cut" else frames[-1] + step * noise)
    hidden = torch.stack(frames) + draw(st.sampled_from([0.0, 1.0, 2.0])) * offset
    options = {
        "alpha": draw(st.sampled_from([0.9, 0.6, 0.3, 1.0])),
        "tau_seg": draw(st.sampled_from([0.5, 0.3, 0.8, 0.95, -0.5])),
        "max_window": draw(st.integers(2, 8)),
    }
    return hidden, torch.rand(F, L, generator=g), options


def clear_of_thresholds(margins: list, ties: list) -> bool:
    """The float32 reference and the double oracle can only disagree on a comparison closer than float32 noise;
    exact ties (0 difference in double) come from identical frames and are exact in float32 too."""
    return all(m > 1e-4 for m in margins) and all(t == 0 or abs(t) > 1e-4 for t in ties)


@settings(max_examples=300, deadline=None)
@given(clip())
def test_matches_the_section_4b_oracle(case):
    hidden, attention, options = case
    segments, rows, merged, margins, ties = oracle(hidden, options["alpha"], options["tau_seg"], options["max_window"])
    assume(clear_of_thresholds(margins, ties))
    result = official_compress(hidden, attention, **options)
    assert result.source.tolist() == [[a, b] for a, b, _ in rows]
    torch.testing.assert_close(result.hidden, torch.tensor(merged, dtype=torch.float32), rtol=1e-4, atol=1e-4)
    expected_attention = [w * attention[a] + (1 - w) * attention[b] for a, b, w in rows]
    torch.testing.assert_close(result.attention, torch.stack(expected_attention), rtol=1e-4, atol=1e-5)
    assert result.segments is None
    # Every segment holds at most M - 1 frames; segments tile the input.
    similarity = window_similarity(hidden, min(options["max_window"] - 1, hidden.shape[0] - 1))
    plan_segs = plan_segments(similarity, **options)
    assert plan_segs.tolist() == [list(s) for s in segments]
    assert all(t - s + 1 <= options["max_window"] - 1 for s, t in segments)


@settings(max_examples=150, deadline=None)
@given(clip())
def test_final_resegments_the_output_frames(case):
    hidden, attention, options = case
    _, _, merged, margins, ties = oracle(hidden, options["alpha"], options["tau_seg"], options["max_window"])
    out_margins = []
    out_segments = oracle_segments(merged, options["alpha"], options["tau_seg"], options["max_window"], out_margins)
    assume(clear_of_thresholds(margins + out_margins, ties))
    result = official_compress(hidden, attention, final=True, **options)
    assert result.segments.dtype == torch.int64
    assert result.segments.tolist() == [list(s) for s in out_segments]


def test_window_similarity_is_the_banded_mean_token_cosine():
    hidden = torch.randn(5, 3, 4, dtype=torch.float64).to(torch.bfloat16)  # half input: float32 math
    sim = window_similarity(hidden, 3)
    H = hidden.double().tolist()
    assert sim.dtype == torch.float32 and sim.shape == (5, 3)
    for i in range(5):
        for d in range(1, 4):
            if i < d:
                assert math.isnan(sim[i, d - 1])
            else:
                assert sim[i, d - 1].item() == pytest.approx(cos_mean(H[i - d], H[i]), abs=1e-6)


# ---------------------------------------------------------------- hand-made cases on the plan


def band(values: dict, F: int, W: int) -> torch.Tensor:
    """similarity [F, W] with band[i, d - 1] = values[(i - d, i)] (1.0 elsewhere)."""
    out = torch.ones(F, W)
    for (a, b), v in values.items():
        out[b, b - a - 1] = v
    return out


def test_ema_resets_and_anchors_on_the_segment_head():
    # alpha 0.5, tau 0.5. c(0,1) = 0.2: e = 0.6, no cut. c(0,2) = 0.1: e = 0.35 < 0.5, cut [0, 1]; frame 2 starts
    # a segment with e = 1. c(2,3) = 0.5: e = 0.75, no cut (without the reset e = 0.425 would cut). Frame 4 is
    # compared with frame 2, the segment's head: c(2,4) = 0.2 -> e = 0.475 cut, although c(3,4) = 0.99.
    sim = band({(0, 1): 0.2, (0, 2): 0.1, (2, 3): 0.5, (2, 4): 0.2, (3, 4): 0.99}, F=5, W=4)
    segments = plan_segments(sim, alpha=0.5, tau_seg=0.5, max_window=8)
    assert segments.tolist() == [[0, 1], [2, 3], [4, 4]]


def test_window_cap_holds_at_most_m_minus_1_frames():
    hidden = torch.randn(1, 4, 8).expand(13, 4, 8).contiguous()  # identical frames: the EMA never drops
    result = official_compress(hidden, torch.rand(13, 4), tau_seg=0.5, max_window=6, final=True)
    # The cap closes a segment when it would reach M = 6 frames: [0, 4], [5, 9], [10, 12].
    similarity = window_similarity(hidden, 5)
    assert plan_segments(similarity, alpha=0.9, tau_seg=0.5, max_window=6).tolist() == [[0, 4], [5, 9], [10, 12]]
    # All similarities are the same float32 value, so sig_j > tau_m is false: no merge, and the last middle frame
    # of each 5-frame segment is dropped (the quirk): 0 1 2 . 4 | 5 6 7 . 9 | 10 11 12.
    assert result.source[:, 0].tolist() == [0, 1, 2, 4, 5, 6, 7, 9, 10, 11, 12]
    assert (result.source[:, 0] == result.source[:, 1]).all()
    assert result.segments.tolist() == [[0, 4], [5, 9], [10, 10]]


def test_last_middle_frame_is_dropped_when_not_merged():
    # Segment of 4 frames: head 0, middles 1 and 2, tail 3. J = 2: one pair (the last), sig_0 < tau_m: m_0 is
    # kept, and the loop ends before m_1 (frame 2) is considered.
    sim = band({(1, 2): 0.6, (0, 3): 0.7}, F=4, W=3)
    plan = plan_compress(sim, torch.tensor([[0, 3]]))
    assert plan.source.tolist() == [[0, 0], [1, 1], [3, 3]]


def test_last_pair_merges_with_weight_one():
    # Same segment with sig_0 = 0.8 > tau_m = 0.7: the last pair merges with w = 1, i.e. m_0 as is (frame 2 enters
    # with weight 0).
    sim = band({(1, 2): 0.8, (0, 3): 0.7}, F=4, W=3)
    plan = plan_compress(sim, torch.tensor([[0, 3]]))
    assert plan.source.tolist() == [[0, 0], [1, 2], [3, 3]]
    assert plan.weight.tolist() == [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    # On frames: 1 and 2 identical (sig_0 = 1 > tau_m), so (1, 2) merge into frame 1 exactly.
    g = torch.Generator().manual_seed(0)
    a, b, c = torch.randn(3, 2, 3, generator=g)
    result = official_compress(torch.stack([a, b, b + 0.0, c]), torch.rand(4, 2, generator=g), tau_seg=-1.0)
    assert result.source.tolist() == [[0, 0], [1, 2], [3, 3]]
    assert torch.equal(result.hidden[1], b)


def test_local_peak_merge_weights():
    # 6 middles; sig = (0.9, 0.8, 0.95, 0.5, 0.7), tau_m = 0.6.
    # j=0: 0.9 > 0.6 and 0.9 > 0.8 -> merge (m0, m1), w = 0.9 / 1.7; j=2: 0.95 > 0.5 -> merge (m2, m3), w = 0.95/1.45;
    # j=4: last pair, 0.7 > 0.6 -> merge (m4, m5) with w = 1.
    rows = plan_middles(0.6, [0.9, 0.8, 0.95, 0.5, 0.7])
    assert [(a, b) for a, b, _, _ in rows] == [(0, 1), (2, 3), (4, 5)]
    assert [w for _, _, w, _ in rows] == pytest.approx([0.9 / 1.7, 0.95 / 1.45, 1.0], rel=1e-6)
    assert all(w + v == pytest.approx(1.0) for _, _, w, v in rows)
    # 4 middles, sig = (0.9, 0.95, 0.7): m0 is no peak (0.9 < 0.95), kept; (m1, m2) is a peak and merges; the
    # scan then stands at j = 3 = J - 1 and stops: m3 is dropped.
    rows = plan_middles(0.6, [0.9, 0.95, 0.7])
    assert [(a, b) for a, b, _, _ in rows] == [(0, 0), (1, 2)]


def test_equal_similarities_are_not_a_peak():
    # Equal sig (identical frames in a row): "sig_j > sig_j+1" is false, so m0 and m1 stay alone; only the last
    # pair, which needs sig > tau_m alone, merges (with w = 1).
    rows = plan_middles(0.1, [0.9, 0.9, 0.9])
    assert rows == [(0, 0, 1.0, 0.0), (1, 1, 1.0, 0.0), (2, 3, 1.0, 0.0)]


def test_zero_weight_denominator_keeps_the_first_frame():
    # sig = (0.3, -0.3): a peak above tau_m = -0.5 whose weight would divide by 0; the pair keeps m0 (w = 1).
    assert plan_middles(-0.5, [0.3, -0.3, -0.9]) == [(0, 1, 1.0, 0.0), (2, 2, 1.0, 0.0)]


def test_half_input_keeps_its_dtype_and_float32_decisions():
    g = torch.Generator().manual_seed(3)
    hidden = (torch.randn(1, 4, 8, generator=g) + 0.1 * torch.randn(10, 4, 8, generator=g)).to(torch.bfloat16)
    attention = torch.rand(10, 4, generator=g)
    half = official_compress(hidden, attention, tau_seg=0.5, final=True)
    full = official_compress(hidden.float(), attention, tau_seg=0.5, final=True)
    assert half.hidden.dtype == torch.bfloat16
    assert torch.equal(half.source, full.source)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"tau_seg": 1.5}, r"tau_seg = 1.5 is outside the valid range \[-1.0, 1.0\]"),
        ({"tau_seg": 0.5, "alpha": 0.0}, r"alpha = 0.0 is outside the valid range \(0.0, 1.0\]"),
        ({"tau_seg": 0.5, "max_window": 1}, r"max_window = 1 must be an integer in \[2, ...\)"),
        ({"tau_seg": 0.5, "max_window": 2.5}, r"max_window = 2.5 must be an integer"),
    ],
)
def test_bad_options_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        official_compress(torch.randn(3, 2, 2), torch.rand(3, 2), **kw)
    with pytest.raises(ValueError, match=match):
        StreamingOfficialCompress(**kw)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"disagree on F or L"):
        official_compress(torch.randn(3, 2, 2), torch.rand(3, 4), tau_seg=0.5)
    with pytest.raises(ValueError, match=r"F = 0 frames"):
        official_compress(torch.randn(0, 2, 2), torch.rand(0, 2), tau_seg=0.5)
    with pytest.raises(ValueError, match=r"NaN/Inf in 3 of 6 tokens"):
        official_compress(torch.tensor([[[1.0, float("nan")], [1.0, 1.0]]] * 3), torch.rand(3, 2), tau_seg=0.5)
    with pytest.raises(ValueError, match=r"attention contains 1 NaN/Inf"):
        official_compress(torch.randn(3, 2, 2), torch.tensor([[1.0, float("inf")], [1, 1], [1, 1]]), tau_seg=0.5)


def test_single_frame():
    result = official_compress(torch.randn(1, 3, 4), torch.rand(1, 3), tau_seg=0.5, final=True)
    assert result.source.tolist() == [[0, 0]] and result.segments.tolist() == [[0, 0]]


# ---------------------------------------------------------------- streaming == batch


def stream(hidden, attention, **options):
    merger = StreamingOfficialCompress(**options)
    chunks = [merger.push(h, a) for h, a in zip(hidden, attention, strict=True)]
    return [c for c in chunks if c is not None], merger.finish()


@settings(max_examples=200, deadline=None)
@given(clip(), st.booleans(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_streaming_makes_the_batch_decisions(case, final, dtype):
    hidden, attention, options = case
    hidden = hidden.to(dtype)
    batch = official_compress(hidden, attention, final=final, **options)
    chunks, last = stream(hidden, attention, final=final, **options)
    everything = [*chunks, last]
    assert torch.equal(torch.cat([c.source for c in everything]), batch.source)
    assert torch.equal(torch.cat([c.hidden for c in everything]), batch.hidden)
    assert torch.equal(torch.cat([c.attention for c in everything]), batch.attention)
    if final:
        assert torch.equal(torch.cat([c.segments for c in everything]), batch.segments)
    else:
        assert all(c.segments is None for c in everything)
    # A segment is emitted as soon as the frame after it arrives: each chunk is one whole input segment.
    assert all(c.source.max() - c.source.min() + 1 <= options["max_window"] - 1 for c in everything)


def test_streaming_emits_a_segment_when_the_next_frame_arrives():
    hidden = torch.cat([torch.ones(3, 2, 2), -torch.ones(2, 2, 2)])  # a cut between frames 2 and 3
    merger = StreamingOfficialCompress(tau_seg=0.5)
    assert [merger.push(h, torch.ones(2)) for h in hidden[:3]] == [None, None, None]
    chunk = merger.push(hidden[3], torch.ones(2))
    assert chunk.source.tolist() == [[0, 0], [1, 1], [2, 2]]
    assert merger.push(hidden[4], torch.ones(2)) is None
    assert merger.finish().source.tolist() == [[3, 3], [4, 4]]
    with pytest.raises(RuntimeError, match="after finish"):
        merger.push(hidden[0], torch.ones(2))


def test_streaming_refuses_mismatched_frames():
    merger = StreamingOfficialCompress(tau_seg=0.5)
    merger.push(torch.randn(2, 3), torch.rand(2))
    with pytest.raises(ValueError, match=r"frame 1 has shape \[4, 3\]"):
        merger.push(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match="before any push"):
        StreamingOfficialCompress(tau_seg=0.5).finish()


# ---------------------------------------------------------------- blocked similarity pass, attention left out


def test_similarity_over_several_token_blocks_is_each_pairs_cosine_bit_for_bit():
    """window_similarity works through the tokens block by block; on a clip spanning several blocks, with runs of
    identical frames (exact ties), every value is the streaming form's per-pair cosine bit for bit, close to the
    double oracle, and streaming makes the batch's decisions."""
    from earlytom.compress.official import frame_cosine, token_blocks, token_norms

    F, L, D = 9, 300, 512
    assert len(token_blocks(F, L, D)) > 1
    g = torch.Generator().manual_seed(11)
    base = torch.randn(L, D, generator=g)
    frames = [base + 0.3 * torch.randn(L, D, generator=g) for _ in range(4)]
    hidden = torch.stack([frames[k] for k in (0, 1, 1, 1, 2, 2, 3, 3, 3)])
    similarity = window_similarity(hidden, 4)
    norm = token_norms(hidden)
    H = hidden.double()
    for i in range(F):
        for d in range(1, 5):
            if i < d:
                assert math.isnan(similarity[i, d - 1])
                continue
            pair = frame_cosine(hidden[i - d], hidden[i], norm[i - d], norm[i])
            assert torch.equal(similarity[i, d - 1], pair)
            expected = torch.nn.functional.cosine_similarity(H[i - d], H[i], dim=-1).mean()
            assert similarity[i, d - 1].item() == pytest.approx(expected.item(), abs=1e-6)
    attention = torch.rand(F, L, generator=g)
    for options in ({"tau_seg": -1.0, "max_window": 8}, {"tau_seg": 0.5, "max_window": 6}):
        batch = official_compress(hidden, attention, final=True, **options)
        chunks, last = stream(hidden, attention, final=True, **options)
        assert torch.equal(torch.cat([c.source for c in [*chunks, last]]), batch.source)
        assert torch.equal(torch.cat([c.hidden for c in [*chunks, last]]), batch.hidden)
        assert torch.equal(torch.cat([c.segments for c in [*chunks, last]]), batch.segments)


@pytest.mark.parametrize("final", [False, True])
def test_attention_none_merges_hidden_alone(final):
    """A merge layer before the last passes attention=None (no selection reads it): the same decisions and
    hidden, and None back."""
    g = torch.Generator().manual_seed(4)
    a, b, c = torch.randn(3, 2, 3, generator=g)
    hidden = torch.stack([a, b, b + 0.0, c])  # frames 1 and 2 identical: (1, 2) merge, as in the case above
    with_attention = official_compress(hidden, torch.rand(4, 2, generator=g), tau_seg=-1.0, final=final)
    without = official_compress(hidden, None, tau_seg=-1.0, final=final)
    assert without.attention is None
    assert without.source.tolist() == [[0, 0], [1, 2], [3, 3]]
    assert torch.equal(without.source, with_attention.source)
    assert torch.equal(without.hidden, with_attention.hidden)
    if final:
        assert torch.equal(without.segments, with_attention.segments)
    with pytest.raises(ValueError, match=r"hidden must be 3-D \[F, L, D\]"):
        official_compress(torch.randn(4, 2), None, tau_seg=0.5)
    with pytest.raises(ValueError, match=r"F = 0 frames"):
        official_compress(torch.randn(0, 2, 2), None, tau_seg=0.5)
