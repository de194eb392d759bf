"""The TensorRT backend of build_engine: one vision plan per graph of the chain with the EarlyTom plugin layers
appended (paper: head + FrameMerge, tail + TokenSelect; official: every graph but the last + the compression
of section 4b, the last + its selection), and the Qwen2 decoder as a TensorRT-LLM engine that takes the
visual tokens as a prompt table.

Everything the build decides is plain data computed by tested functions (`network_plans`, `decoder_plan`,
`check_compatible`); the functions that call TensorRT or TensorRT-LLM only carry those plans out, following
their documented APIs (shared/reference/tensorrt-api-brief.md). They need an NVIDIA GPU and have not run on
this project's machines.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

from earlytom.compress import EarlyTomConfig
from earlytom.engine.layout import DECODER, DECODER_TRTLLM, TIMING_CACHE, GraphSpec
from earlytom.engine.sizes import k_target, row_shape, selected_bound, selection_tables
from earlytom.models.backbone import VisionDims
from earlytom.plugins.tensorrt import PLUGINS
from earlytom.plugins.triton.launch import similarity_width


@dataclass(frozen=True)
class PluginLayer:
    """One plugin layer: the kernel it runs, its input and output tensor names, its attributes."""

    plugin: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    tensor: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class NetworkPlan:
    """A vision network: the ONNX graph it parses, graph outputs renamed in the network (their merged form,
    written by a plugin, takes the name the next graph reads), inputs added beside the graph (name -> shape,
    dtype), the plugin layers appended to its outputs, the tensors marked as outputs, the optimisation
    profile, the plan file. Every input of a later plan is an output of the same name of an earlier one."""

    name: str
    onnx: str
    plan: str
    renamed: dict
    extra_inputs: dict
    layers: tuple[PluginLayer, ...]
    outputs: tuple[str, ...]
    profiles: tuple[Profile, ...]


EXPECTED_KEEP = 0.75  # frames kept per merge layer on typical clips (the profiles' optimum; not a limit)


def opt_frames_after_merge(max_frames: int, merges: int = 1) -> int:
    """The optimum frame count of a plan that runs after `merges` merge layers: about 75% kept at each."""
    return max(1, math.ceil(EXPECTED_KEEP**merges * max_frames))


def frame_profiles(names: tuple[str, ...], dims: VisionDims, max_frames: int, merges: int) -> tuple[Profile, ...]:
    """Inputs of a plan after `merges` merge layers: 1 .. B frames, optimum opt_frames_after_merge."""
    opt = max_frames if merges == 0 else opt_frames_after_merge(max_frames, merges)
    return tuple(
        Profile(name, (1, *row_shape(name, dims)), (opt, *row_shape(name, dims)), (max_frames, *row_shape(name, dims)))
        for name in names
    )


def unmerged(name: str) -> str:
    """The network's name for a graph output whose merged form takes the name."""
    return f"{name}_unmerged"


def network_plans(
    config: EarlyTomConfig, dims: VisionDims, chain: tuple[GraphSpec, ...], max_frames: int
) -> list[NetworkPlan]:
    """The networks of a vision chain for the EarlyTom parameters, the vision dims (unit shape, patch tokens L,
    width D) and B = max_frames (encoder units): paper (head + FrameMerge plugins, tail + TokenSelect plugins) or
    official (every graph but the last + compression plugins, the last + selection plugins).

    The selection is sized for B = max_frames frames in (paper: K = round(r * B * T); official: the counts for
    r_hat = min(r / (N / B), 1)): a clip with fewer frames keeps more tokens than the eager pipeline would, as
    no plan after the first sees the frame count B (see selection_tables)."""
    if config.variant == "paper":
        return paper_plans(config, dims, chain, max_frames)
    if len(chain) < 2:
        raise ValueError(f"the official variant's chain has a graph per merge layer and a tail; got {len(chain)}")
    return [official_network(config, dims, chain, i, max_frames) for i in range(len(chain))]


