"""What the compared methods (FastVID, HoliTom, VisionZip; shared/BASELINES.md) share: LLaVA-OV's bilinear pool,
input checks, and the DPC-kNN density-peak score with its optional jitter.

    pooled = pool_bilinear(x)                                   # [T, h*h, C] -> [T, ceil(h/2)^2, C]
    score, dist = density_peaks(x, knn=4, jitter=1e-6, ...)     # [B, n, D] -> [B, n], [B, n, n]
"""

import math

import torch
import torch.nn.functional as F

from earlytom.compress.checks import check_finite, check_rank, check_values


def check_float(name: str, tensor: torch.Tensor, shape: str) -> None:
    """Raise unless `tensor` is a floating-point tensor of the rank `shape` names (e.g. "[T, L, D]"), no dimension
    0, all finite."""
    check_rank(name, tensor, shape)
    check_values(name, tensor, shape)
    check_finite(name, tensor)


def check_frames(name: str, tensor: torch.Tensor, shape: str, features: torch.Tensor, dims: int) -> None:
    """check_float, plus: the first `dims` dimensions (T, or T and L) equal those of `features` [T, L, D]."""
    check_float(name, tensor, shape)
    if tensor.shape[:dims] != features.shape[:dims]:
        which = ("T", "T and L")[dims - 1]
        raise ValueError(
            f"{name} {shape} = {list(tensor.shape)} and features [T, L, D] = {list(features.shape)} disagree on {which}"
        )


def pool_bilinear(x: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """LLaVA-OneVision's `get_2dPool` in bilinear mode: x [T, h*h, C] as T maps of h x h -> [T, ceil(h/stride)^2, C]
    (F.interpolate, align_corners=False, in x's dtype). Features, attention ([T, h*h, 1]) and keys are pooled alike."""
    check_float("x", x, "[T, h*h, C]")
    T, P, C = x.shape
    h = math.isqrt(P)
    if h * h != P:
        raise ValueError(f"x [T, h*h, C] = {list(x.shape)}: {P} tokens per frame is not a square h*h patch grid")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride = {stride!r} must be an integer >= 1")
    side = math.ceil(h / stride)
    maps = x.reshape(T, h, h, C).permute(0, 3, 1, 2)  # [T, C, h, h]
    pooled = F.interpolate(maps, size=[side, side], mode="bilinear")
    return pooled.permute(0, 2, 3, 1).reshape(T, side * side, C)


def draw_jitter(shape: list[int], jitter: float, generator: torch.Generator | None, device: torch.device):
    """The randomness contract (BASELINES.md section 4): jitter > 0 draws one torch.rand(shape) in float32 (from
    `generator`, else the global RNG) and returns it times jitter; jitter = 0 draws nothing and returns None."""
    if jitter == 0:
        return None
    return torch.rand(shape, generator=generator, dtype=torch.float32, device=device) * jitter


def density_peaks(
    x: torch.Tensor, *, knn: int, jitter: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN score of each of n tokens in each of B groups, as the released FastVID and HoliTom compute it.

    x: [B, n, D] -> (score [B, n], dist [B, n, n]), float32:
    dist = cdist(x, x) / sqrt(D); density = exp(-mean of the knn smallest squared distances, self included), plus
    draw_jitter([B, n]); to_higher[i] = min dist[i, j] over j with density[j] > density[i] (strict), else the
    group's largest distance; score = to_higher * density.
    """
    B, n, D = x.shape
    if not 1 <= knn <= n:
        raise ValueError(f"the density of {n} tokens from their knn = {knn} nearest needs 1 <= knn <= {n}")
    x32 = x.float()
    dist = torch.cdist(x32, x32) / (D**0.5)
    nearest = torch.topk(dist, knn, dim=-1, largest=False).values
    density = (-(nearest**2).mean(dim=-1)).exp()
    noise = draw_jitter([B, n], jitter, generator, x.device)
    if noise is not None:
        density = density + noise
    higher = density[:, None, :] > density[:, :, None]  # [B, i, j]: j is denser than i
    largest = dist.flatten(1).max(dim=-1).values[:, None, None]
    to_higher = torch.where(higher, dist, largest).min(dim=-1).values
    return to_higher * density, dist
