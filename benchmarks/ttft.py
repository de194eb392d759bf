"""Time-to-first-token breakdown on this CPU: full tokens, EarlyTom and post-encoder global top-K at the same
retain ratios, on the eager and ONNX Runtime backends. LLaVA-OneVision-0.5B architecture, random weights
(honest for latency, never for accuracy), one synthetic clip with a scene cut.

    python -m benchmarks.ttft --frames 16 [--repeats 1] [--ratios 0.10 0.15 0.25] [--no-eager]

Prints the table, the analytic FLOPs with the speedup they predict, and the goals; saves a stacked-bar PNG
(stages grouped as the paper's Figure 3) to benchmarks/out/.
"""

import argparse
import gc
import statistics
from pathlib import Path

import matplotlib
import torch
from earlytom.engine_builder.manifest import read_manifest
from transformers.utils import logging as hf_logging

from benchmarks.common import OUT, print_table
from benchmarks.flops import prefill_flops, vision_flops
from earlytom.engine_builder.build import build
from earlytom.models.registry import packaged_config
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.synthetic import moving_square_frames, write_clip

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODEL = "llava-ov-0.5b"
PROMPT = "Describe what happens in this video."
GROUPS = {  # the paper's Figure 3 components
    "vision encoding": ("vision_head", "vision_tail"),
    "visual token processing": ("frame_merge", "token_select"),
    "LLM prefill": ("prefill", "first_token"),
    "system overhead": ("video_decode", "preprocess"),
}


def measure(pipe: Pipeline, clip: Path, repeats: int) -> tuple[dict[str, float], dict[str, int], int]:
    """Median per-stage ms over `repeats` requests, the counts, and the prefill sequence length."""
    runs = [pipe.generate(clip, PROMPT, max_new_tokens=1) for _ in range(repeats)]
    stages = {stage: statistics.median(r.timings_ms.get(stage, 0.0) for r in runs) for stage in runs[0].timings_ms}
    before, after = pipe.prompt_ids(PROMPT)
    sequence = len(before) + len(after) + runs[0].visual.embeds.shape[0]
    return stages, runs[0].counts, sequence


def stage_flops(config, counts: dict[str, int], sequence: int, merge_layer: int, layers: int) -> dict[str, int]:
    flops = vision_flops(
        config,
        frames_in=counts["frames_in"],
        frames_after_merge=counts["frames_after_merge"],
        merge_layer=merge_layer,
        layers=layers,
    )
    return flops | {"prefill": prefill_flops(config, sequence)}


