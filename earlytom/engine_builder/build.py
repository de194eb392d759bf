"""`build_engine`: one self-describing engine directory (DESIGN.md section 5) for a model.

    build_engine --model llava-ov-7b --output engines/ov7b [--backend auto|onnxruntime|tensorrt]
                 [--variant official|paper] [--preset videomme] [--retain-ratio 0.20] [--merge-layers 8,21,23]
                 [--frames 32] [--resolution HxW] [--dtype fp32|fp16] [--random-init]
                 [--target-gpu rtx4090|l4|a10|a100-40g|a100-80g|h100|<N>GiB] [--max-context 8192]
                 [--decoder-precision fp16|bf16|fp8|int4_awq]

With --target-gpu (and always on the TensorRT backend, then against the GPU it builds on) the memory plan
(earlytom.engine.memory_plan) is computed from the model's config before anything is loaded or exported: printed,
written into the manifest, and a build that cannot fit is refused with the options that would.

Everything is written into a staging directory beside DIR and swapped into place at the end
(earlytom.engine.staging): an interrupted or failed build leaves no DIR behind and never damages an existing
one; replacing one needs --overwrite and only ever replaces an engine directory.
"""

import argparse
import json
import sys
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from earlytom.command_line import add_config_args, add_debug_arg, config_fields, parse_resolution, run_main
from earlytom.compress import EarlyTomConfig, visual_budget
from earlytom.dtypes import GRAPH_DTYPES, torch_dtype
from earlytom.engine.layout import (
    DECODER,
    PLUGINS,
    PREPROCESSOR,
    TOKENIZER,
    VISUAL_SUFFIX,
    GraphSpec,
    method_chain,
    vision_chain,
)
from earlytom.engine.manifest import Manifest, ModelInfo, TensorRTInfo, write_manifest
from earlytom.engine.memory_plan import GIB, GPUS_GIB, MemoryPlan, check_fits, model_sizes, plan_memory
from earlytom.engine.signing import private_key, sign_dir
from earlytom.engine.staging import staged
from earlytom.engine_builder.tensorrt import decoder_plan
from earlytom.environment import missing_gpu_stack
from earlytom.export.onnx_export import export_and_verify, vision_graphs
from earlytom.models.backbone import VisionDims
from earlytom.models.registry import LoadedModel, architecture_of, family_config, family_of, known_names, load_model
from earlytom.plugins import aot

BACKENDS = ("auto", "onnxruntime", "tensorrt")
DECODER_PRECISIONS = ("fp16", "bf16", "fp8", "int4_awq")


class BuildError(ValueError):
    """A build that cannot start or finish; its message names the fix."""


def choose_backend(requested: str) -> str:
    """auto -> tensorrt where TensorRT, TensorRT-LLM and a GPU are present, else onnxruntime."""
    if requested not in BACKENDS:
        raise BuildError(f"backend = {requested!r}; choose one of {', '.join(BACKENDS)}")
    missing = missing_gpu_stack()
    if requested == "tensorrt" and missing:
        raise BuildError(
            f"--backend tensorrt needs {', '.join(missing)}, missing here (pip install 'earlytom[gpu]' on a machine "
            "with an NVIDIA GPU); use --backend onnxruntime"
        )
    return "tensorrt" if requested == "tensorrt" or (requested == "auto" and not missing) else "onnxruntime"


def default_dtype(backend: str) -> str:
    """fp16 graphs for TensorRT (norms and softmax stay fp32), fp32 for ONNX Runtime on CPU."""
    return "fp16" if backend == "tensorrt" else "fp32"


def check_frames(frames: int) -> None:
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise BuildError(f"frames = {frames!r}: engines take at least 2 frames (an integer >= 2); use --frames 32")


