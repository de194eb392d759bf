"""The official variant's Triton kernels (DESIGN.md section 4b) against the PyTorch reference, run by Triton's
interpreter on CPU (TRITON_INTERPRET=1 from conftest.py; tests/test_triton_interpreted.py runs this module in a
child process when the environment sets it otherwise). Sizes stay tiny: the interpreter is slow."""

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from earlytom.compress.official import official_compress, plan_compress, plan_segments
from earlytom.compress.select import official_select
from earlytom.plugins.triton import launch, ops

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason=f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r} in the environment (conftest sets 1 only when "
    "unset): tests/test_triton_interpreted.py runs this module in a child process with TRITON_INTERPRET=1",
)


def run_plan(similarity: torch.Tensor, *, alpha: float, tau_seg: float, max_window: int) -> dict:
    """official_plan on given similarities [F, W] (fed as L = 1 token cosines, so its mean is exact)."""
    F, W = similarity.shape
    i32 = {"dtype": torch.int32}
    out = {
        "similarity": torch.empty(F, W),
        "first": torch.empty(F, **i32),
        "last": torch.empty(F, **i32),
        "weight": torch.empty(F, 2),
        "segments": torch.empty(F, 2, **i32),
        "label": torch.empty(F, **i32),
        "counts": torch.zeros(2, **i32),
    }
    spec = launch.official_plan(F, 1, W, alpha=alpha, tau_seg=tau_seg, max_window=max_window)
    ops.run(spec, similarity.nan_to_num(0.0)[:, :, None].contiguous(), *out.values())
    return out


@settings(max_examples=40, deadline=None)
@given(
    F=st.integers(1, 14),
    max_window=st.integers(2, 7),
    alpha=st.sampled_from([0.3, 0.9, 1.0]),
    tau_seg=st.sampled_from([-1.0, 0.2, 0.5, 0.8]),
    data=st.data(),
)
def test_plan_kernel_makes_the_reference_decisions(F, max_window, alpha, tau_seg, data):
    """Segments (EMA reset, window cap), rows, weights and labels equal the reference's exactly when both read the
    same float32 similarities (random draws from few values; the ties that decide a merge: the tests below)."""
    W = launch.similarity_width(F, max_window)
    values = st.sampled_from([-0.5, 0.0, 0.3, 0.5, 0.6, 0.9, 1.0])
    similarity = torch.tensor(data.draw(st.lists(values, min_size=F * W, max_size=F * W)), dtype=torch.float32)
    similarity = similarity.view(F, W)
    ours = run_plan(similarity, alpha=alpha, tau_seg=tau_seg, max_window=max_window)
    segments = plan_segments(similarity, alpha=alpha, tau_seg=tau_seg, max_window=max_window)
    plan = plan_compress(similarity, segments)
    N, S = ours["counts"].tolist()
    assert ours["segments"][:S].tolist() == segments.tolist()
    assert torch.stack([ours["first"][:N], ours["last"][:N]], 1).tolist() == plan.source.tolist()
    assert torch.equal(ours["weight"][:N], plan.weight)
    static = [a < i < b for a, b in segments.tolist() for i in range(a, b + 1)]
    assert ours["label"].bool().tolist() == static


def one_segment(tau_m: float, sig: list[float]) -> torch.Tensor:
    """similarity [F, W] for F = len(sig) + 3 frames that stay one segment (tau_seg -1, max_window F + 1): the plan
    reads only tau_m = cos(F0, F_last) at [F - 1, F - 2] and sig_j = cos(m_j, m_j+1) of the middle frames
    m_j = F_(1+j) at [2 + j, 0]; every other entry is 0."""
    F = len(sig) + 3
    similarity = torch.zeros(F, F - 1)
    similarity[F - 1, F - 2] = tau_m
    for j, value in enumerate(sig):
        similarity[2 + j, 0] = value
    return similarity


# (tau_m, sig, the rows (first, last, w) written by hand). A pair (m_j, m_j+1) merges when sig_j > tau_m and
# sig_j > sig_j+1 (the last pair: sig_j > tau_m alone, w = 1), w = sig_j / (sig_j + sig_j+1); the last middle frame
# is dropped unless merged. Each case holds a tie where `>=` would merge a different pair.
TIES = {
    "neighbours tie": (  # sig_0 = sig_1: m_0 stays alone, (m_1, m_2) merge; `>=` would merge (m_0, m_1), (m_2, m_3)
        0.5,
        [0.9, 0.9, 0.6],
        [(0, 0, 1.0), (1, 1, 1.0), (2, 3, 0.9 / 1.5), (5, 5, 1.0)],
    ),
    "threshold tie": (  # sig_0 = tau_m: nothing merges (m_3 dropped); `>=` would merge (m_0, m_1)
        0.6,
        [0.6, 0.3, 0.2],
        [(0, 0, 1.0), (1, 1, 1.0), (2, 2, 1.0), (3, 3, 1.0), (5, 5, 1.0)],
    ),
    "last pair at the threshold": (  # sig_2 = tau_m: (m_2, m_3) stay apart, m_3 dropped; `>=` would merge them
        0.5,
        [0.1, 0.2, 0.5],
        [(0, 0, 1.0), (1, 1, 1.0), (2, 2, 1.0), (3, 3, 1.0), (5, 5, 1.0)],
    ),
}


