"""The TensorRT backend of build_engine: one vision plan per graph of the chain with the EarlyTom plugin layers
appended (paper: head + FrameMerge, tail + TokenSelect; official: every graph but the last + the compression
of section 4b, the last + its selection), and the decoder as a TensorRT-LLM engine that takes the visual tokens as
a prompt table: a Qwen2 as TensorRT-LLM's Qwen2; a Qwen2 with M-RoPE (Qwen2.5-VL's, the same language model as
Qwen2-VL's) through TensorRT-LLM's Qwen2-VL path (`trtllm_hf_config`), which takes per request the M-RoPE rotary
table of the prompt's position ids and the position delta of the tokens generated after it (computed at run time:
earlytom.runtime.backends.tensorrt.mrope_params; the kept visual tokens keep their uncompressed positions).

Everything the build decides is plain data computed by tested functions (`network_plans`, `decoder_plan`,
`check_compatible`); the functions that call TensorRT or TensorRT-LLM only carry those plans out, following
their documented APIs (shared/reference/tensorrt-api-brief.md). They need an NVIDIA GPU and have not run on
this project's machines.
"""

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from earlytom.compress import EarlyTomConfig
from earlytom.engine.layout import DECODER, DECODER_TRTLLM, TIMING_CACHE, TOKENIZER, GraphSpec
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
    config: EarlyTomConfig,
    dims: VisionDims,
    max_frames: int,
    *,
    max_context: int | None = None,
    max_text_tokens: int = 512,
    max_new_tokens: int = 512,
) -> DecoderPlan:
    """The decoder's limits for the most visual tokens B = max_frames units give (selected_bound + the suffix), then
    the prompt and the answer; `max_context` (None: all three at their most) caps the sequence, leaving room for
    one prompt token and one new token after the visual ones."""
    multimodal = selected_bound(config, dims, max_frames) + dims.suffix_tokens
    if max_context is None:
        return DecoderPlan(multimodal, multimodal + max_text_tokens, multimodal + max_text_tokens + max_new_tokens)
    if max_context < multimodal + 2:
        raise ValueError(
            f"max context = {max_context} tokens cannot hold the {multimodal} visual tokens of {max_frames} units, a "
            f"prompt token and a new token: give --max-context {multimodal + 2} or more, fewer --frames or a lower "
            "--retain-ratio"
        )
    return DecoderPlan(multimodal, min(multimodal + max_text_tokens, max_context - 1), max_context)


# TensorRT-LLM's names of the decoder precisions: the checkpoint dtype (fp16, bf16) or ModelOpt's quantization format
# (fp8, int4_awq: their unquantized layers and activations in float16).
CHECKPOINT_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
MODELOPT_FORMATS = ("fp8", "int4_awq")


# TensorRT-LLM's engine path runs Qwen2-VL's language model (qwen_type "qwen2_vl", position_embedding_type mrope);
# Qwen2.5-VL's is the same architecture, so a decoder with M-RoPE is presented to TensorRT-LLM as a Qwen2-VL one.
TRTLLM_MROPE_TYPE = "qwen2_vl"
TRTLLM_MROPE_ARCHITECTURE = "Qwen2VLForConditionalGeneration"


def mrope_rope(config: dict) -> dict | None:
    """The rotary settings of a decoder checkpoint's config.json when they are M-RoPE (they hold mrope_section),
    read where transformers 5 writes them (text_config.rope_parameters) or 4 did (rope_scaling); None otherwise."""
    text = config.get("text_config", config)
    for rope in (text.get("rope_parameters"), text.get("rope_scaling"), config.get("rope_scaling")):
        if isinstance(rope, dict) and "mrope_section" in rope:
            return rope
    return None