def plot(rows: list[dict], path: Path, frames: int) -> None:
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 3, 5))
    labels = [f"{r['method']}\n{r['backend']}" for r in rows]
    bottom = [0.0] * len(rows)
    for group, stages in GROUPS.items():
        seconds = [sum(r["ms"].get(s, 0.0) for s in stages) / 1e3 for r in rows]
        ax.bar(labels, seconds, bottom=bottom, label=group)
        bottom = [b + s for b, s in zip(bottom, seconds, strict=True)]
    ax.set_ylabel("time to first token (s)")
    ax.set_title(f"LLaVA-OV-0.5B (random weights), {frames} frames, CPU ({torch.get_num_threads()} threads)")
    ax.legend()
    plt.xticks(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.10, 0.15, 0.25])
    parser.add_argument("--no-eager", action="store_true", help="skip the eager backend (slowest)")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    OUT.mkdir(exist_ok=True)
    clip = write_clip(OUT / "bench_clip.mp4", moving_square_frames(4 * args.frames, size=192, cut_at=2 * args.frames))
    warmup = write_clip(OUT / "warmup_clip.mp4", moving_square_frames(2, size=192))  # 2 frames: cheap
    engine = OUT / f"engine-{MODEL}-{args.frames}f"
    if not engine.exists():
        print(f"building {engine} (export + verification) ...")
        build(MODEL, engine, frames=args.frames, random_init=True)
    merge_layer = read_manifest(engine)["earlytom"]["merge_layer"]
    config = packaged_config(MODEL)
    layers = config.vision_config.num_hidden_layers
    backends = {"onnxruntime": lambda: Pipeline.from_engine_dir(engine)}
    if not args.no_eager:  # the same seed, so the same weights as the engine directory
        backends["eager"] = lambda: Pipeline.from_pretrained(
            MODEL, random_init=True, num_frames=args.frames, merge_layer=merge_layer
        )

    plan = [("full", None)] + [(m, r) for r in args.ratios for m in ("earlytom", "global_topk")]
    rows = []
    for backend, make in backends.items():  # one backend in memory at a time (32 frames need ~10 GB each)
        base = make()
        base.with_options(method="full").generate(warmup, PROMPT, max_new_tokens=1)  # sessions, allocator
        for method, ratio in plan:
            if backend == "eager" and method == "global_topk":
                continue  # its vision stage is the full encoder, measured already
            if backend == "eager" and method == "earlytom" and ratio != args.ratios[len(args.ratios) // 2]:
                continue
            pipe = base.with_options(method=method, retain_ratio=ratio)
            ms, counts, sequence = measure(pipe, clip, args.repeats)
            flops = stage_flops(config, counts, sequence, merge_layer, layers)
            name = method if ratio is None else f"{method} r={ratio:.2f}"
            rows.append({"method": name, "backend": backend, "ms": ms, "counts": counts, "flops": flops})
            print(f"  {backend:12s} {name:22s} ttft {ms['ttft'] / 1e3:7.2f} s", flush=True)
        del base, pipe
        gc.collect()

    full = {r["backend"]: r for r in rows if r["method"] == "full"}
    table = []
    for r in rows:
        ref = full[r["backend"]]
        predicted = sum(ref["flops"].values()) / sum(r["flops"].values())
        measured = ref["ms"]["ttft"] / r["ms"]["ttft"]
        group = {g: sum(r["ms"].get(s, 0.0) for s in stages) for g, stages in GROUPS.items()}
        table.append(
            [
                r["method"],
                r["backend"],
                r["counts"]["frames_after_merge"],
                r["counts"]["visual_tokens"],
                *(group[g] / 1e3 for g in GROUPS),
                r["ms"]["ttft"] / 1e3,
                sum(r["flops"].values()) / 1e12,
                f"{predicted:.2f}x",
                f"{measured:.2f}x",
                f"{measured / predicted:.0%}",
            ]
        )
    print(
        f"\n{MODEL} (random weights), B = {args.frames} frames, merge layer {merge_layer} of {layers}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}\n"
    )
    print_table(
        [
            "method",
            "backend",
            "N",
            "K",
            "vision s",
            "tokproc s",
            "prefill s",
            "overhead s",
            "TTFT s",
            "TFLOP",
            "pred.",
            "meas.",
            "meas/pred",
        ],
        table,
    )

    print("\ngoals:")
    for r in rows:
        if not r["method"].startswith("earlytom"):
            continue
        ref = full[r["backend"]]
        predicted = sum(ref["flops"].values()) / sum(r["flops"].values())
        measured = ref["ms"]["ttft"] / r["ms"]["ttft"]
        ratio = r["method"].split("=")[1]
        topk = next((t for t in rows if t["backend"] == r["backend"] and t["method"] == f"global_topk r={ratio}"), None)
        overhead = (r["ms"].get("frame_merge", 0) + r["ms"].get("token_select", 0)) / r["ms"]["ttft"]
        beats = "n/a" if topk is None else ("yes" if r["ms"]["ttft"] < topk["ms"]["ttft"] else "NO")
        print(
            f"  {r['backend']:12s} {r['method']:18s} measured/predicted {measured / predicted:5.0%} (goal >= 90%), "
            f"beats global top-K: {beats}, merge+select {overhead:.2%} of TTFT (goal < 1%)"
        )
    if "eager" in full:
        vision = lambda r: r["ms"]["vision_head"] + r["ms"]["vision_tail"]  # noqa: E731
        print(
            f"  vision path, full tokens: ONNX Runtime {vision(full['onnxruntime']) / 1e3:.1f} s vs eager "
            f"{vision(full['eager']) / 1e3:.1f} s: {vision(full['eager']) / vision(full['onnxruntime']):.2f}x faster"
        )
    path = OUT / f"ttft_{args.frames}f.png"
    plot(rows, path, args.frames)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