def paper_plans(
    config: EarlyTomConfig, dims: VisionDims, chain: tuple[GraphSpec, ...], max_frames: int
) -> list[NetworkPlan]:
    if len(chain) != 2:
        raise ValueError(f"the paper variant runs two vision graphs (one merge layer); got {len(chain)}")
    B = max_frames
    (merged,) = chain[0].outputs  # hidden_<k-1>: leaving the merge layer, read by the tail
    thresholds = {"alpha": config.alpha, "tau_seg": config.tau_seg, "tau_merge": config.tau_merge}
    selection = {"k_target": k_target(config, dims, max_frames), "max_frames": B}
    head = NetworkPlan(
        name=chain[0].name,
        onnx=chain[0].file,
        plan=f"{chain[0].name}.plan",
        renamed={merged: unmerged(merged)},
        extra_inputs={},
        layers=(
            PluginLayer("token_cosine", (unmerged(merged),), ("cos",)),
            PluginLayer("merge_plan", ("cos",), PLUGINS["merge_plan"].outputs, thresholds),
            PluginLayer("weighted_merge", (unmerged(merged), "first", "last", "weight", "count"), (merged,)),
        ),
        outputs=(merged, "count", "first", "last", "segment", "is_static", "s"),
        profiles=frame_profiles(chain[0].inputs, dims, B, merges=0),
    )
    tail = NetworkPlan(
        name=chain[1].name,
        onnx=chain[1].file,
        plan=f"{chain[1].name}.plan",
        renamed={},
        extra_inputs={"is_static": ((-1,), "int32")},
        layers=(
            PluginLayer("window_select", ("scores", "is_static"), ("keep",), selection),
            PluginLayer(
                "dynamic_topk", ("scores", "is_static", "keep"), ("frame", "index", "selected_count"), selection
            ),
            PluginLayer("gather_tokens", ("tokens", "frame", "index", "selected_count"), ("selected",)),
        ),
        outputs=("selected", "frame", "index", "selected_count"),
        profiles=frame_profiles((*chain[1].inputs, "is_static"), dims, B, merges=1),
    )
    return [head, tail]


def segmentation_layers(config: EarlyTomConfig, hidden: str, count: str, max_frames: int) -> tuple[PluginLayer, ...]:
    """Section 4b's segmentation and in-segment plan of hidden [F, L, D] (first, last, weight, label, count =
    (N, S)); the similarity band is as wide as the most frames need, so any F <= max_frames runs on it."""
    thresholds = {"alpha": config.alpha, "tau_seg": config.tau_seg, "max_window": config.max_window}
    outputs = ("similarity", "first", "last", "weight", "segments", "label", count)
    return (
        PluginLayer("window_cosine", (hidden,), ("cos",), {"width": similarity_width(max_frames, config.max_window)}),
        PluginLayer("official_plan", ("cos",), outputs, thresholds),
    )


def compression_layers(config: EarlyTomConfig, merged: tuple[str, ...], max_frames: int) -> tuple[PluginLayer, ...]:
    """official_compress after a merge layer, planned on hidden_<l> = merged[0]: the graph outputs in `merged`
    (renamed unmerged) -> their merged rows under the same names, and count, first, last."""
    rows = tuple(
        PluginLayer("weighted_merge", (unmerged(name), "first", "last", "weight", "count"), (name,)) for name in merged
    )
    return (*segmentation_layers(config, unmerged(merged[0]), "count", max_frames), *rows)


def selection_layers(config: EarlyTomConfig, dims: VisionDims, hidden: str, max_frames: int) -> tuple[PluginLayer, ...]:
    """official_select after the tail: the re-segmentation of its input (the merged frames) labels them, then
    each frame's tokens by the counts for N frames, compacted and gathered into selected [K_bound, D']."""
    per_dynamic, windows = selection_tables(config, dims, max_frames)
    bound = {"k_bound": selected_bound(config, dims, max_frames), "max_frames": max_frames}
    return (
        *segmentation_layers(config, hidden, "segment_count", max_frames),
        PluginLayer("official_keep", ("scores", "label"), ("keep",), {"k_dynamic": per_dynamic, "windows": windows}),
        PluginLayer("compact_keep", ("keep",), ("frame", "index", "selected_count"), bound),
        PluginLayer("gather_tokens", ("tokens", "frame", "index", "selected_count"), ("selected",)),
    )


