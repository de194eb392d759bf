"""Every GPU path this machine has, checked against the CPU eager oracle and timed; the ones it lacks are
skipped with the reason. One command, one table per part:

    python -m benchmarks.gpu_validate [--models llava-ov-0.5b llava-ov-7b] [--frames 32] [--repeats 20]
    python -m benchmarks.gpu_validate --plan     # only which paths would run here, and why the others would not

Paths: eager CUDA with the Triton JIT kernels, eager CUDA with the AOT kernels through the driver-API launcher
(`kernels="aot"`, compiled here for the GPU's arch with `earlytom.plugins.aot`), ONNX Runtime's CUDA and TensorRT
execution providers (onnxruntime-gpu), the TensorRT engines (TensorRT + TensorRT-LLM), and NVDEC video decoding
(PyNvVideoCodec).

1. Agreement, tiny model, fp32: each path vs eager PyTorch on the CPU (reference kernels) on the frames of a clip
   with a scene cut (given as an array, so every path sees the same pixels whatever decodes its videos): same
   merges (frame counts and merged frames), same selected tokens, max relative error of the visual embeddings,
   same greedy tokens; for full tokens, EarlyTom and global top-K.
2. Time to first token (min / median / p90 over --repeats requests after a warm-up, per stage and in all), on the
   real architectures with random weights (--random-init), --frames frames, fp16: full tokens, EarlyTom and
   global top-K at each --ratios. ONNX Runtime directories fix the merge layers (one build per model); TensorRT
   engines fix everything (one build per ratio, EarlyTom only). Requests read the clip's file, so the eager CUDA
   and TensorRT paths decode with NVDEC when it is installed.
3. NVDEC vs PyAV on the same file: the same sampled frame indices, the pixel difference at the model's input size
   (the two convert YUV to RGB and resize differently), and the decoding time of --frames frames.

Exit status 2 when no GPU path is installed (the skip table says why).
"""

import argparse
import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import print_table, summary
from earlytom.compress import EarlyTomConfig
from earlytom.compress.config import VARIANTS
from earlytom.environment import missing_gpu_stack
from earlytom.runtime.pipeline import Pipeline, Result
from earlytom.runtime.synthetic import moving_square_frames, write_clip
from earlytom.video import nvdec_available, resize_rgb, stream_video

PROMPT = "Describe what happens in this video."
MODELS = ("llava-ov-0.5b", "llava-ov-7b")
RATIOS = (0.10, 0.15, 0.25)
NVDEC_SIZE = 384  # LLaVA-OneVision's input size


@dataclass(frozen=True)
class Installed:
    """What the GPU paths need, as found on this machine."""

    cuda_gpu: bool  # PyTorch sees an NVIDIA GPU
    triton: bool  # the triton package imports
    cuda_python: bool  # cuda.bindings (cuda-python) imports: the AOT launcher's driver API
    ort_providers: tuple[str, ...]  # onnxruntime.get_available_providers()
    tensorrt_missing: tuple[str, ...]  # environment.missing_gpu_stack()
    nvdec: bool  # PyNvVideoCodec imports


@dataclass(frozen=True)
class GpuPath:
    name: str
    runs: bool
    reason: str  # why it is skipped ("" when it runs)


def probe() -> Installed:
    import onnxruntime as ort

    from earlytom.plugins.launcher import has_driver_api  # imports triton

    return Installed(
        cuda_gpu=torch.cuda.is_available(),
        triton=importlib.util.find_spec("triton") is not None,
        cuda_python=has_driver_api(),
        ort_providers=tuple(ort.get_available_providers()),
        tensorrt_missing=tuple(missing_gpu_stack()),
        nvdec=nvdec_available(),
    )


