"""What a user with an NVIDIA GPU runs first: build the tiny model's TensorRT engines, compare every stage with
the eager backend, then measure time to first token on a real-size architecture.

    python -m benchmarks.gpu_validate [--model llava-ov-0.5b] [--frames 32] [--repeats 20]

Without TensorRT, TensorRT-LLM or a GPU it says what is missing and exits with status 2.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import print_table, summary
from earlytom.engine_builder.build import build, missing_gpu_stack
from earlytom.models.registry import load_model
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.synthetic import moving_square_frames, write_clip

PROMPT = "Describe what happens in this video."


def compare_stages(work: Path, clip: Path) -> list[list]:
    """TensorRT engines vs the eager model on CUDA (Triton kernels) vs the eager reference on CPU."""
    build("tiny", work / "tiny-trt", backend="tensorrt", frames=16, progress=False)
    trt = Pipeline.from_engine_dir(work / "tiny-trt", num_frames=16).generate(clip, PROMPT, max_new_tokens=8)
    tiny = load_model("tiny")
    reference = Pipeline.from_model(tiny, num_frames=16, merge_layer=1, kernels="reference")
    ref = reference.generate(clip, PROMPT, max_new_tokens=8)
    tiny.model.cuda()
    triton = Pipeline.from_model(tiny, num_frames=16, merge_layer=1, kernels="triton").generate(clip, PROMPT, 8)
    rows = []
    for name, result in (("tensorrt", trt), ("eager cuda + triton", triton)):
        err = float(
            (result.visual.embeds.float().cpu() - ref.visual.embeds).abs().max() / ref.visual.embeds.abs().max()
        )
        rows.append(
            [
                name,
                result.counts == ref.counts,
                torch.equal(result.visual.source.cpu(), ref.visual.source),
                torch.equal(result.visual.frame.cpu(), ref.visual.frame),
                f"{err:.1e}",
                result.token_ids == ref.token_ids,
            ]
        )
    return rows


def time_ttft(pipe: Pipeline, clip: Path, repeats: int) -> dict[str, float]:
    pipe.generate(clip, PROMPT, max_new_tokens=1)  # warm up
    return summary([pipe.generate(clip, PROMPT, max_new_tokens=1).timings_ms["ttft"] for _ in range(repeats)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llava-ov-0.5b")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    missing = missing_gpu_stack()
    if missing:
        print(f"gpu_validate needs {', '.join(missing)}; nothing was run.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = write_clip(work / "clip.mp4", moving_square_frames(4 * args.frames, size=192, cut_at=2 * args.frames))
        print("stage comparison, tiny model (reference: eager PyTorch on CPU)\n")
        print_table(
            ["backend", "counts", "merge sources", "selected", "max rel err", "greedy tokens"],
            compare_stages(work, clip),
        )
        build(args.model, work / "real", backend="tensorrt", frames=args.frames, random_init=True, progress=False)
        loaded = load_model(args.model, random_init=True, dtype=torch.float16)
        loaded.model.cuda()
        runs = {
            "full tokens, eager fp16": Pipeline.from_model(loaded, num_frames=args.frames, method="full"),
            "EarlyTom, eager fp16 + Triton": Pipeline.from_model(loaded, num_frames=args.frames),
            "EarlyTom, TensorRT": Pipeline.from_engine_dir(work / "real"),
        }
        rows = [[name, *time_ttft(pipe, clip, args.repeats).values()] for name, pipe in runs.items()]
    print(
        f"\nTTFT (ms) over {args.repeats} requests, {args.model} (random weights), {args.frames} frames, "
        f"{torch.cuda.get_device_name()}\n"
    )
    print_table(["method", "min", "mean", "median", "p90", "p99", "max"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
