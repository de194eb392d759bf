"""The eager LLaVA-OneVision pipeline on the tiny model: the oracle every other backend is checked against."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from earlytom.cli import main
from earlytom.compress import EarlyTomConfig, frame_merge
from earlytom.engine.layout import vision_chain
from earlytom.engine.stretch import Stretch
from earlytom.models.registry import ModelNotFound, load_model, packaged_config
from earlytom.runtime.decoder import Decoder
from earlytom.runtime.pipeline import Pipeline, PromptTooLong
from earlytom.runtime.synthetic import moving_square_frames, write_clip
from earlytom.runtime.timing import StageTimer
from earlytom.video import VideoError, load_video

PAPER = EarlyTomConfig(variant="paper", merge_layers=(0,))  # layers [0, 1) see every frame, as k = 1 before


@pytest.fixture(scope="module")
def pipeline(tiny):
    return Pipeline.from_model(tiny, num_frames=12, config=PAPER)


def test_uncompressed_adapter_equals_transformers_forward(tiny):
    """Split encoder + spliced embeddings + decoder == LlavaOnevisionForConditionalGeneration on the same input."""
    model, config = tiny.model, tiny.model.config
    backbone = tiny.backbone()
    decoder = Decoder(model)
    pixels = tiny.processor(torch.from_numpy(moving_square_frames(5)))  # [5, 3, 72, 72]
    pipe = Pipeline.from_model(tiny, method="full")  # the official chain, nothing merged
    before, after = pipe.prompt_ids("Describe the video.")
    with torch.inference_mode():
        visual = pipe.backend.encode([pixels], pipe.options, StageTimer())
        ours, _ = decoder.prefill(torch.cat([decoder.embed(before), visual.embeds, decoder.embed(after)]))
        n_visual = visual.embeds.shape[0]
        ids = torch.cat([before, torch.full((n_visual,), config.video_token_index), after])
        reference = model(input_ids=ids[None], pixel_values_videos=pixels[None]).logits[0, -1]
    assert n_visual == 5 * backbone.dims.tokens_per_frame + 1
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_scores_are_attention_received_in_last_layer(tiny):
    """The paper chain's scores are transformers' own attention maps of the last used encoder layer (SigLIP run
    with output_attentions), averaged over heads and queries and pooled as LLaVA-OV pools its features; no other
    layer's maps give them."""
    adapter = tiny.backbone()
    head, tail = (Stretch(adapter, spec) for spec in vision_chain("paper", (0,), adapter.dims.encoder_layers))
    pixels = tiny.processor(torch.from_numpy(moving_square_frames(2)))
    tower = copy.deepcopy(tiny.model.model.vision_tower)  # the session's model keeps its attention kernel
    tower.set_attn_implementation("eager")  # the implementation that returns attention maps
    with torch.inference_mode():
        tokens, scores = tail(*head(pixels))
        maps = tower(pixel_values=pixels, output_attentions=True).attentions  # per layer [2, H, L, L]
    grid = 9  # the tiny model's patch grid: 72 px frames, 8 px patches
    assert tokens.shape == (2, adapter.dims.tokens_per_frame, tiny.model.config.text_config.hidden_size)
    assert scores.shape == (2, ((grid + 1) // 2) ** 2)

    def pooled(layer: int) -> torch.Tensor:
        received = maps[layer].float().mean(dim=(1, 2))  # [2, L]: mean over heads and query rows
        if tiny.model.config.vision_feature_select_strategy == "default":
            received = received[:, 1:]
        return tiny.model.model.apply_pooling(received[..., None])[..., 0]

    last = adapter.dims.encoder_layers - 1
    torch.testing.assert_close(scores, pooled(last), rtol=1e-4, atol=1e-6)
    for layer in range(last):
        assert not torch.allclose(scores, pooled(layer), rtol=1e-3, atol=1e-5), layer


def test_compressed_request_reaches_decoder_with_k_plus_newline(pipeline, clips):
    result = pipeline.generate(clips["cut"], "What changes?", max_new_tokens=4)
    counts, visual = result.counts, result.visual
    assert counts["frames_in"] == 12
    N = counts["frames_after_merge"]
    assert N == visual.source.shape[0] <= 12
    T = pipeline.backend.text.dims.tokens_per_frame
    K = min(round(0.15 * 12 * T), N * T)
    assert counts["visual_tokens"] == K == visual.embeds.shape[0] - 1
    torch.testing.assert_close(visual.embeds[-1], pipeline.backend.backbone.suffix()[0])
    flat = visual.frame * T + visual.index
    assert bool((flat.diff() > 0).all()) and int(visual.frame.max()) < N
    stages = ["video_decode", "preprocess", "vision_head", "frame_merge", "vision_tail", "token_select", "prefill"]
    assert list(result.timings_ms) == [*stages, "first_token", "ttft"]  # every stage of an EarlyTom request
    assert 1 <= len(result.token_ids) <= 4


def test_scene_cut_starts_a_segment(tiny, clips):
    adapter = tiny.backbone()
    head = Stretch(adapter, vision_chain("paper", (0,), adapter.dims.encoder_layers)[0])
    clip = load_video(clips["cut"], 24)
    with torch.inference_mode():
        (hidden,) = head(tiny.processor(clip.frames))
    merged = frame_merge(hidden)
    assert int(merged.similarity.argmin()) == 11  # frames 11 | 12 straddle the cut
    first = merged.source[:, 0].tolist()
    head = first.index(12)
    assert not merged.is_static[head] and merged.segment[head] > merged.segment[head - 1]
    assert len(first) < 24  # the still stretches merge


def test_identical_frames_merge_in_the_model(tiny):
    frames = moving_square_frames(6)
    frames = np.stack([frames[0], frames[1], frames[1], frames[3], frames[4], frames[5]])  # frames 1 and 2 identical
    pipe = Pipeline.from_model(tiny, num_frames=6, config=EarlyTomConfig(variant="paper", tau_seg=-1.0))
    pixels = tiny.processor(torch.from_numpy(frames))
    with torch.inference_mode():
        visual = pipe.backend.encode([pixels], pipe.options, StageTimer())
    assert [1, 2] in visual.source.tolist()


def test_full_and_global_topk_methods(tiny, clips):
    pipe = Pipeline.from_model(tiny, num_frames=8, config=PAPER)
    full = pipe.with_options(method="full").generate(clips["moving"], "Hi", 2)
    top = pipe.with_options(method="global_topk").generate(clips["moving"], "Hi", 2)
    T = tiny.dims.tokens_per_frame
    assert full.counts == {"frames_in": 8, "frames_after_merge": 8, "visual_tokens": 8 * T}
    assert top.counts == {"frames_in": 8, "frames_after_merge": 8, "visual_tokens": round(0.15 * 8 * T)}
    assert "frame_merge" not in full.timings_ms


def test_greedy_decoding_uses_the_cache_consistently(pipeline, clips):
    """The tokens generated with the KV cache equal a cache-free greedy recomputation."""
    result = pipeline.generate(clips["moving"], "Go", max_new_tokens=5)
    before, after = pipeline.prompt_ids("Go")
    decoder = pipeline.decoder
    with torch.inference_mode():
        embeds = torch.cat([decoder.embed(before), result.visual.embeds, decoder.embed(after)])
        tokens = []
        for _ in range(len(result.token_ids)):
            logits, _ = decoder.prefill(embeds)
            tokens.append(int(logits.argmax()))
            embeds = torch.cat([embeds, decoder.embed(torch.tensor(tokens[-1:]))])
    assert tokens == result.token_ids


def test_cli_run_json(clips, capsys):
    code = main(
        [
            "run",
            "--model",
            "tiny",
            "--video",
            str(clips["moving"]),
            "--prompt",
            "What moves?",
            "--frames",
            "8",
            "--json",
            "--max-new-tokens",
            "3",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(out) >= {"text", "timings_ms", "counts"}
    assert out["counts"]["frames_in"] == 8 and "ttft" in out["timings_ms"]
    assert any("byte-level tokenizer" in note for note in out["notes"])


def test_cli_table_and_console_script(clips):
    """The installed `earlytom` console script prints the stage table and the counts."""
    script = Path(sys.executable).parent / "earlytom"
    done = subprocess.run(
        [
            str(script),
            "run",
            "--video",
            str(clips["cut"]),
            "--prompt",
            "x",
            "--frames",
            "6",
            "--no-compress",
            "--max-new-tokens",
            "2",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line.strip()}
    assert lines["visual_tokens"] == ["150"]  # 6 frames x 25 tokens, nothing compressed
    assert lines["frames_in"] == ["6"] and lines["ttft"][1] == "ms"


def write_bytes(path, data):
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "make_video, match",
    [
        (lambda d: str(d / "missing.mp4"), "does not exist"),
        (lambda d: write_bytes(d / "empty.mp4", b""), "is empty"),
        (lambda d: write_bytes(d / "text.mp4", b"not a video at all" * 10), "cannot read video"),
        (lambda d: str(d), "has no images"),
    ],
)
def test_bad_video_is_a_clear_error(tmp_path, capsys, make_video, match):
    code = main(["run", "--video", make_video(tmp_path), "--prompt", "x", "--frames", "4"])
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err


def test_fewer_frames_than_requested_is_noted(pipeline, tmp_path):
    clip = write_clip(tmp_path / "short.mp4", moving_square_frames(5))
    result = pipeline.generate(clip, "x", max_new_tokens=1)
    assert result.counts["frames_in"] == 5
    assert any("only 5 decodable frames" in note for note in result.notes)


def test_image_directory_and_array_inputs(tmp_path):
    frames = moving_square_frames(6, size=32)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"{i:03d}.png")
    from_dir = load_video(tmp_path, 3, fps=2.0)
    from_array = load_video(frames, 3, fps=2.0)
    assert torch.equal(from_dir.frames, from_array.frames)
    assert from_dir.timestamps == [0.0, 1.0, 2.5]
    with pytest.raises(VideoError, match=r"uint8 \[B, H, W, 3\]"):
        load_video(frames.astype(np.float32), 3)


def test_unknown_model_lists_aliases(capsys):
    with pytest.raises(ModelNotFound, match="llava-ov-0.5b, llava-ov-7b, llava-ov-72b, llava-video-7b, tiny"):
        load_model("llava-ov-3b")
    assert main(["run", "--model", "no-such-model", "--video", "x.mp4", "--prompt", "x"]) == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("layers", [(4,), (-1,), (2, 1)])
def test_merge_layers_out_of_range(tiny, layers):
    with pytest.raises(ValueError, match=r"merge_layers = "):
        Pipeline.from_model(tiny, config=EarlyTomConfig(merge_layers=layers))


def test_prompt_without_room_for_visual_tokens(tiny, clips, capsys):
    pipe = Pipeline.from_model(tiny, num_frames=80, method="full")  # 80 x 25 + 1 visual tokens > 2048
    with pytest.raises(PromptTooLong, match="exceed the decoder's context window of 2048"):
        pipe.generate(clips["moving"], "x", max_new_tokens=64)


def test_packaged_architectures_match_published_numbers():
    ov7 = packaged_config("llava-ov-7b")
    assert (ov7.vision_config.num_hidden_layers, ov7.vision_config.hidden_size) == (26, 1152)
    assert (ov7.text_config.hidden_size, ov7.text_config.num_hidden_layers) == (3584, 28)
    ov05 = packaged_config("llava-ov-0.5b")
    assert (ov05.text_config.hidden_size, ov05.text_config.num_hidden_layers) == (896, 24)
    assert ov05.vision_feature_layer == -1 and ov05.vision_feature_select_strategy == "full"


def test_full_tokens_run_no_inner_merge(tiny, clips):
    """Full tokens and top-K compress nothing: the decoder's inner merge runs with method earlytom only."""
    pipe = Pipeline.from_model(tiny, num_frames=6)  # official: inner merge at decoder layer 1 of 2
    assert pipe.generate(clips["cut"], "x", 1).counts["visual_embeds_after_inner"] < 6 * 25
    for method in ("full", "global_topk"):
        assert "visual_embeds_after_inner" not in pipe.with_options(method=method).generate(clips["cut"], "x", 1).counts


def test_sampling_reaches_the_decoder_of_the_video(tiny, tmp_path):
    """--sampling keyframe takes the keyframes nearest the uniform samples: every frame it feeds the model is a
    keyframe of the clip (GOP 8 here), while uniform takes the linspace frames."""
    clip = write_clip(tmp_path / "gop8.mp4", moving_square_frames(64), gop=8)
    pipe = Pipeline.from_model(tiny, num_frames=4, config=PAPER)
    keyframes = pipe.with_options(sampling="keyframe").generate(clip, "x", 1)
    uniform = pipe.generate(clip, "x", 1)
    assert keyframes.counts["frames_in"] == uniform.counts["frames_in"] == 4
    assert not torch.equal(keyframes.visual.embeds, uniform.visual.embeds)  # other frames reached the model
    assert load_video(clip, 4, sampling="keyframe").indices == [0, 24, 40, 64 - 8]
    assert load_video(clip, 4).indices == [0, 21, 42, 63]
