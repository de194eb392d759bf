"""The TensorRT backend without TensorRT: plugin declarations against the validator's rules and the kernels,
the network plans, buffer sizes, the decoder's prompt layout, compatibility checks (the C++ side: test_cpp.py).
Tests that need TensorRT itself skip, saying so."""

import ast
import importlib.util
from pathlib import Path

import pytest
import torch
from llava_dims import OV_DIMS

from earlytom.compress import EarlyTomConfig
from earlytom.engine.layout import vision_chain
from earlytom.engine.manifest import IncompatibleEngine, Manifest, TensorRTInfo, check_compatible
from earlytom.engine_builder import tensorrt as trt_build
from earlytom.models.backbone import VisionDims
from earlytom.plugins import tensorrt as plugins
from earlytom.plugins.triton import launch
from earlytom.runtime.backends.base import RunOptions, UnsupportedOption
from earlytom.runtime.backends.tensorrt import buffer_specs, check_fixed, prompt_table_ids

PAPER = EarlyTomConfig(variant="paper").for_model(26, 28)  # LLaVA-OV-7B: merge after layer 5 (k = 6)
CHAIN = vision_chain("paper", PAPER.merge_layers, 26)


def kernel_io(kernel: str) -> tuple[list[str], list[str]]:
    """(input pointers, output pointers) of a kernel: the pointers before / after its int32 scalars."""
    signature = launch.SIGNATURES[kernel]
    kinds = [kind for _, kind in signature]
    first = kinds.index("i32")
    last = len(kinds) - 1 - kinds[::-1].index("i32")
    return [n for n, _ in signature[:first]], [n for n, _ in signature[last + 1 :]]


@pytest.mark.parametrize("name", list(plugins.PLUGINS))
def test_plugin_tensors_are_the_kernel_pointers(name):
    spec = plugins.PLUGINS[name]
    inputs, outputs = kernel_io(spec.kernel)
    assert list(spec.inputs) == inputs and list(spec.outputs) == outputs
    assert spec.id == f"earlytom::{name}"


QDP_SOURCE = (Path(plugins.__file__).parent / "qdp.py").read_text()  # its import needs TensorRT: read as text


def qdp_functions() -> dict[tuple[str, str], ast.FunctionDef]:
    """(decorator kind, plugin id) -> the decorated function, read statically from earlytom/plugins/qdp.py (which
    imports TensorRT)."""
    tree = ast.parse(QDP_SOURCE)
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute):
                    found[(deco.func.attr, deco.args[0].value)] = node
    return found


@pytest.mark.parametrize("name", list(plugins.PLUGINS))
def test_qdp_declarations_follow_the_validator_rules(name):
    spec, functions = plugins.PLUGINS[name], qdp_functions()
    register, aot_impl = functions[("register", spec.id)], functions[("aot_impl", spec.id)]
    attributes = [a for a, _ in spec.attributes]
    # register: tensors first, then attributes, all annotated, none defaulted, a return annotation.
    args = register.args
    assert [a.arg for a in args.args] == [*spec.inputs, *attributes]
    assert not args.defaults and not args.kw_defaults and register.returns is not None
    assert all(a.annotation is not None for a in args.args)
    for arg, (_, kind) in zip(args.args[len(spec.inputs) :], spec.attributes, strict=True):
        assert ast.unparse(arg.annotation) == kind
    for arg in args.args[: len(spec.inputs)]:
        assert ast.unparse(arg.annotation) == "trtp.TensorDesc"
    # aot_impl: every attribute in registration order, then outputs and tactic (the 11.x validator needs
    # tactic and the return annotation even though the docstring says tactic is optional).
    names = [a.arg for a in aot_impl.args.args]
    assert names == [*spec.inputs, *attributes, "outputs", "tactic"]
    assert ast.unparse(aot_impl.args.args[-1].annotation) == "int"
    assert ast.unparse(aot_impl.args.args[-2].annotation) == "Tuple[trtp.TensorDesc]"
    assert aot_impl.returns is not None
    # it launches its own kernel through the tested launch functions
    calls = {ast.unparse(n.func) for n in ast.walk(aot_impl) if isinstance(n, ast.Call)}
    assert f"launch.{spec.kernel}" in calls


