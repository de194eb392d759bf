"""Input checks shared by the compression ops: each failure names the value and the valid range."""

import math

import torch


def check_rank(name: str, tensor: torch.Tensor, shape: str) -> None:
    """Raise unless `tensor` is a torch.Tensor (TypeError: a NumPy array, a list, None, ...) with as many dimensions
    as `shape` (e.g. "[B, L, D]") names."""
    if not isinstance(tensor, torch.Tensor):
        fix = "pass one" if tensor is None else "convert it with torch.as_tensor(...)"
        raise TypeError(f"{name} must be a torch.Tensor {shape}, got {type(tensor).__name__}; {fix}")
    rank = shape.count(",") + 1
    if tensor.dim() != rank:
        raise ValueError(f"{name} must be {rank}-D {shape}, got shape {list(tensor.shape)}")


def check_values(name: str, tensor: torch.Tensor, shape: str) -> None:
    """Raise unless `tensor` (of the rank `shape` names) has real floating-point values (not integer, bool or
    complex) and no dimension of size 0, naming the empty dimension by its letter in `shape`."""
    if not tensor.is_floating_point():
        raise ValueError(f"{name} {shape} has dtype {tensor.dtype}; pass a floating-point tensor (e.g. .float())")
    letters = shape.strip("[]").split(", ")
    empty = [letter for letter, size in zip(letters, tensor.shape, strict=True) if size == 0]
    if empty:
        raise ValueError(
            f"{name} {shape} = {list(tensor.shape)} has {' and '.join(f'{e} = 0' for e in empty)}; "
            "every dimension must be >= 1"
        )


def check_mask(name: str, mask: torch.Tensor) -> None:
    """Raise unless `mask` is a tensor [N] of bool labels, or of integer 0/1 labels (a float or complex tensor is
    refused: its values are no labels)."""
    check_rank(name, mask, "[N]")
    if mask.dtype == torch.bool:
        return
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(f"{name} [N] has dtype {mask.dtype}; pass bool labels (e.g. {name} > 0.5)")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} [N] holds integers other than 0 and 1; pass bool labels (True: static)")


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
