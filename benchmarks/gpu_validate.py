"""The GPU proof: every GPU path this machine has, checked against the CPU fp32 oracle (or the PyTorch reference)
and timed, inside a time budget; the ones it lacks are skipped with the reason. One command, one report:

    python -m benchmarks.gpu_validate --budget-s 420 --out DIR    # DIR/gpu_proof.json and DIR/gpu_proof.md
    python -m benchmarks.gpu_validate --plan                      # which paths would run here, and why not the others
    python -m benchmarks.gpu_validate --device cpu --paths 1 3a   # the parts a CPU runs (a rehearsal)
    python -m benchmarks.gpu_validate --device cpu --paths 1 3a --agreement-models tiny   # the same on a small CPU
                                                                  # (LLaVA-OV-0.5B in fp16 / bf16 takes many minutes)

Paths (the report's sections, in this order):
1.  eager on the GPU (kernels="auto": the Triton JIT) in fp32, fp16, bf16 vs eager PyTorch on the CPU in fp32
    (reference kernels), on the tiny model and LLaVA-OV-0.5B (random weights), on the frames of a clip with a scene
    cut (an array: every path sees the same pixels): same merges (frame counts, merged frames), selected tokens
    (same, and the share of the oracle's kept), max relative error of the visual embeddings, same greedy tokens.
    fp32 must select exactly what the oracle does; fp16 and bf16 are measured.
2.  the Triton JIT kernels on the GPU vs the PyTorch reference, both variants, every kernel (through the ops that
    launch them), fp32 / fp16 / bf16, at LLaVA-OV-7B's vision sizes: same decisions, max relative error.
3a. the AOT kernels compiled for the GPU's arch (sm_90 without one) with the installed Triton: the PTX launch
    contract (each `.entry`'s parameters) parsed from what that Triton emits, against the one kernels.json records.
3b. eager on the GPU with those cubins launched through cuda-bindings (cuLaunchKernel), tiny model, vs the oracle.
4.  time to first token (min / median / p90 of --repeats requests after a warm-up, --secondary-repeats for the
    rows outside the paper's tables; stages timed with CUDA events recorded at each stage boundary, one synchronize
    per request, the wall-clock TTFT beside; grouped as the paper's Figure 3) with random weights made on the GPU,
    bf16, --frames frames, eager SDPA: LLaVA-OV-7B (384 x 384) with full tokens, EarlyTom at each --ratios and
    global top-K at each --topk-ratios, beside the paper's Table 1 (A100: full 889.9 ms, EarlyTom r = 0.10 336.2
    ms); then Qwen2.5-VL-7B (448 x 448, 2 frames per unit) with full tokens and EarlyTom at Table 7's r = 0.15.
5.  NVDEC vs PyAV decoding, and the ONNX Runtime CUDA / TensorRT providers and the TensorRT engines against the
    oracle (tiny, fp32), each when installed, else skipped with the reason.

The budget: a path starts only with at least START_S seconds left, and stops between two of its units (a model
load, a request, a kernel) when the next one's estimate no longer fits; the report then says "stopped" (what it
has is kept) or "not run". Path 4 starts a model only when its load and its paper-table rows fit, and skips a
model (Qwen2.5-VL-7B, last) or the rest of its rows with the reason instead. `--plan` prints each path's estimate
(from LOAD_S and REQUEST_S for path 4, row by row). The report is rewritten after every path, so a run killed
from outside leaves the paths done. Exit status 0 when nothing failed, 1 when a check failed or a path raised, 2
when no path could run.
"""

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import OUT, summary
from earlytom.compress import EarlyTomConfig
from earlytom.compress.config import VARIANTS
from earlytom.dtypes import DTYPES
from earlytom.environment import missing_gpu_stack
from earlytom.models.registry import architecture_of
from earlytom.runtime.pipeline import Pipeline, Result
from earlytom.runtime.synthetic import moving_square_frames, write_clip
from earlytom.runtime.timing import cuda_event_timing
from earlytom.video import nvdec_available, resize_rgb, stream_video

PROMPT = "Describe what happens in this video."
FORMAT = "earlytom-gpu-proof/1"
AGREEMENT_MODELS = ("tiny", "llava-ov-0.5b")
TTFT_MODELS = ("llava-ov-7b", "qwen2.5-vl-7b")
RATIOS = (0.10, 0.15, 0.25)
TOPK_RATIOS = (0.10,)  # path 4's global top-K: at Table 1's ratio only
SECONDARY_REPEATS = 3
# Path 4's models timed at a fixed paper setting, (EarlyTom ratios, global top-K ratios); the others at --ratios and
# --topk-ratios. Qwen2.5-VL-7B: Table 7's r = 0.15, beside full tokens.
TABLE_SETTINGS = {"qwen2.5-vl-7b": ((0.15,), ())}
PAPER_A100_MS = {("llava-ov-7b", "full"): 889.9, ("llava-ov-7b", "earlytom r=0.10"): 336.2}  # Table 1, 32 frames
NVDEC_SIZE = 384  # LLaVA-OneVision's input size
DEFAULT_BUDGET_S = 420
START_S = 20  # a path starts only with this much of the budget left
STATUSES = ("passed", "failed", "error", "stopped", "not run", "skipped", "planned")
# Rough seconds per unit on an H200, for the budget. Loads: random init on the CPU (paths 1, 3b: the oracle's
# weights); path 4's 7B models are made on the GPU (ttft_pipeline), their figure includes the first request's Triton
# compiles at their sizes. Requests: one oracle + one GPU request (7B: one GPU request of 32 frames; the paper's
# A100 takes 0.9 s with full tokens).
LOAD_S = {"tiny": 3, "llava-ov-0.5b": 20, "llava-ov-7b": 45, "qwen2.5-vl-7b": 55}
REQUEST_S = {"tiny": 1, "llava-ov-0.5b": 8, "llava-ov-7b": 1.5, "qwen2.5-vl-7b": 1.5}
PROOF_REPORT = ("gpu_proof.json", "gpu_proof.md")
TOLERANCE = {"fp32": 1e-4, "fp16": 4e-3, "bf16": 3e-2}  # path 2: relative error of merged rows / attention


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