def check_decoder_precision(requested: str | None, backend: str, dtype: str) -> str:
    """The decoder's precision: the graphs' (None), or `requested`, which only the TensorRT backend builds (ONNX
    Runtime engines run the PyTorch decoder at the graphs' precision)."""
    if requested is None:
        return dtype
    if requested not in DECODER_PRECISIONS:
        raise BuildError(f"decoder precision = {requested!r}; choose one of {', '.join(DECODER_PRECISIONS)}")
    if backend != "tensorrt" and requested != dtype:
        raise BuildError(
            f"--decoder-precision {requested} needs --backend tensorrt (TensorRT-LLM); the {backend} backend runs the "
            f"decoder in PyTorch at the graphs' precision, --dtype ({dtype} here)"
        )
    return requested


def model_architecture(model: str | LoadedModel):
    """(config, vision dims) of `model` without loading weights (registry.architecture_of), or a loaded model's own."""
    if isinstance(model, LoadedModel):
        return model.model.config, model.dims
    return architecture_of(model)


def chain_for_methods(chain: tuple[GraphSpec, ...], backbone, backend: str) -> tuple[GraphSpec, ...]:
    """`chain` with the compared methods' outputs on its last graph (BuildError where they cannot be: the TensorRT
    backend, a backbone without them, a last graph that runs no encoder layer)."""
    if backend != "onnxruntime":
        raise BuildError("--compared-methods builds ONNX Runtime engines (--backend onnxruntime)")
    if not hasattr(backbone, "keys"):
        raise BuildError(
            f"--compared-methods: the compared methods read the last encoder layer's keys, which this model's backbone "
            f"({backbone.dims.family}) does not give"
        )
    try:
        return method_chain(chain, backbone.has_head)
    except ValueError as error:
        raise BuildError(f"--compared-methods: {error}") from None


def device_target() -> str:  # pragma: no cover - needs a GPU
    """The GPU this process builds on, as a memory-plan target: its total memory."""
    return f"{torch.cuda.mem_get_info()[1] / GIB:.2f}GiB"


def engine_plan(
    arch, units: int, *, name: str, config: EarlyTomConfig, backend: str, target: str, max_context, precision: str
) -> MemoryPlan:
    """The memory plan of the engine: B = `units`, the decoder at `precision`, and the longest context it accepts
    (TensorRT: the TensorRT-LLM engine's max_seq_len, from `max_context` or the most visual tokens + 1024; ONNX
    Runtime: `max_context`, or every visual token uncompressed + 1024, as its retain ratio may change per run)."""
    model_config, dims = arch
    if backend == "tensorrt":
        try:
            max_context = decoder_plan(config, dims, units, max_context=max_context).max_seq_len
        except ValueError as error:
            raise BuildError(str(error)) from None
    sizes = model_sizes(model_config, dims)
    return plan_memory(sizes, units, target, max_context=max_context, decoder_precision=precision, model=name)


def announce(memory: MemoryPlan) -> MemoryPlan:
    """Print the plan's table (stderr) and refuse it (DoesNotFit) unless it fits."""
    print(memory.table(), file=sys.stderr)
    check_fits(memory)
    return memory


def check_units(dims: VisionDims, frames: int) -> int:
    """The encoder units of `frames` (BuildError unless they fill whole units)."""
    try:
        return dims.units(frames)
    except ValueError as error:
        raise BuildError(str(error)) from None


def check_budget(config: EarlyTomConfig, frames: int, tokens_per_frame: int) -> None:
    """Refuse a paper-variant retain ratio that keeps no token even at the engine's largest frame count: its engine
    would refuse every request. (The official variant keeps at least one token per frame at any ratio.)"""
    if config.variant != "paper":
        return
    try:
        visual_budget(
            retain_ratio=config.retain_ratio,
            num_frames=frames,
            tokens_per_frame=tokens_per_frame,
            available=frames * tokens_per_frame,
        )
    except ValueError as error:
        raise BuildError(f"{error} (at --frames {frames} an engine built with it refuses every request)") from None


