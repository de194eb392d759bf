"""Decoding overlaps the vision encoder: the first stretch runs on chunks of frames as they decode, with the
same result as one call over every frame, and `ttft` is wall time."""

import threading
import time

import pytest
import torch

from earlytom.compress import EarlyTomConfig
from earlytom.engine.layout import vision_chain
from earlytom.engine.stretch import Stretch
from earlytom.runtime.backends.base import RunOptions
from earlytom.runtime.chain import encode_chain
from earlytom.runtime.pipeline import CHUNK_FRAMES, Pipeline, pixel_chunks
from earlytom.runtime.synthetic import moving_square_frames
from earlytom.runtime.timing import StageTimer


@pytest.fixture(scope="module")
def pixels(tiny):
    """[9, 3, S, S]: a clip with a scene cut at frame 5."""
    return tiny.processor(torch.from_numpy(moving_square_frames(9, cut_at=5)))


def encode(pipe: Pipeline, chunks: list[torch.Tensor]):
    with torch.inference_mode():
        return pipe.backend.encode(chunks, pipe.options, StageTimer())


@pytest.mark.parametrize("variant", ["official", "paper"])
@pytest.mark.parametrize("sizes", [(4, 4, 1), (3, 3, 3), (1,) * 9])
def test_chunked_first_stretch_equals_one_call(tiny, pixels, variant, sizes):
    pipe = Pipeline.from_model(tiny, num_frames=9, config=EarlyTomConfig(variant=variant))
    whole = encode(pipe, [pixels])
    chunked = encode(pipe, list(pixels.split(sizes)))
    assert chunked.frames_after == whole.frames_after
    assert torch.equal(chunked.source, whole.source)
    assert torch.equal(chunked.frame, whole.frame) and torch.equal(chunked.index, whole.index)
    torch.testing.assert_close(chunked.embeds, whole.embeds, rtol=1e-5, atol=1e-6)


def test_first_stretch_runs_before_the_last_chunk_exists(tiny, pixels):
    """The chunks are pulled one at a time, each encoded before the next is asked for."""
    pipe = Pipeline.from_model(tiny, num_frames=9)
    options: RunOptions = pipe.options
    specs = vision_chain(options.config.variant, options.config.merge_layers, pipe.backend.text.dims.encoder_layers)
    events = []

    def chunks():
        for n, chunk in enumerate(pixels.split(3)):
            events.append(f"decoded {n}")
            yield chunk

    def logged(stretch, name):
        def run(*inputs):
            events.append(f"{name} {inputs[0].shape[0]}")
            return stretch(*inputs)

        return run

    stretches = [logged(Stretch(pipe.backend.backbone, spec), spec.name) for spec in specs]
    with torch.inference_mode():
        encode_chain(stretches, specs, chunks(), options, StageTimer(), pipe.backend.backbone.suffix())
    head = specs[0].name
    assert events[:6] == ["decoded 0", f"{head} 3", "decoded 1", f"{head} 3", "decoded 2", f"{head} 3"]
    assert all(not event.startswith(head) for event in events[6:])  # later stretches see every frame at once


def test_pixel_chunks_pull_one_chunk_at_a_time(tiny):
    frames = torch.from_numpy(moving_square_frames(10))
    pulled = []

    def source():
        for n, frame in enumerate(frames):
            pulled.append(n)
            yield frame

    chunks = pixel_chunks(source(), tiny.processor, StageTimer())
    first = next(chunks)
    assert first.shape[0] == CHUNK_FRAMES and len(pulled) == CHUNK_FRAMES
    rest = list(chunks)
    assert [c.shape[0] for c in [first, *rest]] == [4, 4, 2]
    torch.testing.assert_close(torch.cat([first, *rest]), tiny.processor(frames))


def test_ttft_is_wall_time_and_covers_every_stage_in_the_request_thread(tiny, clips):
    pipe = Pipeline.from_model(tiny, num_frames=12)
    start = time.perf_counter()
    result = pipe.generate(clips["cut"], "What changes?", max_new_tokens=3)
    wall = (time.perf_counter() - start) * 1e3
    timings = dict(result.timings_ms)
    ttft = timings.pop("ttft")
    decode = timings.pop("video_decode")  # planning in the request thread, decoding in the background
    assert decode > 0 and timings["vision_head"] > 0
    assert sum(timings.values()) <= ttft <= wall  # the request thread's stages run one after another
    assert result.counts["frames_in"] == 12


def test_a_failing_encoder_stops_the_decoding_thread(tiny, clips, monkeypatch):
    pipe = Pipeline.from_model(tiny, num_frames=24)

    def fails_after_one_chunk(pixels, options, timer):
        next(iter(pixels))
        raise RuntimeError("injected fault in the vision head")

    monkeypatch.setattr(pipe.backend, "encode", fails_after_one_chunk)
    with pytest.raises(RuntimeError, match="injected"):
        pipe.generate(clips["moving"], "Hi", 1)
    assert not [t for t in threading.enumerate() if t.name == "video-decode"]


def test_frames_are_decoded_for_the_vision_encoders_device(tiny, clips, tmp_path):
    """CPU encoders get PyAV frames with no note; the onnxruntime backend always reads host arrays."""
    from earlytom.runtime.backends.onnxruntime import OnnxRuntimeBackend

    pipe = Pipeline.from_model(tiny, num_frames=4)
    assert pipe.backend.video_device == torch.device("cpu") == OnnxRuntimeBackend.video_device
    result = pipe.generate(clips["moving"], "Hi", 1)
    assert not [note for note in result.notes if "NVDEC" in note]
