"""`earlytom` command line.

earlytom run --model llava-ov-0.5b --video clip.mp4 --prompt "What happens?" [--json]
earlytom demo        # the tiny model on a synthetic clip, end to end, on CPU
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from transformers.utils import logging as hf_logging

from earlytom.compress import EarlyTomConfig
from earlytom.models.registry import known_names
from earlytom.runtime.pipeline import Pipeline, Result
from earlytom.runtime.synthetic import moving_square_frames, write_clip


def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    defaults = EarlyTomConfig()
    parser.add_argument(
        "--model", default=None, help=f"{', '.join(known_names())}, an HF id or a directory (default: tiny)"
    )
    parser.add_argument("--engine", type=Path, default=None, help="an engine directory written by build_engine")
    parser.add_argument("--frames", type=int, default=None, help="frames sampled from the video, B (default 32)")
    parser.add_argument(
        "--retain-ratio", type=float, default=None, help=f"r in (0, 1] (default {defaults.retain_ratio})"
    )
    parser.add_argument("--merge-layer", type=int, default=None, help="k in [1, n-1] (default n // 4)")
    parser.add_argument("--method", choices=["earlytom", "full", "global_topk"], default="earlytom")
    parser.add_argument("--no-compress", action="store_true", help="same as --method full")
    parser.add_argument(
        "--kernels",
        choices=["auto", "triton", "reference"],
        default="auto",
        help="FrameMerge/TokenSelect implementation: Triton kernels on CUDA, the PyTorch reference otherwise",
    )
    parser.add_argument("--random-init", action="store_true", help="random weights (latency work only)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def build_pipeline(args: argparse.Namespace) -> Pipeline:
    """The eager pipeline for --model, or the engine directory's backend for --engine (then --model, if
    given, must be the model the directory was built for)."""
    method = "full" if args.no_compress else args.method
    if args.engine:
        if args.merge_layer is not None or args.random_init:
            raise ValueError(
                "--merge-layer and --random-init are fixed when the engine is built; pass them to build_engine"
            )
        return Pipeline.from_engine_dir(
            args.engine, model=args.model, retain_ratio=args.retain_ratio, num_frames=args.frames, method=method
        )
    return Pipeline.from_pretrained(
        args.model or "tiny",
        random_init=args.random_init,
        merge_layer=args.merge_layer,
        config=EarlyTomConfig(retain_ratio=args.retain_ratio or EarlyTomConfig().retain_ratio),
        num_frames=args.frames or 32,
        method=method,
        kernels=args.kernels,
    )


def report(result: Result, as_json: bool) -> None:
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if as_json:
        print(json.dumps(result.to_json()))
        return
    print(f"answer: {result.text!r}\n")
    width = max(map(len, [*result.timings_ms, *result.counts]))
    for stage, ms in result.timings_ms.items():
        print(f"{stage:>{width}}  {ms:10.1f} ms")
    print()
    for name, value in result.counts.items():
        print(f"{name:>{width}}  {value:10d}")


def run(args: argparse.Namespace) -> int:
    report(build_pipeline(args).generate(args.video, args.prompt, args.max_new_tokens), args.json)
    return 0


def demo(args: argparse.Namespace) -> int:
    """The whole eager pipeline on a synthetic clip with a scene cut: full tokens, then EarlyTom."""
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "demo.mp4", moving_square_frames(48, cut_at=24))
        for method in ("full", "earlytom"):
            args.method = method
            where = f"engine {args.engine}" if args.engine else f"model {args.model or 'tiny'} (eager)"
            print(f"== {where}, {method}, {clip.name} ==", file=sys.stderr)
            report(build_pipeline(args).generate(clip, args.prompt, args.max_new_tokens), args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="earlytom", description="EarlyTom Video-LLM runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="answer a prompt about a video")
    add_pipeline_args(p)
    p.add_argument("--video", required=True, help="a video file, a directory of images")
    p.add_argument("--prompt", required=True)
    p.set_defaults(func=run)
    p = sub.add_parser("demo", help="run the tiny model end to end on a synthetic clip")
    add_pipeline_args(p)
    p.add_argument("--prompt", default="What moves in this video?")
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    try:
        return args.func(args)
    except ValueError as error:  # every user error is a ValueError with a message that names the fix
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
