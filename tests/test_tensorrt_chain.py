"""The TensorRT plans of the official variant's chain of graphs, without TensorRT: the plans' data for LLaVA-OV-7B
(merge layers (8, 21, 23): four graphs) and the tiny model, the count tables against official_select, the
buffers, and the plans' plugin layers executed in order by the Triton kernels under the interpreter (launch
arguments as the aot_impls compute them) against the reference compression and selection."""

import importlib.util
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from llava_dims import OV_DIMS, llava_dims
from test_tensorrt_plans import manifest_for as plans_manifest

from earlytom.compress import EarlyTomConfig
from earlytom.compress.official import official_compress
from earlytom.compress.select import official_select, segment_labels
from earlytom.engine import sizes
from earlytom.engine.layout import vision_chain
from earlytom.engine.manifest import Manifest
from earlytom.engine_builder import tensorrt as trt_build
from earlytom.plugins import tensorrt as plugins
from earlytom.plugins.triton import launch
from earlytom.runtime.backends.tensorrt import buffer_specs

TINY_DIMS = llava_dims(72, patch_tokens=81, hidden=32, llm_hidden=64, tokens_per_frame=25, encoder_layers=4, heads=2)
OV = EarlyTomConfig().for_model(26, 28)  # official, (8, 21, 23), r = 0.2, tau_seg 0.5, M 6
TINY = EarlyTomConfig().for_model(4, 2)  # official, (0, 2, 3)
PAPER = EarlyTomConfig(variant="paper").for_model(26, 28)
CASES = {
    "llava-ov-7b": (OV, OV_DIMS, vision_chain("official", OV.merge_layers, 26)),
    "tiny": (TINY, TINY_DIMS, vision_chain("official", TINY.merge_layers, 4)),
}
WITH_PAPER = {**CASES, "paper llava-ov-7b": (PAPER, OV_DIMS, vision_chain("paper", PAPER.merge_layers, 26))}


def plans_of(case: str, max_frames: int = 32) -> list[trt_build.NetworkPlan]:
    config, dims, chain = WITH_PAPER[case]
    return trt_build.network_plans(config, dims, chain, max_frames)


def test_llava_ov_chain_has_four_plans_with_compression_then_selection():
    plans = plans_of("llava-ov-7b")
    assert [p.name for p in plans] == ["vision_head", "vision_mid1", "vision_mid2", "vision_tail"]
    compression = ["window_cosine", "official_plan", "weighted_merge", "weighted_merge"]
    for plan, layer in zip(plans[:3], (8, 21, 23), strict=True):
        # the attention of layers 8 and 21 is read by no graph: not merged, not marked (TensorRT prunes it)
        names = (f"hidden_{layer}", f"attention_{layer}")[: 2 if layer == 23 else 1]
        assert [x.plugin for x in plan.layers] == compression[: 2 + len(names)]
        assert plan.renamed == {n: f"{n}_unmerged" for n in names}
        assert plan.outputs == (*names, "count", "first", "last")
        assert [x.outputs for x in plan.layers[2:]] == [(n,) for n in names]  # merged rows take the names
        assert plan.layers[0].attributes == {"width": 5}  # M - 1 frame distances
        assert plan.layers[1].attributes == {"alpha": 0.9, "tau_seg": 0.5, "max_window": 6}
    tail = plans[3]
    assert [x.plugin for x in tail.layers] == [
        "window_cosine",
        "official_plan",
        "official_keep",
        "compact_keep",
        "gather_tokens",
    ]
    assert tail.layers[0].inputs == ("hidden_23",)  # the re-segmentation of the merged frames the tail reads
    assert tail.outputs == ("selected", "frame", "index", "selected_count") and tail.renamed == {}
    keep = tail.layers[2].attributes
    assert keep["k_dynamic"][31] == 40 and keep["windows"][31] == 39  # N = B: ceil / round of 196 * 0.2 = 39.2
    assert keep["k_dynamic"][15] == 79 and keep["k_dynamic"][0] == 196  # N = 16: r_hat 0.4; N = 1: all tokens
    assert tail.layers[3].attributes == {"k_bound": sizes.selected_bound(OV, OV_DIMS, 32), "max_frames": 32}


@pytest.mark.parametrize("case", list(WITH_PAPER))
def test_every_plugin_input_is_produced_before_use(case):
    config, dims, chain = WITH_PAPER[case]
    for plan, graph in zip(plans_of(case), chain, strict=True):
        assert set(plan.renamed) <= set(graph.outputs)
        available = {plan.renamed.get(n, n) for n in graph.outputs} | set(graph.inputs) | set(plan.extra_inputs)
        for layer in plan.layers:
            spec = plugins.PLUGINS[layer.plugin]
            assert set(layer.inputs) <= available, (plan.name, layer.plugin, set(layer.inputs) - available)
            assert len(layer.inputs) == len(spec.inputs) and len(layer.outputs) == len(spec.outputs)
            assert list(layer.attributes) == [a for a, _ in spec.attributes]  # registration order
            assert not set(layer.outputs) & available, "a tensor name is written twice in one network"
            available |= set(layer.outputs)
        assert set(plan.outputs) <= available


