"""Video input: decoding only the sampled frames gives exactly the frames a full decode gives, on real mp4 files
whose frames carry their own index; keyframe sampling; truncated files; image directories (order and pixel modes);
argument boundaries; memory bounded by the model's input size."""

import json
import math
import struct
import subprocess
import sys
import time
import zlib

import av
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from earlytom.models.llava_onevision import LlavaProcessor
from earlytom.runtime.synthetic import frame_index, indexed_frames, moving_square_frames, write_clip, write_long_clip
from earlytom.video import VideoError, load_video, nvdec_available, read_ahead, stream_video, uniform_indices

TOTAL = 120  # frames in the indexed clips, 8 fps


def linspace_rule(total: int, count: int) -> list[int]:
    """LLaVA-OneVision's np.linspace(0, total - 1, count, dtype=int), written out: float steps truncated, the last
    sample exactly the last frame."""
    if total <= count:
        return list(range(total))
    if count == 1:
        return [0]
    step = (total - 1) / (count - 1)
    return [int(k * step) for k in range(count - 1)] + [total - 1]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """{gop: mp4 path} for 120-frame clips whose frame t shows t; gop None = x264's defaults (B-frames, open
    keyframe placement), an int = exactly one keyframe every gop frames."""
    root = tmp_path_factory.mktemp("indexed")
    frames = indexed_frames(TOTAL)
    return {gop: write_clip(root / f"gop{gop}.mp4", frames, gop=gop) for gop in (None, 1, 7, 50)}


def shown(video) -> list[int]:
    """The index each decoded frame shows."""
    return [frame_index(frame.numpy()) for frame in video.frames]


