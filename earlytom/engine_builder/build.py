"""`build_engine`: one self-describing engine directory (DESIGN.md section 5) for a model.

    build_engine --model llava-ov-7b --output engines/ov7b [--backend auto|onnxruntime|tensorrt]
                 [--retain-ratio 0.15] [--merge-layer 6] [--frames 32] [--dtype fp32|fp16] [--random-init]

Everything is written into a temporary directory beside DIR and renamed into place at the end: an
interrupted or failed build leaves no DIR behind and never touches an existing one (replacing one needs
--overwrite, and happens by rename too).
"""

import argparse
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from earlytom.compress import EarlyTomConfig
from earlytom.engine_builder.manifest import missing_gpu_stack, write_manifest
from earlytom.export.onnx_export import ExportError, export_and_verify, vision_graphs
from earlytom.models.llava_onevision import LlavaOnevisionAdapter
from earlytom.models.registry import LoadedModel, known_names, load_model
from earlytom.plugins import aot

BACKENDS = ("auto", "onnxruntime", "tensorrt")


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


def save_decoder(loaded: LoadedModel, directory: Path) -> None:
    """The Qwen2 decoder as a standard transformers checkpoint (safetensors), the format TensorRT-LLM's
    converters read too, plus image_newline.safetensors."""
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(loaded.model.config.text_config)
    lm.model, lm.lm_head = loaded.model.model.language_model, loaded.model.lm_head  # shared, not copied
    lm.save_pretrained(directory / "decoder")
    newline = loaded.model.model.image_newline.detach().contiguous()
    save_file({"image_newline": newline}, directory / "image_newline.safetensors")


def save_text_side(loaded: LoadedModel, directory: Path) -> None:
    """Tokenizer (with the chat template) and preprocessor settings."""
    loaded.tokenizer.chat_template = loaded.chat_template
    loaded.tokenizer.save_pretrained(directory / "tokenizer")
    loaded.preprocess.save(directory / "preprocessor.json")