def plan(have: Installed, variant: str) -> list[GpuPath]:
    """Each GPU path for the EarlyTom `variant`, whether it runs with what `have` holds, and if not, what is
    missing."""
    no_gpu = "PyTorch sees no CUDA GPU (a CPU-only torch build, or no NVIDIA driver/GPU)"

    def needs(*missing: str) -> str:
        return "; ".join(m for m in missing if m)

    def provider(name: str) -> str:
        if name in have.ort_providers:
            return ""
        return (
            f"onnxruntime has no {name} (it has {', '.join(have.ort_providers)}): pip uninstall -y onnxruntime "
            "&& pip install -c constraints.txt onnxruntime-gpu"
        )

    reasons = {
        "eager cuda + triton": needs(
            "" if have.cuda_gpu else no_gpu, "" if have.triton else "the triton package is not installed"
        ),
        "eager cuda + aot": needs(
            "" if have.cuda_gpu else no_gpu,
            ""
            if have.cuda_python
            else "cuda-python is not installed: the AOT launcher needs its driver API (pip install 'earlytom[gpu]')",
        ),
        "onnxruntime cuda": provider("CUDAExecutionProvider"),
        "onnxruntime tensorrt": provider("TensorrtExecutionProvider"),
        "tensorrt engines": needs(*(f"{m} is missing" for m in have.tensorrt_missing)),
        NVDEC: needs(
            "" if have.cuda_gpu else no_gpu,
            "" if have.nvdec else "PyNvVideoCodec is not installed (pip install -c constraints.txt 'earlytom[nvdec]')",
        ),
    }
    return [GpuPath(name, not why, why) for name, why in reasons.items()]


def settings(ratios: tuple[float, ...]) -> list[tuple[str, str, float]]:
    """(label, method, retain ratio) of every setting timed: full tokens, then EarlyTom and global top-K per r."""
    rows = [("full", "full", 0.15)]
    rows += [(f"earlytom r={r:.2f}", "earlytom", r) for r in ratios]
    return rows + [(f"global top-K r={r:.2f}", "global_topk", r) for r in ratios]


def agreement(result: Result, oracle: Result) -> list:
    """[same counts, same merged frames, same selected tokens, max rel. error of the embeddings, same tokens]."""
    v, o = result.visual, oracle.visual
    selected = torch.equal(v.frame.cpu(), o.frame) and torch.equal(v.index.cpu(), o.index)
    err = float((v.embeds.float().cpu() - o.embeds).abs().max() / o.embeds.abs().max()) if selected else float("nan")
    same_source = torch.equal(v.source.cpu(), o.source)
    return [result.counts == oracle.counts, same_source, selected, f"{err:.1e}", result.token_ids == oracle.token_ids]


