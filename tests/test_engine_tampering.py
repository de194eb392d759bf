"""A built engine directory refuses every tampered file, and its ONNX Runtime graphs match transformers' forward.

One tiny directory (frames = 4) is built per module. Each artifact its manifest lists (graphs, decoder weights and
config, tokenizer, preprocessing, visual suffix) is altered by one byte in turn and must be refused by its
SHA-256; the manifest itself is checked for corruption, a changed hash and a broken schema."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from manifest_digest import redigested

from earlytom.engine.layout import MANIFEST
from earlytom.engine.manifest import EngineDirError, files_on_disk, read_manifest
from earlytom.engine_builder.build import build
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.synthetic import moving_square_frames
from earlytom.runtime.timing import StageTimer

FRAMES = 4


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "tiny"
    build("tiny", out, frames=FRAMES, progress=False)
    return out


@pytest.fixture
def copy(engine, tmp_path):
    return shutil.copytree(engine, tmp_path / "copy")


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_every_file_is_listed_with_its_hash(engine):
    manifest = read_manifest(engine)
    assert sorted(manifest.artifacts) == files_on_disk(engine)
    assert {"decoder/model.safetensors", "decoder/config.json", "visual_suffix.safetensors"} <= set(manifest.artifacts)
    assert all(len(digest) == 64 for digest in manifest.artifacts.values())


def test_each_tampered_artifact_is_refused(engine, copy):
    """Every artifact, one at a time (the decoder weights included): one flipped bit, refused by name."""
    names = sorted(read_manifest(engine).artifacts)
    assert len(names) >= 8
    for name in names:
        original = (copy / name).read_bytes()
        flip_last_byte(copy / name)
        with pytest.raises(EngineDirError, match=f"{name} does not match its SHA-256"):
            read_manifest(copy)
        (copy / name).write_bytes(original)
    read_manifest(copy)  # restored: accepted again


def test_tampered_decoder_weights_are_refused_by_the_pipeline(copy):
    flip_last_byte(copy / "decoder" / "model.safetensors")
    with pytest.raises(EngineDirError, match="decoder/model.safetensors does not match its SHA-256"):
        Pipeline.from_engine_dir(copy)


def edit_manifest(directory, change):
    """`change` the manifest and recompute its own digest: what is checked is the changed field."""
    data = json.loads((directory / MANIFEST).read_text())
    change(data)
    (directory / MANIFEST).write_text(json.dumps(redigested(data)))


def test_manifest_with_a_changed_hash_is_refused(copy):
    def change(data):
        data["artifacts"]["decoder/model.safetensors"] = "0" * 64

    edit_manifest(copy, change)
    with pytest.raises(EngineDirError, match="decoder/model.safetensors does not match its SHA-256"):
        read_manifest(copy)


def test_manifest_with_an_unlisted_file_is_refused(copy):
    edit_manifest(copy, lambda data: data["artifacts"].pop("tokenizer/tokenizer.json"))
    with pytest.raises(EngineDirError, match=r"holds files its manifest does not list \(tokenizer/tokenizer.json\)"):
        read_manifest(copy)


def test_corrupt_manifest_is_refused(copy):
    text = (copy / MANIFEST).read_text()
    (copy / MANIFEST).write_text(text[: len(text) // 2])
    with pytest.raises(EngineDirError, match="manifest.json is corrupt"):
        read_manifest(copy)


def test_manifest_with_a_broken_schema_is_refused(copy):
    edit_manifest(copy, lambda data: data.__setitem__("max_frames", "4"))
    with pytest.raises(EngineDirError, match=r"manifest.json.max_frames must be int, not str"):
        read_manifest(copy)


def pooled(received: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, grid * grid] -> [B, T]: LLaVA-OV's 2x2 bilinear downscale of the patch map."""
    size = math.ceil(grid / 2)
    return F.interpolate(received.view(-1, 1, grid, grid), size=(size, size), mode="bilinear").flatten(1)


def test_onnxruntime_graphs_match_transformers(engine, tiny):
    """The exported graphs, run unmerged, give HF's eager attention received at each merge layer, and with the
    method "full" the backend's visual embeds are HF's get_video_features (no adapter code on the oracle side)."""
    pipe = Pipeline.from_engine_dir(engine).with_options(method="full")
    backend, manifest = pipe.backend, pipe.backend.manifest
    pixels = tiny.processor(torch.from_numpy(moving_square_frames(FRAMES)))
    tower = tiny.model.model.vision_tower
    config = tiny.model.config
    previous = tower.config._attn_implementation
    tower.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            attentions = tower(pixels, output_attentions=True, return_dict=True).attentions
            reference = tiny.model.model.get_video_features(
                pixels[None],
                vision_feature_layer=config.vision_feature_layer,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
                output_hidden_states=True,
            ).pooler_output[0]
    finally:
        tower.set_attn_implementation(previous)
    values = {"pixels": pixels}
    for i, graph in enumerate(manifest.graphs):
        values |= zip(graph.outputs, backend.run(i, *(values[n] for n in graph.inputs)), strict=True)
    layers = manifest.config.merge_layers
    expected = attentions[layers[-1]].float().mean(dim=(1, 2))  # the only attention selection reads
    torch.testing.assert_close(values[f"attention_{layers[-1]}"], expected, rtol=1e-4, atol=1e-7)
    assert not [layer for layer in layers[:-1] if f"attention_{layer}" in values]
    grid = int(math.isqrt(attentions[0].shape[-1]))
    expected_scores = pooled(attentions[layers[-1]].float().mean(dim=(1, 2)), grid)
    torch.testing.assert_close(values["scores"], expected_scores, rtol=1e-4, atol=1e-7)
    with torch.inference_mode():
        visual = backend.encode([pixels], pipe.options, StageTimer())
    torch.testing.assert_close(visual.embeds, reference, rtol=1e-4, atol=1e-5)
