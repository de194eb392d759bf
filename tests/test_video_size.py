"""Non-square frame sizes: `size=(height, width)` gives [height, width, 3] frames from every source (a video file on
each decode path, an image directory, an array), with the pixels of PIL's bicubic resize of the full-size frame;
an int stays a square; resize_rgb takes either; malformed sizes are refused naming the value."""

import av
import numpy as np
import pytest
import torch
from PIL import Image

from earlytom.runtime.synthetic import frame_index, indexed_frames, write_clip
from earlytom.video import VideoError, load_video, pyav, resize_rgb

TOTAL = 40  # frames in the clip, one keyframe every 7: several forward runs for 6 samples
HEIGHT, WIDTH = 24, 60  # the target: wider than tall, unlike the 64 x 80 source


def pil_resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [height, width, 3] with PIL's bicubic (PIL takes (width, height))."""
    return np.array(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))


def gradients(count: int, height: int, width: int) -> np.ndarray:
    """uint8 [count, height, width, 3]: red rises along x, green along y, blue with the frame: every axis tells."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 20 * t)], -1) for t in range(count)]
    return np.stack(frames).astype(np.uint8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("size") / "clip.mp4", indexed_frames(TOTAL), gop=7)


@pytest.fixture
def parallel(monkeypatch):
    """Three usable cores, and a record of the worker count of each parallel decode."""
    workers, original = [], pyav.decode_parallel

    def recorded(container, path, grid, runs, size, count):
        workers.append(count)
        return original(container, path, grid, runs, size, count)

    monkeypatch.setattr(pyav, "usable_cores", lambda: 3)
    monkeypatch.setattr(pyav, "decode_parallel", recorded)
    return workers


def test_video_file_decodes_at_a_non_square_size_on_every_path(clip, parallel):
    full = load_video(clip, 6, size=(HEIGHT, WIDTH), decode="full")
    assert full.frames.shape == (6, HEIGHT, WIDTH, 3)
    assert [frame_index(frame.numpy()) for frame in full.frames] == full.indices == [0, 7, 15, 23, 31, 39]
    for options in ({}, {"threads": False}, {"size": [HEIGHT, WIDTH]}):  # parallel runs, one decoder, a list
        assert torch.equal(load_video(clip, 6, **({"size": (HEIGHT, WIDTH)} | options)).frames, full.frames)
    assert parallel == [3, 3]
    keyframes = load_video(clip, 6, size=(HEIGHT, WIDTH), sampling="keyframe")
    assert keyframes.frames.shape == (6, HEIGHT, WIDTH, 3)
    nearest = [0, 7, 14, 21, 28, 35]  # the keyframe (every 7th frame) nearest each sample above, ties earlier
    assert [frame_index(frame.numpy()) for frame in keyframes.frames] == keyframes.indices == nearest


def test_a_decoded_frame_has_the_pixels_of_pils_resize(clip):
    """swscale's bicubic against PIL's on the full-size frame PyAV decodes: the same up to the two filters."""
    video = load_video(clip, 6, size=(HEIGHT, WIDTH))
    with av.open(str(clip)) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    expected = pil_resize(decoded[video.indices[2]], HEIGHT, WIDTH).astype(int)
    difference = np.abs(video.frames[2].numpy().astype(int) - expected)
    assert difference.mean() < 1.5 and difference.max() <= 8  # measured 0.8 and 2


def test_image_directory_frames_are_pils_resize_at_a_non_square_size(tmp_path):
    frames = gradients(5, 30, 50)
    for n, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{n}.png")
    video = load_video(tmp_path, 3, size=(40, 18))
    assert video.frames.shape == (3, 40, 18, 3) and video.indices == [0, 2, 4]
    assert np.array_equal(video.frames[1].numpy(), pil_resize(frames[2], 40, 18))


def test_array_frames_are_pils_resize_at_a_non_square_size():
    frames = gradients(4, 36, 20)
    video = load_video(frames, 4, size=(14, 44))
    assert video.frames.shape == (4, 14, 44, 3)
    assert np.array_equal(video.frames[3].numpy(), pil_resize(frames[3], 14, 44))


def test_an_int_size_is_the_square_pair(clip):
    frames = gradients(2, 36, 20)
    assert torch.equal(load_video(frames, 2, size=16).frames, load_video(frames, 2, size=(16, 16)).frames)
    assert load_video(clip, 2, size=16).frames.shape == (2, 16, 16, 3)


def test_resize_rgb_takes_a_height_width_pair_as_pils_bicubic_does():
    """torch's antialiased bicubic in float against PIL's in uint8: the same up to rounding where no ringing passes
    0 or 255 (PIL clips it between its two passes, torch only at the end)."""
    frame = gradients(1, 50, 90)[0]
    frame[10:20, 5:45] = 200  # an edge along each axis (below 255: no ringing clipped)
    resized = resize_rgb(torch.from_numpy(frame), (22, 64))
    assert resized.shape == (3, 22, 64) and resized.dtype == torch.float32
    difference = np.abs(resized.round().permute(1, 2, 0).numpy() - pil_resize(frame, 22, 64))
    assert difference.mean() < 0.1 and difference.max() <= 2  # measured 0.01 and 1
    pixels = torch.from_numpy(frame)
    assert torch.equal(resize_rgb(pixels, 24), resize_rgb(pixels, (24, 24)))
    assert torch.equal(resize_rgb(pixels, (50, 90)), pixels.permute(2, 0, 1).float())  # already that size


@pytest.mark.parametrize("size", [(0, 4), (4,), (4, 4, 4), (4, 4.0), (True, 4), "44", 4.0, (None, 4)])
def test_malformed_sizes_are_refused_naming_the_value(size):
    with pytest.raises(VideoError, match=r"size = .*: must be an integer >= 1 \(a square\) or a \(height, width\)"):
        load_video(np.zeros((2, 8, 8, 3), np.uint8), 2, size=size)
    with pytest.raises(VideoError, match="size = "):
        resize_rgb(torch.zeros(8, 8, 3, dtype=torch.uint8), size)