@pytest.mark.parametrize("case", list(TIES))
def test_plan_ties_make_the_reference_decisions(case):
    tau_m, sig, rows = TIES[case]
    similarity = one_segment(tau_m, sig)
    F = similarity.shape[0]
    options = {"alpha": 0.9, "tau_seg": -1.0, "max_window": F + 1}
    plan = plan_compress(similarity, plan_segments(similarity, **options))
    ours = run_plan(similarity, **options)
    expected_source = [[first, last] for first, last, _ in rows]
    expected_weight = torch.tensor([[w, 1.0 - w] for _, _, w in rows])
    assert plan.source.tolist() == expected_source  # the hand-written plan is the reference's
    torch.testing.assert_close(plan.weight, expected_weight)
    N, S = ours["counts"].tolist()
    assert (S, ours["segments"][:S].tolist()) == (1, [[0, F - 1]])
    assert torch.stack([ours["first"][:N], ours["last"][:N]], 1).tolist() == expected_source
    assert torch.equal(ours["weight"][:N], plan.weight)
    assert ours["label"].tolist() == [0] + [1] * (F - 2) + [0]


@settings(max_examples=30, deadline=None)
@given(J=st.integers(2, 6), data=st.data())
def test_plan_kernel_decides_ties_as_the_reference(J, data):
    """One segment of J middle frames whose sig_j and tau_m come from three values: most plans hold ties."""
    values = st.sampled_from([0.2, 0.5, 0.9])
    similarity = one_segment(data.draw(values), data.draw(st.lists(values, min_size=J - 1, max_size=J - 1)))
    options = {"alpha": 0.9, "tau_seg": -1.0, "max_window": J + 3}
    plan = plan_compress(similarity, plan_segments(similarity, **options))
    ours = run_plan(similarity, **options)
    N = int(ours["counts"][0])
    assert torch.stack([ours["first"][:N], ours["last"][:N]], 1).tolist() == plan.source.tolist()
    assert torch.equal(ours["weight"][:N], plan.weight)


def scene(levels: list[float], L: int, D: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """hidden [F, L, D]: each frame the previous plus levels[i] noise (a large level: a scene cut)."""
    g = torch.Generator().manual_seed(seed)
    frames = [torch.randn(L, D, generator=g)]
    for level in levels[1:]:
        frames.append(frames[-1] + level * torch.randn(L, D, generator=g))
    return torch.stack(frames).to(dtype)


CLIPS = {
    "still": [0.0, 0.05, 0.1, 0.05, 0.1, 0.05, 0.05, 0.1, 0.05, 0.1, 0.05],
    "cuts": [0.0, 0.1, 0.2, 3.0, 0.1, 0.3, 0.1, 4.0, 0.2, 0.1, 0.2, 0.1, 0.3],
    "single": [0.0],
    "pair": [0.0, 0.3],
}


@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize("clip", list(CLIPS))
def test_official_compress_kernels_match_reference(clip, final):
    hidden = scene(CLIPS[clip], 6, 16, seed=len(clip))
    attention = torch.rand(hidden.shape[:2], generator=torch.Generator().manual_seed(1))
    ours = ops.official_compress(hidden, attention, tau_seg=0.5, final=final)
    ref = official_compress(hidden, attention, tau_seg=0.5, final=final)
    assert ours.source.tolist() == ref.source.tolist()
    assert (ours.segments is None) == (ref.segments is None)
    if final:
        assert ours.segments.tolist() == ref.segments.tolist()
    torch.testing.assert_close(ours.hidden, ref.hidden, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.attention, ref.attention, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_merge_in_fp32(dtype):
    hidden = scene(CLIPS["cuts"], 5, 16, seed=7, dtype=dtype)
    attention = torch.rand(hidden.shape[:2], generator=torch.Generator().manual_seed(2)).to(dtype)
    ours = ops.official_compress(hidden, attention, tau_seg=0.5, max_window=4, final=True)
    ref = official_compress(hidden, attention, tau_seg=0.5, max_window=4, final=True)
    assert ours.hidden.dtype == dtype
    assert ours.source.tolist() == ref.source.tolist() and ours.segments.tolist() == ref.segments.tolist()
    torch.testing.assert_close(ours.hidden.float(), ref.hidden.float(), rtol=1e-2, atol=1e-2)


def test_non_finite_hidden_is_refused():
    hidden = scene(CLIPS["still"], 3, 4, seed=0)
    hidden[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/Inf"):
        ops.official_compress(hidden, torch.rand(hidden.shape[:2]), tau_seg=0.5)


@st.composite
def selection_case(draw):
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=5))
    N = sum(sizes)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    segments = torch.tensor([[s, s + n - 1] for s, n in zip(starts, sizes, strict=True)])
    B = draw(st.integers(N, 3 * N))
    T = draw(st.integers(1, 20))
    r = draw(st.sampled_from([0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0]))
    return segments, N, B, T, r, draw(st.booleans()), draw(st.integers(0, 99))


@settings(max_examples=25, deadline=None)
@given(selection_case())
def test_official_select_kernels_match_reference(case):
    """Per-frame top-k of dynamic frames and the section 4b window argmax of middle frames: the same tokens in the
    same order as the reference, ties (scores on a 3-level grid) going to the lower index."""
    segments, N, B, T, r, ties, seed = case
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(N, T, generator=g)
    scores = (scores * 3).floor() if ties else scores
    tokens = torch.randn(N, T, 3, generator=g)
    ref = official_select(tokens, scores, segments, retain_ratio=r, num_frames=B)
    ours = ops.official_select(tokens, scores, segments, retain_ratio=r, num_frames=B)
    assert ours.frame.tolist() == ref.frame.tolist()
    assert ours.index.tolist() == ref.index.tolist()
    assert torch.equal(ours.tokens, ref.tokens)


def attention_reference(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The eager model's computation (earlytom.models.llava_onevision.attention_received) on given q, k."""
    return torch.softmax((q @ k.transpose(-1, -2)).float() * scale, dim=-1).mean(dim=(1, 2))


@pytest.mark.parametrize("F, H, L, d", [(2, 3, 9, 8), (1, 2, 70, 12)])  # 70 > two 32-row blocks
def test_attention_received_streams_to_the_reference(F, H, L, d):
    g = torch.Generator().manual_seed(L)
    q, k = torch.randn(F, H, L, d, generator=g), torch.randn(F, H, L, d, generator=g)
    ours = ops.attention_received(q, k, scale=d**-0.5)
    torch.testing.assert_close(ours, attention_reference(q, k, d**-0.5), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.sum(1), torch.ones(F), rtol=1e-5, atol=0)  # each softmax row sums to 1


def test_attention_received_of_half_inputs_is_float32():
    g = torch.Generator().manual_seed(5)
    q, k = (torch.randn(1, 2, 33, 16, generator=g).to(torch.float16) for _ in range(2))
    ours = ops.attention_received(q, k, scale=0.25)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, attention_reference(q.float(), k.float(), 0.25), rtol=1e-3, atol=1e-6)


def test_attention_received_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"must both be \[F, H, L, d\]"):
        ops.attention_received(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 4, 4), scale=0.5)