def time_stages(pipe: Pipeline, clip: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Stage (and ttft) -> min/median/p90 ms over `repeats` one-token requests after one warm-up."""
    pipe.generate(clip, PROMPT, max_new_tokens=1)
    runs = [pipe.generate(clip, PROMPT, max_new_tokens=1).timings_ms for _ in range(repeats)]
    return {stage: summary([run[stage] for run in runs]) for stage in runs[0]}


# The GPU paths: (work directory, model, frames, dtype, EarlyTom config) -> a Pipeline; called only for paths
# planned to run. Engine directories are built once per what they fix and reused.
def aot_kernels(work: Path, model: str, frames: int, config: EarlyTomConfig) -> Path:
    """The kernels of `model` for up to `frames` frames and `config`'s thresholds, compiled for this GPU's arch
    (every dtype) once per work directory."""
    from earlytom.plugins import aot
    from earlytom.plugins.launcher import gpu_arch

    arch = gpu_arch(torch.cuda.get_device_capability())
    out = work / f"{model}-aot-{config.variant}-{frames}-{arch}"
    if not out.exists():
        shapes = aot.Shapes.of_model(model, frames)
        aot.write(aot.compile_all(arch, shapes, config), out, shapes)
    return out


def eager_cuda(kernels: str) -> Callable[..., Pipeline]:
    def make(work, model, frames, dtype, config):
        compiled = aot_kernels(work, model, frames, config) if kernels == "aot" else None
        return Pipeline.from_pretrained(
            model,
            random_init=True,
            device="cuda",
            dtype=dtype,
            config=config,
            num_frames=frames,
            kernels=kernels,
            aot_kernels=compiled,
        )

    return make


def onnxruntime_on(kind: str) -> Callable[..., Pipeline]:
    def make(work, model, frames, dtype, config):
        from earlytom.engine.sessions import Providers
        from earlytom.engine_builder.build import build

        out = work / f"{model}-onnxruntime-{config.variant}-{dtype}-{frames}"
        if not out.exists():
            build(model, out, backend="onnxruntime", config=config, frames=frames, dtype=dtype, random_init=True)
        providers = Providers(kind, trt_cache=work / "trt-ep" if kind == "tensorrt" else None)
        return Pipeline.from_engine_dir(out, providers=providers, retain_ratio=config.retain_ratio)

    return make


def tensorrt_engines(work, model, frames, dtype, config):
    from earlytom.engine_builder.build import build

    out = work / f"{model}-tensorrt-{config.variant}-{dtype}-{frames}-r{config.retain_ratio}"
    if not out.exists():
        build(model, out, backend="tensorrt", config=config, frames=frames, dtype=dtype, random_init=True)
    return Pipeline.from_engine_dir(out)


MAKERS = {
    "eager cuda + triton": eager_cuda("triton"),
    "eager cuda + aot": eager_cuda("aot"),
    "onnxruntime cuda": onnxruntime_on("cuda"),
    "onnxruntime tensorrt": onnxruntime_on("tensorrt"),
    "tensorrt engines": tensorrt_engines,
}
FIXED_SETTINGS = {"tensorrt engines"}  # engines built per ratio, EarlyTom only
NVDEC = "nvdec video decoding"  # compared with PyAV in part 3, not a pipeline


def path_runs(path: GpuPath, work: Path, model: str, frames: int, dtype: str, variant: str, ratios):
    """(setting label, pipeline) for each setting `path` can run: one load (build) for all of them, except
    TensorRT engines (one build per ratio, EarlyTom only)."""
    loaded = None
    for label, method, r in settings(tuple(ratios)):
        config = EarlyTomConfig(variant=variant, retain_ratio=r)
        if path.name in FIXED_SETTINGS:
            if method == "earlytom":
                yield label, MAKERS[path.name](work, model, frames, dtype, config)
            continue
        if loaded is None:
            loaded = MAKERS[path.name](work, model, frames, dtype, config)
        yield label, loaded.with_options(method=method, retain_ratio=r, num_frames=frames)


def compare(paths: list[GpuPath], work: Path, clip: np.ndarray, frames: int, variant: str) -> list[list]:
    """Part 1: each running path vs the CPU eager oracle on the tiny model, fp32, with the path's EarlyTom
    parameters (TensorRT engines are built without the inner merge); clip: uint8 frames [B, H, W, 3]."""
    rows = []
    oracle = Pipeline.from_pretrained("tiny", num_frames=frames, kernels="reference")
    for path in paths:
        for label, pipe in path_runs(path, work, "tiny", frames, "fp32", variant, (0.15,)):
            reference = oracle.with_options(method=pipe.options.method, config=pipe.config)
            expected = reference.generate(clip, PROMPT, max_new_tokens=8)
            rows.append([path.name, label, *agreement(pipe.generate(clip, PROMPT, max_new_tokens=8), expected)])
    return rows


def ttft_rows(paths: list[GpuPath], work: Path, clip: Path, args) -> list[list]:
    """Part 2: TTFT per model, path and setting, with every stage's median."""
    rows = []
    for model in args.models:
        for path in paths:
            for label, pipe in path_runs(path, work, model, args.frames, "fp16", args.variant, args.ratios):
                stages = time_stages(pipe, clip, args.repeats)
                ttft = stages.pop("ttft")
                detail = ", ".join(f"{s} {t['median']:.1f}" for s, t in stages.items())
                rows.append([model, path.name, label, ttft["min"], ttft["median"], ttft["p90"], detail])
    return rows


def decode_once(clip: Path, frames: int, **options) -> tuple[list[int], list[torch.Tensor], float]:
    """(sampled indices, uint8 frames [H, W, 3], ms) of one stream_video over `clip`."""
    start = time.perf_counter()
    stream = stream_video(clip, frames, **options)
    decoded = list(stream)
    torch.cuda.synchronize()
    return stream.indices, decoded, (time.perf_counter() - start) * 1e3


def nvdec_rows(clip: Path, frames: int, size: int, repeats: int) -> list[list]:
    """Part 3: PyAV (CPU, frames resized by swscale as they decode) and NVDEC (GPU, frames resized here with
    preprocess's bicubic) on `clip`: same indices, mean and max absolute pixel difference (0-255), decode time."""
    cpu_indices, cpu_frames, _ = decode_once(clip, frames, size=size)
    gpu_indices, gpu_frames, _ = decode_once(clip, frames, device="cuda")
    resized = [resize_rgb(f, size).round().permute(1, 2, 0).cpu() for f in gpu_frames]  # as preprocess resizes
    diff = (torch.stack(resized) - torch.stack(cpu_frames).float()).abs()
    cpu_ms = summary([decode_once(clip, frames, size=size)[2] for _ in range(repeats)])
    gpu_ms = summary([decode_once(clip, frames, device="cuda")[2] for _ in range(repeats)])
    same = cpu_indices == gpu_indices
    return [
        ["pyav (cpu)", same, "-", "-", cpu_ms["min"], cpu_ms["median"], cpu_ms["p90"]],
        [
            "nvdec",
            same,
            f"{float(diff.mean()):.2f}",
            f"{float(diff.max()):.0f}",
            gpu_ms["min"],
            gpu_ms["median"],
            gpu_ms["p90"],
        ],
    ]


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "a GPU PyTorch does not see"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), help="architectures timed (random weights)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--variant", choices=VARIANTS, default=EarlyTomConfig().variant, help="EarlyTom variant")
    p.add_argument("--plan", action="store_true", help="print which paths run here and why the others do not")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    paths = plan(probe(), args.variant)
    print(f"GPU paths on this machine ({args.variant} variant)\n")
    width = max(len(p.name) for p in paths)
    for p in paths:
        print(f"{p.name:<{width}}  {'runs' if p.runs else 'skipped: ' + p.reason}")
    running = [p for p in paths if p.runs]
    if args.plan:
        return 0
    if not running:
        print("\nno GPU path is installed; nothing was run.", file=sys.stderr)
        return 2
    pipelines = [p for p in running if p.name != NVDEC]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        frames = moving_square_frames(4 * args.frames, size=192, cut_at=2 * args.frames)
        clip = write_clip(work / "clip.mp4", frames)
        if pipelines:
            print("\n1. agreement with eager PyTorch on the CPU (tiny model, fp32)\n")
            header = ["path", "setting", "counts", "merged frames", "selected", "max rel err", "greedy tokens"]
            print_table(header, compare(pipelines, work, frames, min(args.frames, 16), args.variant))
            print(f"\n2. TTFT (ms), {args.frames} frames, random weights, fp16, {gpu_name()}\n")
            header = ["model", "path", "setting", "min", "median", "p90", "stage medians (ms)"]
            print_table(header, ttft_rows(pipelines, work, clip, args))
        if NVDEC in {p.name for p in running}:
            print(f"\n3. video decoding (ms), {args.frames} frames of a 192x192 clip to {NVDEC_SIZE}x{NVDEC_SIZE}\n")
            header = ["decoder", "same indices", "mean |diff|", "max |diff|", "min", "median", "p90"]
            print_table(header, nvdec_rows(clip, args.frames, NVDEC_SIZE, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