@pytest.mark.parametrize("case", list(WITH_PAPER))
def test_each_plan_reads_what_an_earlier_plan_wrote_under_the_same_name(case):
    """earlytom_vision's convention (cpp/earlytom_vision.h): a later input reads the latest earlier output of
    its name, a plan that merges writes "count", the last plan writes selected and selected_count."""
    config, dims, chain = WITH_PAPER[case]
    plans = plans_of(case)
    written: set[str] = set()
    for plan, graph in zip(plans, chain, strict=True):
        inputs = (*graph.inputs, *plan.extra_inputs)
        assert inputs == ("pixels",) if plan is plans[0] else set(inputs) <= written, (plan.name, inputs)
        assert ("count" in plan.outputs) == (not graph.final)
        written |= set(plan.outputs)
    assert {"selected", "selected_count"} <= set(plans[-1].outputs)


@pytest.mark.parametrize("case", list(CASES))
def test_profiles_cover_one_to_max_frames_for_every_input(case):
    config, dims, chain = CASES[case]
    L, D, S = dims.patch_tokens, dims.hidden, dims.frame_size[0]  # LLaVA-OV: square frames, pixels [3, S, S]
    for i, (plan, graph) in enumerate(zip(plans_of(case, 32), chain, strict=True)):
        assert [p.tensor for p in plan.profiles] == list(graph.inputs)
        opt = 32 if i == 0 else trt_build.opt_frames_after_merge(32, i)
        for p in plan.profiles:
            row = {"pixels": (3, S, S)}.get(p.tensor, (L, D) if p.tensor.startswith("hidden_") else (L,))
            assert (p.min, p.opt, p.max) == ((1, *row), (opt, *row), (32, *row))
    assert [trt_build.opt_frames_after_merge(32, i) for i in (1, 2, 3)] == [24, 18, 14]


def manifest_for(case: str) -> Manifest:
    config, dims, chain = CASES[case]
    return plans_manifest(config, chain, dims)


@pytest.mark.parametrize("case", list(CASES))
def test_buffers_cover_every_io_tensor_at_its_largest_shape(case):
    config, dims, chain = CASES[case]
    specs = buffer_specs(manifest_for(case))
    plans = plans_of(case)
    io = {name for plan, graph in zip(plans, chain, strict=True) for name in (*graph.inputs, *plan.outputs)}
    assert io == set(specs)
    for plan in plans:  # an input's buffer holds its largest profile shape
        for p in plan.profiles:
            assert specs[p.tensor].shape == p.max
    K = sizes.selected_bound(config, dims, 32)
    assert specs["selected"].shape == (K, dims.llm_hidden) and specs["selected"].dtype == torch.float16
    assert specs["count"].shape == (2,) and specs["count"].dtype == torch.int32  # (N, segments)
    (attention,) = [n for n in specs if n.startswith("attention_")]  # the last merge layer's, the tail's scores
    assert attention == chain[-1].inputs[1] and specs[attention].dtype == torch.float32


def test_decoder_prompt_table_holds_the_largest_selection():
    K = sizes.selected_bound(OV, OV_DIMS, 32)
    assert trt_build.decoder_plan(OV, OV_DIMS, 32).max_multimodal_len == K + 1
    assert 32 * 40 <= K <= 32 * 196  # at least N = B frames of ceil(196 * 0.2) tokens


@settings(max_examples=60, deadline=None)
@given(
    B=st.integers(1, 40),
    T=st.sampled_from([1, 5, 25, 196]),
    r=st.sampled_from([0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0]),
    data=st.data(),
)
def test_count_tables_give_what_official_select_keeps(B, T, r, data):
    """For N frames after the last merge in any segmentation, official_select keeps (dynamic frames) x
    k_dynamic[N - 1] + (static frames) x windows[N - 1] tokens, never more than the plan's bound."""
    config = EarlyTomConfig(retain_ratio=r).for_model(4, 2)
    dims = llava_dims(8, patch_tokens=4, hidden=4, llm_hidden=3, tokens_per_frame=T, encoder_layers=4, heads=1)
    k_dynamic, windows = sizes.selection_tables(config, dims, B)
    N = data.draw(st.integers(1, B))
    cuts = sorted(data.draw(st.sets(st.integers(1, N - 1), max_size=N - 1))) if N > 1 else []
    bounds = [0, *cuts, N]
    segments = torch.tensor([[a, b - 1] for a, b in zip(bounds, bounds[1:], strict=False)])
    picked = official_select(torch.zeros(N, T, 3), torch.rand(N, T), segments, retain_ratio=r, num_frames=B)
    static = sum(segment_labels(segments.tolist()))
    assert picked.frame.numel() == (N - static) * k_dynamic[N - 1] + static * windows[N - 1]
    assert picked.frame.numel() <= sizes.selected_bound(config, dims, B)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=40))
