"""The Triton kernels against the PyTorch reference, run by Triton's interpreter on CPU (TRITON_INTERPRET=1 is
set in conftest.py before triton is imported), and their launch parameters and kernel signatures."""

import os
import re

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from earlytom.compress import EarlyTomConfig, frame_merge, plan_merge, token_select
from earlytom.plugins.triton import kernels, launch, ops

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason=f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r} in the environment (conftest sets 1 only when "
    "unset): tests/test_triton_interpreted.py runs this module in a child process with TRITON_INTERPRET=1",
)


def drifting(levels: list[float], L: int, D: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """hidden [B, L, D]: each frame the previous plus levels[t] noise (0: an exact repeat)."""
    g = torch.Generator().manual_seed(seed)
    frames = [torch.randn(L, D, generator=g)]
    for level in levels[1:]:
        frames.append(frames[-1] + level * torch.randn(L, D, generator=g))
    return torch.stack(frames).to(dtype)


@settings(max_examples=40, deadline=None)
@given(
    levels=st.lists(st.sampled_from([0.0, 0.05, 0.2, 0.6, 3.0]), min_size=1, max_size=12),
    L=st.integers(1, 9),
    D=st.integers(1, 24),
    seed=st.integers(0, 999),
    tau_seg=st.floats(0.0, 0.99),
    tau_merge=st.floats(0.3, 0.99),
)
def test_frame_merge_kernels_match_reference(levels, L, D, seed, tau_seg, tau_merge):
    hidden = drifting(levels, L, D, seed)
    config = EarlyTomConfig(variant="paper", tau_seg=tau_seg, tau_merge=tau_merge)
    ours = ops.frame_merge(hidden, tau_seg=tau_seg, tau_merge=tau_merge)
    ref = frame_merge(hidden, alpha=config.alpha, tau_seg=tau_seg, tau_merge=tau_merge)
    torch.testing.assert_close(ours.similarity, ref.similarity, rtol=0, atol=2e-6)
    # A decision may only differ where a similarity (or its EMA) is within rounding of a threshold or of its
    # neighbour; exact repeats give exactly equal similarities in both implementations.
    s = ref.similarity.tolist()
    margins = [abs(x - tau_merge) for x in s] + [abs(e - tau_seg) for e in ema_values(s, config.alpha)]
    margins += [abs(a - b) for a, b in zip(s[:-1], s[1:], strict=True) if a != b]
    assume(min(margins, default=1.0) > 1e-5)
    assert ours.source.tolist() == ref.source.tolist()
    assert ours.segment.tolist() == ref.segment.tolist()
    assert ours.is_static.tolist() == ref.is_static.tolist()
    torch.testing.assert_close(ours.hidden, ref.hidden, rtol=1e-5, atol=1e-5)


@settings(max_examples=150, deadline=None)
@given(
    s=st.lists(st.sampled_from([-0.5, 0.2, 0.5, 0.8, 0.9, 1.0]), min_size=0, max_size=20),
    alpha=st.sampled_from([0.3, 0.6, 1.0]),
    tau_seg=st.floats(-1.0, 1.0),
    tau_merge=st.floats(-1.0, 1.0),
)
@example(s=[-0.5, 0.8, -0.5], alpha=0.3, tau_seg=-1.0, tau_merge=0.8)  # s_1 == tau_merge in float32: no merge
def test_merge_plan_kernel_makes_the_reference_decisions(s, alpha, tau_seg, tau_merge):
    """The scan alone, fed the reference's similarities (L = 1): ties between neighbours included."""
    similarity = torch.tensor(s, dtype=torch.float32)
    B = len(s) + 1
    i32 = {"dtype": torch.int32}
    first, last, segment, is_static = (torch.empty(B, **i32) for _ in range(4))
    weight, count, s_out = torch.empty(B, 2), torch.zeros(1, **i32), torch.empty(max(B - 1, 1))
    cos = similarity[:, None].contiguous() if s else torch.zeros(1, 1)
    spec = launch.merge_plan(B, 1, alpha=alpha, tau_seg=tau_seg, tau_merge=tau_merge)
    ops.run(spec, cos, s_out, first, last, weight, segment, is_static, count)
    ref = plan_merge(similarity, alpha=alpha, tau_seg=tau_seg, tau_merge=tau_merge)
    N = int(count)
    ema_margin = min((abs(e - tau_seg) for e in ema_values(s, alpha)), default=1.0)
    assume(ema_margin > 1e-6)  # float32 (kernel) and float64 (reference) EMAs agree off the threshold
    assert torch.stack([first[:N], last[:N]], 1).tolist() == ref.source.tolist()
    assert segment[:N].tolist() == ref.segment.tolist()
    assert is_static[:N].bool().tolist() == ref.is_static.tolist()
    torch.testing.assert_close(weight[:N], ref.weight)


def ema_values(s: list[float], alpha: float) -> list[float]:
    out, ema = [], None
    for x in torch.tensor(s, dtype=torch.float32).tolist():
        ema = x if ema is None else alpha * x + (1 - alpha) * ema
        out.append(ema)
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_fp32(dtype):
    hidden = drifting([0.0, 0.1, 0.0, 0.1, 2.0, 0.1], 5, 16, seed=3, dtype=dtype)
    ours = ops.frame_merge(hidden)
    ref = frame_merge(hidden)
    assert ours.hidden.dtype == dtype
    assert ours.source.tolist() == ref.source.tolist()
    torch.testing.assert_close(ours.similarity, ref.similarity, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.hidden.float(), ref.hidden.float(), rtol=1e-2, atol=1e-2)


@st.composite
def selection_case(draw):
    B = draw(st.integers(1, 12))
    N = draw(st.integers(1, B))
    T = draw(st.integers(1, 30))
    is_static = torch.tensor(draw(st.lists(st.booleans(), min_size=N, max_size=N)))
    r = draw(st.floats(0.02, 1.0))
    ties = draw(st.booleans())
    seed = draw(st.integers(0, 999))
    return B, N, T, is_static, r, ties, seed


@settings(max_examples=60, deadline=None)
@given(selection_case())
def test_token_select_kernels_match_reference(case):
    B, N, T, is_static, r, ties, seed = case
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(N, T, generator=g)
    scores = (scores * 3).floor() if ties else scores
    tokens = torch.randn(N, T, 4, generator=g)
    try:
        ref = token_select(tokens, scores, is_static, retain_ratio=r, num_frames=B)
    except ValueError as error:
        with pytest.raises(ValueError, match=re.escape(str(error))):  # the same message as the reference
            ops.token_select(tokens, scores, is_static, retain_ratio=r, num_frames=B)
        return
    ours = ops.token_select(tokens, scores, is_static, retain_ratio=r, num_frames=B, max_frames=B)
    assert ours.frame.tolist() == ref.frame.tolist()
    assert ours.index.tolist() == ref.index.tolist()
    assert torch.equal(ours.tokens, ref.tokens)


def test_negative_zero_ties_like_torch():
    scores = torch.tensor([[0.0, -0.0, 0.0, -0.0]])
    tokens = torch.arange(4.0).view(1, 4, 1)
    ours = ops.token_select(tokens, scores, torch.tensor([False]), retain_ratio=0.5, num_frames=1)
    assert (
        ours.index.tolist()
        == token_select(tokens, scores, torch.tensor([False]), retain_ratio=0.5, num_frames=1).index.tolist()
        == [0, 1]
    )


def test_kernel_parameters_follow_the_aot_order():
    """Input pointers, then int32 scalars, then output pointers, then compile-time constants; the signature
    table names every parameter of the jit function in order."""
    for name, signature in launch.SIGNATURES.items():
        kinds = ["scalar" if kind == "i32" else "pointer" for _, kind in signature]
        first_scalar = kinds.index("scalar")
        last_scalar = len(kinds) - 1 - kinds[::-1].index("scalar")
        assert all(k == "scalar" for k in kinds[first_scalar : last_scalar + 1]), name
        assert all(kind in ("i32", "*x", "*fp32", "*i32") for _, kind in signature), name  # no float scalars
        fn = getattr(kernels, name)
        spec = {
            "token_cosine": launch.token_cosine(4, 5, 6),
            "merge_plan": launch.merge_plan(4, 5, alpha=0.6, tau_seg=0.75, tau_merge=0.8),
            "weighted_merge": launch.weighted_merge(4, 5, 6),
            "window_select": launch.window_select(3, 7, 5, 4),
            "dynamic_topk": launch.dynamic_topk(3, 7, 5, 4),
            "gather_tokens": launch.gather_tokens(5, 7, 6),
            "attention_row_stats": launch.attention_row_stats(2, 3, 9, 8, 0.5),
            "attention_received": launch.attention_received(2, 3, 9, 8, 0.5),
            "window_cosine": launch.window_cosine(4, 5, 6, 3),
            "official_plan": launch.official_plan(4, 5, 3, alpha=0.9, tau_seg=0.5, max_window=6),
            "official_keep": launch.official_keep(3, 7, 2, 2),
            "compact_keep": launch.compact_keep(3, 7, 4),
        }[name]
        assert fn.arg_names == [n for n, _ in signature] + list(spec.constexprs), name
        assert len(spec.scalars) == kinds.count("scalar"), name


def test_launch_parameters_for_llava_ov():
    B, L, D, T = 32, 729, 1152, 196
    cos = launch.token_cosine(B, L, D)
    assert (cos.grid, cos.constexprs, cos.scalars, cos.block_threads) == (
        (729, 1, 1),
        {"BLOCK_D": 2048},
        (32, 729, 1152),
        256,
    )
    plan = launch.merge_plan(B, L, alpha=0.6, tau_seg=0.75, tau_merge=0.8)
    assert plan.grid == (1, 1, 1) and plan.constexprs["BLOCK_L"] == 1024 and plan.scalars == (32, 729)
    merge = launch.weighted_merge(B, L, D)
    assert merge.grid == (32, 821, 1) and merge.scalars == (729 * 1152,)  # cdiv(839808, 1024) = 821
    top = launch.dynamic_topk(20, T, 941, B)
    assert top.grid == (1, 1, 1) and top.constexprs == {"BLOCK": 8192, "BLOCK_N": 32} and top.num_warps == 16
    window = launch.window_select(20, T, 941, B)
    assert window.grid == (20, 1, 1) and window.constexprs == {"BLOCK_T": 256, "BLOCK_N": 32}
    gather = launch.gather_tokens(941, T, 3584)
    assert gather.grid == (941, 4, 1) and gather.scalars == (196, 3584)
    assert [launch.next_pow2(x) for x in (1, 2, 3, 729, 1024, 1025)] == [1, 2, 4, 1024, 1024, 2048]


def test_pipeline_runs_the_kernels_when_asked(tiny, clips):
    """The eager pipeline with kernels="triton" (interpreted here, on CUDA for real) == the reference."""
    from earlytom.runtime.pipeline import Pipeline

    paper = EarlyTomConfig(variant="paper")  # the pipeline runs the paper variant until the official one is wired
    kernels = Pipeline.from_model(tiny, num_frames=10, kernels="triton", config=paper).generate(clips["cut"], "x", 3)
    reference = Pipeline.from_model(tiny, num_frames=10, kernels="reference", config=paper).generate(
        clips["cut"], "x", 3
    )
    assert kernels.counts == reference.counts
    assert torch.equal(kernels.visual.source, reference.visual.source)
    assert torch.equal(kernels.visual.frame, reference.visual.frame)
    assert torch.equal(kernels.visual.index, reference.visual.index)
    assert kernels.token_ids == reference.token_ids


def test_forcing_triton_on_cpu_without_the_interpreter_is_a_clear_error(tiny, clips, monkeypatch):
    from earlytom.runtime.pipeline import Pipeline

    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="needs a CUDA device, or TRITON_INTERPRET=1"):
        config = EarlyTomConfig(variant="paper")
        Pipeline.from_model(tiny, num_frames=4, kernels="triton", config=config).generate(clips["moving"], "x", 1)