def trtllm_hf_config(config: dict) -> dict:
    """A decoder checkpoint's config.json as TensorRT-LLM's QWenConfig.from_hugging_face reads it: without M-RoPE
    as it is; with M-RoPE (Qwen2.5-VL) as a Qwen2-VL config: the text fields at the top level (where Qwen2-VL's
    flat config has them), model_type qwen2_vl, rope_theta, rope_scaling {type: mrope, mrope_section}."""
    rope = mrope_rope(config)
    if rope is None:
        return config
    text = config.get("text_config", config)
    dropped = ("text_config", "model_type", "architectures", "rope_parameters")
    return {
        **{k: v for k, v in config.items() if k not in dropped},
        **{k: v for k, v in text.items() if k not in dropped},
        "model_type": TRTLLM_MROPE_TYPE,
        "architectures": [TRTLLM_MROPE_ARCHITECTURE],
        "rope_theta": rope.get("rope_theta", text.get("rope_theta")),
        "rope_scaling": {"type": "mrope", "mrope_section": list(rope["mrope_section"])},
    }


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


def build_decoder(directory: Path, plan: DecoderPlan, precision: str) -> None:  # pragma: no cover - needs TRT-LLM
    """The decoder in directory/decoder as a TensorRT-LLM engine in directory/decoder_trtllm, its weights at
    `precision`: fp16 / bf16 / fp32 converted from the Hugging Face checkpoint, fp8 / int4_awq quantized by NVIDIA
    ModelOpt through TensorRT-LLM's quantize_and_export (calibrated on its default text set, cnn_dailymail, on the
    GPU) into a TensorRT-LLM checkpoint, which the engine is built from. TensorRT-LLM reads the checkpoint through
    links with the config trtllm_hf_config writes (Qwen2.5-VL: its Qwen2-VL path, M-RoPE)."""
    from tensorrt_llm import BuildConfig, build
    from tensorrt_llm.models import QWenForCausalLM

    config = BuildConfig(
        max_batch_size=plan.max_batch_size,
        max_input_len=plan.max_input_len,
        max_seq_len=plan.max_seq_len,
        max_prompt_embedding_table_size=plan.max_multimodal_len,
    )
    hf_config = json.loads((directory / DECODER / "config.json").read_text())
    with tempfile.TemporaryDirectory(prefix="earlytom-decoder-") as scratch:  # outside the engine directory
        source, checkpoint = Path(scratch) / "hf", Path(scratch) / "trtllm"
        link_checkpoint(source, directory / DECODER, directory / TOKENIZER, skip=("config.json",))
        (source / "config.json").write_text(json.dumps(trtllm_hf_config(hf_config)))
        if precision in MODELOPT_FORMATS:
            quantize_decoder(source, checkpoint, precision)
            model = QWenForCausalLM.from_checkpoint(str(checkpoint))
        else:
            model = QWenForCausalLM.from_hugging_face(str(source), dtype=CHECKPOINT_DTYPES[precision])
        build(model, config).save(str(directory / DECODER_TRTLLM))


def link_checkpoint(target: Path, decoder: Path, tokenizer: Path, *, skip: tuple[str, ...] = ()) -> None:
    """One Hugging Face directory `target` of links to the decoder's files and the tokenizer's (the quantizer loads
    both from one directory; the decoder's win a name both have), but for the names in `skip`."""
    target.mkdir()
    for path in (*sorted(decoder.iterdir()), *sorted(tokenizer.iterdir())):
        if path.name not in skip and not (target / path.name).exists():
            (target / path.name).symlink_to(path.resolve())


def quantize_decoder(source: Path, checkpoint: Path, precision: str) -> None:  # pragma: no cover - needs ModelOpt
    """ModelOpt post-training quantization of the Hugging Face checkpoint `source` into the TensorRT-LLM checkpoint
    `checkpoint`, with the defaults of TensorRT-LLM's examples/quantization/quantize.py (AWQ: 32 calibration
    samples and blocks of 128 input channels, as that script sets them)."""
    from tensorrt_llm.quantization import quantize_and_export

    quantize_and_export(
        model_dir=str(source),
        device="cuda",
        calib_dataset="cnn_dailymail",
        dtype="float16",
        qformat=precision,
        kv_cache_dtype=None,
        calib_size=32 if precision == "int4_awq" else 512,
        batch_size=1,
        calib_max_seq_length=512,
        awq_block_size=128,
        output_dir=str(checkpoint),
        tp_size=1,
        pp_size=1,
        cp_size=1,
        seed=1234,
        tokenizer_max_seq_length=2048,
    )
