"""Input checks shared by the compression ops: each failure names the value and the valid range."""

import math

import torch


def check_rank(name: str, tensor: torch.Tensor, shape: str) -> None:
    """Raise unless `tensor` has as many dimensions as `shape` (e.g. "[B, L, D]") names."""
    rank = shape.count(",") + 1
    if tensor.dim() != rank:
        raise ValueError(f"{name} must be {rank}-D {shape}, got shape {list(tensor.shape)}")


def check_pair(name: str, tensor: torch.Tensor, shape: str, other_name: str, other: torch.Tensor, other_shape: str):
    """Raise unless `tensor` has the rank of `shape` (e.g. hidden "[F, L, D]"), `other` that of `other_shape` (e.g.
    attention "[F, L]"), and `other`'s dimensions equal the leading ones of `tensor`."""
    check_rank(name, tensor, shape)
    check_rank(other_name, other, other_shape)
    if tensor.shape[: other.dim()] != other.shape:
        dims = " or ".join(other_shape.strip("[]").split(", "))
        raise ValueError(
            f"{name} {shape} = {list(tensor.shape)} and {other_name} {other_shape} = {list(other.shape)} "
            f"disagree on {dims}"
        )


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise if `tensor` holds NaN or Inf (they would silently corrupt every similarity and ranking)."""
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf values; all values must be finite")


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    """Raise unless `value` is a real number (not a bool) with low <= value <= high (low < value when `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} = {value!r} must be a number in [{low}, {high}], not {type(value).__name__}")
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} = {value} is outside the valid range {bracket}{low}, {high}]")