@given(total=st.integers(1, 100_000), count=st.integers(1, 512))
def test_uniform_indices_follow_llava_onevisions_linspace(total, count):
    indices = uniform_indices(total, count)
    assert indices == linspace_rule(total, count)
    assert (
        indices[0] == 0
        and indices[-1] == (total - 1 if count > 1 else 0)
        and len(set(indices)) == len(indices) == min(total, count)
    )
    exact = [k * (total - 1) // max(count - 1, 1) for k in range(len(indices))] if total > count else indices
    assert all(0 <= e - i <= 1 for i, e in zip(indices, exact, strict=True))  # float truncation: at most 1 below


@pytest.mark.parametrize("gop", [None, 1, 7, 50])
@pytest.mark.parametrize("count", [1, 2, 7, 32, TOTAL, TOTAL + 5])
def test_seek_decode_gives_exactly_the_frames_of_a_full_decode(indexed, gop, count):
    full = load_video(indexed[gop], count, decode="full")
    seek = load_video(indexed[gop], count)
    assert torch.equal(seek.frames, full.frames)
    assert seek.indices == full.indices == linspace_rule(TOTAL, count)
    assert shown(seek) == linspace_rule(TOTAL, count)  # the content: the sampled frames, spread over the whole clip
    assert seek.timestamps == full.timestamps == [i / 8 for i in seek.indices]


def test_resized_seek_decode_matches_resized_full_decode(indexed):
    full = load_video(indexed[None], 9, decode="full", size=40)
    seek = load_video(indexed[None], 9, size=40, threads=False)
    assert seek.frames.shape == (9, 40, 40, 3) and torch.equal(seek.frames, full.frames)
    assert shown(seek) == linspace_rule(TOTAL, 9)


def test_stream_video_yields_the_frames_load_video_stacks(indexed):
    stream = stream_video(indexed[7], 6, size=32)
    assert len(stream) == 6 and stream.indices == linspace_rule(TOTAL, 6)  # planned before any frame decodes
    frames = list(stream)
    assert torch.equal(torch.stack(frames), load_video(indexed[7], 6, size=32).frames)


def test_container_without_a_frame_count_is_decoded_fully_and_says_so(tmp_path):
    path = tmp_path / "clip.mkv"
    with av.open(str(path), mode="w") as container:  # Matroska headers state no frame count
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 80, 64, "yuv420p"
        for frame in indexed_frames(40):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    video = load_video(path, 6, sampling="keyframe")
    assert shown(video) == video.indices == linspace_rule(40, 6)
    assert video.timestamps == [i / 8 for i in video.indices]
    assert video.notes == [
        f"{path} states no constant frame rate and frame count: decoded every frame to sample",
        "keyframe sampling needs a constant frame rate and decode='seek'; sampled uniformly",
    ]


def test_read_ahead_decodes_ahead_of_the_consumer_in_order(indexed):
    stream = stream_video(indexed[7], 12, size=32)
    decoded = []
    ahead = read_ahead((decoded.append(f) or f for f in stream), depth=3)
    first = next(ahead)
    deadline = time.monotonic() + 30
    while len(decoded) < 5 and time.monotonic() < deadline:  # 1 taken + 3 queued + 1 waiting to be queued
        time.sleep(0.01)
    assert len(decoded) == 5  # decoded ahead while the consumer did nothing, and no further than the bound
    rest = list(ahead)
    assert [frame_index(f.numpy()) for f in [first, *rest]] == linspace_rule(TOTAL, 12)


def test_read_ahead_raises_the_decoders_error_in_the_consumer(tmp_path):
    data = write_clip(tmp_path / "whole.mp4", indexed_frames(TOTAL), gop=10, faststart=True).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(VideoError, match="truncated or damaged"):
        list(read_ahead(stream_video(tmp_path / "cut.mp4", 16), depth=2))


def test_keyframe_sampling_takes_the_keyframe_nearest_each_uniform_sample(indexed):
    video = load_video(indexed[7], 8, sampling="keyframe")
    uniform = linspace_rule(TOTAL, 8)
    nearest = [min(range(0, TOTAL, 7), key=lambda k, i=i: (abs(k - i), k)) for i in uniform]
    assert shown(video) == video.indices == nearest and video.notes == []
    assert video.timestamps == [k / 8 for k in nearest]


def test_keyframe_sampling_falls_back_to_uniform_when_keyframes_are_too_sparse(indexed):
    video = load_video(indexed[50], 8, sampling="keyframe")  # keyframes 0, 50, 100: 3 for 8 samples
    assert shown(video) == video.indices == linspace_rule(TOTAL, 8)
    assert video.notes == [
        f"keyframe sampling: {indexed[50]} has too few keyframes for 8 distinct frames (3 distinct); "
        "decoded the uniform samples instead"
    ]


def test_truncated_video_with_its_index_first_is_refused_saying_how_much_decodes(tmp_path):
    data = write_clip(tmp_path / "whole.mp4", indexed_frames(TOTAL), gop=10, faststart=True).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    for decode in ("seek", "full"):
        with pytest.raises(VideoError) as caught:
            load_video(cut, 16, decode=decode)
        message = str(caught.value)
        reached = int(message.split("fails to decode after frame ")[1].split()[0])
        assert 0 < reached < TOTAL and f"of the {TOTAL} its header states" in message
        assert str(cut) in message and "truncated or damaged" in message


def test_truncated_video_without_its_index_is_refused(tmp_path):
    data = write_clip(tmp_path / "whole.mp4", indexed_frames(TOTAL), gop=10).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) is written last, and is far smaller than half
    with pytest.raises(VideoError, match=rf"cannot read video {cut}: .*a truncated mp4 loses its index"):
        load_video(cut, 16)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d / "missing.mp4", "does not exist; pass a video file, an image directory or a frame array"),
        (lambda d: d, "has no images"),
        (lambda d: write(d / "empty.mp4", b""), "is empty"),
        (lambda d: write(d / "notes.txt", b"not a video " * 100), "cannot read video"),
    ],
)
def test_unusable_paths_are_refused_naming_the_path(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(VideoError, match=match) as caught:
        load_video(path, 4)
    assert str(path) in str(caught.value)


def write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "options, match",
    [
        ({"num_frames": 0}, "frames = 0: must be an integer >= 1"),
        ({"num_frames": -1}, "frames = -1"),
        ({"num_frames": 2.5}, "frames = 2.5"),
        ({"num_frames": True}, "frames = True"),
        ({"num_frames": None}, "frames = None"),
        ({"size": 0}, "size = 0: must be an integer >= 1"),
        ({"size": 8.0}, "size = 8.0"),
        ({"sampling": "random"}, "sampling = 'random': must be one of uniform, keyframe"),
        ({"decode": "gpu"}, "decode = 'gpu': must be one of seek, full"),
        ({"fps": 0}, "fps = 0"),
        ({"fps": math.nan}, "fps = nan"),
        ({"fps": math.inf}, "fps = inf"),
        ({"fps": -2.0}, "fps = -2.0"),
    ],
)
def test_out_of_range_arguments_are_refused_with_their_range(options, match):
    arguments = {"num_frames": 4} | options
    with pytest.raises(VideoError, match=match):
        load_video(np.zeros((2, 8, 8, 3), np.uint8), **arguments)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png16(path, rgb16: np.ndarray):
    """A 16-bit RGB PNG (Pillow cannot write one): uint16 [H, W, 3]."""
    height, width, _ = rgb16.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb16)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )
    return path


GREY = np.full((6, 8), 0x8080, np.uint16)  # 16-bit mid grey: 128 in 8 bits