class OutOfBudget(Exception):
    """The next unit of a path does not fit the time left."""


class Budget:
    """A deadline `seconds` from now on `clock` (time.monotonic)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not seconds > 0:
            raise ValueError(f"budget = {seconds} s; give a positive number of seconds (--budget-s)")
        self.seconds, self.clock = seconds, clock
        self.start = clock()

    def left(self) -> float:
        return self.seconds - (self.clock() - self.start)

    def elapsed(self) -> float:
        return self.clock() - self.start

    def check(self, needed_s: float, what: str) -> None:
        """OutOfBudget unless `needed_s` seconds (the estimate of `what`) are left."""
        if self.left() < needed_s:
            raise OutOfBudget(f"{what} needs about {needed_s:.0f} s, {max(self.left(), 0):.0f} s of the budget left")


@dataclass
class Section:
    """One path's part of the report: `columns` name the cells of each row; `status` one of STATUSES."""

    key: str
    title: str
    status: str = "planned"
    reason: str = ""
    seconds: float = 0.0
    estimate_s: float = 0.0
    columns: list[str] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


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


NO_GPU = "PyTorch sees no CUDA GPU (a CPU-only torch build, or no NVIDIA driver/GPU)"


def plan(have: Installed, variant: str) -> list[GpuPath]:
    """Each GPU backend for the EarlyTom `variant`, whether it runs with what `have` holds, and if not, what is
    missing."""

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
            "" if have.cuda_gpu else NO_GPU, "" if have.triton else "the triton package is not installed"
        ),
        "eager cuda + aot": needs(
            "" if have.cuda_gpu else NO_GPU,
            ""
            if have.cuda_python
            else "cuda-python is not installed: the AOT launcher needs its driver API (pip install 'earlytom[gpu]')",
        ),
        "onnxruntime cuda": provider("CUDAExecutionProvider"),
        "onnxruntime tensorrt": provider("TensorrtExecutionProvider"),
        "tensorrt engines": needs(*(f"{m} is missing" for m in have.tensorrt_missing)),
        NVDEC: needs(
            "" if have.cuda_gpu else NO_GPU,
            "" if have.nvdec else "PyNvVideoCodec is not installed (pip install -c constraints.txt 'earlytom[nvdec]')",
        ),
    }
    return [GpuPath(name, not why, why) for name, why in reasons.items()]


def settings(ratios: tuple[float, ...], topk_ratios: tuple[float, ...] | None = None) -> list[tuple[str, str, float]]:
    """(label, method, retain ratio) of every setting timed: full tokens, then EarlyTom per r of `ratios` and global
    top-K per r of `topk_ratios` (None: `ratios`)."""
    topk_ratios = ratios if topk_ratios is None else topk_ratios
    rows = [("full", "full", 0.15)]
    rows += [(f"earlytom r={r:.2f}", "earlytom", r) for r in ratios]
    return rows + [(f"global top-K r={r:.2f}", "global_topk", r) for r in topk_ratios]


def selected_pairs(result: Result) -> set[tuple[int, int]]:
    v = result.visual
    return set(zip(v.frame.cpu().tolist(), v.index.cpu().tolist(), strict=True))


def agreement(result: Result, oracle: Result) -> list:
    """[same counts, same merged frames, same selected tokens, max rel. error of the embeddings (None unless the
    selections are the same), same greedy tokens, share of the oracle's selected tokens also selected]."""
    v, o = result.visual, oracle.visual
    selected = torch.equal(v.frame.cpu(), o.frame) and torch.equal(v.index.cpu(), o.index)
    err = float((v.embeds.float().cpu() - o.embeds).abs().max() / o.embeds.abs().max()) if selected else None
    same_source = torch.equal(v.source.cpu(), o.source)
    expected = selected_pairs(oracle)
    overlap = len(selected_pairs(result) & expected) / max(len(expected), 1)
    return [result.counts == oracle.counts, same_source, selected, err, result.token_ids == oracle.token_ids, overlap]


AGREEMENT_COLUMNS = ["counts", "merged frames", "selected", "max rel err", "greedy tokens", "selected overlap"]


def timed_runs(pipe: Pipeline, clip: Path, repeats: int) -> tuple[Result, list[dict[str, float]]]:
    """The warm-up request's Result, then the timings_ms of `repeats` one-token requests. On CUDA their stages are
    timed with CUDA events (earlytom.runtime.timing.cuda_event_timing: `ttft` on the GPU's clock, `ttft_wall`)."""
    with cuda_event_timing():
        warm = pipe.generate(clip, PROMPT, max_new_tokens=1)
        return warm, [pipe.generate(clip, PROMPT, max_new_tokens=1).timings_ms for _ in range(repeats)]


