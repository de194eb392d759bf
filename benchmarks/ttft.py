"""Time-to-first-token breakdown on this CPU: EarlyTom's official variant (with and without the decoder's
inner merge), the paper variant, full tokens and post-encoder global top-K at the same retain ratios, on the
ONNX Runtime and eager backends. LLaVA-OneVision-0.5B architecture by default, random weights (honest for latency,
never for accuracy), one synthetic clip with a scene cut.

    python -m benchmarks.ttft --frames 32 [--repeats 1] [--ratios 0.10 0.15 0.25] [--no-eager] [--model NAME]
    python -m benchmarks.ttft --model qwen2.5-vl-3b     # 224 x 224 px, 16 frames, r = 0.15 (CPU_SETTINGS)
        [--methods full earlytom fastvid holitom visionzip global_topk]

A model whose family has a default retain ratio (Qwen2.5-VL: 0.15, Table 7) runs at that ratio unless --ratios is
given; a Qwen2.5-VL model also prints the analytic prediction for Qwen2.5-VL-7B at 768 frames next to Table 7.

Prints the machine's GEMM figure first (common.gemm_gflops: a 2048^3 float32 torch matmul), then per row the
frames after each merge layer, the visual tokens, TTFT per stage group, the analytic FLOPs with the speedup they
predict, measured/predicted, and the fraction of the GEMM figure the row's FLOPs per second of TTFT reached (a
slower machine lowers the figure, a slower code path only the fraction). Each row's figure is its own, the mean of
one measured just before the row and one just after it (this machine's speed drifted by half within an hour).
Saves a stacked-bar PNG (stages grouped as the paper's Figure 3) and the table to benchmarks/out/.
"""

import argparse
import dataclasses
import gc
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib
import torch
from transformers.utils import logging as hf_logging

from benchmarks.common import OUT, gemm_fraction, gemm_gflops, print_table
from benchmarks.flops import method_vision_flops, prefill_flops, vision_flops
from earlytom.command_line import parse_resolution
from earlytom.compress import EarlyTomConfig, default_inner_layer
from earlytom.engine.layout import vision_chain
from earlytom.engine.manifest import read_manifest
from earlytom.engine_builder.build import build
from earlytom.engine_builder.tensorrt import EXPECTED_KEEP
from earlytom.models.backbone import VisionDims
from earlytom.models.registry import family_of, packaged_config, packaged_dims
from earlytom.runtime.backends.base import METHODS, UnsupportedOption
from earlytom.runtime.methods import BASELINES
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.synthetic import moving_square_frames, write_clip

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PROMPT = "Describe what happens in this video."
# model_type -> (frame size, frames) a 2-core CPU runs in minutes per row, where the model's own would take hours.
# Qwen2.5-VL: 224 x 224 px is the smallest engine size with full windows (2 x 2 windows of 112 px; 256 patches,
# T = 64 tokens per slice) and 16 frames are 8 slices: 2,048 ViT patches and 512 visual tokens uncompressed, so a
# 3B decoder's prefill stays in seconds. Other models: their own size and 32 frames.
CPU_SETTINGS = {"qwen2_5_vl": ((224, 224), 16)}
DEFAULT_FRAMES, DEFAULT_RATIOS = 32, [0.10, 0.15, 0.25]
# Table 7 (Qwen2.5-VL-7B, up to 768 frames, r = 0.15, a 23k-token context, one A100): EarlyTom's TTFT and FLOPs.
TABLE7 = {"model": "qwen2.5-vl-7b", "frames": 768, "ratio": 0.15, "ttft_ms": 3667.0, "flops_percent": 12.2}
# 168 x 280 px: 12 x 20 patches, T = 60 per slice; 384 slices x 60 = 23,040 visual tokens, Table 7's 23k context.
TABLE7_FRAME = (168, 280)
# The paper's Table 1 (A100, LLaVA-OV-7B, 32 frames, r = 0.10): TTFT ms per method.
TABLE1 = {"model": "llava-ov-7b", "frames": 32, "ratio": 0.10}
TABLE1_MS = {"full": 889.9, "official": 336.2, "visionzip": 458.5, "fastvid": 502.1, "holitom": 556.6}
GROUPS = {  # the paper's Figure 3 components
    "vision encoding": ("vision_",),
    "visual token processing": ("frame_merge", "token_select"),
    "LLM prefill": ("prefill", "first_token"),
    "system overhead": ("video_decode", "preprocess", "to_device"),
}


