"""Live streams and long videos (DESIGN.md section 9): the streaming cascade against the offline request and the
whole-video chain, on this CPU.

    python -m benchmarks.stream --preset tiny     # the tiny model: latency at 32 frames, sweep 32 .. 768 (minutes)
    python -m benchmarks.stream --preset 0.5b     # LLaVA-OV-0.5B, random weights: latency at 32, sweep 32 and 128
    python -m benchmarks.stream [--preset P] [--model M] [--backends eager onnxruntime] [--latency-frames 32]
                                [--sizes 32 128 256 768] [--repeats 3] [--max-minutes 60]

1. Answer latency: a 32-frame stream pushed one frame at a time (as `earlytom watch` does), then the time from the
   last frame's arrival (its push) to the first token of ask(), against the offline TTFT of a request on the same
   32 frames (a uint8 array: no file decoding on either side). Goal: latency <= 15% of the offline TTFT. Also the
   mean push time per frame: the encoder keeps up with a live source up to 1000 / push_ms frames per second.
2. Long offline videos: peak RSS and TTFT of one offline request at each size, through the cascade (the pipeline's
   chain) and through the whole-video chain (every later stretch on all frames at once: the chain before the
   cascade), each in a fresh process (ru_maxrss only grows). The clip is a file, decoded as the request runs.
   Goals (on the cascade): peak RSS at 768 frames <= 1.5x the 32-frame peak plus the candidate tokens; TTFT per
   frame flat (TTFT at 768 <= 1.1 x 24 x TTFT at 32). A sweep stops at the largest size that fits: before a run
   whose estimate (TTFT and memory scaled linearly from the size before) exceeds --max-minutes or the memory
   available now, or after a run that failed (out of memory: killed); the report says where and why. Where it
   stops below 768, the goals are checked at the largest size it reached, scaled to that size, and say so.

Before each part the script prints its estimated runtime (from the offline TTFT it measured first). Random weights
(honest for latency and memory, never for accuracy); one synthetic clip with scene cuts. Results: tables, the goals
as PASS/FAIL lines on stdout, and benchmarks/out/stream.json.
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
PRESETS = {  # what the issue asks of each model: part 1 at 32 frames; the sweep as far as it is affordable
    "tiny": {"model": "tiny", "latency_frames": 32, "sizes": [32, 128, 256, 768]},
    "0.5b": {"model": "llava-ov-0.5b", "latency_frames": 32, "sizes": [32, 128]},
}
LATENCY_GOAL = 0.15  # answer latency / offline TTFT
RSS_GOAL = 1.5  # peak RSS at the largest size / at the smallest, the candidate tokens aside
TTFT_GOAL = 1.1  # TTFT at the largest size / (the smallest's TTFT scaled by the frames)


def rss_mib() -> float:
    """This process's peak resident set so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available_mib() -> float:
    """Memory available to a new process now (MemAvailable), MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


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
    """Offline TTFT on `frames` [B, H, W, 3] vs a stream's answer latency after its last frame (medians). Prints
    the time left after the first repeat."""
    offline = pipe.with_options(num_frames=len(frames))
    ttft, answer, push = [], [], []
    for repeat in range(repeats):
        begin = time.perf_counter()
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
        if repeat == 0 and repeats > 1:
            took = time.perf_counter() - begin
            print(f"  one repeat took {minutes(took)}; about {minutes((repeats - 1) * took)} left", flush=True)
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
    dims, n = pipe.backend.text.dims, result.counts["frames_after_merge"]
    candidates = n * dims.tokens_per_frame * (dims.llm_hidden * result.visual.embeds.element_size() + 4)  # + scores
    print(
        json.dumps(
            {
                "ttft_ms": result.timings_ms["ttft"],
                "rss_loaded_mib": loaded,
                "rss_peak_mib": rss_mib(),
                "candidates_mib": candidates / 2**20,
                "frames_after_merge": n,
                "visual_tokens": result.counts["visual_tokens"],
            }
        )
    )


def estimate(before: dict, frames: int, load_s: float) -> tuple[float, float]:
    """A run at `frames` frames, scaled linearly from the run `before` (ttft_ms and RSS at its frames) -> (seconds,
    peak RSS MiB): model loading plus the TTFT; the loaded RSS plus the growth of the peak over it."""
    scale = frames / before["frames"]
    seconds = load_s + before["ttft_ms"] / 1e3 * scale
    growth = before.get("rss_peak_mib", 0) - before.get("rss_loaded_mib", 0)
    return seconds, before.get("rss_loaded_mib", 0) + growth * scale


def failure(done: subprocess.CompletedProcess) -> str:
    """Why a child failed, in a line."""
    if done.returncode == -9:
        return "killed (SIGKILL: the kernel's out-of-memory killer, most likely)"
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {done.returncode}"


def sweep(backend: str, args: argparse.Namespace, clip: Path, engine: Path | None, first: dict, load_s: float):
    """The sweep of one backend, each mode up to the largest size that fits -> rows (a row with "stopped" says where
    a mode stopped and why). `first`: a measured run (frames, ttft_ms) to scale the first estimate from."""
    rows = []
    for mode in ("cascade", "whole"):
        before = first
        for frames in args.sizes:
            seconds, peak = estimate(before, frames, load_s)
            row = {"backend": backend, "mode": mode, "frames": frames, "estimate_s": seconds}
            why = None
            if seconds > args.max_minutes * 60:
                why = f"estimated {minutes(seconds)} > --max-minutes {args.max_minutes}"
            elif "rss_peak_mib" in before and peak > available_mib():
                why = f"estimated peak RSS {peak / 1024:.1f} GiB > {available_mib() / 1024:.1f} GiB available"
            if why is None:
                print(f"  {backend} {mode} {frames} frames: about {minutes(seconds)}", flush=True)
                command = [sys.executable, "-m", "benchmarks.stream", "--child", mode, "--backend", backend]
                command += ["--model", args.model, "--frames", str(frames), "--clip", str(clip)]
                command += ["--engine", str(engine)] if engine else []
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode == 0:
                    before = {**row, **json.loads(done.stdout)}
                    rows.append(before)
                    continue
                why = f"failed: {failure(done)}"
                row["error"] = done.stderr[-2000:]
            print(f"  {backend} {mode} stops before {frames} frames: {why}", flush=True)
            rows.append({**row, "stopped": why})
            break  # a larger size costs more still
    return rows


def verdict(ok: bool, text: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}  {text}"


def goals(report: dict) -> list[str]:
    """The issue's goals as PASS/FAIL lines (see the module docstring)."""
    lines = []
    for r in report["latency"]:
        ratio = r["answer_ms"] / r["offline_ttft_ms"]
        lines.append(
            verdict(
                ratio <= LATENCY_GOAL,
                f"{r['backend']}: answer latency after the last of {r['frames']} frames {r['answer_ms']:.0f} ms = "
                f"{ratio:.1%} of the offline TTFT {r['offline_ttft_ms']:.0f} ms (goal <= {LATENCY_GOAL:.0%})",
            )
        )
    for backend in dict.fromkeys(r["backend"] for r in report["sweep"]):
        runs = [r for r in report["sweep"] if r["backend"] == backend and r["mode"] == "cascade"]
        measured = [r for r in runs if "stopped" not in r]
        if len(measured) < 2:
            lines.append(f"----  {backend}: fewer than two sizes measured; no goal of part 2 checked")
            continue
        small, large = measured[0], measured[-1]
        scale = large["frames"] / small["frames"]
        where = f"at {large['frames']} frames"
        if large["frames"] != 768:
            stop = next((r["stopped"] for r in runs if "stopped" in r), "the largest size asked")
            where += f" (the goals name 768; the sweep ends at {large['frames']}: {stop})"
        limit = RSS_GOAL * small["rss_peak_mib"] + large["candidates_mib"]
        lines.append(
            verdict(
                large["rss_peak_mib"] <= limit,
                f"{backend}: cascade peak RSS {where} {large['rss_peak_mib']:.0f} MiB <= {RSS_GOAL} x "
                f"{small['rss_peak_mib']:.0f} MiB ({small['frames']} frames) + {large['candidates_mib']:.1f} MiB "
                f"candidate tokens = {limit:.0f} MiB",
            )
        )
        limit = TTFT_GOAL * scale * small["ttft_ms"]
        lines.append(
            verdict(
                large["ttft_ms"] <= limit,
                f"{backend}: cascade TTFT {where} {large['ttft_ms']:.0f} ms <= {TTFT_GOAL} x {scale:g} x "
                f"{small['ttft_ms']:.0f} ms ({small['frames']} frames) = {limit:.0f} ms",
            )
        )
    return lines


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="0.5b", help="model, latency frames and sizes")
    parser.add_argument("--model", default=None, help="the preset's unless given")
    parser.add_argument("--backends", nargs="+", choices=["eager", "onnxruntime"], default=["eager", "onnxruntime"])
    parser.add_argument("--latency-frames", type=int, default=None, help="the preset's (32) unless given")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="the preset's unless given")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-minutes", type=float, default=60.0, help="skip a sweep run estimated to take longer")
    parser.add_argument("--child", choices=["cascade", "whole"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--clip", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--engine", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    args.model = args.model or preset["model"]
    args.latency_frames = args.latency_frames or preset["latency_frames"]
    args.sizes = preset["sizes"] if args.sizes is None else sorted(args.sizes)
    return args


def main() -> None:
    args = parse()
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
            print(f"building the onnxruntime engine of {args.model} for {most} frames ...", flush=True)
            start = time.perf_counter()
            build(args.model, engine, frames=most, random_init=args.model != "tiny", progress=False)
            print(f"  built in {minutes(time.perf_counter() - start)}", flush=True)
    report = {"model": args.model, "latency": [], "sweep": []}
    for backend in args.backends:
        start = time.perf_counter()
        pipe = open_pipeline(backend, args.model, engine)
        load_s = time.perf_counter() - start
        frames = load_video(clip, args.latency_frames, size=pipe.backend.text.processor.frame_size).frames
        print(
            f"{backend}, part 1: {args.repeats} repeats of an offline request and a stream of {len(frames)} frames",
            flush=True,
        )
        measured = latency(pipe, frames, args.repeats)
        report["latency"].append({"backend": backend, "frames": args.latency_frames, **measured})
        del pipe
        first = {"frames": args.latency_frames, "ttft_ms": measured["offline_ttft_ms"]}
        total = sum(estimate(first, n, load_s)[0] for n in args.sizes) * 2
        print(
            f"{backend}, part 2: {2 * len(args.sizes)} runs (sizes {args.sizes}, cascade and whole), estimated "
            f"{minutes(total)} (TTFT scaled linearly from {args.latency_frames} frames, {load_s:.0f} s loading each)",
            flush=True,
        )
        report["sweep"] += sweep(backend, args, clip, engine, first, load_s)
    report["goals"] = goals(report)
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
        [
            "backend",
            "chain",
            "frames",
            "TTFT ms",
            "TTFT/frame ms",
            "RSS loaded MiB",
            "RSS peak MiB",
            "cand. MiB",
            "N",
            "K",
        ],
        [
            [
                r["backend"],
                r["mode"],
                r["frames"],
                r["ttft_ms"],
                r["ttft_ms"] / r["frames"],
                r["rss_loaded_mib"],
                r["rss_peak_mib"],
                r["candidates_mib"],
                r["frames_after_merge"],
                r["visual_tokens"],
            ]
            for r in report["sweep"]
            if "stopped" not in r
        ],
    )
    for r in report["sweep"]:
        if "stopped" in r:
            print(f"{r['backend']} {r['mode']}: stopped before {r['frames']} frames: {r['stopped']}")
    print("\ngoals")
    print("\n".join(report["goals"]))


if __name__ == "__main__":
    main()