def time_stages(pipe: Pipeline, clip: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Stage (and ttft) -> min/median/p90 ms over `repeats` one-token requests after one warm-up."""
    _, runs = timed_runs(pipe, clip, repeats)
    return {stage: summary([run[stage] for run in runs]) for stage in runs[0]}


# The backends: (work directory, model, frames, dtype, EarlyTom config) -> a Pipeline; called only for paths
# planned to run. Engine directories are built once per what they fix and reused.
def aot_kernels(work: Path, model: str, frames: int, config: EarlyTomConfig, arch: str | None = None) -> Path:
    """The kernels of `model` for up to `frames` frames and `config`'s thresholds, compiled for `arch` (None: this
    GPU's) in every dtype, once per work directory."""
    from earlytom.plugins import aot
    from earlytom.plugins.launcher import gpu_arch

    arch = gpu_arch(torch.cuda.get_device_capability()) if arch is None else arch
    out = work / f"{model}-aot-{config.variant}-{frames}-{arch}"
    if not out.exists():
        shapes = aot.Shapes.of_model(model, frames)
        aot.write(aot.compile_all(arch, shapes, config), out, shapes)
    return out


def eager_on(device: str, kernels: str) -> Callable[..., Pipeline]:
    def make(work, model, frames, dtype, config):
        compiled = aot_kernels(work, model, frames, config) if kernels == "aot" else None
        return Pipeline.from_pretrained(
            model,
            random_init=True,
            device=device,
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
    "eager cuda + triton": eager_on("cuda", "auto"),
    "eager cuda + aot": eager_on("cuda", "aot"),
    "eager cpu": eager_on("cpu", "auto"),  # the rehearsal of path 1 on a CPU
    "onnxruntime cuda": onnxruntime_on("cuda"),
    "onnxruntime tensorrt": onnxruntime_on("tensorrt"),
    "tensorrt engines": tensorrt_engines,
}
FIXED_SETTINGS = {"tensorrt engines"}  # engines built per ratio, EarlyTom only
NVDEC = "nvdec video decoding"  # compared with PyAV in path 5, not a pipeline


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


def oracle_for(model: str, frames: int) -> Pipeline:
    """Eager PyTorch on the CPU in fp32 with the reference kernels: what every path is checked against."""
    return Pipeline.from_pretrained(model, random_init=True, num_frames=frames, kernels="reference")


def compare_rows(
    paths: list[GpuPath],
    work: Path,
    clip: np.ndarray,
    frames: int,
    variant: str,
    *,
    model: str = "tiny",
    dtype: str = "fp32",
    oracle: Pipeline | None = None,
    expected: dict | None = None,
    budget: Budget | None = None,
) -> Iterator[list]:
    """Each path vs the CPU eager oracle on `model` in `dtype`, with the path's EarlyTom parameters (TensorRT
    engines are built without the inner merge); clip: uint8 frames [B, H, W, 3]. Yields [path, setting,
    *AGREEMENT_COLUMNS] per setting. `oracle`: the model's (None: loaded here); `expected`: its results by (method,
    config), filled here and reusable for other dtypes; `budget`: checked before each load and request."""

    def check(seconds: float, what: str) -> None:
        if budget is not None:
            budget.check(seconds, what)

    if oracle is None:
        check(LOAD_S.get(model, 60), f"loading the {model} oracle")
        oracle = oracle_for(model, frames)
    expected = {} if expected is None else expected
    for path in paths:
        check(LOAD_S.get(model, 60), f"loading {model} for {path.name} in {dtype}")
        for label, pipe in path_runs(path, work, model, frames, dtype, variant, (0.15,)):
            check(REQUEST_S.get(model, 30), f"a {model} request")
            key = (pipe.options.method, pipe.config)
            if key not in expected:
                reference = oracle.with_options(method=pipe.options.method, config=pipe.config)
                expected[key] = reference.generate(clip, PROMPT, max_new_tokens=8)
            yield [path.name, label, *agreement(pipe.generate(clip, PROMPT, max_new_tokens=8), expected[key])]


def compare(paths: list[GpuPath], work: Path, clip: np.ndarray, frames: int, variant: str, **options) -> list[list]:
    """compare_rows as a list."""
    return list(compare_rows(paths, work, clip, frames, variant, **options))


def exact(row: list) -> bool:
    """An agreement row (AGREEMENT_COLUMNS at its end) with the oracle's merges and selection."""
    counts, merged, selected = row[-6:-3]
    return counts is True and merged is True and selected is True


def agreement_section(section: Section, path: GpuPath, work: Path, clip: np.ndarray, args, budget: Budget) -> str:
    """Paths 1 and 3b: rows [model, dtype, setting, *AGREEMENT_COLUMNS]; fp32 rows must be exact."""
    section.columns = ["model", "dtype", "setting", *AGREEMENT_COLUMNS]
    section.notes.append("fp32 rows must match the oracle's merges and selection; fp16 / bf16 rows are measured")
    models = args.agreement_models if path.name != "eager cuda + aot" else ("tiny",)
    for model in models:
        budget.check(LOAD_S.get(model, 60), f"loading the {model} oracle")
        oracle, expected = oracle_for(model, args.agreement_frames), {}
        for dtype in args.dtypes:
            options = {"model": model, "dtype": dtype, "oracle": oracle, "expected": expected, "budget": budget}
            for row in compare_rows([path], work, clip, args.agreement_frames, args.variant, **options):
                section.rows.append([model, dtype, *row[1:]])
    return "passed" if all(exact(row) for row in section.rows if row[1] == "fp32") else "failed"


def scene(levels: list[float], L: int, D: int, seed: int) -> torch.Tensor:
    """hidden [F, L, D] float32: each frame the previous plus levels[i] noise (a large level: a scene cut)."""
    g = torch.Generator().manual_seed(seed)
    frames = [torch.randn(L, D, generator=g)]
    for level in levels[1:]:
        frames.append(frames[-1] + level * torch.randn(L, D, generator=g))
    return torch.stack(frames)


def drift_levels(frames: int) -> list[float]:
    """Per-frame noise levels: slow drift, exact repeats and a scene cut every 11 frames."""
    return [0.0 if t % 5 == 4 else 4.0 if t % 11 == 10 else 0.1 for t in range(frames)]


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float().cpu() - ref.float().cpu()).abs().max() / ref.float().abs().max().clamp_min(1e-30))


