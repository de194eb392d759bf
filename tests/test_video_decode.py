"""The seek path's frame skipping: decoding the packets of unsampled frames with skip_frame NONREF gives exactly the
frames of a full decode, per codec (clips with B-frames, several GOPs, frame threading on and off), and the codecs
left out of the allow-list are left out for a reason. Forward runs decoded in parallel: the same frames, the same
errors, and nothing left running or open when the consumer stops early."""

import os
import threading
import time

import av
import pytest

from earlytom.runtime.synthetic import frame_index, indexed_frames, write_clip, write_panning_clip
from earlytom.video import VideoError, load_video, read_ahead, stream_video, uniform_indices
from earlytom.video import pyav as video  # the module whose names the fixtures patch (decode_parallel, to_rgb, ...)
from earlytom.video.pyav import decoded, skips_nonref
from earlytom.video.sampling import Grid, forward_runs, stream_grid

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


@pytest.fixture
def parallel(monkeypatch):
    """Three usable cores whatever the machine has, and a record of the worker count of each parallel decode."""
    workers, original = [], video.decode_parallel

    def recorded(container, path, grid, runs, size, count):
        workers.append(count)
        return original(container, path, grid, runs, size, count)

    monkeypatch.setattr(video, "usable_cores", lambda: 3)
    monkeypatch.setattr(video, "decode_parallel", recorded)
    return workers


@pytest.mark.parametrize("count", [2, 5, 16, 64])
@pytest.mark.parametrize("name", CODECS)
def test_parallel_runs_give_exactly_the_frames_of_a_full_decode(coded, parallel, name, count):
    """Runs split among min(cores, runs) workers; one run, or threads off, decodes with one decoder."""
    path = clip(coded, name)
    full = load_video(path, count, decode="full")
    for size in (None, 24):
        seek = load_video(path, count, size=size)
        assert seek.indices == full.indices == uniform_indices(TOTAL, count)
        assert [frame_index(frame.numpy()) for frame in seek.frames] == seek.indices
        assert seek.timestamps == full.timestamps
    assert load_video(path, count).frames.equal(full.frames)
    runs = len({index // GOP for index in full.indices})  # 30-frame GOPs: a run per GOP sampled (B-frames aside)
    assert parallel == [min(3, runs)] * 3
    assert load_video(path, count, threads=False).frames.equal(full.frames) and len(parallel) == 3


def test_a_single_run_decodes_with_one_decoder(tmp_path, parallel):
    path = write_clip(tmp_path / "one.mp4", indexed_frames(40), gop=40)  # one keyframe: one run
    assert [frame_index(frame.numpy()) for frame in load_video(path, 4).frames] == uniform_indices(40, 4)
    assert parallel == []


@pytest.fixture(scope="module")
def cut(tmp_path_factory):
    """A 120-frame clip with a keyframe every 10 frames, its index first, cut at 60% of its bytes."""
    root = tmp_path_factory.mktemp("cut")
    data = write_clip(root / "whole.mp4", indexed_frames(120), gop=10, faststart=True).read_bytes()
    (root / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])
    return root / "cut.mp4"


@pytest.mark.parametrize("count", [5, 16])
def test_parallel_decoding_failure_is_the_error_of_one_decoder_after_the_same_frames(cut, parallel, count):
    serial, frames = stream_video(cut, count, size=24, threads=False), []
    with pytest.raises(VideoError) as expected:
        frames += [frame_index(frame.numpy()) for frame in serial]
    got = []
    with pytest.raises(VideoError) as caught:
        got += [frame_index(frame.numpy()) for frame in read_ahead(stream_video(cut, count, size=24), depth=2)]
    assert parallel == [3] and str(caught.value) == str(expected.value) and "truncated or damaged" in str(caught.value)
    assert got == frames and len(frames) < count
    assert not [t for t in threading.enumerate() if t.name.startswith(("video-run", "video-decode"))]


def open_files(path) -> int:
    """How many of this process's file descriptors are open on `path`."""
    fds = [os.path.join("/proc/self/fd", fd) for fd in os.listdir("/proc/self/fd")]
    return sum(1 for fd in fds if os.path.realpath(fd) == str(path.resolve()))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc/self/fd (Linux)")
@pytest.mark.parametrize("ahead", [False, True])
def test_stopping_after_the_first_frame_stops_the_workers_and_closes_every_file(coded, parallel, monkeypatch, ahead):
    """Directly, and through read_ahead (the pipeline's way: the stream is iterated and closed in its thread). The
    workers are held after converting any frame but the first until the consumer has stopped."""
    path, gate, converted, convert = clip(coded, "h264"), threading.Event(), [], video.to_rgb

    def held(frame, size):
        rgb = convert(frame, size)
        converted.append(frame_index(rgb.numpy()))
        if converted[-1] != 0:
            gate.wait(timeout=60)
        return rgb

    monkeypatch.setattr(video, "to_rgb", held)
    before = set(threading.enumerate())
    stream = stream_video(path, 16, size=24)
    frames = read_ahead(iter(stream), depth=2) if ahead else iter(stream)
    try:
        assert frame_index(next(frames).numpy()) == 0
        deadline = time.monotonic() + 30
        while len(converted) < 4 and time.monotonic() < deadline:  # frame 0, then one frame held per worker
            time.sleep(0.01)
        assert len(set(threading.enumerate()) - before) == 3 + ahead and open_files(path) == 3  # workers, files
        release = threading.Timer(0.2, gate.set)  # after close() has asked the workers to stop
        release.start()
        frames.close()
        release.join()
    finally:
        gate.set()  # a failed assertion leaves nothing held
    assert set(threading.enumerate()) == before and open_files(path) == 0
    assert parallel == [3] and (ahead or len(converted) < 16)  # read_ahead asks for one more frame first
