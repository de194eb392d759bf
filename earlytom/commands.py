"""The `earlytom` subcommands (run, demo, plan, explain, serve, compare, verify): their parser and handlers.
earlytom.cli imports this module once its signal handling is in place."""

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from earlytom.command_line import add_config_args, add_debug_arg, add_stream_arg, config_fields, parse_resolution
from earlytom.compress import EarlyTomConfig
from earlytom.dtypes import DTYPES
from earlytom.engine.memory_plan import (
    GPUS_GIB,
    PRECISIONS,
    check_fits,
    model_sizes,
    parse_target,
    plan_memory,
)
from earlytom.engine.sessions import PROVIDERS, Providers
from earlytom.engine.signing import public_key, verify_dir
from earlytom.eval.cli import add_parser as add_compare_parser
from earlytom.explain import check_output, explain_video, write_report
from earlytom.models.registry import architecture_of, known_names
from earlytom.runtime.backends.base import KERNELS, METHODS
from earlytom.runtime.pipeline import Pipeline, Result
from earlytom.runtime.stream import SourceEnded, live_frames
from earlytom.runtime.synthetic import moving_square_frames, write_clip
from earlytom.serve.cli import add_parser as add_serve_parser
from earlytom.video import SAMPLINGS, VideoFile
from earlytom.video.sampling import RATE_MAX_FRAMES, file_timing, rate_frame_count


