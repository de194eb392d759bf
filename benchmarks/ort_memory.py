"""Peak RSS of the ONNX Runtime backend over many requests of varying frame counts (issue 12: a long-running
process must not grow without bound; goal: flat, at most 1.15x the first request's peak).

    python -m benchmarks.ort_memory                                  # the tiny model, 20 requests, 8..32 frames
    python -m benchmarks.ort_memory --model llava-ov-0.5b --random-init --requests 20

Each request's peak is the process's high-water mark (VmHWM) after resetting it through /proc/self/clear_refs
before the request (Linux), so it is that request's peak, not the lifetime's.
"""

import argparse
import random
import tempfile
from pathlib import Path

from benchmarks.common import print_table
from earlytom.engine_builder.build import build
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.synthetic import moving_square_frames, write_clip


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def frame_counts(requests: int, low: int, high: int, seed: int = 0) -> list[int]:
    """`requests` frame counts in [low, high], every request a new count where possible (a per-shape cache would
    show as growth)."""
    return [random.Random(seed + i).randint(low, high) for i in range(requests)]


def measure(pipe: Pipeline, clip: Path, counts: list[int]) -> list[tuple[int, int, float]]:
    """(request, frames, peak RSS MB) for each request."""
    rows = []
    for i, frames in enumerate(counts, 1):
        reset_peak()
        pipe.with_options(num_frames=frames).generate(clip, "What happens?", max_new_tokens=1)
        rows.append((i, frames, peak_mb()))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--engine", type=Path, default=None, help="an engine directory to reuse (default: build one)")
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--min-frames", type=int, default=8)
    p.add_argument("--max-frames", type=int, default=32)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = args.engine
        if engine is None:
            engine = Path(tmp) / "engine"
            build(args.model, engine, frames=args.max_frames, random_init=args.random_init, progress=False)
        clip = write_clip(Path(tmp) / "clip.mp4", moving_square_frames(2 * args.max_frames, cut_at=args.max_frames))
        pipe = Pipeline.from_engine_dir(engine)
        rows = measure(pipe, clip, frame_counts(args.requests, args.min_frames, args.max_frames))
    print_table(["request", "frames", "peak RSS MB"], [list(r) for r in rows])
    first, last = rows[0][2], rows[-1][2]
    settled = max(r[2] for r in rows[5:]) if len(rows) > 5 else last
    print(
        f"first {first:.0f} MB, last {last:.0f} MB, largest after request 5 {settled:.0f} MB "
        f"({settled / first:.2f}x the first; goal <= 1.15x), "
        f"growth from request 6 to the last {last - rows[5][2]:+.0f} MB"
    )


if __name__ == "__main__":
    main()
