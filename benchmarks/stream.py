"""Live streams and long videos (DESIGN.md section 9): the streaming cascade against the offline request and the
whole-video chain, on this CPU.

    python -m benchmarks.stream [--model llava-ov-0.5b] [--backends eager onnxruntime] [--latency-frames 32]
                                [--sizes 32 128 256 768] [--repeats 3]

1. Answer latency: a 32-frame stream pushed one frame at a time (as `earlytom watch` does), then the time from the
   last frame's arrival (its push) to the first token of ask(), against the offline TTFT of a request on the same
   32 frames (a uint8 array: no file decoding on either side). Goal: latency <= 15% of the offline TTFT. Also the
   mean push time per frame: the encoder keeps up with a live source up to 1000 / push_ms frames per second.
2. Long offline videos: peak RSS and TTFT of one offline request at each size, through the cascade (the pipeline's
   chain) and through the whole-video chain (every later stretch on all frames at once: the chain before the
   cascade), each in a fresh process (ru_maxrss only grows). The clip is a file, decoded as the request runs.
   Goals: the cascade's peak at 768 frames <= 1.5x its 32-frame peak plus the candidate tokens; TTFT per frame flat
   (TTFT at 768 <= 1.1 x 24 x TTFT at 32).

Random weights (honest for latency and memory, never for accuracy); one synthetic clip with scene cuts. Results:
a table on stdout and benchmarks/out/stream.json.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from benchmarks.common import OUT, print_table
from earlytom.compress.ops import REFERENCE
from earlytom.engine_builder.build import build
from earlytom.runtime.chain import encode_whole
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.stream import backend_chain
from earlytom.runtime.synthetic import moving_square_frames, write_clip
from earlytom.video import load_video

PROMPT = "Describe what happens in this video."


def rss_mib() -> float:
    """This process's peak resident set so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def open_pipeline(backend: str, model: str, engine: Path | None) -> Pipeline:
    if backend == "onnxruntime":
        return Pipeline.from_engine_dir(engine)
    return Pipeline.from_pretrained(model, random_init=model != "tiny")


def whole_video(pipe: Pipeline) -> None:
    """Make `pipe` encode through the whole-video chain (the chain before the cascade) instead of the cascade."""
    backend = pipe.backend
    stretches, specs, suffix, device, (embeds_device, embeds_dtype) = backend_chain(backend, pipe.options)

    def encode(pixels, options, timer):
        chunks = (chunk.to(device) for chunk in pixels)
        visual = encode_whole(stretches, specs, chunks, options, timer, suffix, REFERENCE)
        visual.embeds = visual.embeds.to(embeds_device, embeds_dtype)
        return visual

    backend.encode = encode


def latency(pipe: Pipeline, frames: torch.Tensor, repeats: int) -> dict:
    """Offline TTFT on `frames` [B, H, W, 3] vs a stream's answer latency after its last frame (medians)."""
    offline = pipe.with_options(num_frames=len(frames))
    ttft, answer, push = [], [], []
    for _ in range(repeats):
        ttft.append(offline.generate(frames, PROMPT, max_new_tokens=1).timings_ms["ttft"])
        with pipe.open_stream(max_frames=len(frames)) as stream:
            for frame in frames[:-1]:
                start = time.perf_counter()
                stream.push(frame[None])
                push.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            stream.push(frames[-1:])
            stream.ask(PROMPT, 1)
            answer.append((time.perf_counter() - start) * 1e3)
    ms = statistics.median(answer)
    return {"offline_ttft_ms": statistics.median(ttft), "answer_ms": ms, "push_ms": statistics.fmean(push)}


