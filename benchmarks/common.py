"""Helpers shared by the benchmarks: a median timer, table printing, the output folder, the machine's GEMM figure."""

import statistics
import time
from pathlib import Path

import torch

OUT = Path(__file__).parent / "out"


def median_ms(fn, *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in milliseconds over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def gemm_gflops(size: int = 2048, repeats: int = 3) -> float:
    """The machine's GEMM figure: the best of `repeats` timed size^3 float32 torch matmuls (after one untimed), on
    torch's threads (torch.get_num_threads()), in GFLOP/s of 2 * size^3 FLOPs each. What the machine reaches now,
    load included, so a slower machine and a slower code path can be told apart."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def gemm_fraction(flops: float, seconds: float, gemm: float) -> float:
    """The fraction of the GEMM figure `gemm` (GFLOP/s) a run of `flops` analytic FLOPs in `seconds` reached."""
    return flops / seconds / 1e9 / gemm


def print_table(header: list[str], rows: list[list]) -> None:
    """Print rows as an aligned plain-text table."""
    cells = [header] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def summary(times_ms: list[float]) -> dict[str, float]:
    """trtexec-style statistics of repeated timings: min, mean, median, p90, p99, max (nearest-rank)."""
    ordered = sorted(times_ms)

    def rank(q: float) -> float:
        return ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))]

    return {
        "min": ordered[0],
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p90": rank(90),
        "p99": rank(99),
        "max": ordered[-1],
    }
