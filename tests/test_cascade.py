"""The streaming cascade (earlytom.runtime.chain.Cascade) against the whole-video chain written out here with the
batch reference functions (today's whole-video logic: every stretch on all frames at once, official_compress /
frame_merge on all of them, then selection): the same frames after every merge layer, the same sources, the same
selected tokens, the same greedy answer, for both variants, chunks of 1..8 units and later batches of 1..8.

The tiny model's stretches give the same floats for a frame whatever batch it is in (checked below, on CPU), and
the streaming forms compute each similarity as the batch functions do (per token, then the mean over tokens:
official_compress's window_similarity, frame_merge's adjacent_similarity), so both comparisons are exact,
embeddings included."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from earlytom.compress import (
    EarlyTomConfig,
    frame_merge,
    global_topk,
    official_compress,
    official_select,
    token_select,
    uniform,
)
from earlytom.engine.layout import vision_chain
from earlytom.engine.stretch import Stretch
from earlytom.models.backbone import VisualLayout
from earlytom.runtime.backends.base import RunOptions
from earlytom.runtime.chain import Cascade, encode_chain
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.timing import StageTimer

SIZE = 72  # the tiny model's frame size


def scene_frames(n: int, cuts: list[int], repeats: list[bool], seed: int) -> np.ndarray:
    """uint8 [n, 72, 72, 3]: a noise background per scene (a new one at each cut) with a square moving over it; a
    frame marked in `repeats` is an exact copy of the one before (equal similarities on purpose)."""
    rng = np.random.default_rng(seed)
    frames, background = [], None
    for t in range(n):
        if t == 0 or t in cuts:
            background = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        if t and repeats[t]:
            frames.append(frames[-1].copy())
            continue
        frame = background.copy()
        pos = (5 * t) % (SIZE - 12)
        frame[30:42, pos : pos + 12] = 255
        frames.append(frame)
    return np.stack(frames)


@st.composite
def videos(draw) -> np.ndarray:
    n = draw(st.one_of(st.integers(1, 4), st.integers(8, 14)))
    cuts = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=3)) if n > 1 else []
    repeats = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return scene_frames(n, cuts, repeats, draw(st.integers(0, 2**16)))


@st.composite
def configs(draw) -> EarlyTomConfig:
    ratio = draw(st.sampled_from([0.05, 0.2, 0.5, 1.0]))
    if draw(st.sampled_from(["official", "paper"])) == "paper":
        layer = draw(st.integers(0, 3))
        tau_seg, tau_merge = draw(st.sampled_from([(0.75, 0.8), (0.9, 0.95), (0.95, 0.965), (0.99, 0.995)]))
        return EarlyTomConfig(
            variant="paper", merge_layers=(layer,), retain_ratio=ratio, tau_seg=tau_seg, tau_merge=tau_merge
        )
    layers = draw(st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True))
    tau_seg = draw(st.sampled_from([0.5, 0.9, 0.95, 0.995]))  # the tiny model's in-scene similarities: ~0.95-0.97
    window = draw(st.one_of(st.just(6), st.integers(2, 7)))
    return EarlyTomConfig(merge_layers=tuple(sorted(layers)), retain_ratio=ratio, tau_seg=tau_seg, max_window=window)


def whole_video(backbone, pixels: torch.Tensor, options: RunOptions):
    """The whole-video chain: -> ({layer: (rows [N, 2] merged there, hidden [N, L, D] after it)}, source [N, 2]
    after the last, kept tokens)."""
    c = options.config
    specs = vision_chain(c.variant, c.merge_layers, backbone.dims.encoder_layers)
    B = pixels.shape[0]
    outputs = Stretch(backbone, specs[0])(pixels)
    source, after, labels = torch.arange(B)[:, None].repeat(1, 2), {}, None
    for i, spec in enumerate(specs):
        if i:
            outputs = Stretch(backbone, spec)(*outputs)
        if spec.final or options.method != "earlytom":
            continue
        if c.variant == "paper":
            merged = frame_merge(outputs[0], alpha=c.alpha, tau_seg=c.tau_seg, tau_merge=c.tau_merge)
            outputs, labels = (merged.hidden,), merged.is_static
        else:
            last = i == len(specs) - 2
            attention = outputs[1] if last else None
            merged = official_compress(
                outputs[0], attention, tau_seg=c.tau_seg, alpha=c.alpha, max_window=c.max_window, final=last
            )
            outputs, labels = ((merged.hidden, merged.attention) if last else (merged.hidden,)), merged.segments
        rows = merged.source
        source = torch.stack([source[rows[:, 0], 0], source[rows[:, 1], 1]], 1)
        after[spec.stop - 1] = rows, merged.hidden
    tokens, scores = outputs
    r = c.retain_ratio
    if options.method == "full":
        picked = uniform(tokens, retain_ratio=1.0, num_frames=len(tokens))
    elif options.method == "global_topk":
        picked = global_topk(tokens, scores, retain_ratio=r, num_frames=B)
    elif c.variant == "paper":
        picked = token_select(tokens, scores, labels, retain_ratio=r, num_frames=B)
    else:
        picked = official_select(tokens, scores, labels, retain_ratio=r, num_frames=B)
    return after, source, picked


class Recording(Cascade):
    """The cascade, noting the input rows each merge layer emitted and the hidden states of those frames (in
    order)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rows: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def forward(self, i, emitted) -> None:
        self.rows.setdefault(self.specs[i].stop - 1, []).extend((e.rows, e.inputs[0]) for e in emitted)
        super().forward(i, emitted)


