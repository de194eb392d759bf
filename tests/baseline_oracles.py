"""Plain-Python pieces of the oracles in test_fastvid.py and test_holitom.py (BASELINES.md's words as loops over
lists; nothing from earlytom)."""

import math

import torch


def top(values: list[float], k: int) -> list[int]:
    """Indices of the k largest values, largest first; equal values in torch.topk's order (BASELINES.md: selection
    ties follow torch.topk)."""
    return torch.topk(torch.tensor([values], dtype=torch.float64), k, dim=-1).indices[0].tolist()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b))


def density_peak_scores(
    points: list[list[float]], knn: int, noise: list[float] | None
) -> tuple[list[float], list[list[float]]]:
    """(score, dist): dist = Euclidean / sqrt(D); density = exp(-mean of the knn smallest squared distances, self
    included) + noise; score = distance to the nearest strictly denser point (else the largest distance) * density."""
    n, D = len(points), len(points[0])
    dist = [[math.dist(a, b) / math.sqrt(D) for b in points] for a in points]
    density = [math.exp(-sum(d * d for d in sorted(row)[:knn]) / knn) for row in dist]
    if noise is not None:
        density = [x + e for x, e in zip(density, noise, strict=True)]
    largest = max(max(row) for row in dist)
    score = []
    for i in range(n):
        higher = [dist[i][j] for j in range(n) if density[j] > density[i]]
        score.append((min(higher) if higher else largest) * density[i])
    return score, dist
