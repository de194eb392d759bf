"""Video decoding time for 32 and 64 sampled frames, by clip length and resolution, for each way of decoding:
every frame (the reference, `decode="full"`), a seek to the keyframe before each sampled frame (`decode="seek"`,
the default; it drops the unsampled non-reference frames and, threads on, decodes the forward runs on parallel
workers), the nearest keyframes only (`sampling="keyframe"`), threads on and off (one decoding thread: the
reference). Frames are converted to 384 x 384 RGB (LLaVA-OneVision's input) as they decode.

The clips are generated at run time with PyAV into a temporary directory (nothing is kept) and compress like
camera footage (`write_panning_clip`: a textured scene panned over with moving sprites and grain; x264 superfast,
CRF 23, its B-frames, 30 fps), one keyframe every `--keyint` seconds (2 s: Apple's HLS authoring spec and YouTube
Live; 1 s: phone cameras; `250f` = x264's default of 250 frames, 8.3 s). Exact uniform sampling decodes about
(samples x keyframe interval / 2) frames, so the keyframe interval in frames sets its cost. Every decode mode
returns the same frames in uniform sampling (tests/test_video.py, tests/test_video_decode.py); only the time
differs.

    python -m benchmarks.decode [--keyint 2|1|250f] [--quick] [--resolution 1080p] [--duration "60 min"]
                                [--full-up-to 600]
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from benchmarks.common import OUT, print_table
from earlytom.runtime.synthetic import write_panning_clip
from earlytom.video import load_video

RESOLUTIONS = {"240p": (426, 240), "1080p": (1920, 1080)}
DURATIONS = {"20 s": 20, "10 min": 600, "60 min": 3600}
FRAMES = (32, 64)
SIZE = 384
FPS = 30
# (column, load_video options); full decoding does not depend on the number of frames: timed at 32 only.
MODES = {
    "full": {"decode": "full"},
    "full 1 thread": {"decode": "full", "threads": False},
    "seek": {},
    "seek 1 thread": {"threads": False},
    "keyframe": {"sampling": "keyframe"},
    "keyframe 1 thread": {"sampling": "keyframe", "threads": False},
}


def keyint_frames(text: str) -> int:
    """'2' (seconds) -> 60 frames at 30 fps; '250f' -> 250 frames."""
    try:
        frames = int(text[:-1]) if text.endswith("f") else round(float(text) * FPS)
    except ValueError:
        frames = 0
    if frames < 1:
        raise argparse.ArgumentTypeError(f"--keyint {text!r}: give seconds (e.g. 2) or frames (e.g. 250f), >= 1 frame")
    return frames


def load() -> str:
    """The 1, 5 and 15 minute load averages, as uptime shows them."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def time_decode(path: Path, frames: int, options: dict, repeats: int) -> tuple[float, float, list[str]]:
    """Best-of-`repeats` wall time in seconds of load_video (the clips are in the page cache), the CPU time of
    that run (all threads: above the wall time when decoding runs on several cores), and its notes."""
    best, cpu, notes = float("inf"), 0.0, []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        notes = load_video(path, frames, size=SIZE, **options).notes
        took = time.perf_counter() - start
        if took < best:
            best, cpu = took, time.process_time() - start_cpu
    return best, cpu, notes


def make_clip(root: Path, resolution: str, seconds: int, gop: int) -> dict:
    """Generate one clip; its path, length, size and bitrate, and how long it took to make."""
    width, height = RESOLUTIONS[resolution]
    start = time.perf_counter()
    path = write_panning_clip(root / f"{resolution}-{seconds}s.mp4", seconds, width, height, fps=FPS, gop=gop)
    made = time.perf_counter() - start
    length = max(1, round(seconds * FPS / gop)) * gop / FPS  # a whole number of GOPs
    size = path.stat().st_size
    return dict(path=path, seconds=length, megabytes=size / 1e6, mbps=size * 8 / length / 1e6, made=made)


def measure(root: Path, gop: int, durations: dict[str, int], resolutions: list[str], full_up_to: float) -> list:
    """One record per (resolution, duration, frames, mode): seconds and whether keyframe sampling fell back."""
    records = []
    for resolution in resolutions:
        for label, seconds in durations.items():
            clip = make_clip(root, resolution, seconds, gop)
            print(
                f"generated {resolution} {label} ({clip['seconds']:.1f} s): {clip['megabytes']:.0f} MB, "
                f"{clip['mbps']:.2f} Mbit/s in {clip['made']:.0f} s; load {load()}",
                flush=True,
            )
            repeats = 3 if seconds <= 20 else 1
            for frames in FRAMES:
                for mode, options in MODES.items():
                    full = options.get("decode") == "full"
                    if full and (frames != FRAMES[0] or seconds > full_up_to):
                        continue
                    took, cpu, notes = time_decode(clip["path"], frames, options, repeats)
                    fallback = any("keyframe sampling" in note for note in notes)
                    records.append(
                        dict(
                            resolution=resolution,
                            duration=label,
                            clip_seconds=clip["seconds"],
                            mbps=round(clip["mbps"], 2),
                            megabytes=round(clip["megabytes"], 1),
                            frames=frames,
                            mode=mode,
                            seconds=took,
                            cpu_seconds=round(cpu, 3),
                            fallback=fallback,
                        )
                    )
                    fell_back = " (fell back to uniform)" * fallback
                    print(f"  {frames} frames {mode}: {took:.2f} s, {cpu:.2f} s CPU{fell_back}", flush=True)
            clip["path"].unlink()
    return records