def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help=f"{', '.join(known_names())}, an HF id or a directory (default: tiny)"
    )
    parser.add_argument("--engine", type=Path, default=None, help="an engine directory written by build_engine")
    parser.add_argument(
        "--frames", type=int, default=None, help="frames sampled from the video, B (default 32; an engine: its maximum)"
    )
    add_config_args(parser)
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="default earlytom; fastvid, holitom, visionzip: the compared methods with their released parameters",
    )
    parser.add_argument("--no-compress", action="store_true", help="same as --method full")
    parser.add_argument(
        "--kernels",
        choices=KERNELS,
        default=None,
        help="FrameMerge/TokenSelect implementation (default auto: Triton kernels on CUDA, the PyTorch reference "
        "otherwise; aot: the kernels of --aot-kernels, the default with it)",
    )
    parser.add_argument(
        "--aot-kernels",
        type=Path,
        default=None,
        help="eager model on cuda: AOT-compiled kernels for this GPU (an engine directory's plugins/<arch>/, or "
        "python -m earlytom.plugins.aot --out DIR); needs cuda-python, compiles nothing at run time",
    )
    parser.add_argument(
        "--sampling",
        choices=SAMPLINGS,
        default=None,
        help="uniform (default: exactly the linspace frames) or keyframe (the nearest keyframes: no inter-frame "
        "decoding, much faster on long videos)",
    )
    parser.add_argument("--random-init", action="store_true", help="random weights (latency work only)")
    parser.add_argument(
        "--device", default=None, help="eager model: cpu (default), cuda or cuda:N; model and every tensor live there"
    )
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="eager model: its precision (default fp32)")
    parser.add_argument(
        "--resolution",
        type=parse_resolution,
        default=None,
        help="eager model: HEIGHTxWIDTH in px frames are resized to (default: the model's own; a model with dynamic "
        "sizes takes what its processor allows); an engine's is fixed by build_engine --resolution",
    )
    parser.add_argument(
        "--providers",
        choices=PROVIDERS,
        default=None,
        help="onnxruntime engine directory: ONNX Runtime execution providers (default cpu; cuda and tensorrt "
        "need onnxruntime-gpu)",
    )
    parser.add_argument(
        "--trt-cache",
        type=Path,
        default=None,
        help="--providers tensorrt: engine cache root, outside the engine directory (default ~/.cache/earlytom/trt-ep)",
    )
    parser.add_argument(
        "--require-signature",
        type=Path,
        default=None,
        metavar="PUB",
        help="--engine: refuse a directory not signed (build_engine --sign) by this ed25519 public key (PEM)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="at most this many new tokens (>= 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    add_debug_arg(parser)


def method_of(args: argparse.Namespace) -> str | None:
    if args.no_compress and args.method not in (None, "full"):
        raise ValueError(f"--no-compress contradicts --method {args.method}; give one of them")
    return "full" if args.no_compress else args.method


def build_pipeline(args: argparse.Namespace) -> Pipeline:
    """The eager pipeline for --model, or the engine directory's backend for --engine (then --model, if
    given, must be the model the directory was built for). Options left out keep their defaults (an engine:
    what it was built with)."""
    options = {"method": method_of(args), "num_frames": args.frames, "kernels": args.kernels, "sampling": args.sampling}
    if args.engine is None:
        options = {k: v for k, v in options.items() if v is not None}
        if args.providers is not None or args.trt_cache is not None or args.require_signature is not None:
            raise ValueError(
                "--providers, --trt-cache and --require-signature apply to an --engine directory; the eager model "
                "takes --device"
            )
        loading = {"device": args.device, "dtype": args.dtype, "aot_kernels": args.aot_kernels}
        given = options | {k: v for k, v in loading.items() if v is not None}
        name = "tiny" if args.model is None else args.model
        pipe = Pipeline.from_pretrained(name, random_init=args.random_init, config=config_fields(args), **given)
        if args.resolution is None:
            return pipe
        loaded = pipe.backend.loaded.at_resolution(args.resolution, for_engine=False)
        return Pipeline.from_model(loaded, aot=pipe.backend.aot, config=config_fields(args), **options)
    if args.random_init:
        raise ValueError("--random-init is fixed when the engine is built; pass it to build_engine")
    if args.resolution is not None:
        raise ValueError("--resolution is fixed when the engine is built; pass it to build_engine")
    if args.device is not None or args.dtype is not None:
        raise ValueError(
            "--device and --dtype apply to the eager model (--model); an engine directory's precision is fixed by "
            "build_engine --dtype, and --providers chooses where an onnxruntime directory runs"
        )
    if args.aot_kernels is not None:
        raise ValueError(
            "--aot-kernels applies to the eager model (--model); a tensorrt engine directory runs the plugin kernels "
            "stored in it"
        )
    providers = None
    if args.providers is not None or args.trt_cache is not None:
        providers = Providers("cpu" if args.providers is None else args.providers, trt_cache=args.trt_cache)
    pipe = Pipeline.from_engine_dir(
        args.engine, model=args.model, providers=providers, trusted_key=args.require_signature, **options
    )
    fields = config_fields(args)
    if fields.get("variant", pipe.config.variant) != pipe.config.variant:  # another variant: its own defaults
        return pipe.with_options(config=EarlyTomConfig(**fields))
    return pipe.with_options(config=dataclasses.replace(pipe.config, **fields)) if fields else pipe


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
    stages = sum(ms for stage, ms in result.timings_ms.items() if stage != "ttft")
    print(f"stages add up to {stages:.1f} ms; ttft is wall time (video decoding overlaps the vision encoder)")
    print()
    for name, value in result.counts.items():
        print(f"{name:>{width}}  {value:10d}")


def frames_by_rate(args: argparse.Namespace) -> int | None:
    """--fps/--max-frames: the frames Qwen2.5-VL's rule samples from the --video file; None without --fps."""
    if args.fps is None:
        if args.max_frames is not None:
            raise ValueError("--max-frames caps sampling by rate: give --fps with it (e.g. --fps 2 --max-frames 768)")
        return args.frames
    if args.frames is not None:
        raise ValueError(f"--frames {args.frames} and --fps {args.fps} contradict each other; give one of them")
    limit = RATE_MAX_FRAMES if args.max_frames is None else args.max_frames
    return rate_frame_count(*file_timing(VideoFile(args.video, args.stream)), fps=args.fps, max_frames=limit)


def run(args: argparse.Namespace) -> int:
    args.frames = frames_by_rate(args)
    video = args.video if args.stream is None else VideoFile(args.video, args.stream)
    report(build_pipeline(args).generate(video, args.prompt, args.max_new_tokens), args.json)
    return 0


def demo(args: argparse.Namespace) -> int:
    """The whole pipeline on a synthetic clip with a scene cut: full tokens, then EarlyTom (one load)."""
    pipe = build_pipeline(args)
    where = f"engine {args.engine}" if args.engine else f"model {args.model or 'tiny'} (eager)"
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_clip(Path(tmp) / "demo.mp4", moving_square_frames(48, cut_at=24))
        for method in ("full", "earlytom"):
            print(f"== {where}, {method} ({pipe.config.variant}), {clip.name} ==", file=sys.stderr)
            report(pipe.with_options(method=method).generate(clip, args.prompt, args.max_new_tokens), args.json)
    return 0


def add_plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="dry run: will the engine fit the GPU? (from the configs alone, no weights)")
    p.add_argument("--model", required=True, help=f"{', '.join(known_names())}, or a checkpoint directory")
    p.add_argument("--frames", type=int, required=True, help="B, the most frames the engine takes")
    p.add_argument("--target-gpu", required=True, help=f"{', '.join(GPUS_GIB)} or a memory size such as 16GiB")
    p.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="the longest context in tokens (default: every visual token of every frame + 512 prompt + 512 new)",
    )
    p.add_argument("--decoder-precision", choices=PRECISIONS, default="fp16", help="default fp16")
    p.add_argument("--random-init", action="store_true", help="as build_engine's: random weights take the same memory")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    add_debug_arg(p)
    p.set_defaults(func=plan)


