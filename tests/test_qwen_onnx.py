"""Qwen2.5-VL on the ONNX Runtime backend against the eager oracle (DESIGN.md section 8), on a tiny random
configuration with two merge layers (a 6-block ViT, full attention in blocks 1, 3, 5), at 448 x 448 px: the
engine's graphs take any slice count, the window permutation is a constant of the graph, and eager and ONNX
Runtime give the same frames after every merge layer, the same selected (slice, index) pairs and the same greedy
tokens. Then the errors a user meets: a resolution an engine cannot take, a window block as merge layer, an odd
frame count, a clip shorter than one slice."""

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from transformers import Qwen2_5_VLForConditionalGeneration

from earlytom.cli import main as earlytom_main
from earlytom.engine.manifest import read_manifest
from earlytom.engine_builder.build import BuildError, build
from earlytom.engine_builder.build import main as build_main
from earlytom.models.registry import load_model, packaged_config
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.synthetic import moving_square_frames, write_clip
from earlytom.video import VideoError

FRAMES = 8


@pytest.fixture(scope="module")
def qwen():
    """qwen-tiny's tokenizer and processor over a 6-block ViT: merge layers (1, 3), then blocks 4 and 5."""
    config = packaged_config("qwen-tiny")
    config.vision_config.depth = 6
    config.vision_config.fullatt_block_indexes = [1, 3, 5]
    torch.manual_seed(0)
    return replace(load_model("qwen-tiny"), model=Qwen2_5_VLForConditionalGeneration(config).eval())


@pytest.fixture(scope="module")
def engine(qwen, tmp_path_factory):
    directory = tmp_path_factory.mktemp("qwen") / "engine"
    # r = 0.20, not the family's 0.15: at 0.15 two tokens of slice 3 score within float rounding of each other at
    # the selection boundary (eager keeps index 129, ONNX Runtime 112), which no backend agreement can promise
    config = {"retain_ratio": 0.20}
    build(qwen, directory, backend="onnxruntime", frames=FRAMES, resolution=(448, 448), config=config, progress=False)
    return directory


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """8 frames (4 slices) of 448 x 448 with a scene cut after frame 4."""
    return moving_square_frames(FRAMES, size=448, cut_at=4)


def test_the_manifest_holds_the_qwen_chain(engine):
    manifest = read_manifest(engine)
    assert manifest.vision.family == "qwen2_5_vl" and manifest.vision.frame_size == (448, 448)
    assert manifest.vision.unit_shape == (1024, 1176) and manifest.vision.tokens_per_frame == 256
    assert manifest.config.merge_layers == (1, 3)
    assert [(g.name, g.start, g.stop) for g in manifest.graphs] == [
        ("vision_head", 0, 2),
        ("vision_mid1", 2, 4),
        ("vision_tail", 4, 6),
    ]
    for errors in manifest.verification_max_rel_error.values():  # verified at 3 and 1 slices, exported at 2
        assert all(e < 1e-4 for e in errors.values())


def test_the_window_permutation_is_a_constant_of_the_graph(qwen, engine):
    head = onnx.load(engine / "vision_head.onnx")
    assert [i.name for i in head.graph.input] == ["pixels"]
    assert head.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the slice axis is dynamic
    # the window order of 32 x 32 patches, built here from its definition: 4 x 4 windows of 4 x 4 merger groups
    expected = [
        (wy * 4 + gy) * 16 + wx * 4 + gx for wy in range(4) for wx in range(4) for gy in range(4) for gx in range(4)
    ]
    constants = [numpy_helper.to_array(t).ravel().tolist() for t in head.graph.initializer]
    assert expected in constants
    assert not {n.op_type for n in head.graph.node} & {"Loop", "Split", "SplitToSequence", "If"}


@pytest.mark.parametrize("method", ["earlytom", "full"])
def test_eager_and_onnxruntime_agree_end_to_end(qwen, engine, frames, method):
    onnx_pipe = Pipeline.from_engine_dir(engine, method=method)
    eager = Pipeline.from_model(qwen, config=onnx_pipe.config, method=method, num_frames=FRAMES)
    a = eager.generate(frames, "What changes?", 5)
    b = onnx_pipe.generate(frames, "What changes?", 5)
    if method == "earlytom":
        assert set(a.visual.frames_after) == {1, 3}
        assert a.counts["visual_embeds_after_inner"] < a.counts["visual_embeds_before_inner"]
    assert a.visual.frames_after == b.visual.frames_after  # frames after every merge layer
    assert torch.equal(a.visual.source, b.visual.source)
    assert torch.equal(a.visual.frame, b.visual.frame) and torch.equal(a.visual.index, b.visual.index)
    torch.testing.assert_close(a.visual.embeds, b.visual.embeds, rtol=1e-4, atol=1e-5)
    assert a.token_ids == b.token_ids and a.counts == b.counts