def export_graphs(backbone, chain: tuple[GraphSpec, ...], staging: Path, dtype: str, units: int, steps) -> dict:
    """Every graph of the chain, exported and verified against the eager model -> max rel. error per output."""
    verification = {}
    for module, spec, inputs in vision_graphs(backbone, chain):
        steps.set_postfix_str(f"export + verify {spec.file}")
        verification[spec.name] = export_and_verify(
            module, spec, inputs, staging, dtype=dtype, max_frames=units
        ).max_rel_error
        steps.update()
    return verification


def save_decoder(loaded: LoadedModel, backbone, directory: Path) -> None:
    """The language model in the family's format (a transformers checkpoint, safetensors) and the backbone's
    visual suffix embeddings."""
    loaded.family.save_decoder(loaded.model, directory / DECODER)
    save_file({"suffix": backbone.suffix().detach().contiguous()}, directory / VISUAL_SUFFIX)


def save_text_side(loaded: LoadedModel, directory: Path) -> None:
    """Tokenizer (with the chat template) and the processor's settings."""
    loaded.tokenizer.chat_template = loaded.chat_template
    loaded.tokenizer.save_pretrained(directory / TOKENIZER)
    (directory / PREPROCESSOR).write_text(json.dumps(loaded.processor.to_dict(), indent=2) + "\n")


def compile_plugins(staging: Path, dims: VisionDims, config: EarlyTomConfig, frames: int, dtype: str, archs, steps):
    """The AOT plugin kernels for each GPU architecture, in the graphs' dtype only."""
    shapes = aot.Shapes.of_dims(dims, frames)
    for arch in archs:
        steps.set_postfix_str(f"compile plugin kernels for {arch}")
        aot.write(aot.compile_all(arch, shapes, config, dtypes=(dtype,)), staging / PLUGINS / arch, shapes)
        steps.update()


