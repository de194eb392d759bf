"""The ONNX Runtime backend: the vision head and tail as ONNX Runtime sessions (threads = cores), loaded
from a verified engine directory."""

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from earlytom.export.onnx_export import HEAD, TAIL, session


class OnnxVision:
    """encode_head / encode_tail / image_newline (see earlytom.runtime.pipeline) over ONNX Runtime."""

    def __init__(self, directory: Path, dtype: str) -> None:
        self.head = session(directory / f"{HEAD.name}.onnx")
        self.tail = session(directory / f"{TAIL.name}.onnx")
        self.np_dtype = np.float16 if dtype == "fp16" else np.float32
        self.image_newline = load_file(directory / "image_newline.safetensors")["image_newline"].float()

    def encode_head(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] -> hidden [B, L, D] (in the graphs' dtype)."""
        (hidden,) = self.head.run(list(HEAD.outputs), {HEAD.inputs[0]: pixels.numpy().astype(self.np_dtype)})
        return torch.from_numpy(hidden)

    def encode_tail(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [N, L, D] -> tokens [N, T, D'], scores [N, T] (float32)."""
        feed = {TAIL.inputs[0]: hidden.numpy().astype(self.np_dtype)}
        tokens, scores = self.tail.run(list(TAIL.outputs), feed)
        return torch.from_numpy(tokens).float(), torch.from_numpy(scores).float()
