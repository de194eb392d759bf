"""Synthetic clips for demos, tests and benchmarks, written as real mp4 files with PyAV: a square moving over a
static background, optionally with a hard scene cut; frames that carry their own index; and long clips that
compress like camera footage (`write_panning_clip`) for the decoding benchmark."""

import math
from pathlib import Path

import av
import numpy as np
from PIL import Image


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


def texture(rng: np.random.Generator, height: int, width: int, scales: tuple[int, ...]) -> np.ndarray:
    """float32 [height, width] in 0..1: value noise summed over `scales` (pixels per random value, weights halving
    from the coarsest), like the mix of smooth areas and detail in a natural scene."""
    total = np.zeros((height, width), np.float32)
    for n, scale in enumerate(scales):
        coarse = rng.random((height // scale + 2, width // scale + 2), dtype=np.float32)
        total += np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)) / 2**n
    return (total - total.min()) / (total.max() - total.min())


def panning_scene(width: int, height: int, seed: int = 0) -> tuple:
    """A scene to pan over: Y [1.25 H, 3 W] and U, V stacked [2, 0.625 H, 1.5 W] (uint8, 4:2:0, luma in video
    range 16..235) of textured ground with hard-edged blocks; three textured sprites Y [S, S] (S = H / 6) that move
    over it; sensor grain, 4 fields uint8 [H, W] of 0..6 added to each frame in turn (minus 3)."""
    rng = np.random.default_rng(seed)
    tall, wide = (round(1.25 * height) // 4) * 4, 3 * width
    scales = tuple(s for s in (max(tall // 4, 8), 48, 12, 3) if s <= tall)
    luma = 30 + 190 * texture(rng, tall, wide, scales)
    for _ in range(40):  # blocks: edges a codec must keep
        top, left = rng.integers(0, tall - height // 8), rng.integers(0, wide - width // 8)
        luma[top : top + rng.integers(8, height // 4), left : left + rng.integers(8, width // 6)] *= rng.uniform(
            0.5, 1.2
        )
    chroma = 128 + 40 * (texture(rng, 2 * tall // 2, wide // 2, scales[:2]) - 0.5)
    chroma = np.stack([chroma[: tall // 2], chroma[tall // 2 :][::-1]])
    side = max(height // 6, 4) // 2 * 2
    sprites = [(16 + 219 * texture(rng, side, side, (max(side // 4, 1), 2))).astype(np.uint8) for _ in range(3)]
    grain = [rng.integers(0, 7, size=(height, width), dtype=np.uint8) for _ in range(4)]
    return np.clip(luma, 16, 235).astype(np.uint8), chroma.astype(np.uint8), sprites, grain


def panning_frame(scene, t: int, fps: int, width: int, height: int) -> np.ndarray:
    """Frame t of a camera panning over `scene` (back and forth over 2 widths in a minute, swaying up and down) with its
    sprites moving across, and grain: yuv420p as one uint8 array [1.5 H, W]."""
    luma, chroma, sprites, grain = scene
    travel, period = luma.shape[1] - width, 60 * fps
    phase = (t % period) / period
    x = round(travel * (2 * phase if phase < 0.5 else 2 - 2 * phase)) // 2 * 2
    y = round((luma.shape[0] - height) * (0.5 + 0.5 * math.sin(2 * math.pi * t / (6 * fps)))) // 2 * 2
    plane = luma[y : y + height, x : x + width].copy()
    for n, sprite in enumerate(sprites):
        side = sprite.shape[0]
        top = round((height - side) * (0.5 + 0.45 * math.sin(2 * math.pi * (t / (13 * fps) + n / 3))))
        left = round((width - side) * (0.5 + 0.45 * math.cos(2 * math.pi * (t / (17 * fps) + n / 5))))
        plane[top : top + side, left : left + side] = sprite
    plane += grain[t % len(grain)]
    plane -= 3
    u, v = (c[y // 2 : (y + height) // 2, x // 2 : (x + width) // 2] for c in chroma)
    return np.concatenate([plane, u.reshape(height // 4, width), v.reshape(height // 4, width)])


def encode_panning(path: Path, frames: int, width: int, height: int, fps: int, gop: int, options: dict) -> None:
    """`frames` frames of the panning scene as an H.264 mp4, one keyframe (IDR, closed GOP) every `gop` frames."""
    scene = panning_scene(width, height)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"} | options
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(panning_frame(scene, t, fps, width, height), format="yuv420p")
            frame.pts = t
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def repeat_segment(segment: Path, path: Path, frames: int) -> None:
    """Write the packets of `segment` (closed GOPs) again and again with shifted pts and dts, without re-encoding,
    up to `frames` frames (a whole number of the segment's GOPs: a prefix of its packets in decode order)."""
    with av.open(str(segment)) as source, av.open(str(path), mode="w") as target:
        template = source.streams.video[0]
        output = target.add_stream_from_template(template)
        step = round(1 / (template.average_rate * template.time_base))  # pts per frame
        start, length = template.start_time or 0, template.frames
        for first in range(0, frames, length):
            with av.open(str(segment)) as again:
                for packet in again.demux(again.streams.video[0]):
                    if not packet.size or packet.pts - start >= (frames - first) * step:
                        continue
                    packet.pts, packet.dts, packet.stream = packet.pts + first * step, packet.dts + first * step, output
                    target.mux(packet)


def write_panning_clip(
    path: str | Path,
    seconds: float,
    width: int,
    height: int,
    *,
    fps: int = 30,
    gop: int = 60,
    preset: str = "superfast",
    crf: int = 23,
    segment: float = 60.0,
) -> Path:
    """A long H.264 mp4 for benchmarks that compresses like camera footage: a textured scene panned over, with
    moving sprites, x264 `preset` at `crf` with its B-frames, one IDR every `gop` frames. The clip is a whole
    number of GOPs (the nearest to `seconds`); it encodes about `segment` seconds (whole GOPs) once and writes
    them repeatedly with shifted timestamps, so an hour of 1080p costs a minute's encode."""
    path = Path(path)
    gops = max(1, round(seconds * fps / gop))
    piece = path.with_name(f"{path.stem}.segment.mp4")
    encode_panning(
        piece,
        min(gops, max(1, round(segment * fps / gop))) * gop,
        width,
        height,
        fps,
        gop,
        {"preset": preset, "crf": str(crf)},
    )
    try:
        repeat_segment(piece, path, gops * gop)
    finally:
        piece.unlink()
    return path