@pytest.mark.parametrize(
    "save, expected",
    [
        (lambda p: Image.fromarray(GREY).save(p / "a.png"), (128, 128, 128)),  # I;16 grey: not white
        (lambda p: write_png16(p / "a.png", np.stack([GREY, GREY // 2, GREY // 4], -1)), (128, 64, 32)),
        (lambda p: Image.new("RGB", (8, 6), (200, 100, 50)).quantize(4).save(p / "a.png"), (200, 100, 50)),
        (lambda p: Image.new("LA", (8, 6), (90, 40)).save(p / "a.png"), (90, 90, 90)),
        (lambda p: Image.new("RGBA", (8, 6), (10, 20, 30, 0)).save(p / "a.png"), (10, 20, 30)),
        (lambda p: Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(p / "a.tif"), (255, 0, 0)),
        (lambda p: Image.new("1", (8, 6), 1).save(p / "a.bmp"), (255, 255, 255)),
        (lambda p: Image.new("L", (8, 6), 77).save(p / "a.png"), (77, 77, 77)),
    ],
    ids=["grey16", "rgb16", "palette", "LA", "RGBA", "CMYK", "1-bit", "L"],
)
def test_every_common_image_mode_becomes_the_right_rgb(tmp_path, save, expected):
    save(tmp_path)
    video = load_video(tmp_path, 1)
    assert video.frames.shape == (1, 6, 8, 3)
    assert (video.frames[0] == torch.tensor(expected, dtype=torch.uint8)).all()


def test_image_directory_is_read_in_natural_order(tmp_path):
    frames = indexed_frames(12, height=16, width=40)
    for i, frame in enumerate(frames, start=1):
        Image.fromarray(frame).save(tmp_path / f"frame{i}.png")  # frame1 ... frame12: not 1, 10, 11, 12, 2, ...
    (tmp_path / "notes.txt").write_text("not an image")
    video = load_video(tmp_path, 12)
    assert shown(video) == list(range(12)) and video.indices == list(range(12))


def test_decompression_bomb_image_is_refused_before_decoding(tmp_path):
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 10^10 grey pixels claimed
    (tmp_path / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(VideoError, match=r"bomb\.png is too large to decode safely .*resize it"):
        load_video(tmp_path, 1)


def test_resizing_while_decoding_matches_resizing_after(clips):
    """Frames resized by swscale as they decode, then normalised, against today's path (full-size frames resized
    in float by torch): the same pixels up to the two bicubic implementations' differences."""
    settings = LlavaProcessor(size=72, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    before = settings(load_video(clips["cut"], 8).frames)  # 96 x 96 frames resized in preprocess
    after = settings(load_video(clips["cut"], 8, size=72).frames)  # 72 x 72 from the decoder
    difference = (after - before).abs() / 2 * 255  # in 0..255 pixel units
    assert after.shape == before.shape == (8, 3, 72, 72)
    assert difference.mean() < 2.0 and difference.quantile(0.99) < 8  # measured 1.1 and 4.0; edges differ most


def test_resizing_arrays_per_frame_matches_resizing_after():
    """Pillow's bicubic on uint8 frames against torch's antialiased bicubic in float: the same up to rounding."""
    frames = moving_square_frames(8, size=96, cut_at=4)
    settings = LlavaProcessor(size=72, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    before = settings(torch.from_numpy(frames))
    after = settings(load_video(frames, 8, size=72).frames)
    difference = (after - before).abs() / 2 * 255
    assert difference.mean() < 0.5 and difference.quantile(0.99) < 1.0  # measured 0.23 and 0.50


def test_array_frames_are_resized_per_frame_without_full_size_floats(tmp_path):
    array = np.zeros((3, 3000, 4000, 3), np.uint8)
    array[:, :, 2000:] = 255
    video = load_video(array, 3, size=72)
    assert video.frames.shape == (3, 72, 72, 3)
    assert video.frames[0, :, :34].max() == 0 and video.frames[0, :, 38:].min() == 255


MEMORY_PROBE = """
import json, resource, sys
from earlytom.models.llava_onevision import LlavaProcessor
from earlytom.video import load_video
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
frames = load_video(sys.argv[1], 4, size=72).frames
pixels = LlavaProcessor(size=72)(frames)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grown_kib": after - before, "shape": list(pixels.shape)}))
"""


def test_4000x3000_video_decodes_in_memory_bounded_by_the_input_size(tmp_path):
    """4 frames of 4000 x 3000 are 576 MB as float32 (what preprocess used to make of them) and 144 MB as RGB: peak
    memory grows by the decoder's own YUV buffers (about 150 MB with frame threading), not by full-size frames."""
    path = write_long_clip(tmp_path / "big.mp4", 0.8, 4000, 3000, fps=5, gop=2)
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True, check=True)
    result = json.loads(probe.stdout)
    assert result["shape"] == [4, 3, 72, 72]
    float32_frames_kib = 4 * 4000 * 3000 * 3 * 4 // 1024
    assert result["grown_kib"] < float32_frames_kib // 2, result


def test_cuda_without_pynvvideocodec_decodes_on_cpu_and_says_so(indexed):
    if nvdec_available():
        pytest.skip("PyNvVideoCodec is installed: this checks the note when it is not")
    video = load_video(indexed[7], 4, device="cuda")
    assert shown(video) == linspace_rule(TOTAL, 4)
    assert video.notes == ["decoded on the CPU with PyAV, not NVDEC: PyNvVideoCodec is not installed (earlytom[nvdec])"]


@pytest.mark.skipif(not (nvdec_available() and torch.cuda.is_available()), reason="needs PyNvVideoCodec and a GPU")
def test_nvdec_gives_the_frames_pyav_gives(indexed):
    gpu = load_video(indexed[7], 6, device="cuda")
    assert gpu.frames.is_cuda and [frame_index(f.cpu().numpy()) for f in gpu.frames] == linspace_rule(TOTAL, 6)