def test_extra_kernel_arguments_are_int32_symbols_only():
    source = QDP_SOURCE
    assert "trtp.SymInt32(x) for x in spec.scalars" in source
    assert "SymFloat" not in source and "SymInt64" not in source
    assert all(kind in ("i32", "*x", "*fp32", "*i32") for sig in launch.SIGNATURES.values() for _, kind in sig)


def test_attributes_are_types_the_validator_accepts():
    """QDP attributes: int, float, str, bool, bytes or numpy arrays (the official_keep count tables)."""
    kinds = {kind for spec in plugins.PLUGINS.values() for _, kind in spec.attributes}
    assert kinds <= {"int", "float", "npt.NDArray[np.int32]"}


class Symbol:
    """Stands for a TensorRT shape expression: launch functions must pass dynamic dims through untouched; it has
    the operations trtp.ShapeExpr has (+, *, < with the expression on the left), each giving an expression."""

    def __add__(self, other):
        return Symbol()

    __mul__ = __lt__ = __add__


@pytest.mark.parametrize(
    "make",
    [
        lambda B: launch.token_cosine(B, 729, 1152),
        lambda B: launch.merge_plan(B, 729, alpha=0.6, tau_seg=0.75, tau_merge=0.8),
        lambda B: launch.weighted_merge(B, 729, 1152),
        lambda B: launch.window_select(B, 196, 941, 32),
        lambda B: launch.dynamic_topk(B, 196, 941, 32),
        lambda B: launch.window_cosine(B, 729, 1152, 5),
        lambda B: launch.official_plan(B, 729, 5, alpha=0.9, tau_seg=0.5, max_window=6),
        lambda B: launch.weighted_merge(B, 1, 729),  # attention rows
        lambda B: launch.official_keep(B, 196, plugins.table_lookup(B, (40, 20)), plugins.table_lookup(B, (39, 20))),
        lambda B: launch.compact_keep(B, 196, 32),
    ],
)
def test_launch_parameters_take_symbolic_frame_counts(make):
    B = Symbol()
    spec = make(B)
    used = [x for x in (*spec.grid, *spec.scalars) if isinstance(x, Symbol)]
    assert used, "the dynamic frame count reaches the grid or the scalar arguments"
    assert all(isinstance(x, int | Symbol) for x in (*spec.grid, *spec.scalars))
    assert all(not isinstance(v, Symbol) for v in spec.constexprs.values())  # compile-time constants are data-free


def test_network_plans_for_llava_ov():
    head, tail = trt_build.network_plans(PAPER, OV_DIMS, CHAIN, 32)
    assert [layer.plugin for layer in head.layers] == ["token_cosine", "merge_plan", "weighted_merge"]
    assert [layer.plugin for layer in tail.layers] == ["window_select", "dynamic_topk", "gather_tokens"]
    assert head.layers[1].attributes == {"alpha": 0.6, "tau_seg": 0.75, "tau_merge": 0.8}
    assert tail.layers[1].attributes == {"k_target": 941, "max_frames": 32}  # round(0.15 * 32 * 196)
    assert head.renamed == {"hidden_5": "hidden_5_unmerged"}  # the merged frames take the name the tail reads
    graph_outputs = {"vision_head": {"hidden_5_unmerged", "pixels"}, "vision_tail": {"tokens", "scores", "hidden_5"}}
    for plan in (head, tail):
        available = graph_outputs[plan.name] | set(plan.extra_inputs)
        for layer in plan.layers:
            spec = plugins.PLUGINS[layer.plugin]
            assert set(layer.inputs) <= available, (plan.name, layer.plugin)  # produced before use
            assert len(layer.inputs) == len(spec.inputs) and len(layer.outputs) == len(spec.outputs)
            assert list(layer.attributes) == [a for a, _ in spec.attributes]  # registration order
            available |= set(layer.outputs)
        assert set(plan.outputs) <= available
    assert head.profiles[0] == trt_build.Profile("pixels", (1, 3, 384, 384), (32, 3, 384, 384), (32, 3, 384, 384))
    assert tail.profiles == (
        trt_build.Profile("hidden_5", (1, 729, 1152), (24, 729, 1152), (32, 729, 1152)),
        trt_build.Profile("is_static", (1,), (24,), (32,)),
    )


