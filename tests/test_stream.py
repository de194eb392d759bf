"""Pipeline.open_stream: ask() mid-stream answers exactly as an offline request (Pipeline.generate) on the frames
pushed so far, pushing after ask() goes on exactly, the sliding window lets whole segments leave, and bad use is
refused clearly. The offline request is the expected value: generate on a frame array decodes, resizes and
encodes the frames its own way."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from earlytom.compress import EarlyTomConfig, official_select
from earlytom.models.registry import ModelNotFound
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.stream import StreamClosed
from earlytom.runtime.synthetic import moving_square_frames
from earlytom.video import VideoError

PROMPT = "What moves?"
PAPER = EarlyTomConfig(variant="paper", merge_layers=(0,))


def clip(n: int) -> np.ndarray:
    """uint8 [n, 96, 96, 3] (resized to the model's 72 x 72 on the way in) with scene cuts at 9 and 20."""
    frames = moving_square_frames(n, cut_at=9 if n > 9 else None)
    if n > 20:
        frames[20:] = frames[20:, ::-1]
    return frames


def assert_same(asked, offline) -> None:
    assert asked.token_ids == offline.token_ids
    assert asked.counts == offline.counts
    assert torch.equal(asked.visual.source, offline.visual.source)
    assert torch.equal(asked.visual.frame, offline.visual.frame)
    assert torch.equal(asked.visual.index, offline.visual.index)
    assert torch.equal(asked.visual.embeds, offline.visual.embeds)


def offline(pipe: Pipeline, frames: np.ndarray):
    return pipe.with_options(num_frames=len(frames)).generate(frames, PROMPT, max_new_tokens=4)


@pytest.fixture(scope="module")
def pipes(tiny):
    return {
        "official": Pipeline.from_model(tiny, num_frames=32),
        "paper": Pipeline.from_model(tiny, num_frames=32, config=PAPER),
    }


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    variant=st.sampled_from(["official", "paper"]),
    pushes=st.lists(st.integers(1, 7), min_size=1, max_size=6),
    asks=st.lists(st.booleans(), min_size=6, max_size=6),
)
def test_ask_mid_stream_equals_an_offline_request_on_the_prefix(pipes, variant, pushes, asks):
    pipe, frames = pipes[variant], clip(sum(pushes))
    with pipe.open_stream() as stream:
        done = 0
        for size, ask in zip(pushes, asks, strict=False):
            stream.push(frames[done : done + size])
            done += size
            if ask:
                assert_same(stream.ask(PROMPT, 4), offline(pipe, frames[:done]))
        assert_same(stream.ask(PROMPT, 4), offline(pipe, frames))


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_pushing_after_ask_continues_exactly(pipes, variant):
    """A stream asked after every push ends where one never asked does, and where the offline request is."""
    pipe, frames = pipes[variant], clip(27)
    asked, quiet = pipe.open_stream(), pipe.open_stream()
    for start in range(0, 27, 5):
        asked.push(frames[start : start + 5])
        asked.ask(PROMPT, 2)
        quiet.push(torch.from_numpy(frames[start : start + 5]))  # a tensor works as an array does
    final = asked.ask(PROMPT, 4)
    assert_same(final, quiet.ask(PROMPT, 4))
    assert_same(final, offline(pipe, frames))
    assert final.counts["frames_in"] == 27


def test_ask_reports_the_answer_latency_stages(pipes):
    with pipes["official"].open_stream() as stream:
        stream.push(clip(12))
        result = stream.ask(PROMPT, 2)
    assert {"frame_merge", "token_select", "prefill", "first_token", "ttft"} <= result.timings_ms.keys()
    assert "vision_head" not in result.timings_ms  # every frame went through the first stretch when pushed
    assert "preprocess" not in result.timings_ms