def cascade(pipe: Pipeline, pixels: torch.Tensor, chunk: int, batch: int):
    """-> (Visual, {layer: (the rows its merge emitted, their hidden states), each concatenated in order})."""
    backbone, options = pipe.backend.backbone, pipe.options
    c = options.config
    specs = vision_chain(c.variant, c.merge_layers, backbone.dims.encoder_layers)
    stretches = [Stretch(backbone, spec) for spec in specs]
    chain = Recording(stretches, specs, options, StageTimer(), backbone.suffix(), batch=batch)
    for part in pixels.split(chunk):
        chain.push(part)
    visual = chain.finish()
    return visual, {layer: tuple(map(torch.cat, zip(*parts, strict=True))) for layer, parts in chain.rows.items()}


def check_same(pipe: Pipeline, pixels: torch.Tensor, chunk: int, batch: int) -> bool:
    """Assert the cascade equals the whole-video chain; -> whether any frame merged."""
    with torch.inference_mode():
        after, source, picked = whole_video(pipe.backend.backbone, pixels, pipe.options)
        visual, steps = cascade(pipe, pixels, chunk, batch)
    assert visual.frames_after == {layer: len(rows) for layer, (rows, _) in after.items()}
    assert steps.keys() == after.keys()
    for layer, (rows, hidden) in after.items():
        assert torch.equal(steps[layer][0], rows), layer
        assert torch.equal(steps[layer][1], hidden), layer  # the frames after every merge layer, bit for bit
    assert torch.equal(visual.source, source)
    assert torch.equal(visual.frame, picked.frame) and torch.equal(visual.index, picked.index)
    assert torch.equal(visual.embeds[:-1], picked.tokens)  # exact: see the module docstring
    assert torch.equal(visual.embeds[-1:], pipe.backend.backbone.suffix())
    assert visual.units == pixels.shape[0]
    return len(source) < len(pixels)


@pytest.fixture(scope="module")
def tiny_pipe(tiny):
    return Pipeline.from_model(tiny, num_frames=14, kernels="reference")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(video=videos(), config=configs(), chunk=st.integers(1, 8), batch=st.integers(1, 8))
def test_cascade_equals_the_whole_video_chain(tiny, tiny_pipe, video, config, chunk, batch):
    pipe = tiny_pipe.with_options(config=config, num_frames=len(video))
    merged = check_same(pipe, tiny.processor(torch.from_numpy(video)), chunk, batch)
    event(f"{config.variant}: {'merged' if merged else 'nothing merged'}")


@pytest.mark.parametrize("method", ["full", "global_topk"])
@pytest.mark.parametrize(("chunk", "batch"), [(1, 1), (3, 8), (8, 2)])
def test_cascade_without_compression_equals_the_whole_video_chain(tiny, tiny_pipe, method, chunk, batch):
    video = scene_frames(11, [6], [False] * 11, seed=3)
    pipe = tiny_pipe.with_options(method=method, num_frames=11)
    check_same(pipe, tiny.processor(torch.from_numpy(video)), chunk, batch)