def table(records: list[dict]) -> tuple[list[str], list[list]]:
    header = ["clip", "Mbit/s", "frames", *MODES]
    rows = {}
    for r in records:
        row = rows.setdefault((r["resolution"], r["duration"], r["mbps"], r["frames"]), {})
        row[r["mode"]] = f"{r['seconds']:.2f}" + ("*" if r["fallback"] else "")
    return header, [
        [f"{res} {dur}", f"{mbps:.2f}", n, *(row.get(m, "-") for m in MODES)]
        for (res, dur, mbps, n), row in rows.items()
    ]


def goals(records: list[dict]) -> list[str]:
    """The issue's goals, checked: 10 min within 3x of 20 s (same resolution, 32 frames); 60 min 1080p under
    5 s (uniform) and under 1 s (keyframe)."""
    at = {(r["resolution"], r["duration"], r["frames"], r["mode"]): r for r in records}
    lines = []
    for resolution in RESOLUTIONS:
        for mode in ("seek", "keyframe"):
            short, long = at.get((resolution, "20 s", 32, mode)), at.get((resolution, "10 min", 32, mode))
            if short and long:
                ratio = long["seconds"] / short["seconds"]
                fell_back = " (20 s: fell back to uniform)" if short["fallback"] else ""
                lines.append(f"{resolution} {mode}: 10 min / 20 s = {ratio:.1f}x (goal <= 3x: {ratio <= 3}){fell_back}")
    for mode, limit in (("seek", 5.0), ("keyframe", 1.0)):
        record = at.get(("1080p", "60 min", 32, mode))
        if record is not None:
            took = record["seconds"]
            lines.append(f"1080p 60 min, 32 frames, {mode}: {took:.2f} s (goal < {limit:g} s: {took < limit})")
    return lines


def plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RESOLUTIONS), figsize=(11, 4), sharey=True)
    for ax, resolution in zip(axes, RESOLUTIONS, strict=True):  # an empty panel for a resolution not run
        for mode in MODES:
            points = [
                (r["duration"], r["seconds"])
                for r in records
                if r["resolution"] == resolution and r["mode"] == mode and r["frames"] == 32
            ]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=mode)
        ax.set_yscale("log")
        ax.set_title(f"{resolution}, 32 frames to {SIZE}x{SIZE}")
        ax.set_xlabel("clip length")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("decode time (s)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keyint", type=keyint_frames, default="2", help="keyframe interval: seconds (2) or frames (250f)"
    )
    parser.add_argument("--quick", action="store_true", help="the 20 s and 10 min clips only")
    parser.add_argument("--duration", choices=DURATIONS, action="append", help="only these clip lengths (repeatable)")
    parser.add_argument("--resolution", choices=RESOLUTIONS, action="append", help="only these (repeatable)")
    parser.add_argument(
        "--full-up-to", type=float, default=600, help="time full decodes only for clips up to this many seconds"
    )
    args = parser.parse_args()
    gop = args.keyint
    chosen = DURATIONS if args.duration is None else {k: DURATIONS[k] for k in args.duration}
    durations = {k: v for k, v in chosen.items() if not (args.quick and v > 600)}
    OUT.mkdir(exist_ok=True)
    started = load()
    with tempfile.TemporaryDirectory() as root:
        records = measure(Path(root), gop, durations, args.resolution or list(RESOLUTIONS), args.full_up_to)
    ended = load()
    title = f"keyframe every {gop} frames ({gop / FPS:.3g} s)"
    header, rows = table(records)
    print(f"\nseconds; * = keyframe sampling fell back to uniform (too few keyframes); {title}, {FPS} fps")
    print(f"load average (1, 5, 15 min): {started} at the start, {ended} at the end")
    print_table(header, rows)
    checked = goals(records)
    print("\n" + "\n".join(checked))
    machine = f"{platform.processor() or platform.machine()}, {platform.system()} {platform.release()}"
    stem = OUT / f"decode_keyint{gop}"
    summary = dict(gop=gop, fps=FPS, machine=machine, load=dict(start=started, end=ended), goals=checked)
    stem.with_suffix(".json").write_text(json.dumps(summary | {"records": records}, indent=1))
    plot(records, stem.with_suffix(".png"), title)
    print(f"\nwrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