def build(
    model: str | LoadedModel,
    output: str | Path,
    *,
    backend: str = "auto",
    config: EarlyTomConfig | dict | None = None,
    frames: int = 32,
    resolution: tuple[int, int] | None = None,
    dtype: str | None = None,
    gpu_archs: tuple[str, ...] | None = None,
    random_init: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    target_gpu: str | None = None,
    max_context: int | None = None,
    decoder_precision: str | None = None,
    sign: str | Path | None = None,
    compared_methods: bool = False,
) -> Manifest:
    """Build the engine directory `output` for `model` (a name for registry.load_model, or a model already loaded);
    returns its manifest. `config`: an EarlyTomConfig as it is, or a dict of its fields (None: default) over the model
    family's defaults (Qwen2.5-VL: r = 0.15); None: the family's defaults. `resolution` (height, width; None: the
    processor's default) is the one frame size the engine takes, as the model family allows it for engines.
    `compared_methods`: the last graph also gives what FastVID, HoliTom and VisionZip read (the last encoder layer's
    attention and keys, SigLIP's pooling head where the checkpoint has it; one more attention pass per request), so
    the directory runs --method fastvid|holitom|visionzip too. `gpu_archs` (None: all four for the TensorRT backend,
    none for ONNX Runtime) selects the AOT-compiled plugin kernels stored. `target_gpu` (a memory_plan target;
    None: the build's GPU on the TensorRT backend, no plan on ONNX Runtime), `max_context` (tokens; None: see
    engine_plan) and `decoder_precision` (None: the graphs' dtype) are planned before any work: DoesNotFit when the
    plan exceeds the target. `sign` (a PEM ed25519 private key file; None: unsigned) signs the manifest
    (manifest.sig, earlytom.engine.signing)."""
    check_frames(frames)
    signer = None if sign is None else private_key(sign)
    backend = choose_backend(backend)
    dtype = default_dtype(backend) if dtype is None else dtype
    torch_dtype(dtype, GRAPH_DTYPES)
    precision = check_decoder_precision(decoder_precision, backend, dtype)
    if gpu_archs is None:  # the TensorRT backend needs every architecture's kernels, ONNX Runtime none
        archs = tuple(aot.ARCHS) if backend == "tensorrt" else ()
    else:
        archs = tuple(gpu_archs)
    arch = model_architecture(model)  # (config, dims) from the config files alone: the family and the memory plan
    if not isinstance(config, EarlyTomConfig):  # fields over the model family's defaults
        config = family_config(family_of(arch[0].model_type), {} if config is None else config)
    if target_gpu is None and backend == "tensorrt":
        target_gpu = device_target()
    name = getattr(model, "name", model)
    memory = None
    planned = partial(
        engine_plan,
        name=name,
        config=config,
        backend=backend,
        target=target_gpu,
        max_context=max_context,
        precision=precision,
    )
    if target_gpu is not None:
        memory = announce(planned(arch, check_units(arch[1], frames)))
    elif max_context is not None:
        raise BuildError("--max-context sizes the memory plan and the TensorRT-LLM decoder: give --target-gpu too")
    with (
        staged(Path(output), overwrite=overwrite) as staging,
        tqdm(desc="build_engine", unit="step", disable=not progress, file=sys.stderr) as steps,
    ):
        steps.set_postfix_str(f"load {name}")
        loaded = model if isinstance(model, LoadedModel) else load_model(model, random_init=random_init)
        if resolution is not None:
            try:
                loaded = loaded.at_resolution(resolution, for_engine=True)
            except ValueError as error:
                raise BuildError(str(error)) from None
        backbone, dims = loaded.backbone(), loaded.dims
        units = check_units(dims, frames)
        if memory is not None and dims != arch[1]:  # the checkpoint's processor differs from the packaged default
            memory = announce(planned((loaded.model.config, dims), units))
        config = loaded.resolve(config)
        check_budget(config, units, dims.tokens_per_frame)
        notes = list(loaded.notes)
        if backend == "tensorrt" and config.inner_ratio:
            config = replace(config, inner_layer=None, inner_ratio=0.0)
            notes.append("inner merge off: the TensorRT-LLM decoder runs every visual token through every layer")
            print(f"note: {notes[-1]}", file=sys.stderr)
        chain = vision_chain(config.variant, config.merge_layers, dims.encoder_layers)
        if compared_methods:
            chain = chain_for_methods(chain, backbone, backend)
        steps.total = len(chain) + 3 + len(archs) + 2 * (backend == "tensorrt")
        steps.update()
        verification = export_graphs(backbone, chain, staging, dtype, units, steps)
        steps.set_postfix_str("save decoder, tokenizer")
        save_decoder(loaded, backbone, staging)
        save_text_side(loaded, staging)
        steps.update()
        compile_plugins(staging, dims, config, units, dtype, archs, steps)
        tensorrt = None
        if backend == "tensorrt":
            tensorrt = build_tensorrt(staging, config, dims, chain, units, dtype, precision, max_context, steps)
        steps.set_postfix_str("hash artifacts")
        manifest = write_manifest(
            staging,
            model=ModelInfo(loaded.name, loaded.source, loaded.config_hash, loaded.random_init),
            earlytom=config.to_dict(),
            max_frames=frames,
            vision=dims,
            graphs=chain,
            backend=backend,
            dtype=dtype,
            plugin_archs=archs,
            verification_max_rel_error=verification,
            notes=tuple(notes),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            tensorrt=tensorrt,
            memory_plan=None if memory is None else memory.to_dict(),
        )
        if signer is not None:
            sign_dir(staging, signer)
        steps.update()
    return manifest


