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


def write_clip(
    path: str | Path,
    frames: np.ndarray,
    fps: int = 8,
    *,
    gop: int | None = None,
    faststart: bool = False,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
) -> Path:
    """Encode uint8 frames [B, H, W, 3] (H, W even) as an mp4 at `fps` with `codec` (default H.264 with x264's
    defaults, B-frames included) and its encoder `options`; gop: one keyframe every `gop` frames exactly (None: the
    encoder's default); faststart: the index before the data."""
    path = Path(path)
    with av.open(str(path), mode="w", options={"movflags": "faststart"} if faststart else None) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        fixed_gop = {} if gop is None else {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        stream.options = fixed_gop | ({} if options is None else options)
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return path


INDEX_BITS = 10


def indexed_frames(num_frames: int, height: int = 64, width: int = 80) -> np.ndarray:
    """uint8 [num_frames, height, width, 3]: frame t shows t in binary as INDEX_BITS vertical bars (white = 1,
    most significant bit first) that survive lossy encoding; read back with `frame_index`."""
    if num_frames > 2**INDEX_BITS:
        raise ValueError(f"num_frames = {num_frames}: at most {2**INDEX_BITS} frames can carry their index")
    bits = (np.arange(num_frames)[:, None] >> np.arange(INDEX_BITS - 1, -1, -1)) & 1  # [B, bits]
    columns = np.repeat(bits * 255, -(-width // INDEX_BITS), axis=1)[:, :width]  # [B, width]
    return np.broadcast_to(columns[:, None, :, None], (num_frames, height, width, 3)).astype(np.uint8)


def frame_index(frame: np.ndarray) -> int:
    """The index an `indexed_frames` frame [H, W, 3] (at any size) carries."""
    width = frame.shape[1]
    bars = [frame[:, (2 * b + 1) * width // (2 * INDEX_BITS)].mean() > 127 for b in range(INDEX_BITS)]
    return int(sum(int(bit) << (INDEX_BITS - 1 - n) for n, bit in enumerate(bars)))


def write_long_clip(path: str | Path, seconds: float, width: int, height: int, *, fps: int = 5, gop: int = 250) -> Path:
    """A long H.264 mp4 for benchmarks, cheap to encode (x264 ultrafast, one keyframe every `gop` frames, as real
    files have): a textured gradient panning right, with a patch of fresh noise each frame so that inter frames
    carry real data (about 5 Mbit/s at 1080p). Frames are written as YUV 4:2:0 directly."""
    path, rng = Path(path), np.random.default_rng(0)
    luma = (np.add.outer(np.arange(height), np.arange(width)) % 256).astype(np.uint8)
    luma ^= rng.integers(0, 32, size=luma.shape, dtype=np.uint8)
    chroma = np.full((height // 2, width), 128, np.uint8)
    noise = rng.integers(0, 256, size=(height // 4, width // 4), dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
        for t in range(round(seconds * fps)):
            plane = np.roll(luma, 4 * t, axis=1)
            plane[: height // 4, : width // 4] = np.roll(noise, 37 * t)
            frame = av.VideoFrame.from_ndarray(np.concatenate([plane, chroma]), format="yuv420p")
            frame.pts = t
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
