"""The TensorRT backend of build_engine: two vision plans with the EarlyTom plugin layers appended, and the
Qwen2 decoder as a TensorRT-LLM engine that takes the visual tokens as a prompt table.

Everything the build decides is plain data computed by tested functions (`network_plans`, `decoder_plan`,
`check_compatible`); the functions that call TensorRT or TensorRT-LLM only carry those plans out, following
their documented APIs (shared/reference/tensorrt-api-brief.md). They need an NVIDIA GPU and have not run on
this project's machines.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

from earlytom.compress import EarlyTomConfig, visual_budget
from earlytom.engine.layout import DECODER, DECODER_TRTLLM, TIMING_CACHE, GraphSpec
from earlytom.engine.manifest import VisionDims
from earlytom.plugins.tensorrt import PLUGINS


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
    """A vision network: the ONNX graph it parses, inputs added beside it (name -> shape, dtype), the plugin
    layers appended to its outputs, the tensors marked as outputs, the optimisation profile, the plan file."""

    name: str
    onnx: str
    plan: str
    extra_inputs: dict
    layers: tuple[PluginLayer, ...]
    outputs: tuple[str, ...]
    profiles: tuple[Profile, ...]


def opt_frames_after_merge(max_frames: int) -> int:
    """The tail profile's optimum: FrameMerge keeps about 70% of the frames of typical clips (pairs only)."""
    return max(1, math.ceil(0.75 * max_frames))


def k_target(config: EarlyTomConfig, dims: VisionDims, max_frames: int) -> int:
    """K = round(r * B * T) at the largest request."""
    T = dims.tokens_per_frame
    return visual_budget(
        retain_ratio=config.retain_ratio, num_frames=max_frames, tokens_per_frame=T, available=max_frames * T
    )


def network_plans(
    config: EarlyTomConfig, dims: VisionDims, chain: tuple[GraphSpec, ...], max_frames: int
) -> list[NetworkPlan]:
    """The networks of a paper-variant chain (head + FrameMerge plugins, tail + TokenSelect plugins) for the
    EarlyTom parameters, the vision dims (image size S, patch tokens L, width D) and B = max_frames."""
    if config.variant != "paper" or len(chain) != 2:
        raise ValueError(
            f"the TensorRT backend builds the paper variant's two vision plans; variant {config.variant!r} with "
            f"{len(chain)} graphs runs on --backend onnxruntime (or build with --variant paper)"
        )
    B, image_size, tokens, hidden = max_frames, dims.image_size, dims.patch_tokens, dims.hidden
    (head_out,), (tail_in,) = chain[0].outputs, chain[1].inputs  # hidden_<k-1>: leaving the merge layer
    thresholds = {"alpha": config.alpha, "tau_seg": config.tau_seg, "tau_merge": config.tau_merge}
    selection = {"k_target": k_target(config, dims, max_frames), "max_frames": B}
    head = NetworkPlan(
        name=chain[0].name,
        onnx=chain[0].file,
        plan=f"{chain[0].name}.plan",
        extra_inputs={},
        layers=(
            PluginLayer("token_cosine", (head_out,), ("cos",)),
            PluginLayer("merge_plan", ("cos",), PLUGINS["merge_plan"].outputs, thresholds),
            PluginLayer("weighted_merge", (head_out, "first", "last", "weight", "count"), ("merged",)),
        ),
        outputs=("merged", "count", "first", "last", "segment", "is_static", "s"),
        profiles=(
            Profile(
                "pixels", (1, 3, image_size, image_size), (B, 3, image_size, image_size), (B, 3, image_size, image_size)
            ),
        ),
    )
    n_opt = opt_frames_after_merge(B)
    tail = NetworkPlan(
        name=chain[1].name,
        onnx=chain[1].file,
        plan=f"{chain[1].name}.plan",
        extra_inputs={"is_static": ((-1,), "int32")},
        layers=(
            PluginLayer("window_select", ("scores", "is_static"), ("keep",), selection),
            PluginLayer(
                "dynamic_topk", ("scores", "is_static", "keep"), ("frame", "index", "selected_count"), selection
            ),
            PluginLayer("gather_tokens", ("tokens", "frame", "index", "selected_count"), ("selected",)),
        ),
        outputs=("selected", "frame", "index", "selected_count"),
        profiles=(
            Profile(tail_in, (1, tokens, hidden), (n_opt, tokens, hidden), (B, tokens, hidden)),
            Profile("is_static", (1,), (n_opt,), (B,)),
        ),
    )
    return [head, tail]


@dataclass(frozen=True)
class DecoderPlan:
    """TensorRT-LLM build settings: the visual tokens (K + 1 with the newline) arrive as a prompt table."""

    max_multimodal_len: int
    max_input_len: int
    max_seq_len: int
    max_batch_size: int = 1


def decoder_plan(
    config: EarlyTomConfig, dims: VisionDims, max_frames: int, *, max_text_tokens: int = 512, max_new_tokens: int = 512
) -> DecoderPlan:
    multimodal = k_target(config, dims, max_frames) + 1
    return DecoderPlan(multimodal, multimodal + max_text_tokens, multimodal + max_text_tokens + max_new_tokens)


def build_vision_plans(directory: Path, plans: list[NetworkPlan]) -> None:  # pragma: no cover - needs TensorRT
    """Parse each ONNX graph, append its plugin layers (AOT: the engines run without Python), build and write
    the plan; the timing cache is kept in the directory and reused by the next build."""
    import tensorrt as trt
    import tensorrt.plugin as trtp

    from earlytom.plugins import tensorrt as plugins

    plugins.register()
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
            tensors[network.get_output(i).name] = network.get_output(i)
        for tensor in list(tensors.values()):
            network.unmark_output(tensor)
        for name, (shape, dtype) in plan.extra_inputs.items():
            tensors[name] = network.add_input(name, getattr(trt, dtype), shape)
        for i in range(network.num_inputs):
            tensors[network.get_input(i).name] = network.get_input(i)
        for spec in plan.layers:
            op = getattr(trtp.op.earlytom, spec.plugin)
            layer = network.add_plugin(op(*[tensors[n] for n in spec.inputs], **spec.attributes), aot=True)
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
