"""The seek path's frame skipping: decoding the packets of unsampled frames with skip_frame NONREF gives exactly the
frames of a full decode, per codec (clips with B-frames, several GOPs, frame threading on and off), and the codecs
left out of the allow-list are left out for a reason."""

import av
import pytest

from earlytom.runtime.synthetic import frame_index, indexed_frames, write_clip, write_panning_clip
from earlytom.runtime.video import (
    Grid,
    decoded,
    forward_runs,
    load_video,
    skips_nonref,
    stream_grid,
    uniform_indices,
)

TOTAL, GOP = 150, 30  # 5 GOPs of 30 frames, 8 fps
# name: (encoder, options, whether skipping is allowed): B-frames in every codec that has them
CODECS = {
    "h264": ("libx264", {}, True),
    "hevc": ("libx265", {"x265-params": "log-level=error"}, True),
    "mpeg4": ("mpeg4", {"bf": "2"}, True),
    "vp9": ("libvpx-vp9", {}, False),  # FFmpeg's VP9 decoder ignores NONREF: nothing to gain
    # temporal sub-layers: FFmpeg drops every "sub-layer non-reference" picture, which a higher sub-layer may use
    "hevc-layers": ("libx265", {"x265-params": "log-level=error:temporal-layers=3"}, False),
}


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """{codec name: mp4 path} of 150-frame clips whose frame t shows t, one keyframe every 30 frames."""
    root, frames = tmp_path_factory.mktemp("coded"), indexed_frames(TOTAL)
    clips = {}
    for name, (encoder, options, _) in CODECS.items():
        try:
            av.codec.Codec(encoder, "w")
        except av.FFmpegError:
            continue  # reported by the test that needs it
        clips[name] = write_clip(root / f"{name}.mp4", frames, gop=GOP, codec=encoder, options=options)
    return clips


def clip(coded, name):
    if name not in coded:
        pytest.skip(f"PyAV's FFmpeg has no {CODECS[name][0]} encoder")
    return coded[name]


def opened(path, threads: bool):
    container = av.open(str(path))
    stream = container.streams.video[0]
    if threads:
        stream.thread_type, stream.thread_count = "AUTO", 0
    else:
        stream.thread_count = 1
    return container, stream


def shown_frames(path, threads: bool, wanted: frozenset[int]) -> list[int]:
    """The index each frame decoded from the start of the clip with `decoded(wanted)` shows."""
    container, stream = opened(path, threads)
    with container:
        grid = stream_grid(stream)
        assert isinstance(grid, Grid)
        frames = decoded(container, stream, grid, wanted, skipping=True)
        return [frame_index(frame.to_ndarray(format="rgb24")) for frame in frames]


def nonref_frames(path) -> set[int]:
    """The frames FFmpeg drops with skip_frame NONREF throughout."""
    container, stream = opened(path, threads=False)
    with container:
        stream.codec_context.skip_frame = "NONREF"
        return set(range(TOTAL)) - {frame_index(frame.to_ndarray(format="rgb24")) for frame in container.decode(stream)}


def last_decoded(path) -> int:
    """The frame whose packet comes last (in decode order)."""
    container, stream = opened(path, threads=False)
    with container:
        grid = stream_grid(stream)
        assert isinstance(grid, Grid)
        return [grid.index(packet.pts) for packet in container.demux(stream) if packet.size][-1]


@pytest.mark.parametrize("name", CODECS)
def test_allow_list_holds_the_codecs_whose_nonref_frames_are_dropped(coded, name):
    path, allowed = clip(coded, name), CODECS[name][2]
    with av.open(str(path)) as container:
        assert skips_nonref(container.streams.video[0]) == allowed
    dropped = nonref_frames(path)
    if allowed:
        assert 0 < len(dropped) <= TOTAL * 2 // 3  # the B-frames: 1 in 3 to 2 in 3 frames here
    elif name == "vp9":
        assert not dropped
    assert not set(range(0, TOTAL, GOP)) & dropped  # keyframes are never dropped


@pytest.mark.parametrize("threads", [False, True])
@pytest.mark.parametrize("name", [name for name, spec in CODECS.items() if spec[2]])
def test_skipping_drops_only_unwanted_nonref_frames(coded, name, threads):
    """Frame threading takes skip_frame per packet: wanted non-reference frames come out, the others do not."""
    path = clip(coded, name)
    dropped = nonref_frames(path)
    wanted = frozenset(sorted(dropped)[::3]) | {last_decoded(path)}  # every packet is read
    assert shown_frames(path, threads, wanted) == sorted(set(range(TOTAL)) - dropped | wanted)
    assert shown_frames(path, threads, frozenset(range(TOTAL))) == list(range(TOTAL))


@pytest.mark.parametrize("threads", [False, True])
@pytest.mark.parametrize("name", CODECS)
def test_decoding_stops_at_the_last_wanted_frame(coded, name, threads):
    """The decoder is drained once the packet of the last wanted frame is in: nothing past it is decoded."""
    shown = shown_frames(clip(coded, name), threads, frozenset({40}))
    assert 40 in shown and max(shown) < 45  # frames 41.. are shown after 40 only if decoded before it (B-frames)


@pytest.mark.parametrize("threads", [False, True])
@pytest.mark.parametrize("count", [3, 16, 37, 64])
@pytest.mark.parametrize("name", CODECS)
def test_seek_decode_with_skipping_gives_exactly_the_frames_of_a_full_decode(coded, name, count, threads):
    path = clip(coded, name)
    full = load_video(path, count, decode="full", threads=threads)
    seek = load_video(path, count, threads=threads)
    assert seek.frames.equal(full.frames) and seek.indices == full.indices == uniform_indices(TOTAL, count)
    assert [frame_index(frame.numpy()) for frame in seek.frames] == seek.indices
    assert seek.timestamps == full.timestamps
    if CODECS[name][2] and count >= 16:
        assert set(seek.indices) & nonref_frames(path)  # sampled non-reference frames were decoded, not dropped


def test_panning_clip_repeats_its_segment_with_continuous_timestamps_and_keyframes(tmp_path):
    """A 50-frame clip made of a 20-frame segment written 2.5 times: one keyframe every 10 frames throughout,
    every frame once, B-frames present, and seek decoding matches a full decode across the joins."""
    path = write_panning_clip(tmp_path / "pan.mp4", 5, 96, 64, fps=10, gop=10, segment=2)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        grid = stream_grid(stream)
        assert isinstance(grid, Grid) and grid.total == stream.frames == 50
        packets = [(grid.index(p.pts), p.is_keyframe) for p in container.demux(stream) if p.size]
    assert sorted(index for index, _ in packets) == list(range(50))
    assert sorted(index for index, key in packets if key) == list(range(0, 50, 10))
    assert [index for index, _ in packets] != list(range(50))  # B-frames: decode order is not display order
    assert not (tmp_path / "pan.segment.mp4").exists()
    full, seek = load_video(path, 7, decode="full"), load_video(path, 7)
    assert seek.frames.equal(full.frames) and seek.indices == full.indices == uniform_indices(50, 7)


def test_forward_runs_seek_only_where_the_keyframe_is_past_the_previous_sample():
    indices, keys = [5, 20, 40, 45, 70, 90], [0, 0, 30, 30, 60, None]  # None: no keyframe found, seek anyway
    assert forward_runs(indices, keys) == [[5, 20], [40, 45], [70], [90]]
