"""Image directories (natural order: 1, 2, ..., 10) and uint8 frame arrays [B, H, W, 3], resized with Pillow."""

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from earlytom.video.frames import FrameStream, VideoError
from earlytom.video.sampling import shortfall_note, uniform_indices

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def natural_key(path: Path) -> list:
    """'frame10.png' after 'frame9.png': digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def rgb_image(image: Image.Image, path: Path) -> Image.Image:
    """Any common mode -> RGB: 16-bit greyscale scaled to 8 bits (not clipped), palette, LA, RGBA (alpha dropped,
    as the model's own processor does), CMYK, 1-bit."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        raise VideoError(f"image {path} has floating-point pixels (mode F); save it as an 8- or 16-bit image")
    return image.convert("RGB")


def read_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 [height, width, 3] at size = (height, width) (or [H, W, 3]), upright by its EXIF orientation (size
    meaning the upright image's); images above Pillow's pixel limit are refused as decompression bombs, before their
    pixels are decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                rgb = rgb_image(ImageOps.exif_transpose(image), path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise VideoError(
                f"image {path} is too large to decode safely ({error}); resize it, or raise "
                "PIL.Image.MAX_IMAGE_PIXELS if you trust it"
            ) from error
        except OSError as error:
            raise VideoError(f"cannot read image {path}: {error}") from error
    if size is not None:
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.array(rgb)


def resize_frame(frame: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """uint8 [H, W, 3] -> [height, width, 3] at size = (height, width) with Pillow's bicubic (antialiased);
    unchanged when size is None."""
    if size is None:
        return frame
    resized = Image.fromarray(frame.numpy()).resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(resized))


def stream_image_dir(path: Path, num_frames: int, size: tuple[int, int] | None, fps: float) -> FrameStream:
    files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=natural_key)
    if not files:
        raise VideoError(
            f"directory {path} has no images ({', '.join(sorted(IMAGE_SUFFIXES))}); pass a directory "
            "of frames or a video file"
        )
    indices = uniform_indices(len(files), num_frames)
    frames = (torch.from_numpy(read_image(files[i], size)) for i in indices)
    return FrameStream(indices, [i / fps for i in indices], shortfall_note(len(files), num_frames, str(path)), frames)


def stream_array(source, num_frames: int, size: tuple[int, int] | None, fps: float) -> FrameStream:
    array = torch.as_tensor(source)
    if array.dim() != 4 or array.shape[-1] != 3 or array.dtype != torch.uint8 or array.shape[0] == 0:
        raise VideoError(f"a frame array must be uint8 [B, H, W, 3] with B >= 1, got {array.dtype} {list(array.shape)}")
    if 0 in array.shape[1:3]:
        raise VideoError(
            f"the frame array {list(array.shape)} has frames {array.shape[1]} pixels high and {array.shape[2]} wide: "
            "give frames of at least 1 x 1 pixel"
        )
    indices = uniform_indices(array.shape[0], num_frames)
    frames = (resize_frame(array[i].cpu(), size) for i in indices)
    notes = shortfall_note(array.shape[0], num_frames, "the frame array")
    return FrameStream(indices, [i / fps for i in indices], notes, frames)
