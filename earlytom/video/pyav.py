"""Video files decoded with PyAV: a seek to the keyframe before each sampled frame and a decode forward to it
(`decode="seek"`, the default), or every frame of the file (`decode="full"`, the reference the seek path must match
frame for frame). The seek path decodes packet by packet and has FFmpeg drop the non-reference frames it does not need
(`skip_frame`, for the codecs in which that provably changes no other frame), so its cost is about (samples x keyframe
interval / 2) frames, fewer by the share of non-reference frames (about half with x264's B-frames). Samples whose
keyframes lie past the previous sample start new forward runs, which are independent: with threads on, two or more
runs decode on parallel workers (one per usable core, each with its own file handle and a single-threaded decoder),
since FFmpeg's frame threading gains little on a decoder that restarts after every seek. `sampling="keyframe"` takes
the keyframe nearest each uniform sample instead (no inter-frame decoding)."""

import contextlib
import math
import os
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from earlytom.video.frames import FrameStream, VideoError, VideoFile
from earlytom.video.sampling import Grid, forward_runs, run_starts, shortfall_note, stream_grid, uniform_indices

NONREF_CODECS = {"h264", "mpeg4"}  # dropping their non-reference frames changes no other frame (skips_nonref)
TEXT_FORMATS = {"tty"}  # FFmpeg shows text files (.txt, .ans, ...) as ANSI-art video: not a video here


def open_container(path: Path):
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise VideoError(
            f"cannot read video {path}: {error}; is it a complete video file (a truncated mp4 loses its index)?"
        ) from error
    if not container.streams.video or container.format.name in TEXT_FORMATS:
        container.close()
        raise VideoError(
            f"cannot read video {path}: it has no video stream; pass a video file, an image directory or a frame array"
        )
    return container


def set_threads(stream, threads: bool) -> None:
    """FFmpeg's frame and slice threading on all cores, or a single decoding thread."""
    if threads:
        stream.thread_type = "AUTO"
        stream.thread_count = 0
    else:
        stream.thread_count = 1


def video_stream(container, source: VideoFile):
    """The video stream `source.stream` names (its index among all the file's streams), or by default the one with
    the most frames (ties: the first), so a 1-frame stream (a cover picture) beside the real video is passed over.
    Frames a header does not state are counted from the packets."""
    streams = container.streams.video
    if source.stream is not None:
        return named_stream(container, source.stream, source.path)
    if len(streams) == 1:
        return streams[0]
    counts = [frame_count(container, stream) for stream in streams]
    return streams[counts.index(max(counts))]


def named_stream(container, index: int, where):
    """The video stream at `index` among all the streams of `container` (opened from `where`), as ffprobe numbers
    them; VideoError naming the valid ones otherwise."""
    streams = container.streams.video
    chosen = [stream for stream in streams if stream.index == index]
    if not chosen:
        valid = ", ".join(str(stream.index) for stream in streams)
        raise VideoError(
            f"stream = {index}: {where} has no video stream {index}; its video streams are {valid} (numbered among "
            "all its streams, as ffprobe lists them)"
        )
    return chosen[0]


def quarter_turns(frame: av.VideoFrame) -> int:
    """Counterclockwise quarter turns (0..3) that show `frame` upright: the rotation of its display matrix
    (PyAV's frame.rotation, degrees counterclockwise; a phone's portrait video has -90) to the nearest quarter."""
    return round(frame.rotation / 90) % 4


def to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> torch.Tensor:
    """A decoded frame -> uint8 [height, width, 3] at size = (height, width) (swscale's bicubic, antialiased when
    shrinking), converted and resized in one step, then turned upright (its display matrix's quarter turns, the
    size meaning the upright frame's); [H, W, 3] at its own upright size when size is None."""
    turns = quarter_turns(frame)
    if size is None:
        rgb = frame.to_ndarray(format="rgb24")
    else:
        height, width = size[::-1] if turns % 2 else size  # resized sideways, then turned
        rgb = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="BICUBIC")
    return torch.from_numpy(np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb)


def damaged_error(path: Path, grid: Grid, reached: int, error: Exception | None = None) -> VideoError:
    """A video that decodes only up to frame `reached` of the `grid.total` its header states: refused."""
    cause = f" ({error})" if error is not None else ""
    return VideoError(
        f"video {path} fails to decode after frame {reached} of the {grid.total} its header states "
        f"({100 * reached / grid.total:.0f}%){cause}: the file is truncated or damaged; re-download or re-encode it"
    )