def child(args: argparse.Namespace) -> None:
    """One offline request of args.frames frames in this process -> JSON on stdout."""
    hf_logging.set_verbosity_error()
    pipe = open_pipeline(args.backend, args.model, args.engine).with_options(num_frames=args.frames)
    if args.mode == "whole":
        whole_video(pipe)
    loaded = rss_mib()
    result = pipe.generate(args.clip, PROMPT, max_new_tokens=1)
    print(
        json.dumps(
            {
                "ttft_ms": result.timings_ms["ttft"],
                "rss_loaded_mib": loaded,
                "rss_peak_mib": rss_mib(),
                "frames_after_merge": result.counts["frames_after_merge"],
                "visual_tokens": result.counts["visual_tokens"],
            }
        )
    )


def sweep(backend: str, args: argparse.Namespace, clip: Path, engine: Path | None) -> list[dict]:
    rows = []
    for frames in args.sizes:
        for mode in ("cascade", "whole"):
            command = [sys.executable, "-m", "benchmarks.stream", "--child", mode, "--backend", backend]
            command += ["--model", args.model, "--frames", str(frames), "--clip", str(clip)]
            command += ["--engine", str(engine)] if engine else []
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"{backend} {mode} {frames} frames failed: {done.stderr.strip().splitlines()[-1:]}")
                rows.append({"backend": backend, "mode": mode, "frames": frames, "error": done.stderr[-2000:]})
                break  # a larger size would fail too (memory) or for the same reason
            rows.append({"backend": backend, "mode": mode, "frames": frames, **json.loads(done.stdout)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llava-ov-0.5b", help="tiny for a quick check of this script")
    parser.add_argument("--backends", nargs="+", choices=["eager", "onnxruntime"], default=["eager", "onnxruntime"])
    parser.add_argument("--latency-frames", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="*", default=[32, 128, 256, 768])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["cascade", "whole"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--clip", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--engine", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        return child(args)
    hf_logging.set_verbosity_error()
    OUT.mkdir(exist_ok=True)
    most = max([args.latency_frames, *args.sizes])
    clip = write_clip(OUT / f"stream_clip_{most}.mp4", moving_square_frames(most, size=192, cut_at=most // 2))
    engine = None
    if "onnxruntime" in args.backends:
        engine = OUT / f"stream_engine_{args.model}_{most}"
        if not engine.exists():
            build(args.model, engine, frames=most, random_init=args.model != "tiny", progress=False)
    report = {"model": args.model, "latency": [], "sweep": []}
    for backend in args.backends:
        pipe = open_pipeline(backend, args.model, engine)
        frames = load_video(clip, args.latency_frames, size=pipe.backend.text.processor.frame_size).frames
        measured = latency(pipe, frames, args.repeats)
        report["latency"].append({"backend": backend, "frames": args.latency_frames, **measured})
        del pipe
        report["sweep"] += sweep(backend, args, clip, engine)
    (OUT / "stream.json").write_text(json.dumps(report, indent=1))
    print(f"\n1. answer latency after the last of {args.latency_frames} frames ({args.model}, {args.repeats} repeats)")
    print_table(
        ["backend", "offline TTFT ms", "answer ms", "answer/TTFT", "push ms/frame", "keeps up to fps"],
        [
            [
                r["backend"],
                r["offline_ttft_ms"],
                r["answer_ms"],
                r["answer_ms"] / r["offline_ttft_ms"],
                r["push_ms"],
                1e3 / r["push_ms"],
            ]
            for r in report["latency"]
        ],
    )
    print("\n2. one offline request per size, each in a fresh process")
    print_table(
        ["backend", "chain", "frames", "TTFT ms", "TTFT/frame ms", "RSS loaded MiB", "RSS peak MiB", "N", "K"],
        [
            [
                r["backend"],
                r["mode"],
                r["frames"],
                r["ttft_ms"],
                r["ttft_ms"] / r["frames"],
                r["rss_loaded_mib"],
                r["rss_peak_mib"],
                r["frames_after_merge"],
                r["visual_tokens"],
            ]
            for r in report["sweep"]
            if "error" not in r
        ],
    )


if __name__ == "__main__":
    main()
