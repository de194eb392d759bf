"""The precisions by name, one table for the whole package: the eager model takes any of them, engine graphs
fp32 or fp16 (GRAPH_DTYPES), the AOT kernels are compiled per name."""

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GRAPH_DTYPES = ("fp32", "fp16")  # ONNX graphs and TensorRT plans (NumPy has no bfloat16 for ONNX Runtime's feeds)
NAMES = {dtype: name for name, dtype in DTYPES.items()}


def torch_dtype(name: str, choices: tuple[str, ...] = tuple(DTYPES)) -> torch.dtype:
    """ "fp32" / "fp16" / "bf16" (those of `choices`) -> the torch dtype; a clear error for anything else."""
    if name not in choices:
        raise ValueError(f"dtype = {name!r}; choose one of {', '.join(choices)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """torch dtype -> its name in this table (ValueError for dtypes the package does not run in)."""
    if dtype not in NAMES:
        raise ValueError(f"dtype {dtype} is not one of {', '.join(DTYPES)}")
    return NAMES[dtype]


def numpy_dtype(name: str) -> type:
    """A graph dtype name -> the NumPy dtype of its feeds."""
    torch_dtype(name, GRAPH_DTYPES)
    return {"fp32": np.float32, "fp16": np.float16}[name]