def test_table_lookup_is_the_table_entry_for_every_frame_count(table):
    """The shape-expression form (+, *, < only) of the count tables gives entry n - 1 for n = 1 .. len."""
    assert [plugins.table_lookup(n, table) for n in range(1, len(table) + 1)] == table


def test_table_lookup_of_the_llava_ov_tables():
    k_dynamic, windows = sizes.selection_tables(OV, OV_DIMS, 32)
    for table in (k_dynamic, windows):
        assert [plugins.table_lookup(n, table) for n in range(1, 33)] == list(table)
    with pytest.raises(ValueError, match="empty table"):
        plugins.table_lookup(1, ())


# The plans run by the kernels: each plugin layer launched as its aot_impl launches it, on the tensors the plan
# names, with the output shapes its register function declares.

interpreted = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="the kernels run under Triton's interpreter only (TRITON_INTERPRET=1, set by conftest when unset)",
)


def layer_launch(layer: trt_build.PluginLayer, t: dict[str, torch.Tensor]) -> launch.Launch:
    """The launch the plugin's aot_impl computes from its input shapes and attributes."""
    a, x = layer.attributes, t[layer.inputs[0]]
    if layer.plugin == "window_cosine":
        return launch.window_cosine(*x.shape, a["width"])
    if layer.plugin == "official_plan":
        F, W, L = x.shape
        return launch.official_plan(F, L, W, alpha=a["alpha"], tau_seg=a["tau_seg"], max_window=a["max_window"])
    if layer.plugin == "weighted_merge":
        return launch.weighted_merge(x.shape[0], 1, x[0].numel())
    if layer.plugin == "official_keep":
        N, T = x.shape
        return launch.official_keep(
            N, T, plugins.table_lookup(N, a["k_dynamic"]), plugins.table_lookup(N, a["windows"])
        )
    if layer.plugin == "compact_keep":
        return launch.compact_keep(*x.shape, a["max_frames"])
    assert layer.plugin == "gather_tokens"
    return launch.gather_tokens(t[layer.inputs[1]].shape[0], x.shape[1], x.shape[2])


