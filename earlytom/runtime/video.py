"""Video input: decode with PyAV, sample B frames uniformly (as LLaVA-OneVision does), resize and normalise.

Accepted sources: a video file, a directory of images (sorted by name), or a uint8 array [B, H, W, 3].
"""

from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from earlytom.models.registry import Preprocess

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class VideoError(ValueError):
    """A video that cannot be used: missing, unreadable, corrupt or empty."""


@dataclass
class Video:
    """frames: uint8 [B, H, W, 3]; timestamps: [B] seconds; notes: what the user should know."""

    frames: torch.Tensor
    timestamps: list[float]
    notes: list[str] = field(default_factory=list)


def uniform_indices(total: int, count: int) -> list[int]:
    """LLaVA-OneVision's sampling: linspace(0, total - 1, count) truncated to int; all frames if total <= count."""
    if total <= count:
        return list(range(total))
    return np.linspace(0, total - 1, count, dtype=int).tolist()


def shortfall_note(available: int, requested: int, what: str) -> list[str]:
    if available >= requested:
        return []
    return [f"{what} has only {available} decodable frames; using {available} instead of the {requested} requested"]


def decode_file(path: Path, num_frames: int) -> Video:
    """Decode `num_frames` uniformly sampled frames of a video file (two passes when the container does not
    state its frame count)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path} has no video stream")
            stream = container.streams.video[0]
            total = stream.frames or sum(1 for _ in container.decode(stream))
    except av.FFmpegError as error:
        raise VideoError(f"cannot read video {path}: {error}; is it a complete, supported video file?") from error
    wanted = set(uniform_indices(total, num_frames))
    frames, times = [], []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    times.append(float(frame.time or 0.0))
    except av.FFmpegError as error:
        if not frames:
            raise VideoError(f"cannot decode video {path}: {error}") from error
    if not frames:
        raise VideoError(f"video {path} has no decodable frames")
    return Video(torch.from_numpy(np.stack(frames)), times, shortfall_note(len(frames), num_frames, str(path)))


def read_image_dir(path: Path, num_frames: int, fps: float) -> Video:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise VideoError(f"directory {path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    indices = uniform_indices(len(files), num_frames)
    try:
        frames = [np.asarray(Image.open(files[i]).convert("RGB")) for i in indices]
    except OSError as error:
        raise VideoError(f"cannot read image in {path}: {error}") from error
    if len({f.shape for f in frames}) > 1:
        raise VideoError(f"images in {path} differ in size; a video needs frames of one size")
    notes = shortfall_note(len(files), num_frames, str(path))
    return Video(torch.from_numpy(np.stack(frames)), [i / fps for i in indices], notes)


def load_video(source: str | Path | np.ndarray | torch.Tensor, num_frames: int, *, fps: float = 1.0) -> Video:
    """Sample up to `num_frames` frames from a video file, an image directory or a uint8 array [B, H, W, 3]
    (images and arrays are timed at `fps`)."""
    if num_frames < 1:
        raise VideoError(f"frames = {num_frames}: sample at least 1 frame")
    if isinstance(source, np.ndarray | torch.Tensor):
        array = torch.as_tensor(source)
        if array.dim() != 4 or array.shape[-1] != 3 or array.dtype != torch.uint8 or array.shape[0] == 0:
            raise VideoError(
                f"a frame array must be uint8 [B, H, W, 3] with B >= 1, got {array.dtype} {list(array.shape)}"
            )
        indices = uniform_indices(array.shape[0], num_frames)
        notes = shortfall_note(array.shape[0], num_frames, "the frame array")
        return Video(array[indices], [i / fps for i in indices], notes)
    path = Path(source)
    if not path.exists():
        raise VideoError(f"video {path} does not exist; pass a video file, an image directory or a frame array")
    if path.is_dir():
        return read_image_dir(path, num_frames, fps)
    if path.stat().st_size == 0:
        raise VideoError(f"video {path} is empty (0 bytes)")
    return decode_file(path, num_frames)


def preprocess(frames: torch.Tensor, settings: Preprocess) -> torch.Tensor:
    """uint8 frames [B, H, W, 3] -> pixels [B, 3, S, S] float32: bicubic resize (antialiased), rescale, normalise."""
    x = frames.permute(0, 3, 1, 2).float()  # [B, 3, H, W] in 0..255
    x = torch.nn.functional.interpolate(x, size=(settings.size, settings.size), mode="bicubic", antialias=True)
    x = x.clamp(0, 255) * settings.rescale
    mean = torch.tensor(settings.mean)[None, :, None, None]
    std = torch.tensor(settings.std)[None, :, None, None]
    return (x - mean) / std
