"""Qwen2.5-VL's frame count by rate (`earlytom run --fps 2 --max-frames 768`, qwen-vl-utils' rule) against counts
worked out by hand, the header timing it reads, and the command line's refusals."""

import json

import pytest

from earlytom.cli import main as earlytom_main
from earlytom.runtime.synthetic import moving_square_frames, write_clip
from earlytom.video.sampling import file_timing, rate_frame_count


@pytest.mark.parametrize(
    ("total", "video_fps", "fps", "max_frames", "expected"),
    [
        (300, 30.0, 2.0, 768, 20),  # 10 s x 2 fps
        (100_000, 30.0, 2.0, 768, 768),  # 3333 s: capped at 768
        (100_000, 30.0, 2.0, 7, 6),  # an odd cap floors to even
        (61, 30.0, 2.0, 768, 4),  # 4.07 -> 4 (nearest even)
        (45, 30.0, 2.0, 768, 4),  # 1.5 s x 2 = 3 frames, raised to the minimum 4
        (330, 30.0, 0.5, 768, 6),  # 5.5 -> 2.75 pairs -> 3 pairs
        (300, 30.0, 0.5, 768, 4),  # 5.0 -> 2.5 pairs -> 2 (Python's round: half to even, as qwen-vl-utils)
        (5, 1.0, 2.0, 768, 4),  # 10 wanted, only 5 frames: floored to even 4
        (3, 30.0, 2.0, 768, 2),  # 3 frames: one slice (qwen-vl-utils refuses; the minimum 4 cannot be met)
        (2, 30.0, 2.0, 768, 2),
    ],
)
def test_rate_frame_count_by_hand(total, video_fps, fps, max_frames, expected):
    count = rate_frame_count(total, video_fps, fps=fps, max_frames=max_frames)
    assert count == expected and count % 2 == 0


@pytest.mark.parametrize(
    ("total", "fps", "max_frames", "message"),
    [
        (1, 2.0, 768, r"^the video has 1 frame\(s\): .* give a clip of at least 2 frames$"),
        (0, 2.0, 768, r"has 0 frame\(s\)"),
        (30, 0.0, 768, r"^fps = 0.0: .*--fps 2"),
        (30, 2.0, 1, r"^max_frames = 1: .*--max-frames 768"),
    ],
)
def test_rate_frame_count_refusals(total, fps, max_frames, message):
    with pytest.raises(ValueError, match=message):
        rate_frame_count(total, 30.0, fps=fps, max_frames=max_frames)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """24 frames at 8 fps: 3 s."""
    return write_clip(tmp_path_factory.mktemp("rate") / "clip.mp4", moving_square_frames(24, size=64), fps=8)


def test_file_timing_reads_the_header(clip):
    assert file_timing(clip) == (24, 8.0)
    with pytest.raises(ValueError, match="is an image directory, without a frame rate: sample it with --frames N"):
        file_timing(clip.parent)


def test_run_samples_by_rate(clip, capsys):
    # 3 s x 2 fps = 6 frames (3 slices); --max-frames 4 caps at 4
    argv = ["run", "--model", "qwen-tiny", "--video", str(clip), "--prompt", "hi", "--max-new-tokens", "1", "--json"]
    for extra, frames in [(["--fps", "2"], 6), (["--fps", "2", "--max-frames", "4"], 4)]:
        assert earlytom_main([*argv, *extra]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["counts"]["frames_in"] == frames


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fps", "2", "--frames", "4"], "--frames 4 and --fps 2.0 contradict each other"),
        (["--max-frames", "8"], "give --fps with it"),
        (["--frames", "5"], "frames = 5: this model fuses 2 frames into one encoder unit; sample a multiple of 2"),
    ],
)
def test_run_refusals(clip, capsys, extra, message):
    argv = ["run", "--model", "qwen-tiny", "--video", str(clip), "--prompt", "hi", *extra]
    assert earlytom_main(argv) == 2
    assert message in capsys.readouterr().err