def plan(args: argparse.Namespace) -> int:
    """Print the memory plan; a plan that does not fit is refused (exit 2) with the options that would."""
    parse_target(args.target_gpu)  # a bad target fails before the model is instantiated
    config, dims = architecture_of(args.model, download=False)
    memory = plan_memory(
        model_sizes(config, dims),
        dims.units(args.frames),
        args.target_gpu,
        max_context=args.max_context,
        decoder_precision=args.decoder_precision,
        model=args.model,
    )
    print(json.dumps(memory.to_dict()) if args.json else memory.table())
    check_fits(memory)
    return 0


def ratio_list(text: str) -> tuple[float, ...]:
    """ "0.1,0.2" -> (0.1, 0.2) (argparse type)."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a retain ratio or a comma-separated list of them, e.g. 0.1,0.2"
        ) from None


def add_explain_parser(sub) -> None:
    p = sub.add_parser(
        "explain",
        help="draw what EarlyTom kept of a video: merges per layer, dropped frames, scores and kept tokens",
        conflict_handler="resolve",  # --retain-ratio takes a list here
    )
    add_pipeline_args(p)
    p.add_argument("--retain-ratio", type=ratio_list, default=None, help="r, or several (0.1,0.2): side by side")
    p.add_argument("--video", required=True, help="a video file, a directory of images")
    p.add_argument("--out", required=True, type=Path, help="report.html (self-contained) or report.png")
    p.set_defaults(func=explain)


def explain_pipelines(args: argparse.Namespace) -> list[Pipeline]:
    """One pipeline per retain ratio (the options of `earlytom run --retain-ratio r`), over one loaded backend."""
    pipes = []
    for ratio in args.retain_ratio or (None,):
        one = argparse.Namespace(**{**vars(args), "retain_ratio": ratio})
        if not pipes:
            pipes.append(build_pipeline(one))
        else:
            pipes.append(pipes[0].with_options(config=dataclasses.replace(pipes[0].config, **config_fields(one))))
    return pipes


def explain(args: argparse.Namespace) -> int:
    check_output(args.out)
    video, explanations = explain_video(explain_pipelines(args), args.video)
    title = str(args.engine) if args.engine is not None else args.model or "tiny"
    write_report(args.out, video, explanations, title)
    counts = "; ".join(f"r {e.ratio:g}: {e.counts}" for e in explanations)
    print(f"wrote {args.out} ({counts})")
    return 0


def add_verify_parser(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check an engine directory: every file's hash, the manifest, and its ed25519 signature by --key",
    )
    p.add_argument("--engine", type=Path, required=True, help="an engine directory written by build_engine --sign")
    p.add_argument("--key", type=Path, required=True, help="the builder's ed25519 public key (PEM)")
    add_debug_arg(p)
    p.set_defaults(func=verify)


def verify(args: argparse.Namespace) -> int:
    """Exit 0 with one line if the directory is intact and signed by --key; an EngineDirError (exit 2) otherwise."""
    manifest = verify_dir(args.engine, public_key(args.key))
    print(f"{args.engine}: signed by {args.key}, {len(manifest.artifacts)} files verified")
    return 0


def add_watch_parser(sub) -> None:
    p = sub.add_parser(
        "watch", help="answer a prompt every few seconds about a live video: a file at its own rate, a pipe, a URL"
    )
    add_pipeline_args(p)
    p.add_argument(
        "--video",
        required=True,
        help="a video file (played at its own rate), - for a stream on stdin (e.g. ffmpeg ... -f mpegts -), or a URL "
        "PyAV opens (rtsp://, http://, ...)",
    )
    p.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video as they arrive (1)")
    p.add_argument("--every", type=float, default=10.0, help="answer every this many seconds of video (10)")
    p.add_argument("--prompt", required=True)
    p.add_argument(
        "--timeout", type=float, default=10.0, help="seconds without data before the source counts as stalled (10)"
    )
    add_stream_arg(p, "the first video stream: a live source's frames cannot be counted ahead")
    p.set_defaults(func=watch)


def print_answer(result: Result, seconds: float, latency_ms: float, as_json: bool) -> None:
    """One answer of `watch`: at `seconds` of video, `latency_ms` from the last frame's arrival to the first token."""
    if as_json:
        print(json.dumps({"seconds": round(seconds, 3), "latency_ms": round(latency_ms, 3), **result.to_json()}))
    else:
        frames = result.counts["frames_in"]
        print(f"[{seconds:8.1f} s] {frames} frames, first token {latency_ms:.0f} ms after the last: {result.text!r}")
    sys.stdout.flush()


