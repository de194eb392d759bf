"""Synthetic clips for demos, tests and benchmarks: a square moving over a static background, optionally
with a hard scene cut, written as a real H.264 mp4 with PyAV."""

from pathlib import Path

import av
import numpy as np


def moving_square_frames(num_frames: int, size: int = 96, cut_at: int | None = None) -> np.ndarray:
    """uint8 [num_frames, size, size, 3]: a white square sliding right over a gradient; from frame `cut_at` on,
    a different scene (inverted background, square sliding down)."""
    y, x = np.mgrid[0:size, 0:size]
    background = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 96)], axis=-1).astype(np.uint8)
    side = size // 6
    frames = []
    for t in range(num_frames):
        cut = cut_at is not None and t >= cut_at
        frame = (255 - background) if cut else background.copy()
        pos = (t * size // max(num_frames, 1)) % (size - side)
        top, left = (pos, size // 3) if cut else (size // 3, pos)
        frame[top : top + side, left : left + side] = 255
        frames.append(frame)
    return np.stack(frames)


def write_clip(path: str | Path, frames: np.ndarray, fps: int = 8) -> Path:
    """Encode uint8 frames [B, H, W, 3] (H, W even) as an H.264 mp4 at `fps`."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return path
