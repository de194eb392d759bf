"""build_engine's memory plan: planned from the configs before any work, refused with the fix, written into the
manifest; the decoder's limits for --max-context; the load-time check against free GPU memory (given numbers); the
TensorRT-LLM engine config readers and the quantizer's checkpoint links (plain functions, no GPU needed)."""

import json

import pytest

from earlytom.compress import EarlyTomConfig
from earlytom.engine.manifest import read_manifest
from earlytom.engine.memory_plan import DoesNotFit, VisionShape, check_free_memory, memory_sizes, plan_memory
from earlytom.engine_builder import build as build_module
from earlytom.engine_builder.build import BuildError, build, check_decoder_precision, engine_plan, main
from earlytom.engine_builder.tensorrt import DecoderPlan, decoder_plan, link_checkpoint
from earlytom.models.registry import packaged_config, packaged_dims
from earlytom.runtime.backends.tensorrt import trtllm_context, trtllm_dtype

GIB = 1073741824


@pytest.fixture
def no_work(monkeypatch):
    """Any step past the plan fails the test: loading the model, exporting a graph."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the build started work before refusing the plan")

    monkeypatch.setattr(build_module, "load_model", forbidden)
    monkeypatch.setattr(build_module, "export_graphs", forbidden)


def test_a_build_that_cannot_fit_is_refused_before_any_work_with_the_fix(tmp_path, no_work, capsys):
    out = tmp_path / "ov7b"
    with pytest.raises(DoesNotFit) as refusal:
        build("llava-ov-7b", out, backend="onnxruntime", frames=96, dtype="fp16", target_gpu="rtx4090")
    message = str(refusal.value)
    # onnxruntime: the context holds every visual token uncompressed, 96 * 196 + 1 image newline + 512 + 512
    assert "llava-ov-7b (frames 96, max context 19841 tokens, decoder fp16)" in message
    assert "does NOT fit on rtx4090" in message and "--frames " in message and "--decoder-precision fp8" in message
    assert "does NOT fit on rtx4090" in capsys.readouterr().err  # the table is printed before the refusal
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_cli_refuses_with_one_error_line(tmp_path, no_work, capsys):
    status = main(
        ["--model", "tiny", "--output", str(tmp_path / "e"), "--backend", "onnxruntime", "--target-gpu", "1GiB"]
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(errors) == 1
    assert "does NOT fit on 1GiB" in errors[0] and "--target-gpu rtx4090 (24 GiB)" in errors[0]


def test_the_plan_is_written_into_the_manifest(tmp_path):
    out = tmp_path / "tiny"
    manifest = build("tiny", out, backend="onnxruntime", frames=4, target_gpu="rtx4090", progress=False)
    plan = read_manifest(out).memory_plan
    assert plan == manifest.memory_plan == json.loads((out / "manifest.json").read_text())["memory_plan"]
    assert (plan["model"], plan["frames"], plan["decoder_precision"], plan["target"]) == ("tiny", 4, "fp32", "rtx4090")
    assert plan["capacity_bytes"] == 24 * GIB and plan["fits"] and plan["fixes"] is None
    # 4 frames * 25 tokens + 1 newline + 512 + 512; KV: 2 * 2 layers * 2 KV heads * head_dim 16 * tokens * 4 bytes
    assert plan["max_context"] == 1125
    (kv,) = [row["bytes"] for row in plan["rows"] if row["name"].startswith("KV cache")]
    assert kv == 2 * 2 * 2 * 16 * 1125 * 4
    assert plan["total_bytes"] == sum(row["bytes"] for row in plan["rows"] if row["counted"])


def test_without_a_target_an_onnxruntime_engine_has_no_plan(tmp_path):
    manifest = build("tiny", tmp_path / "e", backend="onnxruntime", frames=2, progress=False)
    assert manifest.memory_plan is None and read_manifest(tmp_path / "e").memory_plan is None


@pytest.mark.parametrize(
    ("requested", "backend", "dtype", "expected"),
    [
        (None, "onnxruntime", "fp32", "fp32"),
        (None, "tensorrt", "fp16", "fp16"),
        ("fp16", "onnxruntime", "fp16", "fp16"),
        ("bf16", "tensorrt", "fp16", "bf16"),
        ("fp8", "tensorrt", "fp16", "fp8"),
        ("int4_awq", "tensorrt", "fp16", "int4_awq"),
    ],
)
def test_decoder_precision(requested, backend, dtype, expected):
    assert check_decoder_precision(requested, backend, dtype) == expected


@pytest.mark.parametrize(
    ("requested", "dtype", "message"),
    [
        ("int4_awq", "fp32", "--decoder-precision int4_awq needs --backend tensorrt"),
        ("fp16", "fp32", r"graphs' precision, --dtype \(fp32 here\)"),
        ("int8", "fp32", "decoder precision = 'int8'; choose one of fp16, bf16, fp8, int4_awq"),
    ],
)
def test_a_decoder_precision_onnxruntime_cannot_run_is_refused(requested, dtype, message):
    with pytest.raises(BuildError, match=message):
        check_decoder_precision(requested, "onnxruntime", dtype)


def test_max_context_needs_a_target(tmp_path, no_work):
    with pytest.raises(BuildError, match="--max-context sizes the memory plan .*: give --target-gpu too"):
        build("tiny", tmp_path / "e", backend="onnxruntime", frames=4, max_context=4096)


PAPER = EarlyTomConfig(variant="paper", retain_ratio=0.2)


def test_decoder_limits_follow_max_context():
    dims = packaged_dims("tiny")  # T = 25, one suffix token
    # paper: K = round(0.2 * 8 * 25) = 40 visual tokens + 1 suffix = 41
    assert decoder_plan(PAPER, dims, 8) == DecoderPlan(41, 41 + 512, 41 + 1024, 1)
    plan = decoder_plan(PAPER, dims, 8, max_context=300)
    assert (plan.max_multimodal_len, plan.max_input_len, plan.max_seq_len) == (41, 299, 300)
    plan = decoder_plan(PAPER, dims, 8, max_context=4000)
    assert (plan.max_input_len, plan.max_seq_len) == (41 + 512, 4000)
    assert decoder_plan(PAPER, dims, 8, max_context=43).max_input_len == 42  # one prompt token, one new token
    with pytest.raises(ValueError, match="cannot hold the 41 visual tokens of 8 units.*--max-context 43 or more"):
        decoder_plan(PAPER, dims, 8, max_context=42)


def test_fp8_is_refused_and_never_offered_on_ampere_targets():
    siglip = {"unit_pixels": 3 * 384 * 384, "patch_tokens": 729, "hidden": 1152, "heads": 16, "mlp_hidden": 4304}
    ov7b = memory_sizes(packaged_config("llava-ov-7b"), VisionShape(**siglip, tokens_per_frame=196, llm_hidden=3584))
    with pytest.raises(ValueError, match="fp8 needs an Ada or Hopper GPU .*a100-40g has none: use int4_awq"):
        plan_memory(ov7b, 32, "a100-40g", decoder_precision="fp8")
    assert plan_memory(ov7b, 96, "rtx4090").fixes.decoder_precision == "fp8"
    assert plan_memory(ov7b, 96, "a10").fixes.decoder_precision == "int4_awq"  # the same 24 GiB, no FP8


PLAN = {"frames": 32, "max_context": 7297, "decoder_precision": "fp16", "total_bytes": 10 * GIB}


def test_free_memory_check_counts_the_context_as_already_made():
    check_free_memory(PLAN, free=19 * GIB // 2, total=24 * GIB, device="cuda:0")  # 10 - 0.5 GiB needed: fits exactly
    with pytest.raises(DoesNotFit) as refusal:
        check_free_memory(PLAN, free=9 * GIB, total=24 * GIB, device="cuda:1")
    message = str(refusal.value)
    assert "needs 9.50 GiB" in message and "cuda:1 has 9.00 GiB free of 24.00 GiB" in message
    assert "32 frames, max context 7297 tokens, decoder fp16" in message
    assert "build_engine --target-gpu 9.0GiB" in message


@pytest.mark.parametrize(("name", "dtype"), [("float16", "float16"), ("bfloat16", "bfloat16"), ("float32", "float32")])
def test_trtllm_dtype(name, dtype):
    assert str(trtllm_dtype({"pretrained_config": {"dtype": name}})) == f"torch.{dtype}"


def test_trtllm_dtype_refuses_what_it_cannot_feed():
    with pytest.raises(ValueError, match="pretrained_config.dtype = 'int8'"):
        trtllm_dtype({"pretrained_config": {"dtype": "int8"}})
    with pytest.raises(ValueError, match="pretrained_config.dtype = None"):
        trtllm_dtype({})


def test_trtllm_context_is_the_engine_max_seq_len_within_the_positions():
    assert trtllm_context({"build_config": {"max_seq_len": 4000}}, 32768) == 4000
    assert trtllm_context({"build_config": {"max_seq_len": 40000}}, 32768) == 32768
    assert trtllm_context({}, 2048) == 2048


def test_quantizer_source_links_decoder_and_tokenizer(tmp_path):
    decoder, tokenizer = tmp_path / "decoder", tmp_path / "tokenizer"
    decoder.mkdir()
    tokenizer.mkdir()
    (decoder / "config.json").write_text("decoder")
    (decoder / "model.safetensors").write_text("weights")
    (tokenizer / "tokenizer.json").write_text("tok")
    (tokenizer / "config.json").write_text("not the decoder's")
    link_checkpoint(tmp_path / "hf", decoder, tokenizer)
    linked = {p.name: p.read_text() for p in (tmp_path / "hf").iterdir()}
    assert linked == {"config.json": "decoder", "model.safetensors": "weights", "tokenizer.json": "tok"}
    assert all(p.is_symlink() for p in (tmp_path / "hf").iterdir())


@pytest.mark.parametrize(("max_context", "planned"), [(None, 41 + 1024), (300, 300)])
def test_a_tensorrt_plan_sizes_the_kv_cache_for_the_decoder_engine(max_context, planned):
    arch = (packaged_config("tiny"), packaged_dims("tiny"))
    options = {"name": "tiny", "config": PAPER, "target": "rtx4090", "precision": "fp16"}
    plan = engine_plan(arch, 8, backend="tensorrt", max_context=max_context, **options)
    assert plan.max_context == planned  # the TensorRT-LLM engine's max_seq_len, not every visual token uncompressed
    assert engine_plan(arch, 8, backend="onnxruntime", max_context=None, **options).max_context == 8 * 25 + 1 + 1024