def frame_count(container, stream) -> int:
    """The frames a stream's header states, or else its packets, read without decoding from the start of the file
    (which is rewound after)."""
    if stream.frames:
        return stream.frames
    container.seek(0)
    count = sum(1 for packet in container.demux(stream) if packet.size)
    container.seek(0)
    return count


def decode_full(container, stream, path: Path, grid: Grid, indices: list[int], size: tuple[int, int] | None):
    """The reference: decode every frame in order and keep `indices` (sorted); yields (frame, seconds)."""
    wanted, position = iter(indices), -1
    target = next(wanted, None)
    try:
        for position, frame in enumerate(container.decode(stream)):
            if position == target:
                yield to_rgb(frame, size), float(frame.time or 0.0)
                target = next(wanted, None)
            if target is None:
                return
    except av.FFmpegError as error:
        raise damaged_error(path, grid, position + 1, error) from error
    raise damaged_error(path, grid, position + 1)


def skips_nonref(stream) -> bool:
    """Whether dropping the stream's non-reference frames (FFmpeg's skip_frame NONREF) leaves every other frame
    unchanged: H.264 (nal_ref_idc 0) and MPEG-4 part 2 (B-VOPs) by their definition; HEVC only with one temporal
    sub-layer, as the mp4/mkv hvcC header states (its "sub-layer non-reference" pictures may be referenced by a
    higher sub-layer, and FFmpeg drops them all). Each is checked against a full decode in tests/test_video_decode.py;
    other codecs (VP9 and AV1 ignore or reinterpret NONREF) decode every frame."""
    codec = stream.codec_context
    if codec.name == "hevc":
        hvcc = b"" if codec.extradata is None else codec.extradata  # hvcC: byte 21 bits 5..3 = numTemporalLayers
        return len(hvcc) > 22 and hvcc[0] == 1 and (hvcc[21] >> 3) & 7 == 1
    return codec.name in NONREF_CODECS


def decoded(container, stream, grid: Grid, wanted: frozenset[int], skipping: bool) -> Iterator[av.VideoFrame]:
    """Frames decoded packet by packet from the demuxer's position until every frame in `wanted` (indices) has been
    sent to the decoder, which is then drained: no packet past the last one needed is read or decoded. skipping:
    the packets of the other frames are decoded with skip_frame NONREF, so FFmpeg drops those no other frame refers
    to (frame threading takes the setting per packet)."""
    codec, pending = stream.codec_context, set(wanted)
    for packet in container.demux(stream):
        index = None if packet.pts is None else grid.index(packet.pts)
        if skipping:
            codec.skip_frame = "DEFAULT" if index is None or index in wanted else "NONREF"
        yield from packet.decode()
        pending.discard(index)
        if not pending:
            yield from codec.decode(drain_packet(stream))
            return


def drain_packet(stream) -> av.Packet:
    """An empty packet: sent to the decoder, it drains it; its time base gives the frames that come out theirs."""
    packet = av.Packet()
    packet.time_base = stream.time_base
    return packet


def frames_from(container, stream, grid: Grid, run: list[int], skipping: bool) -> Iterator[av.VideoFrame]:
    """Decoded frames from the keyframe at or before frame `run[0]` on, up to the frames in `run` (see `decoded`).
    A seek lands on the last keyframe whose decode time is at or before the target, which with B-frames can be
    shown after it: step back until not."""
    index, offset = run[0], grid.pts(run[0])
    while True:
        container.seek(offset, stream=stream, backward=True)
        frames = decoded(container, stream, grid, frozenset(run), skipping)
        first = next(frames, None)
        if first is None or grid.index(first.pts) <= index or offset <= grid.start:
            return frames if first is None else _chain(first, frames)
        offset = max(grid.start, offset - (first.pts - grid.pts(index)) - round(grid.step))


def _chain(first: av.VideoFrame, rest: Iterator[av.VideoFrame]) -> Iterator[av.VideoFrame]:
    yield first
    yield from rest


def seek_runs(container, stream, grid: Grid, indices: list[int]) -> list[list[int]]:
    """The sampled `indices` (sorted) grouped into forward runs (`forward_runs`), from the keyframe a seek to each
    lands on (read without decoding)."""
    keys = [keyframe_packet(container, stream, grid.pts(index), backward=True) for index in indices]
    return forward_runs(indices, [None if key is None else grid.index(key.pts) for key in keys])