def build_tensorrt(  # pragma: no cover
    staging: Path, config, dims, chain, frames, dtype, precision, max_context, steps
) -> TensorRTInfo:
    """The vision plans and the TensorRT-LLM decoder."""
    import tensorrt
    import tensorrt_llm

    from earlytom.engine_builder import tensorrt as trt_build

    steps.set_postfix_str("TensorRT vision plans")
    plans = trt_build.network_plans(config, dims, chain, frames)
    trt_build.build_vision_plans(staging, plans)
    steps.update()
    steps.set_postfix_str("TensorRT-LLM decoder")
    trt_build.build_decoder(staging, trt_build.decoder_plan(config, dims, frames, max_context=max_context), precision)
    steps.update()
    major, minor = torch.cuda.get_device_capability()
    return TensorRTInfo(tensorrt.__version__, tensorrt_llm.__version__, f"sm_{major}{minor}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build_engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help=f"{', '.join(known_names())}, an HF id or a directory")
    p.add_argument("--output", required=True, type=Path, help="the engine directory to write")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    add_config_args(p)
    p.add_argument("--frames", type=int, default=32, help="most frames a request may have (>= 2; default 32)")
    p.add_argument(
        "--resolution",
        type=parse_resolution,
        default=None,
        help="HEIGHTxWIDTH in px of every frame the engine takes (default: the model's own size; a model with windowed "
        "attention needs multiples of its window, e.g. 112 px)",
    )
    p.add_argument(
        "--dtype",
        choices=GRAPH_DTYPES,
        default=None,
        help="graph precision (default: fp16 for tensorrt, fp32 for onnxruntime)",
    )
    p.add_argument(
        "--gpu-archs",
        nargs="*",
        choices=list(aot.ARCHS),
        default=None,
        help="store AOT plugin kernels for these GPUs (default: all for tensorrt, none otherwise)",
    )
    p.add_argument("--random-init", action="store_true", help="random weights (latency work only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine directory")
    p.add_argument(
        "--target-gpu",
        default=None,
        help=f"plan the memory for this GPU ({', '.join(GPUS_GIB)} or a size such as 16GiB) and refuse a build that "
        "cannot fit (default: the GPU building a tensorrt engine; no plan for onnxruntime)",
    )
    p.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="the longest context in tokens the decoder accepts (default: the most visual tokens + 512 prompt + "
        "512 new tokens)",
    )
    p.add_argument(
        "--decoder-precision",
        choices=DECODER_PRECISIONS,
        default=None,
        help="tensorrt: the TensorRT-LLM decoder's weights (fp8 and int4_awq: NVIDIA ModelOpt post-training "
        "quantization; fp8 needs Ada or Hopper); default: --dtype",
    )
    p.add_argument(
        "--compared-methods",
        action="store_true",
        help="the last graph also gives what --method fastvid|holitom|visionzip read (the last encoder layer's "
        "attention and keys; one more attention pass per request): the directory runs those methods too",
    )
    p.add_argument(
        "--sign",
        type=Path,
        default=None,
        metavar="KEY",
        help="sign the directory with this ed25519 private key (PEM; writes manifest.sig; check it with earlytom "
        "verify --key PUB or run --require-signature PUB)",
    )
    add_debug_arg(p)
    return p


def run(args: argparse.Namespace) -> int:
    manifest = build(
        args.model,
        args.output,
        backend=args.backend,
        config=config_fields(args),
        compared_methods=args.compared_methods,
        frames=args.frames,
        resolution=args.resolution,
        dtype=args.dtype,
        gpu_archs=None if args.gpu_archs is None else tuple(args.gpu_archs),
        random_init=args.random_init,
        overwrite=args.overwrite,
        target_gpu=args.target_gpu,
        max_context=args.max_context,
        decoder_precision=args.decoder_precision,
        sign=args.sign,
    )
    for note in manifest.notes:
        print(f"note: {note}", file=sys.stderr)
    errors = ", ".join(
        f"{g}.{o} {e:.1e}" for g, outs in manifest.verification_max_rel_error.items() for o, e in outs.items()
    )
    graphs = " -> ".join(g.name for g in manifest.graphs)
    print(
        f"wrote {args.output} ({manifest.backend}, {manifest.dtype}, {manifest.config.variant}: {graphs}); "
        f"ONNX Runtime vs eager max rel. error: {errors}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """build_engine with this module already imported (the console script is earlytom.engine_builder.main)."""
    return run_main(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