def official_network(
    config: EarlyTomConfig, dims: VisionDims, chain: tuple[GraphSpec, ...], i: int, max_frames: int
) -> NetworkPlan:
    """Graph i of an official chain with its plugin layers (compression, or selection for the last). Only what the
    next graph reads is merged: hidden_<l>, and attention_<l> at the last merge layer (the scores); an earlier
    layer's attention, unmarked and unread, is pruned by TensorRT with the ops computing it."""
    graph = chain[i]
    if graph.final:
        layers, outputs, renamed = selection_layers(config, dims, graph.inputs[0], max_frames), SELECTED, {}
    else:
        merged = tuple(name for name in graph.outputs if name in chain[i + 1].inputs)
        layers = compression_layers(config, merged, max_frames)
        outputs, renamed = (*merged, "count", "first", "last"), {name: unmerged(name) for name in merged}
    return NetworkPlan(
        name=graph.name,
        onnx=graph.file,
        plan=f"{graph.name}.plan",
        renamed=renamed,
        extra_inputs={},
        layers=layers,
        outputs=outputs,
        profiles=frame_profiles(graph.inputs, dims, max_frames, merges=i),
    )


SELECTED = ("selected", "frame", "index", "selected_count")  # the last plan's outputs, as earlytom_vision reads them


@dataclass(frozen=True)
class DecoderPlan:
    """TensorRT-LLM build settings: the visual embeddings (K tokens + the backbone's suffix) arrive as a prompt
    table."""

    max_multimodal_len: int
    max_input_len: int
    max_seq_len: int
    max_batch_size: int = 1


def decoder_plan(
    config: EarlyTomConfig, dims: VisionDims, max_frames: int, *, max_text_tokens: int = 512, max_new_tokens: int = 512
) -> DecoderPlan:
    multimodal = selected_bound(config, dims, max_frames) + dims.suffix_tokens
    return DecoderPlan(multimodal, multimodal + max_text_tokens, multimodal + max_text_tokens + max_new_tokens)


def build_vision_plans(directory: Path, plans: list[NetworkPlan]) -> None:  # pragma: no cover - needs TensorRT
    """Parse each ONNX graph, append its plugin layers (AOT: the engines run without Python), build and write
    the plan; the timing cache is kept in the directory and reused by the next build."""
    import numpy as np
    import tensorrt as trt
    import tensorrt.plugin as trtp

    import earlytom.plugins.qdp  # noqa: F401 - registers the plugins with TensorRT

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    cache_path = directory / TIMING_CACHE
    for plan in plans:
        network = builder.create_network()  # TensorRT 11: strongly typed, precision from the ONNX dtypes
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(directory / plan.onnx)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {plan.onnx}: {errors}")
        tensors = {}
        for i in range(network.num_outputs):
            tensor = network.get_output(i)
            tensor.name = plan.renamed.get(tensor.name, tensor.name)  # the merged form takes the name
            tensors[tensor.name] = tensor
        for tensor in list(tensors.values()):
            network.unmark_output(tensor)
        for name, (shape, dtype) in plan.extra_inputs.items():
            tensors[name] = network.add_input(name, getattr(trt, dtype), shape)
        for i in range(network.num_inputs):
            tensors[network.get_input(i).name] = network.get_input(i)
        for spec in plan.layers:
            op = getattr(trtp.op.earlytom, spec.plugin)
            attributes = {
                k: np.asarray(v, dtype=np.int32) if isinstance(v, tuple) else v for k, v in spec.attributes.items()
            }
            layer = network.add_plugin(op(*[tensors[n] for n in spec.inputs], **attributes), aot=True)
            for i, name in enumerate(spec.outputs):
                tensors[name] = layer.get_output(i)
                tensors[name].name = name
        for name in plan.outputs:
            network.mark_output(tensors[name])
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        for p in plan.profiles:
            profile.set_shape(p.tensor, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build {plan.plan}; rerun with a verbose logger")
        (directory / plan.plan).write_bytes(bytes(serialized))
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))


def build_decoder(directory: Path, plan: DecoderPlan, dtype: str) -> None:  # pragma: no cover - needs TRT-LLM
    """The Qwen2 decoder in directory/decoder as a TensorRT-LLM engine in directory/decoder_trtllm."""
    from tensorrt_llm import BuildConfig, build
    from tensorrt_llm.models import QWenForCausalLM

    model = QWenForCausalLM.from_hugging_face(
        str(directory / DECODER), dtype={"fp16": "float16", "fp32": "float32"}[dtype]
    )
    config = BuildConfig(
        max_batch_size=plan.max_batch_size,
        max_input_len=plan.max_input_len,
        max_seq_len=plan.max_seq_len,
        max_prompt_embedding_table_size=plan.max_multimodal_len,
    )
    build(model, config).save(str(directory / DECODER_TRTLLM))