def decode_run(container, stream, path: Path, grid: Grid, run: list[int], size: tuple[int, int] | None, position: int):
    """Decode the frames of one forward run (a seek to the keyframe before `run[0]`, then forward, dropping the
    non-reference frames not sampled: `skips_nonref`); yields (frame, seconds) per index of `run`. position: the
    last frame decoded before the run (the previous run's last sample, -1 for none), which a failure before the
    run's first frame reports."""
    frames, skipping = None, skips_nonref(stream)
    for index in run:
        try:
            if frames is None:
                frames = frames_from(container, stream, grid, run, skipping)
            for frame in frames:
                position = grid.index(frame.pts)
                if position >= index:
                    break
            else:
                raise damaged_error(path, grid, position + 1)
        except av.FFmpegError as error:
            raise damaged_error(path, grid, position + 1, error) from error
        if position != index:
            raise damaged_error(path, grid, index)
        yield to_rgb(frame, size), float(frame.time or 0.0)


def decode_seeking(container, stream, path: Path, grid: Grid, runs: list[list[int]], size: tuple[int, int] | None):
    """Decode the sampled frames only, run after run (`seek_runs`) with one decoder. Yields (frame, seconds)
    exactly as decode_full does."""
    position = -1
    for run in runs:
        yield from decode_run(container, stream, path, grid, run, size, position)
        position = run[-1]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    count = os.cpu_count()
    return 1 if count is None else count


def decode_parallel(
    container, source: VideoFile, grid: Grid, runs: list[list[int]], size: tuple[int, int] | None, workers: int
):
    """Decode the forward runs of the video stream `source.stream` on `workers` threads, each with its own container
    and a single-threaded decoder (FFmpeg and swscale release the GIL), the first reusing `container` (set to one
    thread, not yet decoding). Each
    worker takes the next run not yet taken, so runs start in order and the workers stay busy until the last. Yields
    (frame, seconds) in sample order, as decode_seeking does: at most the sampled frames are held. A worker's
    failure is raised where decode_seeking would raise it (after the frames before it); closing the iterator
    stops the workers (after the sample each is decoding) and closes their containers."""
    starts, ready, stop = run_starts(runs), threading.Condition(), threading.Event()
    results: dict[int, tuple] = {}  # flat sample position -> ((frame, seconds), None) or (None, error)
    pending = iter(range(len(runs)))

    def next_run() -> int | None:
        with ready:
            return None if stop.is_set() else next(pending, None)

    def deliver(position: int, item, error) -> None:
        with ready:
            results[position] = (item, error)
            ready.notify_all()

    def work(opened) -> None:
        try:
            while (r := next_run()) is not None:
                position = starts[r]
                try:
                    if opened is None:
                        opened = open_container(source.path)
                        set_threads(opened.streams[source.stream], False)
                    stream, previous = opened.streams[source.stream], runs[r - 1][-1] if r else -1
                    items = decode_run(opened, stream, source.path, grid, runs[r], size, previous)
                    with contextlib.closing(items):  # before its container closes
                        for item in items:
                            deliver(position, item, None)
                            position += 1
                            if stop.is_set():
                                return
                except BaseException as error:  # raised in the consumer, in sample order
                    deliver(position, None, error)
                    return
        finally:
            if opened is not None and opened is not container:
                opened.close()

    threads = [
        threading.Thread(target=work, args=(container if n == 0 else None,), name=f"video-run-{n}", daemon=True)
        for n in range(workers)
    ]
    for thread in threads:
        thread.start()
    try:
        for position in range(starts[-1] + len(runs[-1])):
            with ready:
                ready.wait_for(lambda position=position: position in results)
                item, error = results.pop(position)
            if error is not None:
                raise error
            yield item
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def keyframe_packet(container, stream, pts: int, backward: bool) -> av.Packet | None:
    """The keyframe's packet a seek to `pts` lands on (the keyframe before it, or with backward=False after it),
    read without decoding; None when there is none."""
    try:
        container.seek(pts, stream=stream, backward=backward)
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                return packet if packet.is_keyframe else None
    except av.FFmpegError:
        return None
    return None