def layer_outputs(layer: trt_build.PluginLayer, t: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Output tensors of the shapes and dtypes the register function declares."""
    x, i32, f32 = t[layer.inputs[0]], torch.int32, torch.float32
    if layer.plugin == "window_cosine":
        return [torch.zeros(x.shape[0], layer.attributes["width"], x.shape[1])]
    if layer.plugin == "official_plan":
        F, W, _ = x.shape
        shapes = [((F, W), f32), ((F,), i32), ((F,), i32), ((F, 2), f32), ((F, 2), i32), ((F,), i32), ((2,), i32)]
        return [torch.zeros(s, dtype=d) for s, d in shapes]
    if layer.plugin == "weighted_merge":
        return [torch.zeros_like(x)]
    if layer.plugin == "official_keep":
        return [torch.zeros(x.shape, dtype=i32)]
    if layer.plugin == "compact_keep":
        K = layer.attributes["k_bound"]
        return [torch.zeros(K, dtype=i32), torch.zeros(K, dtype=i32), torch.zeros(1, dtype=i32)]
    return [torch.zeros(t[layer.inputs[1]].shape[0], x.shape[2], dtype=x.dtype)]


def run_layers(plan: trt_build.NetworkPlan, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plan's plugin layers in order; tensors: its graph inputs and outputs (by their graph names)."""
    from earlytom.plugins.triton import ops

    t = {plan.renamed.get(name, name): value for name, value in tensors.items()}
    for layer in plan.layers:
        outputs = layer_outputs(layer, t)
        ops.run(layer_launch(layer, t), *(t[n].contiguous() for n in layer.inputs), *outputs)
        t |= zip(layer.outputs, outputs, strict=True)
    return t


def scene_clip(F: int, L: int, D: int, cuts: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [F, L, D]: a base per scene (new at each cut) plus per-frame drift; attention [F, L] softmax rows."""
    g = torch.Generator().manual_seed(seed)
    scene = torch.zeros(F, dtype=torch.long)
    for cut in cuts:
        scene[cut:] += 1
    bases = torch.randn(len(cuts) + 1, L, D, generator=g)
    hidden = bases[scene] + 0.35 * torch.randn(F, L, D, generator=g)
    return hidden, torch.softmax(torch.randn(F, L, generator=g), -1)


DIMS = llava_dims(16, patch_tokens=6, hidden=16, llm_hidden=8, tokens_per_frame=16, encoder_layers=4, heads=2)
CONFIG = EarlyTomConfig(retain_ratio=0.3, tau_seg=0.3).for_model(4, 2)
CHAIN = vision_chain("official", CONFIG.merge_layers, 4)
MAX_FRAMES = 12


@interpreted
@pytest.mark.parametrize(("F", "cuts", "seed"), [(12, (5,), 0), (12, (3, 8), 1), (7, (4,), 2), (3, (), 3)])
def test_compression_plan_merges_like_official_compress(F, cuts, seed):
    """The last merge plan's layers (band width for MAX_FRAMES, whatever F) make the reference's rows and weights,
    for hidden and attention rows alike."""
    plan = trt_build.network_plans(CONFIG, DIMS, CHAIN, MAX_FRAMES)[-2]
    hidden, attention = scene_clip(F, DIMS.patch_tokens, DIMS.hidden, cuts, seed)
    h_name, a_name = CHAIN[-2].outputs
    t = run_layers(plan, {h_name: hidden, a_name: attention})
    ref = official_compress(hidden, attention, tau_seg=CONFIG.tau_seg, alpha=CONFIG.alpha, max_window=CONFIG.max_window)
    N = int(t["count"][0])
    assert N == ref.hidden.shape[0] < F or F <= 3
    assert torch.stack([t["first"][:N], t["last"][:N]], 1).long().tolist() == ref.source.tolist()
    torch.testing.assert_close(t[h_name][:N], ref.hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t[a_name][:N], ref.attention, rtol=1e-5, atol=1e-6)


@interpreted
@pytest.mark.parametrize(("F", "cuts", "seed"), [(12, (6,), 4), (12, (2, 9), 5), (12, (), 6)])
def test_selection_plan_selects_like_official_select(F, cuts, seed):
    """The tail's layers on the merged frames it reads (re-segmentation, counts looked up for N, compaction,
    gather) pick the reference's tokens, B = MAX_FRAMES frames in."""
    tail = trt_build.network_plans(CONFIG, DIMS, CHAIN, MAX_FRAMES)[-1]
    hidden, attention = scene_clip(F, DIMS.patch_tokens, DIMS.hidden, cuts, seed)
    c = CONFIG
    merged = official_compress(hidden, attention, tau_seg=c.tau_seg, alpha=c.alpha, max_window=c.max_window, final=True)
    N, T = merged.hidden.shape[0], DIMS.tokens_per_frame
    g = torch.Generator().manual_seed(seed)
    tokens, scores = torch.randn(N, T, DIMS.llm_hidden, generator=g), torch.rand(N, T, generator=g)
    h_name, a_name = CHAIN[-1].inputs
    t = run_layers(tail, {h_name: merged.hidden, a_name: merged.attention, "tokens": tokens, "scores": scores})
    ref = official_select(tokens, scores, merged.segments, retain_ratio=c.retain_ratio, num_frames=MAX_FRAMES)
    K = int(t["selected_count"][0])
    assert K == ref.frame.numel() <= t["selected"].shape[0]
    assert t["frame"][:K].tolist() == ref.frame.tolist() and t["index"][:K].tolist() == ref.index.tolist()
    assert torch.equal(t["selected"][:K], ref.tokens)


@pytest.mark.skipif(not importlib.util.find_spec("tensorrt"), reason="TensorRT is not installed (no GPU machine)")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_official_tensorrt_engines_match_eager(tmp_path, tiny, clips):  # pragma: no cover - runs on a GPU only
    """The default (official) variant built for TensorRT: frames after each merge and the selected tokens equal
    the eager pipeline's, with as many frames as the engines were built for (the count tables' B)."""
    from earlytom.engine_builder.build import build
    from earlytom.runtime.pipeline import Pipeline

    build("tiny", tmp_path / "trt", backend="tensorrt", frames=8, progress=False)
    trt = Pipeline.from_engine_dir(tmp_path / "trt").generate(clips["cut"], "x", max_new_tokens=4)
    eager = Pipeline.from_model(tiny, num_frames=8).generate(clips["cut"], "x", max_new_tokens=4)
    assert trt.visual.frames_after == eager.visual.frames_after  # (the decoders differ: no inner merge in TRT-LLM)
    assert torch.equal(trt.visual.source, eager.visual.source)
    assert torch.equal(trt.visual.frame, eager.visual.frame) and torch.equal(trt.visual.index, eager.visual.index)