def build(
    model: str,
    output: Path,
    *,
    backend: str = "auto",
    config: EarlyTomConfig | None = None,
    merge_layer: int | None = None,
    frames: int = 32,
    dtype: str | None = None,
    gpu_archs: tuple[str, ...] | None = None,
    random_init: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Build the engine directory `output` for `model`; returns its manifest. `gpu_archs` (default: all four
    for the TensorRT backend, none for ONNX Runtime) selects the AOT-compiled plugin kernels stored."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise BuildError(f"{output} already exists; pass --overwrite to replace it (it stays intact until then)")
    if frames < 1:
        raise BuildError(f"frames = {frames}: the engines need at least 1 frame")
    backend = choose_backend(backend)
    dtype = dtype or default_dtype(backend)
    gpu_archs = tuple(aot.ARCHS) if gpu_archs is None and backend == "tensorrt" else tuple(gpu_archs or ())
    config = config or EarlyTomConfig()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    steps = tqdm(
        total=5 + len(gpu_archs) + 2 * (backend == "tensorrt"),
        desc="build_engine",
        unit="step",
        disable=not progress,
        file=sys.stderr,
    )
    try:
        steps.set_postfix_str(f"load {model}")
        loaded = load_model(model, random_init=random_init)
        adapter = LlavaOnevisionAdapter(loaded.model, merge_layer)
        vision = loaded.model.config.vision_config
        earlytom = config.to_dict() | {
            "merge_layer": adapter.merge_layer,
            "encoder_layers": adapter.num_layers,
            "max_frames": frames,
            "tokens_per_frame": adapter.tokens_per_frame,
        }
        dims = {
            "image_size": vision.image_size,
            "tokens": adapter.grid**2,
            "hidden": vision.hidden_size,
            "llm_hidden": loaded.model.config.text_config.hidden_size,
        }
        steps.update()
        verification = {}
        for module, spec, inputs in vision_graphs(adapter):
            steps.set_postfix_str(f"export + verify {spec.name}.onnx")
            verified = export_and_verify(module, spec, inputs, staging, dtype=dtype, max_frames=frames)
            verification[spec.name] = verified.max_rel_error
            steps.update()
        steps.set_postfix_str("save decoder, tokenizer")
        save_decoder(loaded, staging)
        save_text_side(loaded, staging)
        steps.update()
        shapes = aot.Shapes(
            vision.hidden_size,
            dims["tokens"],
            adapter.tokens_per_frame,
            frames,
            dims["llm_hidden"],
            vision.num_attention_heads,
        )
        for arch in gpu_archs:
            steps.set_postfix_str(f"compile plugin kernels for {arch}")
            kernels = aot.compile_all(arch, shapes, config, dtypes=(dtype,))  # the graphs' dtype only
            aot.write(kernels, staging / "plugins" / arch, shapes)
            steps.update()
        gpu = {}
        if backend == "tensorrt":
            gpu = build_tensorrt(staging, earlytom, dims, dtype, steps)
        steps.set_postfix_str("hash artifacts")
        manifest = write_manifest(
            staging,
            {
                "model": {
                    "name": loaded.name,
                    "source": loaded.source,
                    "config_hash": loaded.config_hash,
                    "random_init": loaded.random_init,
                },
                "earlytom": earlytom,
                "vision": dims,
                "backend": backend,
                "dtype": dtype,
                "plugin_archs": list(gpu_archs),
                "verification_max_rel_error": verification,
                "notes": loaded.notes,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            | gpu,
        )
        steps.update()
        replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        steps.close()
    return manifest


def build_tensorrt(staging: Path, earlytom: dict, dims: dict, dtype: str, steps) -> dict:  # pragma: no cover
    """The vision plans and the TensorRT-LLM decoder; -> the manifest's `tensorrt` section."""
    import tensorrt
    import tensorrt_llm

    from earlytom.engine_builder import tensorrt as trt_build

    steps.set_postfix_str("TensorRT vision plans")
    plans = trt_build.network_plans(
        earlytom, image_size=dims["image_size"], tokens=dims["tokens"], hidden=dims["hidden"]
    )
    trt_build.build_vision_plans(staging, plans)
    steps.update()
    steps.set_postfix_str("TensorRT-LLM decoder")
    k_target = round(earlytom["retain_ratio"] * earlytom["max_frames"] * earlytom["tokens_per_frame"])
    trt_build.build_decoder(staging, trt_build.decoder_plan(k_target), dtype)
    steps.update()
    major, minor = torch.cuda.get_device_capability()
    return {
        "tensorrt": {
            "tensorrt": tensorrt.__version__,
            "tensorrt_llm": tensorrt_llm.__version__,
            "gpu_arch": f"sm_{major}{minor}",
        }
    }


def replace(staging: Path, output: Path) -> None:
    """Move the finished `staging` directory to `output`, swapping out an existing one by renames. The
    directory becomes readable by all (mkdtemp and some writers create owner-only modes)."""
    for path in [staging, *staging.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    if not output.exists():
        staging.rename(output)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
    retired.rmdir()
    output.rename(retired)
    staging.rename(output)
    shutil.rmtree(retired)


def main(argv: list[str] | None = None) -> int:
    defaults = EarlyTomConfig()
    parser = argparse.ArgumentParser(prog="build_engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help=f"{', '.join(known_names())}, an HF id or a directory")
    parser.add_argument("--output", required=True, type=Path, help="the engine directory to write")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--retain-ratio", type=float, default=defaults.retain_ratio)
    parser.add_argument("--merge-layer", type=int, default=None, help="k in [1, n-1] (default n // 4)")
    parser.add_argument("--frames", type=int, default=32, help="most frames a request may have")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "fp16"),
        default=None,
        help="graph precision (default: fp16 for tensorrt, fp32 for onnxruntime)",
    )
    parser.add_argument(
        "--gpu-archs",
        nargs="*",
        choices=list(aot.ARCHS),
        default=None,
        help="store AOT plugin kernels for these GPUs (default: all for tensorrt, none otherwise)",
    )
    parser.add_argument("--random-init", action="store_true", help="random weights (latency work only)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing engine directory")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    try:
        manifest = build(
            args.model,
            args.output,
            backend=args.backend,
            config=EarlyTomConfig(retain_ratio=args.retain_ratio),
            merge_layer=args.merge_layer,
            frames=args.frames,
            dtype=args.dtype,
            gpu_archs=None if args.gpu_archs is None else tuple(args.gpu_archs),
            random_init=args.random_init,
            overwrite=args.overwrite,
        )
    except (ValueError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in manifest["notes"]:
        print(f"note: {note}", file=sys.stderr)
    errors = ", ".join(
        f"{g}.{o} {e:.1e}" for g, outs in manifest["verification_max_rel_error"].items() for o, e in outs.items()
    )
    print(
        f"wrote {args.output} ({manifest['backend']}, {manifest['dtype']}); ONNX Runtime vs eager max rel. error: "
        f"{errors}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