def test_official_launch_parameters_for_llava_ov():
    """32 frames of 729 tokens, SigLIP's 16 heads of 72 dims, M = 6: what the kernels are compiled for."""
    assert launch.similarity_width(32, 6) == 5 and launch.similarity_width(3, 6) == 2
    assert launch.similarity_width(1, 6) == 1
    cos = launch.window_cosine(32, 729, 1152, 5)
    assert (cos.grid, cos.scalars, cos.constexprs, cos.num_warps) == (
        (729, 5, 1),
        (32, 729, 1152, 5),
        {"BLOCK_D": 2048},
        8,
    )
    plan = launch.official_plan(32, 729, 5, alpha=0.9, tau_seg=0.5, max_window=6)
    assert plan.grid == (1, 1, 1) and plan.options == {"enable_fp_fusion": False}
    assert plan.constexprs == {"ALPHA": 0.9, "BETA": 1 - 0.9, "TAU_SEG": 0.5, "MAX_WINDOW": 6, "BLOCK_L": 1024}
    stats = launch.attention_row_stats(32, 16, 729, 72, 72**-0.5)
    assert stats.grid == (512, 23, 1) and stats.constexprs["BLOCK_D"] == 128 and stats.scalars == (16, 729, 72)
    received = launch.attention_received(32, 16, 729, 72, 72**-0.5)
    assert received.grid == (32, 23, 1)
    keep = launch.official_keep(20, 196, 40, 39)
    assert keep.grid == (20, 1, 1) and keep.scalars == (20, 196, 40, 39) and keep.constexprs == {"BLOCK_T": 256}
    compact = launch.compact_keep(20, 196, 32)
    assert compact.constexprs == {"BLOCK": 8192} and compact.num_warps == 16


def test_official_pipeline_runs_the_kernels_when_asked(tiny, clips):
    """The default (official) eager pipeline with kernels="triton" makes the reference's decisions."""
    from earlytom.runtime.pipeline import Pipeline

    kernels = Pipeline.from_model(tiny, num_frames=12, kernels="triton").generate(clips["cut"], "x", 3)
    reference = Pipeline.from_model(tiny, num_frames=12, kernels="reference").generate(clips["cut"], "x", 3)
    assert kernels.counts == reference.counts
    assert torch.equal(kernels.visual.source, reference.visual.source)
    assert torch.equal(kernels.visual.frame, reference.visual.frame)
    assert torch.equal(kernels.visual.index, reference.visual.index)
    assert kernels.token_ids == reference.token_ids