def test_the_tiny_stretches_do_not_depend_on_the_batch(tiny):
    """What makes the comparisons above exact: each stretch gives a frame the same floats alone or in a batch."""
    backbone = tiny.backbone()
    pixels = tiny.processor(torch.from_numpy(scene_frames(9, [4], [False] * 9, seed=1)))
    outputs = (pixels,)
    with torch.inference_mode():
        for spec in vision_chain("official", (0, 2), backbone.dims.encoder_layers):
            stretch = Stretch(backbone, spec)
            inputs, outputs = outputs, stretch(*outputs)
            alone = [stretch(*(x[i : i + 1] for x in inputs)) for i in range(len(pixels))]
            for whole, parts in zip(outputs, zip(*alone, strict=True), strict=True):
                assert torch.equal(whole, torch.cat(parts)), spec.name


def test_cascade_merges_frames_on_these_videos(tiny, tiny_pipe):
    """The videos drawn above do merge: a still scene with a repeated frame loses frames at the first layer."""
    video = scene_frames(10, [5], [False, False, True, True, False, False, True, True, True, False], seed=0)
    pipe = tiny_pipe.with_options(config=EarlyTomConfig(merge_layers=(0, 2, 3), tau_seg=0.5), num_frames=10)
    with torch.inference_mode():
        visual, _ = cascade(pipe, tiny.processor(torch.from_numpy(video)), 3, 4)
    assert visual.frames_after[0] < 10


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_offline_request_answers_as_the_whole_video_chain(tiny, tiny_pipe, variant):
    """An offline request (the backend's encode: the cascade) gives the whole-video chain's greedy tokens."""
    video = scene_frames(12, [7], [False, False, True, False, False, True, False, False, True, False, True, True], 5)
    config = EarlyTomConfig(variant=variant, merge_layers=(0,) if variant == "paper" else None)
    pipe = tiny_pipe.with_options(config=config, num_frames=12)
    result = pipe.generate(video, "What moves?", max_new_tokens=6)
    with torch.inference_mode():
        pixels = tiny.processor(torch.from_numpy(video))
        after, source, picked = whole_video(pipe.backend.backbone, pixels, pipe.options)
        embeds = torch.cat([picked.tokens, pipe.backend.backbone.suffix()])
        before, text = pipe.prompt_ids("What moves?")
        decoder = pipe.decoder
        layout = VisualLayout(len(embeds), picked.frame, picked.index, source, 12)
        expected = decoder.greedy(
            before,
            embeds,
            text,
            max_new_tokens=6,
            eos=pipe.tokenizer.eos_token_id,
            timer=StageTimer(),
            positions=decoder.positions(len(before), layout, len(text)),
        )
    assert result.counts["frames_after_merge"] == len(source) < 12
    assert result.token_ids == expected


@pytest.mark.parametrize("variant", ["official", "paper"])
def test_a_trace_sees_every_merge_layers_plan_of_the_same_decisions(tiny, tiny_pipe, variant):
    """encode_chain with a trace (earlytom explain) runs the whole-video chain: one plan per merge layer over all
    its frames, the cascade's decisions."""
    video = scene_frames(12, [7], [False, False, True, False, False, True, False, False, True, False, True, True], 5)
    config = EarlyTomConfig(variant=variant, merge_layers=(0,) if variant == "paper" else None)
    pipe = tiny_pipe.with_options(config=config, num_frames=12)
    backbone, c = pipe.backend.backbone, pipe.config
    specs = vision_chain(c.variant, c.merge_layers, backbone.dims.encoder_layers)
    stretches = [Stretch(backbone, spec) for spec in specs]
    pixels = tiny.processor(torch.from_numpy(video))
    events = []
    with torch.inference_mode():
        traced = encode_chain(
            stretches,
            specs,
            pixels.split(4),
            pipe.options,
            StageTimer(),
            backbone.suffix(),
            None,
            lambda kind, **data: events.append((kind, data)),
        )
        streamed, rows = cascade(pipe, pixels, 4, 8)
    merges = [data for kind, data in events if kind == "merge"]
    assert [d["layer"] for d in merges] == list(rows) == list(streamed.frames_after)
    for data in merges:
        assert torch.equal(data["plan"].source, rows[data["layer"]][0])
    assert [kind for kind, _ in events][-1] == "select"
    assert torch.equal(traced.frame, streamed.frame) and torch.equal(traced.index, streamed.index)
    assert torch.equal(traced.source, streamed.source)