def test_the_window_lets_whole_segments_leave(pipes):
    """max_frames = 10 over 40 frames: the stream keeps only the newest segments, whose candidates are those of an
    unbounded stream's; selection runs on them as on a video starting at the window."""
    pipe, frames = pipes["official"], clip(40)
    window, everything = pipe.open_stream(max_frames=10), pipe.open_stream(max_frames=40)
    for start in range(0, 40, 3):
        window.push(frames[start : start + 3])
        everything.push(frames[start : start + 3])
        kept = window.cascade
        # beyond max_frames only while every candidate left is in one segment (< max_window frames): the rest of
        # the window is frames on their way through the cascade
        assert kept.units - kept.start <= 10 or len(kept.candidates) < 6
    kept, full = window.cascade, everything.cascade
    assert 0 < kept.start and kept.units - kept.start < 40
    n = len(kept.candidates)
    for ours, theirs in zip(kept.candidates, full.candidates[-n:], strict=True):
        assert ours.source == theirs.source and torch.equal(ours.tokens, theirs.tokens)
    assert kept.candidates[0].source[0] == kept.start
    result = window.ask(PROMPT, 2)
    assert result.counts["frames_in"] == 40 - kept.start
    # expected: the unbounded stream's finished candidates from the window's first one, selected on their own
    fork = everything.cascade.fork(everything.timer)
    with torch.inference_mode():
        fork.finish()
    first = len(fork.candidates) - len(result.visual.source)
    segments = torch.tensor([s for s in fork.closed if s[0] >= first]) - first
    assert segments[0, 0] == 0  # the window starts at a segment
    tokens = torch.stack([c.tokens for c in fork.candidates[first:]])
    scores = torch.stack([c.scores for c in fork.candidates[first:]])
    picked = official_select(
        tokens, scores, segments, retain_ratio=pipe.config.retain_ratio, num_frames=40 - kept.start
    )
    assert torch.equal(result.visual.frame, picked.frame) and torch.equal(result.visual.index, picked.index)
    sources = torch.tensor([c.source for c in fork.candidates[first:]]) - kept.start
    assert torch.equal(result.visual.source, sources)


def test_frames_pushed_in_any_batch_give_the_same_stream(pipes):
    frames = clip(13)
    one = pipes["official"].open_stream()
    for frame in frames:
        one.push(frame[None])
    whole = pipes["official"].open_stream()
    whole.push(frames)
    assert_same(one.ask(PROMPT, 3), whole.ask(PROMPT, 3))


def test_a_model_that_fuses_frames_waits_for_a_units_last_frame():
    """Qwen2.5-VL (2 frames per unit): an odd push keeps its last frame until the next push; ask answers on whole
    units, as an offline request on them."""
    try:
        pipe = Pipeline.from_pretrained("qwen-tiny", num_frames=16)
    except ModelNotFound as error:
        pytest.skip(f"the Qwen2.5-VL family is not registered in this checkout: {error}")
    frames = np.random.default_rng(0).integers(0, 256, (9, 112, 112, 3), dtype=np.uint8)
    frames[3:7] = frames[3]  # a still stretch: merged
    stream = pipe.open_stream()
    stream.push(frames[:5])
    assert stream.cascade.units == 2 and len(stream.pending) == 1
    assert_same(stream.ask(PROMPT, 4), offline(pipe, frames[:4]))
    stream.push(frames[5:])
    assert_same(stream.ask(PROMPT, 4), offline(pipe, frames[:8]))


def test_bad_use_is_refused_clearly(pipes):
    pipe = pipes["official"]
    stream = pipe.open_stream()
    with pytest.raises(ValueError, match="push at least 1 frame"):
        stream.ask(PROMPT)
    with pytest.raises(VideoError, match=r"uint8 frames \[b, H, W, 3\] with b >= 1 .* got torch.float32"):
        stream.push(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(VideoError, match=r"got torch.uint8 \[0, 8, 8, 3\]"):
        stream.push(np.zeros((0, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(VideoError, match=r"one frame: frame\[None\]"):
        stream.push(clip(1)[0])
    with pytest.raises(ValueError, match="max_new_tokens = 0"):
        stream.ask(PROMPT, 0)
    with pytest.raises(ValueError, match="fps = 0"):
        pipe.open_stream(fps=0)
    stream.close()
    stream.close()  # idempotent
    with pytest.raises(StreamClosed, match="open a new one"):
        stream.push(clip(2))
    with pytest.raises(StreamClosed):
        stream.ask(PROMPT)


def test_an_onnxruntime_stream_answers_as_its_offline_request(tmp_path):
    """The onnxruntime backend runs the same cascade over its sessions."""
    from earlytom.engine_builder.build import build

    build("tiny", tmp_path / "tiny", frames=16, progress=False)
    pipe = Pipeline.from_engine_dir(tmp_path / "tiny")
    frames = clip(14)
    with pipe.open_stream() as stream:
        stream.push(frames[:9])
        assert_same(stream.ask(PROMPT, 4), offline(pipe, frames[:9]))
        stream.push(frames[9:])
        assert_same(stream.ask(PROMPT, 4), offline(pipe, frames))


def test_a_paper_window_keeps_its_labels_aligned(pipes):
    """The paper variant's window: whole segments leave with their static labels; the answer covers the window."""
    frames = clip(40)
    with pipes["paper"].open_stream(max_frames=10) as stream:
        for start in range(0, 40, 4):
            stream.push(frames[start : start + 4])
        kept = stream.cascade
        assert kept.start > 0 and len(kept.static) >= len(kept.candidates)
        result = stream.ask(PROMPT, 2)
    assert result.visual.units == 40 - kept.start == result.counts["frames_in"]
    assert int(result.visual.source.min()) == 0 and int(result.visual.source.max()) == 40 - kept.start - 1
