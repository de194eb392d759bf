"""build_engine, the engine directory, and the ONNX Runtime backend checked against the eager oracle."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import torch
from manifest_digest import redigested
from onnx import TensorProto, helper

from earlytom.cli import main as earlytom_main
from earlytom.compress import EarlyTomConfig
from earlytom.engine.manifest import EngineDirError, read_manifest
from earlytom.engine.staging import OutputError
from earlytom.engine_builder import build as build_module
from earlytom.engine_builder.build import build, main
from earlytom.environment import missing_gpu_stack
from earlytom.export.lint import lint_for_tensorrt
from earlytom.runtime.backends.base import UnsupportedOption
from earlytom.runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "tiny"
    build("tiny", out, frames=16, progress=False)
    return out


def test_directory_layout_and_manifest(engine):
    manifest = read_manifest(engine)
    chain = ["vision_head", "vision_mid1", "vision_mid2", "vision_tail"]  # official: after layers 0, 2, 3 of 4
    assert [g.name for g in manifest.graphs] == chain
    assert manifest.config.merge_layers == (0, 2, 3) and manifest.config.variant == "official"
    assert set(manifest.artifacts) >= {
        *(f"{name}.onnx" for name in chain),
        "decoder/config.json",
        "decoder/model.safetensors",
        "visual_suffix.safetensors",
        "preprocessor.json",
        "tokenizer/tokenizer.json",
    }
    assert manifest.model.name == "tiny" and manifest.backend == "onnxruntime"
    assert manifest.max_frames == 16
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= set(manifest.tools)
    assert set(manifest.verification_max_rel_error) == set(chain)
    for errors in manifest.verification_max_rel_error.values():
        assert all(e < 1e-4 for e in errors.values())
    head = onnx.load(engine / "vision_head.onnx")
    assert head.opset_import[0].version >= 17
    assert head.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic frame axis
    assert not list(engine.parent.glob(".tiny.*"))


def test_onnxruntime_backend_matches_eager(engine, tiny, clips):
    ort_pipe = Pipeline.from_engine_dir(engine, num_frames=12)
    eager = Pipeline.from_model(tiny, num_frames=12)
    a = ort_pipe.generate(clips["cut"], "What changes?", max_new_tokens=6)
    b = eager.generate(clips["cut"], "What changes?", max_new_tokens=6)
    assert a.counts == b.counts
    assert torch.equal(a.visual.source, b.visual.source)  # same frames merged
    assert torch.equal(a.visual.frame, b.visual.frame) and torch.equal(a.visual.index, b.visual.index)
    scale = b.visual.embeds.abs().max()
    assert float((a.visual.embeds - b.visual.embeds).abs().max() / scale) < 1e-4
    assert a.token_ids == b.token_ids


def test_run_with_engine_cli(engine, clips, capsys):
    code = earlytom_main(
        [
            "run",
            "--engine",
            str(engine),
            "--video",
            str(clips["moving"]),
            "--prompt",
            "x",
            "--json",
            "--frames",
            "8",
            "--max-new-tokens",
            "2",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["counts"]["frames_in"] == 8


def test_tampered_artifact_is_refused(engine, tmp_path):
    copy = shutil.copytree(engine, tmp_path / "copy")
    with (copy / "vision_tail.onnx").open("r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(EngineDirError, match="vision_tail.onnx does not match its SHA-256"):
        Pipeline.from_engine_dir(copy)
    (copy / "decoder" / "model.safetensors").unlink()
    with pytest.raises(EngineDirError, match="incomplete: .* missing"):
        read_manifest(copy)


def test_mismatched_directory_is_refused(engine, tmp_path, capsys):
    with pytest.raises(EngineDirError, match="built for model 'tiny', not 'llava-ov-7b'"):
        Pipeline.from_engine_dir(engine, model="llava-ov-7b")
    with pytest.raises(ValueError, match="frames = 20 exceeds the 16 frames"):
        Pipeline.from_engine_dir(engine, num_frames=20)
    with pytest.raises(EngineDirError, match="not an engine directory"):
        read_manifest(tmp_path)
    copy = shutil.copytree(engine, tmp_path / "old")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["tools"]["onnxruntime"] = "99.0"
    (copy / "manifest.json").write_text(json.dumps(redigested(manifest)))
    assert earlytom_main(["run", "--engine", str(copy), "--video", "x.mp4", "--prompt", "x"]) == 2
    assert "verified with onnxruntime 99.0" in capsys.readouterr().err


def test_tensorrt_directory_without_the_gpu_stack_is_refused(engine, tmp_path):
    if not missing_gpu_stack():
        pytest.skip("TensorRT, TensorRT-LLM and a GPU are here; this checks the message shown where they are not")
    copy = shutil.copytree(engine, tmp_path / "trt")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(redigested(manifest | {"backend": "tensorrt"})))
    with pytest.raises(EngineDirError, match="holds TensorRT engines, which need"):
        Pipeline.from_engine_dir(copy)


def test_interrupted_build_leaves_nothing_and_keeps_existing(engine, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "save_decoder", interrupted)  # after both graphs were written
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        build("tiny", fresh, frames=4, progress=False)
    assert list(tmp_path.iterdir()) == []
    existing = shutil.copytree(engine, tmp_path / "existing")
    before = read_manifest(existing).artifacts
    with pytest.raises(KeyboardInterrupt):
        build("tiny", existing, frames=4, overwrite=True, progress=False)
    assert read_manifest(existing).artifacts == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_overwrite_replaces_by_rename(engine, tmp_path):
    target = shutil.copytree(engine, tmp_path / "target")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        build("tiny", target, progress=False)
    manifest = build("tiny", target, frames=4, overwrite=True, progress=False)
    assert read_manifest(target).max_frames == 4 == manifest.max_frames
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_tensorrt_backend_without_tensorrt_is_a_clear_error(tmp_path, capsys):
    if not missing_gpu_stack():
        pytest.skip("TensorRT, TensorRT-LLM and a GPU are all here; this checks the message shown where they are not")
    assert main(["--model", "tiny", "--output", str(tmp_path / "x"), "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "--backend tensorrt needs" in err and "--backend onnxruntime" in err
    assert "the tensorrt Python package" in err or "an NVIDIA GPU" in err
    assert not (tmp_path / "x").exists()


def test_fp16_keeps_norms_and_softmax_in_fp32(tmp_path):
    paper = EarlyTomConfig(variant="paper")
    manifest = build("tiny", tmp_path / "fp16", dtype="fp16", frames=4, config=paper, progress=False)
    assert [g.name for g in manifest.graphs] == ["vision_head", "vision_tail"]  # the paper variant: two graphs
    assert all(e < 2e-2 for errors in manifest.verification_max_rel_error.values() for e in errors.values())
    tail = onnx.shape_inference.infer_shapes(onnx.load(tmp_path / "fp16" / "vision_tail.onnx"))
    types = {v.name: v.type.tensor_type.elem_type for v in [*tail.graph.value_info, *tail.graph.input]}
    assert tail.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    for node in tail.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert types[node.input[0]] == TensorProto.FLOAT, node.name
    matmuls = [n for n in tail.graph.node if n.op_type == "MatMul"]
    assert any(types.get(n.input[0]) == TensorProto.FLOAT16 for n in matmuls)


def graph_with(*nodes, initializers=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(list(nodes), "g", [x], [y], initializer=list(initializers)))


def test_lint_rejects_what_tensorrt_cannot_parse():
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    ok = graph_with(helper.make_node("Slice", ["x", "s", "e", "axes"], ["y"], name="slice_ok"), initializers=[axes])
    assert lint_for_tensorrt(ok) == []
    bad = graph_with(
        helper.make_node("NonZero", ["x"], ["nz"], name="nz"),
        helper.make_node("Unique", ["x"], ["u"], name="u"),
        helper.make_node("Shape", ["x"], ["dyn_axes"], name="shape"),
        helper.make_node("Slice", ["x", "s", "e", "dyn_axes"], ["y"], name="slice_dyn"),
        helper.make_node("Pad", ["x", "pads", "", "dyn_axes"], ["p"], name="pad_dyn"),
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="cubic", mode="cubic"),
        helper.make_node("Hardmax", ["x"], ["h"], name="hardmax"),
        helper.make_node("FrameMerge", ["x"], ["fm"], name="plugin", domain="earlytom"),
    )
    problems = "\n".join(lint_for_tensorrt(bad))
    assert "NonZero is rejected" in problems and "Unique is rejected" in problems
    assert "'slice_dyn': its axes input 'dyn_axes' must be an initializer" in problems
    assert "'pad_dyn': its axes input" in problems
    assert "Resize mode 'cubic'" in problems and "Hardmax is not supported" in problems
    assert "plugin" not in problems


def test_exported_graphs_pass_the_lint(engine):
    for graph in read_manifest(engine).graphs:
        assert lint_for_tensorrt(onnx.load(engine / graph.file)) == []


def test_plugin_kernels_are_stored_per_gpu_arch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the AOT compiler needs real kernels
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "build_engine"),  # the console script, as installed
            "--model",
            "tiny",
            "--output",
            str(tmp_path / "p"),
            "--frames",
            "4",
            "--gpu-archs",
            "sm_89",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = read_manifest(tmp_path / "p")
    kernels = json.loads((tmp_path / "p" / "plugins" / "sm_89" / "kernels.json").read_text())
    official = {"attention_row_stats", "attention_received", "window_cosine", "official_plan", "weighted_merge"}
    official |= {"official_keep", "compact_keep", "gather_tokens"}  # the default variant's kernels
    assert {k["kernel"] for k in kernels["kernels"]} == official
    assert {k["dtype"] for k in kernels["kernels"]} == {"fp32"}  # the graphs' dtype
    assert "plugins/sm_89/official_plan.fp32.ptx" in manifest.artifacts
    assert manifest.plugin_archs == ("sm_89",)


def test_onnxruntime_backend_refuses_what_its_graphs_fix(engine):
    """The graphs are split at the merge layers: another variant or other layers is a clear error, while the
    method, the ratio and the thresholds may change per run."""
    pipe = Pipeline.from_engine_dir(engine, num_frames=8)
    with pytest.raises(UnsupportedOption, match="cannot change merge_layers"):
        pipe.with_options(config=replace(pipe.config, merge_layers=(1, 2, 3)))
    with pytest.raises(ValueError, match="variant"):
        pipe.with_options(config=replace(pipe.config, variant="paper"))
    assert pipe.with_options(method="full", retain_ratio=0.1).options.method == "full"
    with pytest.raises(UnsupportedOption, match="kernels = 'aot' runs the AOT-compiled kernels on the eager"):
        pipe.with_options(kernels="aot")


def test_official_counts_report_every_merge_layer_and_the_inner_merge(engine, clips):
    result = Pipeline.from_engine_dir(engine, num_frames=12).generate(clips["cut"], "What changes?", 2)
    counts = result.counts
    after = [counts[f"frames_after_layer_{layer}"] for layer in (0, 2, 3)]
    assert 12 >= after[0] >= after[1] >= after[2] == counts["frames_after_merge"] >= 1
    n = counts["visual_embeds_before_inner"]
    assert n == counts["visual_tokens"] + 1  # the selected tokens and image_newline
    # The inner merge keeps round(n * (1 - 0.5)) (DESIGN 4b): n / 2 of an even n; of n = 2k + 1 the even one of
    # k and k + 1 (Python's round, half to even).
    k = n // 2
    assert counts["visual_embeds_after_inner"] == (k if n % 2 == 0 or k % 2 == 0 else k + 1)