def received_reference(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """q, k [F, H, L, d] -> [F, L] float32: softmax rows of scale q k^T in float32, mean over heads and queries."""
    out = [
        torch.softmax(scale * qf.float() @ kf.float().transpose(-1, -2), -1).mean(dim=(0, 1))
        for qf, kf in zip(q, k, strict=True)
    ]
    return torch.stack(out).cpu()


def kernel_rows(shapes, device: str, dtypes: tuple[str, ...], budget: Budget) -> Iterator[list]:
    """Path 2: [variant, op, dtype, kernels, same decisions, max rel err, tolerance] per op of the JIT kernels on
    `device` vs earlytom.compress (float32, CPU) on the same values, at `shapes` (aot.Shapes)."""
    from earlytom import compress
    from earlytom.plugins.triton import ops

    B, L, D, T = shapes.max_frames, shapes.tokens, shapes.hidden, shapes.tokens_per_frame
    H, DM = shapes.heads, shapes.lm_hidden
    config = {v: EarlyTomConfig(variant=v) for v in VARIANTS}
    g = torch.Generator().manual_seed(1)
    for dtype in dtypes:
        budget.check(10, f"the kernels in {dtype}")
        cast = {"dtype": DTYPES[dtype]}
        tol = TOLERANCE[dtype]
        hidden = scene(drift_levels(B), L, D, seed=0).to(**cast)  # the values both sides read
        ref_in, ours_in = hidden.float(), hidden.to(device)
        p = config["paper"]
        ref = compress.frame_merge(ref_in, alpha=p.alpha, tau_seg=p.tau_seg, tau_merge=p.tau_merge)
        ours = ops.frame_merge(ours_in, alpha=p.alpha, tau_seg=p.tau_seg, tau_merge=p.tau_merge)
        same = torch.equal(ours.source.cpu(), ref.source) and torch.equal(ours.is_static.cpu(), ref.is_static)
        err = rel_err(ours.hidden, ref.hidden) if same else None
        yield ["paper", "frame_merge", dtype, "token_cosine, merge_plan, weighted_merge", same, err, tol]
        N = ref.hidden.shape[0]
        tokens = torch.randn(N, T, DM, generator=g).to(**cast)
        scores = torch.randperm(N * T, generator=g).float().view(N, T) / (N * T)  # distinct: no ties
        ref_sel = compress.token_select(
            tokens.float(), scores, ref.is_static, retain_ratio=p.retain_ratio, num_frames=B
        )
        ours_sel = ops.token_select(
            tokens.to(device), scores.to(device), ref.is_static.to(device), retain_ratio=p.retain_ratio, num_frames=B
        )
        same = torch.equal(ours_sel.frame.cpu(), ref_sel.frame) and torch.equal(ours_sel.index.cpu(), ref_sel.index)
        err = rel_err(ours_sel.tokens, ref_sel.tokens) if same else None
        yield ["paper", "token_select", dtype, "window_select, dynamic_topk, gather_tokens", same, err, tol]

        o = config["official"]
        q, k = (torch.randn(B, H, L, D // H, generator=g).to(**cast) for _ in range(2))
        scale = (D // H) ** -0.5
        received = ops.attention_received(q.to(device), k.to(device), scale=scale)
        err = rel_err(received, received_reference(q.to(device), k.to(device), scale))
        yield ["official", "attention_received", dtype, "attention_row_stats, attention_received", True, err, tol]
        attention = received.float().cpu()
        options = {"alpha": o.alpha, "tau_seg": o.tau_seg, "max_window": o.max_window, "final": True}
        ref_c = compress.official_compress(ref_in, attention, **options)
        ours_c = ops.official_compress(ours_in, attention.to(device), **options)
        same = torch.equal(ours_c.source.cpu(), ref_c.source) and torch.equal(ours_c.segments.cpu(), ref_c.segments)
        err = rel_err(ours_c.hidden, ref_c.hidden) if same else None
        yield ["official", "official_compress", dtype, "window_cosine, official_plan, weighted_merge", same, err, tol]
        N = ref_c.hidden.shape[0]
        tokens = torch.randn(N, T, DM, generator=g).to(**cast)
        scores = torch.randperm(N * T, generator=g).float().view(N, T) / (N * T)
        select = {"retain_ratio": o.retain_ratio, "num_frames": B}
        ref_sel = compress.official_select(tokens.float(), scores, ref_c.segments, **select)
        ours_sel = ops.official_select(tokens.to(device), scores.to(device), ref_c.segments.to(device), **select)
        same = torch.equal(ours_sel.frame.cpu(), ref_sel.frame) and torch.equal(ours_sel.index.cpu(), ref_sel.index)
        err = rel_err(ours_sel.tokens, ref_sel.tokens) if same else None
        yield ["official", "official_select", dtype, "official_keep, compact_keep, gather_tokens", same, err, tol]


def contract_rows(arch: str, shapes, dtypes: tuple[str, ...], budget: Budget) -> Iterator[list]:
    """Path 3a: [variant, kernel, dtype, entry parameters, hidden, as kernels.json records, registers, spill
    bytes, shared bytes] for every kernel of both variants compiled for `arch` with the installed Triton."""
    from earlytom.plugins import aot

    for variant in VARIANTS:
        budget.check(15, f"compiling the {variant} kernels")
        for c in aot.compile_all(arch, shapes, EarlyTomConfig(variant=variant), dtypes=dtypes):
            emitted = aot.entry_params(c.ptx, c.entry)
            recorded = [(p.type, p.hidden) for p in c.params]
            matches = [t for _, t in emitted] == [t for t, _ in recorded]
            hidden = ", ".join(p.name for p in c.params if p.hidden)
            yield [
                variant,
                c.kernel,
                c.dtype,
                len(emitted),
                hidden,
                matches,
                c.registers,
                c.spill_bytes,
                c.shared_bytes,
            ]


@dataclass(frozen=True)
class TtftRow:
    """One setting path 4 times on `model`: `repeats` one-token requests after a warm-up. Primary: a row of the
    paper's tables (full tokens, EarlyTom at the model's first ratio)."""

    model: str
    label: str
    method: str
    ratio: float
    repeats: int
    primary: bool

    @property
    def estimate_s(self) -> float:
        return REQUEST_S.get(self.model, 30) * (self.repeats + 1)


def ttft_plan(args) -> dict[str, list[TtftRow]]:
    """Path 4's rows per model of args.models, in the order they run: full tokens, EarlyTom per ratio, global top-K
    per top-K ratio (TABLE_SETTINGS, else args.ratios and args.topk_ratios); primary rows are timed args.repeats
    times, the others args.secondary_repeats times."""
    plan = {}
    for model in args.models:
        ratios, topk = TABLE_SETTINGS.get(model, (tuple(args.ratios), tuple(args.topk_ratios)))
        primary = ("full", f"earlytom r={ratios[0]:.2f}")
        plan[model] = [
            TtftRow(
                model, label, method, r, args.repeats if label in primary else args.secondary_repeats, label in primary
            )
            for label, method, r in settings(ratios, topk)
        ]
    return plan


def model_estimate_s(model: str, rows: list[TtftRow], *, primary_only: bool = False) -> float:
    """Seconds to load `model` and time `rows` (only the primary ones if `primary_only`)."""
    return LOAD_S.get(model, 60) + sum(row.estimate_s for row in rows if row.primary or not primary_only)


def ttft_estimate(args) -> tuple[float, list[str]]:
    """Path 4's estimate in seconds and one plan line per model: its frame size and visual tokens (from its config,
    no weights), its load and each row with its repeats."""
    total, lines = 0.0, []
    for model, rows in ttft_plan(args).items():
        dims = architecture_of(model, download=False)[1]
        units = dims.units(args.frames)
        seconds = model_estimate_s(model, rows)
        total += seconds
        timed = ", ".join(f"{row.label} x{row.repeats}" for row in rows)
        lines.append(
            f"plan: {model} at {dims.frame_size[0]}x{dims.frame_size[1]} px, {args.frames} frames = {units} units, "
            f"{units * dims.tokens_per_frame} visual tokens in full: load ~{LOAD_S.get(model, 60):.0f} s; {timed}; "
            f"~{seconds:.0f} s"
        )
    return total, lines


def ttft_pipeline(model: str, args) -> Pipeline:
    """`model` with random weights made where it runs: args.device is the default device while it is built, so a 7B
    model initialises on the GPU (seconds; minutes on the CPU). Only timing reads these weights; paths 1 and 3b make
    theirs on the CPU, as their oracle does."""
    with torch.device(args.device):
        return Pipeline.from_pretrained(
            model,
            random_init=True,
            device=args.device,
            dtype=args.ttft_dtype,
            config=EarlyTomConfig(variant=args.variant),
            num_frames=args.frames,
            kernels="auto",
        )


def ttft_columns() -> list[str]:
    """Path 4's columns (ttft_rows)."""
    from benchmarks.ttft import GROUPS  # the paper's Figure 3 groups of the stages

    medians = ["min ms", "median ms", "p90 ms", "wall median ms", *(f"{group} ms" for group in GROUPS)]
    return [
        "model",
        "frame size",
        "setting",
        "frames after merges",
        "visual tokens",
        *medians,
        "paper A100 ms",
        "stage medians (ms)",
    ]


def ttft_rows(model: str, rows: list[TtftRow], clip: Path, args, budget: Budget | None = None) -> Iterator[list]:
    """Path 4 on `model` (loaded once, ttft_pipeline): each of `rows` timed (timed_runs) -> a row of ttft_columns:
    TTFT min / median / p90 (CUDA events on a GPU), the wall-clock median (None without events), each Figure 3
    group's median, the paper's A100 figure where Table 1 has the row, every stage's median."""
    from benchmarks.ttft import group_ms

    pipe = ttft_pipeline(model, args)
    size = "x".join(map(str, pipe.backend.text.processor.frame_size))
    for row in rows:
        if budget is not None:
            budget.check(row.estimate_s, f"{model} {row.label}")
        setting = pipe.with_options(method=row.method, retain_ratio=row.ratio, num_frames=args.frames)
        warm, runs = timed_runs(setting, clip, row.repeats)
        ttft = summary([run["ttft"] for run in runs])
        wall = summary([run["ttft_wall"] for run in runs])["median"] if "ttft_wall" in runs[0] else None
        groups = [summary(ms)["median"] for ms in zip(*(group_ms(run).values() for run in runs), strict=True)]
        stages = [stage for stage in runs[0] if stage not in ("ttft", "ttft_wall")]
        detail = ", ".join(f"{stage} {summary([run[stage] for run in runs])['median']:.1f}" for stage in stages)
        counts = warm.counts
        yield [
            model,
            size,
            row.label,
            counts["frames_after_merge"],
            counts["visual_tokens"],
            ttft["min"],
            ttft["median"],
            ttft["p90"],
            wall,
            *groups,
            PAPER_A100_MS.get((model, row.label)),
            detail,
        ]


def decode_once(clip: Path, frames: int, **options) -> tuple[list[int], list[torch.Tensor], float]:
    """(sampled indices, uint8 frames [H, W, 3], ms) of one stream_video over `clip`."""
    start = time.perf_counter()
    stream = stream_video(clip, frames, **options)
    decoded = list(stream)
    torch.cuda.synchronize()
    return stream.indices, decoded, (time.perf_counter() - start) * 1e3


def nvdec_rows(clip: Path, frames: int, size: int, repeats: int) -> list[list]:
    """PyAV (CPU, frames resized by swscale as they decode) and NVDEC (GPU, frames resized here with preprocess's
    bicubic) on `clip`: same indices, mean and max absolute pixel difference (0-255), decode time."""
    cpu_indices, cpu_frames, _ = decode_once(clip, frames, size=size)
    gpu_indices, gpu_frames, _ = decode_once(clip, frames, device="cuda")
    resized = [resize_rgb(f, size).round().permute(1, 2, 0).cpu() for f in gpu_frames]  # as preprocess resizes
    diff = (torch.stack(resized) - torch.stack(cpu_frames).float()).abs()
    cpu_ms = summary([decode_once(clip, frames, size=size)[2] for _ in range(repeats)])
    gpu_ms = summary([decode_once(clip, frames, device="cuda")[2] for _ in range(repeats)])
    same = cpu_indices == gpu_indices
    return [
        ["pyav (cpu)", same, None, None, cpu_ms["min"], cpu_ms["median"], cpu_ms["p90"]],
        ["nvdec", same, float(diff.mean()), float(diff.max()), gpu_ms["min"], gpu_ms["median"], gpu_ms["p90"]],
    ]


@dataclass(frozen=True)
class Check:
    """One section of the proof: `needs(have, device)` -> why it cannot run here ("" when it can); `run(section,
    context)` fills the section and returns "passed" or "failed"."""

    key: str
    title: str
    estimate: Callable[[argparse.Namespace], tuple[float, list[str]]]  # options -> (seconds, plan lines)
    needs: Callable[[Installed, str], str]
    run: Callable[[Section, "Context"], str]


def about(seconds: float) -> Callable[[argparse.Namespace], tuple[float, list[str]]]:
    """The estimate of a check that does not depend on the options: `seconds`, no plan lines."""
    return lambda args: (seconds, [])


@dataclass
class Context:
    args: argparse.Namespace
    have: Installed
    budget: Budget
    work: Path
    frames: np.ndarray  # uint8 [B, H, W, 3]: the clip's pixels
    clip: Path  # the same frames as an mp4


def backend(name: str) -> Callable[[Installed, str], str]:
    """needs() of a backend path of `plan`."""

    def needs(have: Installed, device: str) -> str:
        return next(p.reason for p in plan(have, "official") if p.name == name)

    return needs


def eager_needs(have: Installed, device: str) -> str:
    return "" if device == "cpu" else backend("eager cuda + triton")(have, device)


def triton_needs(have: Installed, device: str) -> str:
    if not have.triton:
        return "the triton package is not installed"
    if device == "cpu":
        return "the Triton JIT compiles for a GPU (the interpreter runs these kernels on a CPU in tests/)"
    return "" if have.cuda_gpu else NO_GPU


def compiler_needs(have: Installed, device: str) -> str:
    if not have.triton:
        return "the triton package is not installed"
    return "TRITON_INTERPRET=1 is set: compiling needs it unset" if os.environ.get("TRITON_INTERPRET") == "1" else ""


def run_agreement(section: Section, ctx: Context) -> str:
    name = "eager cpu" if ctx.args.device == "cpu" else "eager cuda + triton"
    section.notes.append(f"device: {ctx.args.device} ({name}), {ctx.args.agreement_frames} frames, random weights")
    return agreement_section(section, GpuPath(name, True, ""), ctx.work, ctx.frames, ctx.args, ctx.budget)


def run_aot(section: Section, ctx: Context) -> str:
    return agreement_section(section, GpuPath("eager cuda + aot", True, ""), ctx.work, ctx.frames, ctx.args, ctx.budget)


def run_kernels(section: Section, ctx: Context) -> str:
    from earlytom.plugins import aot

    shapes = aot.Shapes.of_model(ctx.args.kernel_model, ctx.args.frames)
    section.columns = ["variant", "op", "dtype", "kernels", "same decisions", "max rel err", "tolerance"]
    section.notes.append(f"{ctx.args.kernel_model} vision sizes: {shapes}")
    section.rows.extend(kernel_rows(shapes, ctx.args.device, tuple(ctx.args.dtypes), ctx.budget))
    ok = all(row[4] is True and row[5] is not None and row[5] <= row[6] for row in section.rows)
    return "passed" if ok else "failed"


def target_arch(device: str) -> str:
    """The AOT target: this GPU's arch, or sm_90 (the H200's) without one."""
    from earlytom.plugins.launcher import gpu_arch

    return gpu_arch(torch.cuda.get_device_capability()) if device != "cpu" and torch.cuda.is_available() else "sm_90"


def run_contract(section: Section, ctx: Context) -> str:
    import triton

    from earlytom.plugins import aot

    arch = target_arch(ctx.args.device)
    shapes = aot.Shapes.of_model("tiny", ctx.args.agreement_frames)
    section.columns = [
        "variant",
        "kernel",
        "dtype",
        "entry params",
        "hidden",
        "as recorded",
        "registers",
        "spill B",
        "shared B",
    ]
    section.notes.append(f"triton {triton.__version__}, {arch}, tiny model shapes {shapes}")
    section.rows.extend(contract_rows(arch, shapes, tuple(ctx.args.dtypes), ctx.budget))
    return "passed" if all(row[5] is True for row in section.rows) else "failed"


def run_ttft(section: Section, ctx: Context) -> str:
    """Path 4, model after model (ttft_plan): a model starts only when its load and primary rows fit the budget;
    a model, or the rest of its rows, that does not fit is skipped with the reason (status "stopped")."""
    args = ctx.args
    section.columns = ttft_columns()
    section.notes.append(
        f"{args.frames} frames, {args.ttft_dtype}, random weights made on the GPU, eager SDPA, Triton JIT kernels; "
        f"{args.repeats} requests (other than the paper's table rows: {args.secondary_repeats}) after one warm-up; "
        "TTFT and stages from CUDA events recorded at each stage boundary, one synchronize per request "
        "(earlytom.runtime.timing.cuda_event_timing); wall median: the same requests on the CPU's clock; groups as "
        "the paper's Figure 3 (benchmarks.ttft.GROUPS: decoding overlaps encoding, so they can sum to more than TTFT)"
    )
    skipped = []
    for model, rows in ttft_plan(args).items():
        try:
            ctx.budget.check(model_estimate_s(model, rows, primary_only=True), f"{model}'s load and primary rows")
            for row in ttft_rows(model, rows, ctx.clip, args, ctx.budget):
                section.rows.append(row)
        except OutOfBudget as stop:
            skipped.append(f"not timed: {stop}")
    section.notes.extend(skipped)
    section.reason = "; ".join(skipped)
    return "stopped" if skipped else "passed"


def run_nvdec(section: Section, ctx: Context) -> str:
    section.columns = ["decoder", "same indices", "mean |diff|", "max |diff|", "min ms", "median ms", "p90 ms"]
    section.rows = nvdec_rows(ctx.clip, ctx.args.frames, NVDEC_SIZE, ctx.args.repeats)
    return "passed" if all(row[1] for row in section.rows) else "failed"


def run_backend(name: str) -> Callable[[Section, Context], str]:
    def run(section: Section, ctx: Context) -> str:
        section.columns = ["path", "setting", *AGREEMENT_COLUMNS]
        path = GpuPath(name, True, "")
        options = {"budget": ctx.budget}
        section.rows.extend(
            compare_rows([path], ctx.work, ctx.frames, ctx.args.agreement_frames, ctx.args.variant, **options)
        )
        return "passed" if all(exact(row) for row in section.rows) else "failed"

    return run


CHECKS = (
    Check("1", "eager on the device vs the CPU fp32 oracle", about(80), eager_needs, run_agreement),
    Check("2", "Triton JIT kernels vs the PyTorch reference", about(60), triton_needs, run_kernels),
    Check(
        "3a", "AOT kernels: the PTX launch contract of the installed Triton", about(45), compiler_needs, run_contract
    ),
    Check(
        "3b",
        "AOT kernels launched through cuLaunchKernel vs the oracle",
        about(30),
        backend("eager cuda + aot"),
        run_aot,
    ),
    Check("4", "time to first token", ttft_estimate, backend("eager cuda + triton"), run_ttft),
    Check("5a", "NVDEC vs PyAV decoding", about(30), backend(NVDEC), run_nvdec),
    Check(
        "5b",
        "ONNX Runtime CUDA provider vs the oracle",
        about(60),
        backend("onnxruntime cuda"),
        run_backend("onnxruntime cuda"),
    ),
    Check(
        "5c",
        "ONNX Runtime TensorRT provider vs the oracle",
        about(120),
        backend("onnxruntime tensorrt"),
        run_backend("onnxruntime tensorrt"),
    ),
    Check(
        "5d", "TensorRT engines vs the oracle", about(300), backend("tensorrt engines"), run_backend("tensorrt engines")
    ),
)


def planned(checks, have: Installed, args: argparse.Namespace) -> list[Section]:
    """A section per check (of args.paths, None: all) on args.device: "planned" with its estimate and plan lines
    (its notes), or "skipped" with the reason."""
    sections = []
    for check in checks:
        if args.paths is not None and check.key not in args.paths:
            continue
        why = check.needs(have, args.device)
        if why:
            sections.append(Section(check.key, check.title, "skipped", why))
            continue
        seconds, lines = check.estimate(args)
        sections.append(Section(check.key, check.title, "planned", estimate_s=seconds, notes=list(lines)))
    return sections


def run_section(check: Check, section: Section, ctx: Context) -> None:
    """Run one planned section inside the budget: passed / failed from the check, stopped when the budget ran out
    inside it, not run when it could not start, error (with the traceback's end) when it raised."""
    if ctx.budget.left() < START_S:
        section.status, section.reason = "not run", f"{max(ctx.budget.left(), 0):.0f} s of the budget left"
        return
    start = time.monotonic()
    try:
        section.status = check.run(section, ctx)
    except OutOfBudget as stop:
        section.status, section.reason = "stopped", str(stop)
    except Exception as error:  # a path that breaks must not stop the others: the report says how it broke
        section.status, section.reason = "error", f"{type(error).__name__}: {error}".splitlines()[0][:500]
        section.notes.append(traceback.format_exc(limit=-4)[-3000:])
    finally:
        section.seconds = round(time.monotonic() - start, 1)


def machine() -> dict:
    """The GPU (if any) and the versions the proof ran on."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("triton", "transformers", "numpy", "onnx", "onnxruntime", "av", "cuda-bindings"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = "{}.{}".format(*torch.cuda.get_device_capability())
    else:
        info["gpu"] = None
    return info


def report(sections: list[Section], info: dict, options: dict, budget_s: float, elapsed_s: float) -> dict:
    """The proof's JSON report (FORMAT)."""
    return {
        "format": FORMAT,
        "machine": info,
        "options": options,
        "budget_s": budget_s,
        "elapsed_s": round(elapsed_s, 1),
        "stopped_early": any(s.status in ("stopped", "not run") for s in sections),
        "paths": [asdict(s) | {"rows": [[plain(c) for c in row] for row in s.rows]} for s in sections],
    }


def plain(value):
    """A report cell as JSON takes it: NaN and infinities as their names, numpy scalars as Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 and value else f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(data: dict) -> str:
    """The Markdown form of a report: machine, a summary table of every path, then each path's table."""
    m = data["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m.items() if k not in ("gpu", "capability") and v)
    gpu = f"{m['gpu']} (compute capability {m['capability']})" if m.get("gpu") else "no GPU"
    lines = [
        "# EarlyTom GPU proof",
        "",
        f"Machine: {gpu}; {versions}.",
        f"Budget {data['budget_s']:.0f} s, used {data['elapsed_s']:.0f} s"
        + (" (stopped early: see the paths marked stopped / not run)." if data["stopped_early"] else "."),
        "",
        "| path | what | status | seconds | reason |",
        "|---|---|---|---|---|",
    ]
    for p in data["paths"]:
        lines.append(
            f"| {p['key']} | {p['title']} | {p['status']} | {p['seconds']:.1f} | {cell(p['reason'] or None)} |"
        )
    for p in data["paths"]:
        lines += ["", f"## {p['key']}. {p['title']}: {p['status']}", ""]
        if p["reason"]:
            lines += [f"Reason: {p['reason']}", ""]
        if p["columns"] and p["rows"]:
            lines += ["| " + " | ".join(p["columns"]) + " |", "|" + "---|" * len(p["columns"])]
            lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in p["rows"]]
            lines.append("")
        lines += [f"- {note}" if "\n" not in note else f"```\n{note.rstrip()}\n```" for note in p["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def write_report(out: Path, data: dict) -> tuple[Path, Path]:
    """gpu_proof.json and gpu_proof.md in `out` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = (out / name for name in PROOF_REPORT)
    json_path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    md_path.write_text(markdown(data))
    return json_path, md_path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT / "gpu-proof", help="folder of gpu_proof.json and gpu_proof.md")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="stop cleanly before this many seconds")
    p.add_argument("--plan", action="store_true", help="only list which paths would run here and why not the others")
    p.add_argument("--paths", nargs="+", choices=[c.key for c in CHECKS], help="run only these paths (default: all)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: rehearse paths 1 and 3a on a CPU")
    p.add_argument("--agreement-models", nargs="+", default=list(AGREEMENT_MODELS), help="paths 1 and 3b's models")
    p.add_argument("--agreement-frames", type=int, default=6, help="frames of paths 1, 3 and 5's requests")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES), help="paths 1 to 3")
    p.add_argument("--kernel-model", default="llava-ov-7b", help="path 2: whose vision sizes the kernels run at")
    p.add_argument("--models", nargs="+", default=list(TTFT_MODELS), help="path 4: architectures timed, in order")
    p.add_argument("--ttft-dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--frames", type=int, default=32, help="paths 2, 4, 5a: frames per request")
    p.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS), help="path 4: EarlyTom's retain ratios")
    p.add_argument("--topk-ratios", type=float, nargs="+", default=list(TOPK_RATIOS), help="path 4: global top-K's")
    p.add_argument("--repeats", type=int, default=5, help="path 4: timed requests of the paper's table rows")
    p.add_argument("--secondary-repeats", type=int, default=SECONDARY_REPEATS, help="path 4: of the other rows")
    p.add_argument("--variant", choices=VARIANTS, default=EarlyTomConfig().variant, help="EarlyTom variant")
    return p


def print_summary(sections: list[Section]) -> None:
    width = max(len(s.title) for s in sections)
    for s in sections:
        detail = {"planned": f"~{s.estimate_s:.0f} s", "skipped": ""}.get(s.status, f"{s.seconds:.1f} s")
        print(f"{s.key:>3}  {s.title:<{width}}  {s.status:<8} {detail:>8}  {s.reason}")
        if s.status == "planned":
            print("".join(f"       {note}\n" for note in s.notes), end="")


def run_all(sections: list[Section], ctx: Context, write: Callable[[list[Section]], None]) -> None:
    checks = {c.key: c for c in CHECKS}
    for section in sections:
        if section.status == "planned":
            print(f"\n{section.key}. {section.title} ...", flush=True)
            run_section(checks[section.key], section, ctx)
            print(f"   {section.status} in {section.seconds:.1f} s {section.reason}", flush=True)
            write(sections)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    budget = Budget(args.budget_s)
    have = probe()
    sections = planned(CHECKS, have, args)
    info = machine()

    def write(current: list[Section]) -> tuple[Path, Path]:
        options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        return write_report(args.out, report(current, info, options, args.budget_s, budget.elapsed()))

    if args.plan:
        total = sum(s.estimate_s for s in sections if s.status == "planned")
        print_summary(sections)
        over = " (over it: the last paths may stop or not run)" if total > args.budget_s else ""
        print(f"\nestimated {total:.0f} s of the {args.budget_s:.0f} s budget{over}; report: {write(sections)[1]}")
        return 0
    if all(s.status == "skipped" for s in sections):
        write(sections)
        print_summary(sections)
        print("\nno path can run here; nothing was run.", file=sys.stderr)
        return 2
    if torch.cuda.is_available():  # fp32 paths compare with the CPU oracle: no TF32 matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        frames = moving_square_frames(4 * args.frames, size=192, cut_at=2 * args.frames)
        clip = write_clip(work / "clip.mp4", frames)
        ctx = Context(args, have, budget, work, frames, clip)
        run_all(sections, ctx, write)
    json_path, md_path = write(sections)
    print()
    print_summary(sections)
    print(f"\nreport: {json_path}, {md_path}")
    return 1 if any(s.status in ("failed", "error") for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