# ---- errors


def test_an_engine_resolution_off_the_112_px_grid_is_refused(qwen, tmp_path):
    message = (
        r"^resolution 420 x 448: an engine needs each side a positive multiple of 112 px; "
        r"nearest valid: height 420 -> 336 or 448$"
    )
    with pytest.raises(BuildError, match=message):
        build(qwen, tmp_path / "engine", backend="onnxruntime", frames=FRAMES, resolution=(420, 448), progress=False)
    assert not (tmp_path / "engine").exists()


def test_build_engine_resolution_flag(tmp_path, capsys):
    out = tmp_path / "engine"
    status = build_main(
        ["--model", "qwen-tiny", "--output", str(out), "--backend", "onnxruntime", "--resolution", "448x50"]
    )
    assert status == 2 and not out.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: resolution 448 x 50: an engine needs each side a positive multiple of 112 px; "
        "nearest valid: width 50 -> 112"
    )
    with pytest.raises(SystemExit):
        build_main(["--model", "qwen-tiny", "--output", str(out), "--resolution", "448"])
    assert "is not HEIGHTxWIDTH" in capsys.readouterr().err


def test_the_eager_path_takes_the_processors_dynamic_sizes(qwen):
    loaded = qwen.at_resolution((56, 84), for_engine=False)
    assert loaded.processor.frame_size == (56, 84) and loaded.dims.tokens_per_frame == 6
    with pytest.raises(ValueError, match=r"multiple of 28 px; nearest valid: height 50 -> 28 or 56"):
        qwen.at_resolution((50, 84), for_engine=False)
    tiny = load_model("tiny")  # LLaVA-OneVision: one frame size
    with pytest.raises(ValueError, match=r"^resolution 56 x 84: tiny takes frames of 72 x 72 only"):
        tiny.at_resolution((56, 84), for_engine=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "nine.mp4", moving_square_frames(9, size=112))


def run(capsys, *args: str) -> tuple[int, str]:
    status = earlytom_main(["run", "--model", "qwen-tiny", "--max-new-tokens", "1", *args])
    return status, capsys.readouterr().err.strip().splitlines()[-1]


def test_a_window_block_as_merge_layer_is_refused_naming_the_valid_ones(clip, capsys):
    status, error = run(capsys, "--video", str(clip), "--prompt", "Hi", "--merge-layers", "0")
    assert status == 2
    assert error == "error: merge_layers = (0,): this model compresses only after layers (1,)"


def test_an_odd_frame_count_is_refused_with_the_fix(clip, capsys):
    status, error = run(capsys, "--video", str(clip), "--prompt", "Hi", "--frames", "7")
    assert status == 2
    assert error == (
        "error: frames = 7: this model fuses 2 frames into one encoder unit; sample a multiple of 2 (e.g. --frames 8)"
    )
    status, error = run(capsys, "--video", str(clip), "--prompt", "Hi", "--frames", "10")  # the clip has only 9
    assert status == 2
    assert error == "error: the video gives 9 frames; this model fuses 2 frames into one encoder unit: use --frames 8"


def test_a_clip_shorter_than_one_slice_is_refused():
    pipe = Pipeline.from_pretrained("qwen-tiny", num_frames=8)
    one = moving_square_frames(1, size=448)
    with pytest.raises(VideoError, match=r"^the video gives 1 frame\(s\); .* give a clip of at least 2 frames$"):
        pipe.generate(one, "Hi", 1)


def test_an_engines_resolution_is_fixed(engine, clip, capsys):
    status = earlytom_main(
        ["run", "--engine", str(engine), "--video", str(clip), "--prompt", "Hi", "--resolution", "224x224"]
    )
    assert status == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("--resolution is fixed when the engine is built; pass it to build_engine")
    )