def nearest_keyframes(container, stream, grid: Grid, indices: list[int]) -> list[av.Packet]:
    """For each sampled index, the packet of the keyframe nearest it (ties: the earlier); one seek either side."""
    chosen = []
    for index in indices:
        around = [keyframe_packet(container, stream, grid.pts(index), backward) for backward in (True, False)]
        candidates = [packet for packet in around if packet is not None]
        if not candidates:
            raise VideoError(f"no keyframe found near frame {index} of {grid.total}")
        chosen.append(min(candidates, key=lambda p: (abs(grid.index(p.pts) - index), p.pts)))
    return chosen


def decode_keyframes(codec, path: Path, grid: Grid, packets: list[av.Packet], size: tuple[int, int] | None):
    """Decode the keyframe packets alone, one after another (no seeks, no inter frames: frame threading decodes
    several at once); yields (frame, seconds) in the packets' order."""
    expected = iter([grid.index(packet.pts) for packet in packets])
    try:
        for packet in [*packets, None]:  # None flushes the decoder
            for frame in codec.decode(packet):
                index = next(expected, None)
                if grid.index(frame.pts) != index:
                    raise damaged_error(path, grid, grid.index(frame.pts))
                yield to_rgb(frame, size), grid.seconds(index)  # frames from a bare decoder carry no time base
    except av.FFmpegError as error:
        raise damaged_error(path, grid, grid.index(packet.pts if packet else packets[-1].pts), error) from error
    missing = next(expected, None)
    if missing is not None:
        raise damaged_error(path, grid, missing)


def keyframe_plan(container, stream, grid: Grid, indices: list[int], path: Path) -> tuple[list, list[str]]:
    """The packets of the keyframes nearest the uniform samples, or no packets and a note when the keyframes are
    too sparse to give one distinct frame per sample."""
    packets = nearest_keyframes(container, stream, grid, indices)
    distinct = len({packet.pts for packet in packets})
    if distinct == len(packets):
        return packets, []
    note = (
        f"keyframe sampling: {path} has too few keyframes for {len(indices)} distinct frames "
        f"({distinct} distinct); decoded the uniform samples instead"
    )
    return [], [note]


def stream_file(
    source: VideoFile, num_frames: int, size: tuple[int, int] | None, sampling: str, decode: str, threads: bool
) -> FrameStream:
    """Plan the sampling of a video file's stream (`video_stream`: frame count, indices, keyframes) and return its
    decoding iterator."""
    path = source.path
    container = open_container(path)
    try:
        stream = video_stream(container, source)
        set_threads(stream, threads)
        grid, notes = stream_grid(stream), []
        timed = grid is not None
        if not timed:  # a variable frame rate, or a container (mkv, webm) whose header does not count frames
            grid = Grid(0, Fraction(1), frame_count(container, stream), Fraction(1))
            decode = "full"
            notes.append(f"{path} states no constant frame rate and frame count: decoded every frame to sample")
        if grid.total == 0:
            raise VideoError(f"video {path} has no frames; pass a video with at least one frame")
        indices = uniform_indices(grid.total, num_frames)
        notes += shortfall_note(grid.total, num_frames, str(path))
        packets = []
        if sampling == "keyframe" and decode == "seek":
            packets, plan_notes = keyframe_plan(container, stream, grid, indices, path)
            notes += plan_notes
        elif sampling == "keyframe":
            notes.append("keyframe sampling needs a constant frame rate and decode='seek'; sampled uniformly")
        runs = seek_runs(container, stream, grid, indices) if decode == "seek" and not packets else []
        workers = min(usable_cores(), len(runs)) if threads else 1
        if workers > 1:  # independent runs decode in parallel, each on one thread (see decode_parallel)
            set_threads(stream, False)
    except BaseException:
        container.close()
        raise
    if packets:
        indices = [grid.index(packet.pts) for packet in packets]
        frames = decode_keyframes(stream.codec_context, path, grid, packets, size)
    elif decode == "full":
        frames = decode_full(container, stream, path, grid, indices, size)
    elif workers > 1:
        frames = decode_parallel(container, VideoFile(path, stream.index), grid, runs, size, workers)
    else:
        frames = decode_seeking(container, stream, path, grid, runs, size)
    times = [grid.seconds(i) if timed else math.nan for i in indices]
    return FrameStream(indices, times, notes, _closing(container, frames, times))


def _closing(container, frames, times: list[float]) -> Iterator[torch.Tensor]:
    """Yield the decoded frames, recording each one's actual time, and close the file when done (after `frames`,
    which may be using it from other threads)."""
    with container, contextlib.closing(frames):
        for n, (frame, seconds) in enumerate(frames):
            times[n] = seconds
            yield frame
