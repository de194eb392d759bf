"""What this machine has: the GPU stack the TensorRT backend needs, and the versions of the tools an engine
directory records."""

import importlib.util
import platform
from importlib import metadata

import torch

TOOLS = ("earlytom", "torch", "transformers", "onnx", "onnxruntime", "onnxconverter-common", "triton")


def missing_gpu_stack() -> list[str]:
    """What the TensorRT backend needs and this machine lacks (empty when it has everything)."""
    missing = [
        f"the {name} Python package" for name in ("tensorrt", "tensorrt_llm") if not importlib.util.find_spec(name)
    ]
    if not torch.cuda.is_available():
        missing.append("an NVIDIA GPU visible to PyTorch")
    return missing


def tool_versions() -> dict[str, str]:
    """Python and every installed package of TOOLS -> its version."""
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
