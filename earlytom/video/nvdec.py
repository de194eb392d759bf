"""NVDEC (PyNvVideoCodec): optional, only on CUDA."""

from pathlib import Path

import torch

from earlytom.video.frames import FrameStream
from earlytom.video.sampling import shortfall_note, uniform_indices


def nvdec_available() -> bool:
    try:
        import PyNvVideoCodec  # noqa: F401
    except ImportError:
        return False
    return True


def stream_nvdec(path: Path, num_frames: int, device: torch.device) -> FrameStream:
    """Decode the uniform samples on the GPU with NVDEC; frames stay on `device` as uint8 [H, W, 3] (RGB).
    Untested here (no GPU on the build machine); resizing is left to preprocess, on the GPU."""
    import PyNvVideoCodec as nvc

    decoder = nvc.SimpleDecoder(
        str(path), gpu_id=device.index or 0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB
    )
    total = len(decoder)
    indices = uniform_indices(total, num_frames)
    frames = (torch.from_dlpack(frame) for frame in decoder.get_batch_frames_by_index(indices))
    return FrameStream(indices, [float("nan")] * len(indices), shortfall_note(total, num_frames, str(path)), frames)