def watch(args: argparse.Namespace) -> int:
    """Push the frames of --video as they arrive (--fps per second) into an open stream and answer --prompt every
    --every seconds of video, and once more when the source ends (then an error: a live source should not end)."""
    if not args.every > 0:
        raise ValueError(f"--every {args.every}: answer every so many seconds, a number > 0")
    pipe = build_pipeline(args)
    size = pipe.backend.text.processor.frame_size
    frames = live_frames(args.video, fps=args.fps, size=size, timeout=args.timeout, stream=args.stream)
    with contextlib.closing(frames), pipe.open_stream(fps=args.fps) as stream:
        for note in pipe.backend.text.notes:
            print(f"note: {note}", file=sys.stderr)
        count, seconds, answered, arrived = 0, 0.0, 0.0, 0.0
        for live in frames:
            arrived = time.perf_counter()
            stream.push(live.frame[None])
            count, seconds = count + 1, live.seconds
            if seconds - answered >= args.every:
                answer(stream, args, seconds, arrived)
                answered = seconds
        if count and answered != seconds:
            answer(stream, args, seconds, arrived)
    raise SourceEnded(f"{args.video} ended after {count} sampled frames ({seconds:.1f} s of video)")


def answer(stream, args: argparse.Namespace, seconds: float, arrived: float) -> None:
    """Ask the open stream; the latency counts from the arrival of the last frame (`arrived`, perf_counter)."""
    asked = time.perf_counter()
    result = stream.ask(args.prompt, args.max_new_tokens)
    print_answer(result, seconds, (asked - arrived) * 1e3 + result.timings_ms["ttft"], args.json)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="earlytom", description="EarlyTom Video-LLM runtime")
    sub = p.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="answer a prompt about a video")
    add_pipeline_args(run_parser)
    run_parser.add_argument("--video", required=True, help="a video file, a directory of images")
    run_parser.add_argument("--prompt", required=True)
    run_parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="instead of --frames: sample this many frames per second of the video file as Qwen2.5-VL does (2), an "
        "even count, at most --max-frames",
    )
    run_parser.add_argument("--max-frames", type=int, default=None, help="with --fps: at most this many frames (768)")
    add_stream_arg(run_parser, "the video stream with the most frames")
    run_parser.set_defaults(func=run)
    demo_parser = sub.add_parser("demo", help="run the tiny model end to end on a synthetic clip")
    add_pipeline_args(demo_parser)
    demo_parser.add_argument("--prompt", default="What moves in this video?")
    demo_parser.set_defaults(func=demo)
    add_serve_parser(sub)
    add_compare_parser(sub)
    add_plan_parser(sub)
    add_explain_parser(sub)
    add_watch_parser(sub)
    add_verify_parser(sub)
    return p


def dispatch(args: argparse.Namespace) -> int:
    """Run the subcommand `args` was parsed for."""
    return args.func(args)
