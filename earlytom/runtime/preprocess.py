"""Model preprocessing: uint8 frames to normalised pixels at the model's input size."""

from typing import TYPE_CHECKING

import torch

from earlytom.video import resize_rgb

if TYPE_CHECKING:  # annotations only: importing the model registry would load transformers
    from earlytom.models.registry import Preprocess


def preprocess(frames: torch.Tensor, settings: "Preprocess") -> torch.Tensor:
    """uint8 frames [B, H, W, 3] -> pixels [B, 3, S, S] float32: bicubic resize (antialiased; skipped when frames
    are already S x S, as stream_video(size=S) gives them), rescale, normalise. One frame at a time is float at
    its own size."""
    size = settings.size
    mean = torch.tensor(settings.mean, device=frames.device)[:, None, None]
    std = torch.tensor(settings.std, device=frames.device)[:, None, None]
    out = torch.empty(frames.shape[0], 3, size, size, dtype=torch.float32, device=frames.device)
    for n, frame in enumerate(frames):
        out[n] = (resize_rgb(frame, size) * settings.rescale - mean) / std
    return out
