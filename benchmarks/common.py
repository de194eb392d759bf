"""Helpers shared by the benchmarks: a median timer, table printing, the output folder."""

import statistics
import time
from pathlib import Path

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