def manifest_for(config: EarlyTomConfig, chain=CHAIN, vision: VisionDims = OV_DIMS) -> Manifest:
    return Manifest(
        format="x",
        model=None,
        earlytom=config.to_dict(),
        max_frames=32,
        vision=vision,
        graphs=chain,
        backend="tensorrt",
        dtype="fp16",
        plugin_archs=(),
        verification_max_rel_error={},
        notes=(),
        created="",
        tools={},
        artifacts={},
    )


def test_buffers_hold_the_largest_request():
    specs = buffer_specs(manifest_for(PAPER))
    assert specs["pixels"].shape == (32, 3, 384, 384) and specs["hidden_5"].shape == (32, 729, 1152)
    assert specs["selected"].shape == (941, 3584) and specs["selected"].dtype == torch.float16
    assert specs["count"].dtype == torch.int32
    head, tail = trt_build.network_plans(PAPER, OV_DIMS, CHAIN, 32)
    named = {"pixels", "hidden_5", "is_static", *head.outputs, *tail.outputs}
    assert named == set(specs)  # every I/O tensor has a buffer, the tail's inputs the head's outputs


def test_decoder_prompt_table_layout():
    plan = trt_build.decoder_plan(PAPER, OV_DIMS, 32)
    assert plan.max_multimodal_len == 942  # K + the suffix (LLaVA's image_newline)
    assert plan.max_input_len == 942 + 512 and plan.max_seq_len == 942 + 1024
    ids = prompt_table_ids(torch.tensor([5, 6]), 3, torch.tensor([7]), vocab_size=100)
    assert ids.tolist() == [5, 6, 100, 101, 102, 7] and ids.dtype == torch.int32


def test_plans_from_another_tensorrt_or_gpu_are_refused():
    built = TensorRTInfo(tensorrt="11.4.0", tensorrt_llm="1.0", gpu_arch="sm_89")
    check_compatible(built, tensorrt_version="11.4.0", gpu_arch="sm_89")
    with pytest.raises(IncompatibleEngine, match="built with TensorRT 11.4.0, this machine has 11.5.0"):
        check_compatible(built, tensorrt_version="11.5.0", gpu_arch="sm_89")
    with pytest.raises(IncompatibleEngine, match="built for sm_89, this GPU is sm_90"):
        check_compatible(built, tensorrt_version="11.4.0", gpu_arch="sm_90")


def test_tensorrt_engines_fix_every_run_option_but_fewer_frames():
    """TensorRT engines run what they were built for: another method, ratio, threshold or kernel choice is
    refused on every path (not silently run under a wrong label)."""
    built = RunOptions(config=PAPER, num_frames=32)
    assert check_fixed(built, RunOptions(config=PAPER, num_frames=8)).num_frames == 8
    for changed in (
        RunOptions(config=PAPER, num_frames=32, method="full"),
        RunOptions(config=PAPER, num_frames=32, kernels="reference"),
        RunOptions(config=EarlyTomConfig(variant="paper", retain_ratio=0.25).for_model(26, 28), num_frames=32),
        RunOptions(config=PAPER, num_frames=33),
    ):
        with pytest.raises(UnsupportedOption):
            check_fixed(built, changed)


@pytest.mark.skipif(not importlib.util.find_spec("tensorrt"), reason="TensorRT is not installed (no GPU machine)")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_tensorrt_engines_match_eager(tmp_path, tiny, clips):  # pragma: no cover - runs on a GPU machine only
    from earlytom.engine_builder.build import build
    from earlytom.runtime.pipeline import Pipeline

    paper = EarlyTomConfig(variant="paper", merge_layers=(0,))
    build("tiny", tmp_path / "trt", backend="tensorrt", frames=8, config=paper, progress=False)
    trt = Pipeline.from_engine_dir(tmp_path / "trt").generate(clips["cut"], "x", max_new_tokens=4)
    eager = Pipeline.from_model(tiny, num_frames=8, config=paper).generate(clips["cut"], "x", max_new_tokens=4)
    assert trt.counts == eager.counts
    assert torch.equal(trt.visual.frame, eager.visual.frame) and torch.equal(trt.visual.index, eager.visual.index)