def group_ms(ms: dict[str, float]) -> dict[str, float]:
    return {g: sum(v for k, v in ms.items() if k.startswith(prefixes)) for g, prefixes in GROUPS.items()}


def measure(pipe: Pipeline, clip: Path, repeats: int):
    """Median per-stage ms over `repeats` requests, the counts, and the prefill sequence length."""
    runs = [pipe.generate(clip, PROMPT, max_new_tokens=1) for _ in range(repeats)]
    stages = {stage: statistics.median(r.timings_ms.get(stage, 0.0) for r in runs) for stage in runs[0].timings_ms}
    before, after = pipe.prompt_ids(PROMPT)
    return stages, runs[0].counts, len(before) + len(after) + runs[0].visual.embeds.shape[0]


def flops(
    model_config, config: EarlyTomConfig, method: str, counts: dict[str, int], sequence: int, dims: VisionDims
) -> int:
    """Vision (every stretch over the encoder units it saw) + prefill FLOPs of one request."""
    if method in BASELINES:
        vision = method_vision_flops(model_config, counts["frames_in"], head=method == "fastvid")
        if "visual_embeds_before_inner" not in counts:
            return vision + prefill_flops(model_config, sequence)
        kept = sequence - counts["visual_embeds_before_inner"] + counts["visual_embeds_after_inner"]
        layer = default_inner_layer(model_config.text_config.num_hidden_layers)  # HoliTom's in-LLM merge
        return vision + prefill_flops(model_config, sequence, inner_layer=layer, kept=kept)
    chain = vision_chain(config.variant, config.merge_layers, dims.encoder_layers)
    B = dims.units(counts["frames_in"])
    seen = [B] + [counts.get(f"frames_after_layer_{g.stop - 1}", B) for g in chain[:-1]]
    stretches = [(g.name, frames, g.stop - g.start) for g, frames in zip(chain, seen, strict=True)]
    score = seen[-2:-1] if config.variant == "official" else seen[-1:]  # official: the last merge layer's only
    vision = sum(vision_flops(model_config, stretches, score_frames=score, dims=dims).values())
    inner = counts.get("visual_embeds_before_inner")
    if inner is None or method != "earlytom":
        return vision + prefill_flops(model_config, sequence)
    kept = sequence - inner + counts["visual_embeds_after_inner"]
    return vision + prefill_flops(model_config, sequence, inner_layer=config.inner_layer, kept=kept)


