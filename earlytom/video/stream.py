"""The entry points: a source (file, image directory, array) to a planned FrameStream or a stacked Video, and
read_ahead, which decodes a stream ahead of its consumer."""

import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from earlytom.video.frames import FrameStream, Video, VideoError, VideoFile, frame_size, is_count, stack
from earlytom.video.images import stream_array, stream_image_dir
from earlytom.video.nvdec import nvdec_available, stream_nvdec
from earlytom.video.pyav import stream_file
from earlytom.video.sampling import DECODES, SAMPLINGS


def read_ahead(frames: Iterator[torch.Tensor], depth: int) -> Iterator[torch.Tensor]:
    """Run `frames` (e.g. a FrameStream) in a background thread up to `depth` items ahead of the consumer, so
    decoding overlaps whatever consumes the frames (FFmpeg and swscale release the GIL). Items arrive in order;
    an exception in the producer is raised in the consumer; stopping early stops the producer."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise VideoError(f"depth = {depth!r}: must be an integer >= 1 (frames decoded ahead)")
    slots, stop, done = queue.Queue(maxsize=depth), threading.Event(), object()

    def offer(item) -> bool:
        """Put item in the queue unless the consumer stops first."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(frames)
        try:
            for frame in source:
                if not offer((frame, None)):
                    return
            offer((done, None))
        except BaseException as error:  # handed to the consumer, raised there
            offer((done, error))
        finally:
            if hasattr(source, "close"):  # a generator: closes its file
                source.close()

    worker = threading.Thread(target=produce, name="video-decode", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def check_arguments(num_frames, sampling: str, decode: str, fps: float) -> None:
    """Refuse arguments outside their range, naming the value and the range (size: see frame_size)."""
    if num_frames is None:
        raise VideoError("frames = None: give the number of frames to sample (an integer >= 1)")
    if not is_count(num_frames):
        raise VideoError(f"frames = {num_frames!r}: must be an integer >= 1")
    if sampling not in SAMPLINGS:
        raise VideoError(f"sampling = {sampling!r}: must be one of {', '.join(SAMPLINGS)}")
    if decode not in DECODES:
        raise VideoError(f"decode = {decode!r}: must be one of {', '.join(DECODES)}")
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < float("inf"):
        raise VideoError(f"fps = {fps!r}: must be a finite number > 0 (the frame rate of images and arrays)")


def not_nvdec(sampling: str, file: VideoFile) -> str:
    """Why a video for a CUDA device decodes with PyAV."""
    if not nvdec_available():
        return "PyNvVideoCodec is not installed (earlytom[nvdec])"
    return "sampling is keyframe" if sampling != "uniform" else f"stream {file.stream} was chosen"


def stream_video(
    source: str | Path | VideoFile | np.ndarray | torch.Tensor,
    num_frames: int,
    *,
    size: int | tuple[int, int] | None = None,
    sampling: str = "uniform",
    decode: str = "seek",
    threads: bool = True,
    device: str | torch.device | None = None,
    fps: float = 1.0,
) -> FrameStream:
    """Plan the sampling of up to `num_frames` frames and return them as an iterator that decodes on demand.

    size: frames come out uint8 [height, width, 3] for size = (height, width), [size, size, 3] for an int (the
    model's input size), resized per frame as they decode; None keeps each source's own size. sampling: "uniform"
    (LLaVA-OneVision's linspace) or "keyframe" (the keyframe nearest each uniform sample). decode: "seek" or "full"
    (every frame, the reference). threads: FFmpeg's threading. device: a CUDA device selects NVDEC when
    PyNvVideoCodec is installed (uniform sampling, no stream chosen; frames stay on the GPU at their own size). fps:
    the frame rate of image directories and arrays. A file's video stream is the one with the most frames, or the one
    a VideoFile names; its frames (and images, by their EXIF orientation) come out upright."""
    check_arguments(num_frames, sampling, decode, fps)
    size = None if size is None else frame_size(size)
    if isinstance(source, np.ndarray | torch.Tensor):
        return stream_array(source, num_frames, size, fps)
    if not isinstance(source, str | os.PathLike):
        raise TypeError(
            f"video = {source!r} ({type(source).__name__}): pass a path (str or Path) to a video file or an image "
            "directory, a VideoFile, or a uint8 array [B, H, W, 3]"
        )
    file = source if isinstance(source, VideoFile) else VideoFile(Path(source))
    path = file.path
    if not path.exists():
        raise VideoError(f"video {path} does not exist; pass a video file, an image directory or a frame array")
    if path.is_dir():
        if file.stream is not None:
            raise VideoError(f"stream = {file.stream}: {path} is an image directory; a stream applies to video files")
        return stream_image_dir(path, num_frames, size, fps)
    if path.stat().st_size == 0:
        raise VideoError(f"video {path} is empty (0 bytes); pass a complete video file")
    if device is not None and torch.device(device).type == "cuda":
        if nvdec_available() and sampling == "uniform" and file.stream is None:
            return stream_nvdec(path, num_frames, torch.device(device))
        stream = stream_file(file, num_frames, size, sampling, decode, threads)
        stream.notes.append(f"decoded on the CPU with PyAV, not NVDEC: {not_nvdec(sampling, file)}")
        return stream
    return stream_file(file, num_frames, size, sampling, decode, threads)


def load_video(source: str | Path | np.ndarray | torch.Tensor, num_frames: int, **options) -> Video:
    """All sampled frames at once: uint8 [B, H, W, 3] (see stream_video for the options)."""
    stream = stream_video(source, num_frames, **options)
    frames = list(stream)
    if len({tuple(f.shape) for f in frames}) > 1:
        raise VideoError(f"frames of {source} differ in size; pass size= to resize them to one")
    return Video(stack(frames), stream.timestamps, stream.notes, stream.indices)
