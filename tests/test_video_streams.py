"""Which video stream of a file is read (the one with the most frames, or the one named), frames turned upright by a
file's display matrix and an image's EXIF orientation, and frame arrays 0 pixels high or wide refused. The files are
made here with PyAV and Pillow; expected frames come from the unrotated file's own frames turned by NumPy, or from
the EXIF specification's eight orientations written out with NumPy. `earlytom run --stream N` reads stream N."""

import json
import re
import struct

import av
import numpy as np
import pytest
import torch
from PIL import Image

from earlytom.cli import main
from earlytom.runtime.synthetic import frame_index, indexed_frames, moving_square_frames, write_clip
from earlytom.video import VideoError, VideoFile, load_video, pyav, stream_video

HEIGHT, WIDTH = 32, 48
INVERTED = 2**10 - 1  # an inverted indexed frame t reads as INVERTED - t


def write_streams(path, streams: list[np.ndarray], audio_at: int | None = None):
    """A file holding one H.264 video stream per uint8 array [B, H, W, 3] of `streams` (8 fps, a keyframe every
    frame), and a short silent audio stream at position `audio_at` among them."""
    with av.open(str(path), "w") as container:
        videos = []
        for n, frames in enumerate(streams):
            if n == audio_at:
                audio = container.add_stream("pcm_s16le", rate=8000, layout="mono")
            video = container.add_stream("libx264", rate=8)
            video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            video.options = {"g": "1"}
            videos.append(video)
        if audio_at is not None:
            silence = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            silence.sample_rate, silence.pts = 8000, 0
            container.mux(audio.encode(silence))
            container.mux(audio.encode())
        for video, frames in zip(videos, streams, strict=True):
            for array in frames:
                container.mux(video.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
            container.mux(video.encode())
    return path


def shown(video) -> list[int]:
    return [frame_index(frame.numpy()) for frame in video.frames]


@pytest.fixture
def parallel(monkeypatch):
    """Three usable cores, and the worker counts of the parallel decodes."""
    workers, original = [], pyav.decode_parallel

    def recorded(*args):
        workers.append(args[-1])
        return original(*args)

    monkeypatch.setattr(pyav, "usable_cores", lambda: 3)
    monkeypatch.setattr(pyav, "decode_parallel", recorded)
    return workers


@pytest.fixture(scope="module")
def cover_first(tmp_path_factory):
    """Stream 0: one inverted frame (a cover picture); stream 1: 24 indexed frames."""
    path = tmp_path_factory.mktemp("streams") / "cover_first.mp4"
    return write_streams(path, [255 - indexed_frames(1, HEIGHT, WIDTH), indexed_frames(24, HEIGHT, WIDTH)])


@pytest.mark.parametrize(
    "options", [{"decode": "full"}, {"threads": False}, {"sampling": "keyframe"}, {"size": (40, 60)}]
)
def test_a_one_frame_first_stream_is_passed_over_for_the_real_video(cover_first, options):
    video = load_video(cover_first, 5, **options)
    assert video.indices == [0, 5, 11, 17, 23]  # linspace(0, 23, 5) truncated, counted on stream 1's 24 frames
    assert shown(video) == [0, 5, 11, 17, 23]


def test_the_chosen_stream_decodes_on_parallel_workers(cover_first, parallel):
    video = load_video(cover_first, 5)
    assert parallel == [3] and shown(video) == [0, 5, 11, 17, 23]  # the workers open stream 1 too, not stream 0


def test_the_longest_stream_wins_in_either_position(tmp_path):
    path = write_streams(tmp_path / "real_first.mp4", [indexed_frames(9, HEIGHT, WIDTH), 255 - indexed_frames(2)])
    video = load_video(path, 3)
    assert shown(video) == [0, 4, 8]


def test_equal_frame_counts_take_the_first_stream(tmp_path):
    path = write_streams(tmp_path / "tie.mp4", [255 - indexed_frames(6, HEIGHT, WIDTH), indexed_frames(6)])
    assert shown(load_video(path, 6)) == [INVERTED - t for t in range(6)]


def test_a_named_stream_is_read_even_when_shorter(cover_first):
    video = load_video(VideoFile(cover_first, stream=0), 5)
    assert video.indices == [0] and shown(video) == [INVERTED]
    assert any("only 1 decodable frames" in note for note in video.notes)
    assert shown(load_video(VideoFile(cover_first, stream=1), 2)) == [0, 23]


def test_frame_counts_missing_from_the_header_are_counted(tmp_path):
    """mkv states no frame counts: the packets are counted; stream 1 is audio, so the video streams are 0 and 2."""
    path = write_streams(
        tmp_path / "three.mkv", [255 - indexed_frames(2, HEIGHT, WIDTH), indexed_frames(7, HEIGHT, WIDTH)], audio_at=1
    )
    with av.open(str(path)) as container:
        assert [(s.index, s.type, s.frames) for s in container.streams] == [
            (0, "video", 0),
            (1, "audio", 0),
            (2, "video", 0),
        ]
    assert shown(load_video(path, 7)) == list(range(7))
    assert shown(load_video(VideoFile(path, 0), 7)) == [INVERTED, INVERTED - 1]
    with pytest.raises(VideoError, match=r"no video stream 1; its video streams are 0, 2 \("):
        load_video(VideoFile(path, 1), 4)  # the audio stream


def test_a_stream_index_past_the_file_names_the_valid_ones(cover_first):
    with pytest.raises(
        VideoError, match=r"stream = 5: .*cover_first.mp4 has no video stream 5; its video streams are 0, 1"
    ):
        stream_video(VideoFile(cover_first, stream=5), 4)


@pytest.mark.parametrize("stream", [-1, True, 1.0, "1"])
def test_a_stream_that_is_no_index_is_refused_naming_it(cover_first, stream):
    with pytest.raises(VideoError, match=rf"stream = {stream!r}: must be an integer >= 0"):
        VideoFile(cover_first, stream=stream)


def test_a_numpy_stream_index_is_taken(cover_first):
    assert VideoFile(cover_first, np.int64(1)).stream == 1 and type(VideoFile(cover_first, np.int64(1)).stream) is int


def test_a_stream_for_an_image_directory_is_refused(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "1.png")
    with pytest.raises(VideoError, match="stream = 0: .* is an image directory; a stream applies to video files"):
        stream_video(VideoFile(tmp_path, 0), 1)


def test_a_video_file_goes_where_a_path_goes(cover_first):
    source = VideoFile(str(cover_first), 1)
    assert source.path == cover_first and str(source) == str(cover_first) and cover_first.samefile(source)


# Rotation: a display matrix in the mp4 track header (tkhd), as FFmpeg's muxer writes it for `rotate` metadata and
# as phones write portrait video. 16.16 fixed point for a, b, c, d, tx, ty; 2.30 for u, v, w.
ONE, W_ONE = 1 << 16, 1 << 30
CLOCKWISE = {  # degrees the player turns the stored frame clockwise -> the tkhd matrix (a, b, u, c, d, v, tx, ty, w)
    90: (0, ONE, 0, -ONE, 0, 0, HEIGHT * ONE, 0, W_ONE),
    180: (-ONE, 0, 0, 0, -ONE, 0, WIDTH * ONE, HEIGHT * ONE, W_ONE),
    270: (0, -ONE, 0, ONE, 0, 0, 0, WIDTH * ONE, W_ONE),
}


def with_matrix(source, target, matrix: tuple[int, ...]):
    """A copy of mp4 `source` whose (version 0) track header carries `matrix`."""
    data = bytearray(source.read_bytes())
    box = data.index(b"tkhd")
    assert data[box + 4] == 0  # version 0: 4-byte times
    at = box + 4 + 4 + 4 + 4 + 4 + 4 + 4 + 8 + 2 + 2 + 2 + 2  # flags, times, track, reserved, duration, layer...
    data[at : at + 36] = struct.pack(">9i", *matrix)
    target.write_bytes(data)
    return target


def marked_frames(count: int) -> np.ndarray:
    """Indexed frames [count, HEIGHT, WIDTH, 3] with a white 8 x 8 block in the top-left corner (bars 0 are black)."""
    frames = indexed_frames(count, HEIGHT, WIDTH).copy()
    frames[:, :8, :8] = 255
    frames[:, :, 8:16] = 0  # a black band beside the block keeps it apart from the first bar
    return frames


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    """{clockwise degrees: mp4 path} of the same 40-frame clip (keyframe every 5 frames), 0 = no matrix."""
    root = tmp_path_factory.mktemp("rotated")
    plain = write_clip(root / "plain.mp4", marked_frames(40), gop=5)
    return {0: plain} | {deg: with_matrix(plain, root / f"cw{deg}.mp4", m) for deg, m in CLOCKWISE.items()}


def test_pyav_reports_the_written_matrix_as_counterclockwise_degrees(rotated):
    for degrees in (0, 90, 180, 270):
        with av.open(str(rotated[degrees])) as container:
            frame = next(container.decode(video=0))
            assert (frame.rotation - -degrees) % 360 == 0  # PyAV: counterclockwise, in -180..180


@pytest.mark.parametrize("degrees", [90, 180, 270])
@pytest.mark.parametrize(
    "options",
    [{"decode": "full"}, {"threads": False}, {}, {"sampling": "keyframe"}],
    ids=["full", "seek", "par", "key"],
)
def test_rotated_frames_are_the_plain_frames_turned_clockwise(rotated, degrees, options, parallel):
    plain = load_video(rotated[0], 6, **options).frames.numpy()
    turned = load_video(rotated[degrees], 6, **options)
    expected = np.rot90(plain, k=-degrees // 90, axes=(1, 2))  # k < 0: clockwise
    assert turned.frames.shape == expected.shape and np.array_equal(turned.frames.numpy(), expected)
    assert turned.frames.is_contiguous()


@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_the_corner_block_lands_where_a_clockwise_turn_puts_it(rotated, degrees):
    """Hand-checked: the top-left block goes top-right at 90 clockwise, bottom-right at 180, bottom-left at 270."""
    frame = load_video(rotated[degrees], 1).frames[0].numpy().astype(int)
    height, width = frame.shape[:2]
    corners = {"tl": frame[:4, :4], "tr": frame[:4, -4:], "br": frame[-4:, -4:], "bl": frame[-4:, :4]}
    white = {name for name, block in corners.items() if block.min() > 200}
    assert white == {{0: "tl", 90: "tr", 180: "br", 270: "bl"}[degrees]}
    assert (height, width) == ((HEIGHT, WIDTH) if degrees in (0, 180) else (WIDTH, HEIGHT))


@pytest.mark.parametrize("degrees", [90, 270])
def test_size_is_the_upright_frames_size(rotated, degrees):
    """size = (height, width) of the upright frame: a portrait size for a portrait video; the pixels are the plain
    file's frames resized to the sideways size, then turned."""
    turned = load_video(rotated[degrees], 4, size=(30, 20), threads=False)
    sideways = load_video(rotated[0], 4, size=(20, 30), threads=False).frames.numpy()
    assert turned.frames.shape == (4, 30, 20, 3)
    assert np.array_equal(turned.frames.numpy(), np.rot90(sideways, k=-degrees // 90, axes=(1, 2)))


def exif_oriented(array: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for a stored image with this EXIF orientation (the specification's table)."""
    flipped = array[:, ::-1]
    return {
        1: array,
        2: flipped,  # mirrored left-right
        3: array[::-1, ::-1],  # turned 180
        4: array[::-1],  # mirrored top-bottom
        5: array.transpose(1, 0, 2),  # mirrored left-right, then turned 90 counterclockwise (the main diagonal)
        6: np.rot90(array, k=-1),  # turned 90 clockwise
        7: np.rot90(flipped, k=-1),  # mirrored left-right, then turned 90 clockwise (the anti-diagonal)
        8: np.rot90(array, k=1),  # turned 90 counterclockwise
    }[orientation]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_images_are_turned_upright_by_their_exif_orientation(tmp_path, orientation):
    stored = np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3)  # every pixel distinct: PNG is lossless
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "1.png", exif=exif)
    Image.fromarray(stored).save(tmp_path / "2.png")  # no EXIF: as stored
    frames = list(stream_video(tmp_path, 2))
    assert np.array_equal(frames[0].numpy(), exif_oriented(stored, orientation))
    assert np.array_equal(frames[1].numpy(), stored)


def test_an_exif_turned_image_is_resized_as_upright(tmp_path):
    stored = np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "1.png", exif=exif)
    frame = load_video(tmp_path, 1, size=(20, 12)).frames[0].numpy()
    upright = Image.fromarray(np.ascontiguousarray(exif_oriented(stored, 6)))
    assert np.array_equal(frame, np.array(upright.resize((12, 20), Image.Resampling.BICUBIC)))


@pytest.mark.parametrize("shape", [(2, 0, 4, 3), (2, 4, 0, 3), (1, 0, 0, 3)])
@pytest.mark.parametrize("size", [None, 8])
def test_frames_zero_pixels_high_or_wide_are_refused(shape, size):
    for array in (np.zeros(shape, np.uint8), torch.zeros(shape, dtype=torch.uint8)):
        with pytest.raises(VideoError, match=rf"has frames {shape[1]} pixels high and {shape[2]} wide: give frames"):
            stream_video(array, 2, size=size)


@pytest.fixture(scope="module")
def two_streams(tmp_path_factory):
    """Stream 0: 1 frame; stream 1: 12 frames."""
    frames = moving_square_frames(12, size=32)
    return write_streams(tmp_path_factory.mktemp("cli") / "two.mp4", [frames[:1], frames])


def frames_in(capsys, clip, *extra) -> int:
    argv = ["run", "--video", str(clip), "--prompt", "x", "--frames", "4", "--max-new-tokens", "1", "--json", *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)["counts"]["frames_in"]


def test_run_reads_the_longest_stream_or_the_one_named(capsys, two_streams):
    assert frames_in(capsys, two_streams) == 4
    assert frames_in(capsys, two_streams, "--stream", "1") == 4
    assert frames_in(capsys, two_streams, "--stream", "0") == 1


@pytest.mark.parametrize(
    "stream, message",
    [("2", "no video stream 2; its video streams are 0, 1"), ("-1", "stream = -1: must be an integer >= 0")],
)
def test_run_refuses_a_stream_the_file_lacks_on_one_error_line(capsys, two_streams, stream, message):
    assert main(["run", "--video", str(two_streams), "--prompt", "x", "--frames", "4", "--stream", stream]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and "Traceback" not in err


@pytest.mark.parametrize("source", [None, [1, 2], 3, b"clip.mp4"])
def test_a_source_that_is_no_path_or_array_is_a_type_error_naming_it(source):
    with pytest.raises(
        TypeError, match=rf"^video = {re.escape(repr(source))} \({type(source).__name__}\): pass a path"
    ):
        stream_video(source, 2)


def test_rate_sampling_reads_the_chosen_streams_header(cover_first):
    """--fps counts frames on the stream that is decoded: 24 frames at 8 fps (stream 1), not the cover's 1."""
    from earlytom.video.sampling import file_timing

    assert file_timing(cover_first) == (24, 8.0)
    assert file_timing(VideoFile(cover_first, stream=1)) == (24, 8.0)
    assert file_timing(VideoFile(cover_first, stream=0))[0] == 1


def test_watch_reads_the_named_stream_and_names_the_valid_ones(cover_first):
    """A live source's default is its first video stream (frames cannot be counted ahead); --stream N picks another."""
    from earlytom.runtime.stream import live_frames

    frames = list(live_frames(str(cover_first), fps=8, size=(HEIGHT, WIDTH), timeout=5, stream=1))
    assert [f.index for f in frames] == list(range(24))
    assert [f.index for f in live_frames(str(cover_first), fps=8, size=(HEIGHT, WIDTH), timeout=5)] == [0]
    with pytest.raises(VideoError, match="has no video stream 5; its video streams are 0, 1"):
        list(live_frames(str(cover_first), fps=8, size=(HEIGHT, WIDTH), timeout=5, stream=5))


def test_compare_asks_about_the_named_stream(cover_first):
    from earlytom.eval.compare import ask
    from earlytom.eval.questions import Question
    from earlytom.runtime.pipeline import Pipeline

    pipe = Pipeline.from_pretrained("tiny", random_init=True, num_frames=4, method="full")
    question = Question(line=1, video=cover_first, question="What is shown?")
    assert ask(pipe, question, 1).frames_after_merge == 4
    assert ask(pipe, question, 1, stream=0).frames_after_merge == 1  # the 1-frame cover stream