def settings(ratios: list[float], engines: dict[str, Path], methods: list[str]) -> list[tuple[str, str, dict]]:
    """(label, engine, with_options changes) of `methods`: full tokens, then per ratio official and paper (earlytom),
    global top-K and the compared methods (on an engine built with their outputs), and the official variant without
    the decoder's inner merge at the middle ratio."""
    middle = ratios[len(ratios) // 2]
    rows = [("full", "official", {"method": "full"})]
    for r in ratios:
        rows += [
            (f"official r={r:.2f}", "official", {"method": "earlytom", "retain_ratio": r}),
            (f"paper r={r:.2f}", "paper", {"method": "earlytom", "retain_ratio": r}),
            (f"global top-K r={r:.2f}", "paper", {"method": "global_topk", "retain_ratio": r}),
            *((f"{m} r={r:.2f}", "methods", {"method": m, "retain_ratio": r}) for m in BASELINES),
        ]
    rows.append(
        (f"official no-inner r={middle:.2f}", "official", {"method": "earlytom", "retain_ratio": middle, "inner": 0.0})
    )
    return [row for row in rows if row[1] in engines and row[2]["method"] in methods]


def apply(pipe: Pipeline, changes: dict) -> Pipeline:
    changes = dict(changes)
    inner = changes.pop("inner", None)
    pipe = pipe.with_options(**changes)
    if inner is None:
        return pipe
    return pipe.with_options(config=dataclasses.replace(pipe.config, inner_ratio=inner, inner_layer=None))


def plot(rows: list[dict], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(1.0 * len(rows) + 3, 5))
    labels = [f"{r['label']}\n{r['backend']}" for r in rows]
    bottom = [0.0] * len(rows)
    for group in GROUPS:
        seconds = [group_ms(r["ms"])[group] / 1e3 for r in rows]
        ax.bar(labels, seconds, bottom=bottom, label=group)
        bottom = [b + s for b, s in zip(bottom, seconds, strict=True)]
    ax.set_ylabel("time to first token (s)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    plt.xticks(fontsize=6, rotation=60, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table1_prediction(rows: list[dict], frames: int, measured: VisionDims) -> None:
    """Print each ONNX Runtime row's request (its frames after each merge layer, tokens and sequence) as analytic
    FLOPs on LLaVA-OV-7B, whose vision tower is the 0.5B's (SigLIP so400m) and whose decoder is Qwen2-7B, with the
    TTFT it predicts relative to EarlyTom (official) at r = 0.10, next to the paper's Table 1 ratios (A100). Only for
    a run on that vision tower (`measured`: the run's dims), whose merges and selection the 7B's would repeat."""
    model = TABLE1["model"]
    config, dims = packaged_config(model), packaged_dims(model)
    if dataclasses.replace(measured, llm_hidden=dims.llm_hidden) != dims:
        return
    layers = config.get_text_config().num_hidden_layers
    predicted = {}
    for r in rows:
        if r["backend"] == "onnxruntime":
            resolved = dataclasses.replace(r["config"], inner_layer=None).for_model(dims.encoder_layers, layers)
            predicted[r["label"]] = flops(config, resolved, r["method"], r["counts"], r["sequence"], dims)
    reference = predicted.get(f"official r={TABLE1['ratio']:.2f}")
    if reference is None:
        return
    print(
        f"\nAnalytic prediction, {model} at the same requests (B = {frames}); TTFT taken as proportional to FLOPs, "
        f"relative to official r={TABLE1['ratio']:.2f}; the paper's Table 1 (A100, {TABLE1['frames']} frames, "
        f"r = {TABLE1['ratio']}) beside it\n"
    )
    table = []
    for label, f in predicted.items():
        method = label.split(" ")[0]
        paper = TABLE1_MS.get(method) if label in ("full", f"{method} r={TABLE1['ratio']:.2f}") else None
        ratio = "-" if paper is None or frames != TABLE1["frames"] else f"{paper / TABLE1_MS['official']:.2f}x"
        table.append([label, f / 1e12, f"{predicted['full'] / f:.2f}x", f"{f / reference:.2f}x", ratio])
    print_table(["setting", "TFLOP (7B)", "speedup vs full", "TTFT vs official r=0.10", "paper (Table 1)"], table)


def table7_prediction(text_tokens: int) -> None:
    """Print the analytic FLOPs of Qwen2.5-VL-7B at Table 7's setting (768 frames, r = 0.15, official variant with its
    default merge layers and inner merge) next to Table 7's TTFT and FLOPs share: frames after each merge layer are
    data-dependent, so two cases: none merged (the upper bound of EarlyTom's FLOPs) and EXPECTED_KEEP kept per layer."""
    model = TABLE7["model"]
    model_config, family = packaged_config(model), family_of(packaged_config(model).model_type)
    dims = family.dims(model_config, family.processor(model_config, None).resized(TABLE7_FRAME, for_engine=False))
    text = model_config.get_text_config()
    config = EarlyTomConfig(retain_ratio=TABLE7["ratio"]).for_model(
        dims.encoder_layers,
        text.num_hidden_layers,
        default_layers=family.default_merge_layers("official", model_config),
    )
    B = dims.units(TABLE7["frames"])
    visual = B * dims.tokens_per_frame
    kept = round(TABLE7["ratio"] * visual)
    full = flops(model_config, config, "full", {"frames_in": TABLE7["frames"]}, text_tokens + visual + 1, dims)
    print(
        f"\nAnalytic prediction, {model} at {TABLE7['frames']} frames ({B} slices of {dims.frame_size[0]} x "
        f"{dims.frame_size[1]} px, {visual} visual tokens uncompressed), r = {TABLE7['ratio']}, merge layers "
        f"{config.merge_layers}, inner merge at layer {config.inner_layer} (ratio {config.inner_ratio}); full tokens: "
        f"{full / 1e12:.1f} TFLOP"
    )
    for case, keep in (
        ("no frame merged (upper bound)", 1.0),
        (f"{EXPECTED_KEEP:.0%} of frames kept per merge", EXPECTED_KEEP),
    ):
        units = [max(1, round(B * keep**i)) for i in range(1, len(config.merge_layers) + 1)]
        counts = {"frames_in": TABLE7["frames"], "visual_embeds_before_inner": kept}
        counts |= {f"frames_after_layer_{layer}": n for layer, n in zip(config.merge_layers, units, strict=True)}
        counts["visual_embeds_after_inner"] = kept - round(config.inner_ratio * kept)
        ours = flops(model_config, config, "earlytom", counts, text_tokens + kept + 1, dims)
        print(
            f"  EarlyTom, {case}: {ours / 1e12:.1f} TFLOP = {ours / full:.1%} of full tokens (Table 7: "
            f"{TABLE7['flops_percent']}%); at Table 7's TTFT of {TABLE7['ttft_ms']:,.0f} ms on an A100 that is "
            f"{ours / 1e12 / (TABLE7['ttft_ms'] / 1e3):.0f} TFLOP/s"
        )


def backend_rows(
    backend: str, args: argparse.Namespace, engines: dict[str, Path], dims: VisionDims, clip: Path, warmup: Path
) -> list[dict]:
    """The rows of `backend` (onnxruntime: every setting; eager: full and the middle ratio's official and paper), one
    engine's pipeline in memory at a time (32 frames need ~10 GB each)."""
    hf_logging.disable_progress_bar()
    model_config = packaged_config(args.model)

    loaded = None
    if backend == "eager":  # one model for every engine's config (a second 3B model in fp32 did not fit beside it)
        pretrained = Pipeline.from_pretrained(args.model, random_init=True)  # the engines' seed, so their weights
        loaded = pretrained.backend.loaded.at_resolution(dims.frame_size, for_engine=False)
        del pretrained

    def make(variant: str) -> Pipeline:
        if backend == "onnxruntime":
            return Pipeline.from_engine_dir(engines[variant])
        return Pipeline.from_model(loaded, num_frames=args.frames, config=read_manifest(engines[variant]).config)

    middle = f"r={args.ratios[len(args.ratios) // 2]:.2f}"
    rows = []
    for variant in engines:
        base = make(variant)
        base.with_options(method="full").generate(warmup, PROMPT, max_new_tokens=1)  # sessions, allocator
        for label, engine, changes in settings(args.ratios, engines, ["full", *args.methods]):
            if engine != variant or (backend == "eager" and not (label == "full" or label.endswith(middle))):
                continue
            if backend == "eager" and label.startswith(("global", "official no-inner")):
                continue
            try:
                pipe = apply(base, changes)
            except UnsupportedOption as error:  # FastVID without the pooling head
                print(f"  {backend:12s} {label:26s} skipped: {error}", flush=True)
                continue
            before = gemm_gflops()
            ms, counts, sequence = measure(pipe, clip, args.repeats)
            gemm = (before + gemm_gflops()) / 2  # the machine's speed drifts over an hour: each row's own figure
            f = flops(model_config, pipe.config, pipe.options.method, counts, sequence, dims)
            rows.append(
                {
                    "label": label,
                    "backend": backend,
                    "ms": ms,
                    "counts": counts,
                    "flops": f,
                    "config": pipe.config,
                    "method": pipe.options.method,
                    "sequence": sequence,
                    "gemm": gemm,
                }
            )
            print(f"  {backend:12s} {label:26s} ttft {ms['ttft'] / 1e3:7.2f} s  GEMM {gemm:.1f}  {counts}", flush=True)
        del base, pipe
        gc.collect()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llava-ov-0.5b")
    parser.add_argument("--frames", type=int, default=None, help="default: CPU_SETTINGS, else 32")
    parser.add_argument("--resolution", type=parse_resolution, default=None, help="HxW; default: CPU_SETTINGS")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--ratios", type=float, nargs="+", default=None, help="default: the family's r, else 3")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager backend (slowest)")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=["full", "earlytom", "global_topk"],
        help="the methods' rows (full always runs, as the reference); fastvid, holitom, visionzip: the compared "
        "methods with their released parameters (a model without SigLIP's pooling head has no FastVID row)",
    )
    args = parser.parse_args()
    model_config = packaged_config(args.model)
    family = family_of(model_config.model_type)
    resolution, frames = CPU_SETTINGS.get(model_config.model_type, (None, DEFAULT_FRAMES))
    args.frames = frames if args.frames is None else args.frames
    args.resolution = resolution if args.resolution is None else args.resolution
    if args.ratios is None:
        default = family.default_params.get("retain_ratio")
        args.ratios = DEFAULT_RATIOS if default is None else [default]
    hf_logging.disable_progress_bar()
    gemm = gemm_gflops()
    print(
        f"GEMM figure: {gemm:.1f} GFLOP/s (2048^3 float32 torch matmul, best of 3, {torch.get_num_threads()} torch "
        f"threads; the ONNX Runtime sessions use {os.cpu_count()}), load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    OUT.mkdir(exist_ok=True)
    clip = write_clip(OUT / "bench_clip.mp4", moving_square_frames(4 * args.frames, size=192, cut_at=2 * args.frames))
    warmup = write_clip(OUT / "warmup_clip.mp4", moving_square_frames(2, size=192))  # 2 frames: cheap
    engines = {}
    kinds = {"official": ("official", False), "paper": ("paper", False)}  # engine -> (variant, compared methods)
    if set(args.methods) & set(BASELINES):  # their outputs cost the other rows an attention pass: an engine apart
        kinds["methods"] = ("paper", True)
    for kind, (variant, compared) in kinds.items():
        size = "" if args.resolution is None else f"-{args.resolution[0]}x{args.resolution[1]}"
        engines[kind] = OUT / f"engine-{args.model}-{kind}-{args.frames}f{size}"
        if not engines[kind].exists():
            print(f"building {engines[kind]} (export + verification) ...", flush=True)
            build(
                args.model,
                engines[kind],
                frames=args.frames,
                random_init=True,
                config={"variant": variant},
                resolution=args.resolution,
                compared_methods=compared,
            )
    dims = read_manifest(engines["official"]).vision
    rows = []
    for backend in ["onnxruntime", *([] if args.no_eager else ["eager"])]:
        # each backend in a process of its own: what one leaves in the allocator is not the next one's (a 3B eager
        # model in fp32 did not fit beside what the ONNX Runtime rows had left)
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
            rows += child.submit(backend_rows, backend, args, engines, dims, clip, warmup).result()

    full = {r["backend"]: r for r in rows if r["label"] == "full"}
    table = []
    for r in rows:
        ref = full[r["backend"]]
        predicted, measured = ref["flops"] / r["flops"], ref["ms"]["ttft"] / r["ms"]["ttft"]
        after = [str(v) for k, v in r["counts"].items() if k.startswith("frames_after_layer_")] or ["-"]
        groups = group_ms(r["ms"])
        table.append(
            [
                r["label"],
                r["backend"],
                "/".join(after),
                r["counts"]["visual_tokens"],
                r["counts"].get("visual_embeds_after_inner", "-"),
                *(groups[g] / 1e3 for g in GROUPS),
                r["ms"]["ttft"] / 1e3,
                r["flops"] / 1e12,
                f"{predicted:.2f}x",
                f"{measured:.2f}x",
                f"{measured / predicted:.0%}",
                r["gemm"],
                f"{gemm_fraction(r['flops'], r['ms']['ttft'] / 1e3, r['gemm']):.0%}",
            ]
        )
    load = os.getloadavg()[0]
    title = (
        f"{args.model} (random weights), B = {args.frames} frames, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, GEMM {gemm:.1f} GFLOP/s at the start, median of {args.repeats}, load "
        f"average {load:.1f}"
    )
    print(f"\n{title}\n")
    print_table(
        [
            "setting",
            "backend",
            "frames after merges",
            "K",
            "K inner",
            "vision s",
            "tokproc s",
            "prefill s",
            "overhead s",
            "TTFT s",
            "TFLOP",
            "pred.",
            "meas.",
            "meas/pred",
            "GEMM GF/s",
            "of GEMM",
        ],
        table,
    )
    path = OUT / f"ttft_{args.model}_{args.frames}f.png"
    plot(rows, path, title)
    print(f"\nplot: {path}")
    if model_config.model_type == packaged_config(TABLE1["model"]).model_type:
        table1_prediction(rows, args.frames, dims)
    if model_config.model_type == packaged_config(TABLE7["model"]).model_type:
        before, after = Pipeline.from_engine_dir(engines["official"]).prompt_ids(PROMPT)
        table7_prediction(len(before) + len(after))


if __name__ == "__main__":
    main()
