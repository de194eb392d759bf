"""Video input: sample B frames uniformly (as LLaVA-OneVision does), decode only those, resize each frame to the
model's input size as it decodes.

Accepted sources: a video file (`pyav`, or NVDEC on a CUDA device with PyNvVideoCodec installed: `nvdec`; its video
stream with the most frames, or the one a `VideoFile` names; frames turned upright by their display matrix), a
directory of images (natural order: 1, 2, ..., 10; upright by their EXIF orientation) or a uint8 array [B, H, W, 3]
(`images`). `sampling` plans which frames to decode; `stream` holds the entry points; `frames` the types every source
gives.

Memory stays bounded by the sampled frames at the target size: with `size` set, no full-size RGB frame exists
beyond the one being converted (one per worker), and no full-size float array at all.
"""

from earlytom.video.frames import FrameStream, Video, VideoError, VideoFile, resize_rgb, stack
from earlytom.video.nvdec import nvdec_available
from earlytom.video.sampling import DECODES, SAMPLINGS, uniform_indices
from earlytom.video.stream import load_video, read_ahead, stream_video

__all__ = [
    "DECODES",
    "SAMPLINGS",
    "FrameStream",
    "Video",
    "VideoError",
    "VideoFile",
    "load_video",
    "nvdec_available",
    "read_ahead",
    "resize_rgb",
    "stack",
    "stream_video",
    "uniform_indices",
]
