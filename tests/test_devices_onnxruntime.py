"""--providers for the ONNX Runtime backend: option validation, provider lists, the TensorRT provider's cache
(outside the engine directory) and optimisation profiles parsed from the exported graphs, and clear errors for
providers this ONNX Runtime lacks."""

import onnx
import onnxruntime as ort
import pytest
import torch

from earlytom.cli import main as earlytom_main
from earlytom.compress import EarlyTomConfig
from earlytom.engine.layout import MANIFEST
from earlytom.engine.manifest import read_manifest, sha256
from earlytom.engine.sessions import (
    PROVIDERS,
    Providers,
    ProviderUnavailable,
    check_available,
    check_loaded,
    profile_shapes,
    provider_list,
    trt_cache_dir,
)
from earlytom.engine_builder.build import build
from earlytom.runtime.backends.onnxruntime import decoder_placement
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.synthetic import moving_square_frames

PROMPT = "What changes?"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "tiny"
    build("tiny", out, config=EarlyTomConfig(variant="paper"), frames=8, progress=False)  # two graphs: quick
    return out


# --- onnxruntime: providers ----------------------------------------------------------------------------------


def test_providers_options_are_validated():
    assert Providers() == Providers("cpu", 0, None, None)
    with pytest.raises(ValueError, match="choose one of cpu, cuda, tensorrt"):
        Providers("trt")
    with pytest.raises(ValueError, match="device_id = -1"):
        Providers("cuda", device_id=-1)
    with pytest.raises(ValueError, match="trt_workspace = 0"):
        Providers("tensorrt", trt_workspace=0)
    with pytest.raises(ValueError, match="apply to providers = 'tensorrt', not 'cuda'"):
        Providers("cuda", trt_cache="/tmp/x")


def test_provider_lists_in_priority_order(tmp_path):
    assert provider_list(Providers()) == [("CPUExecutionProvider", {})]
    assert provider_list(Providers("cuda", device_id=1)) == [
        ("CUDAExecutionProvider", {"device_id": "1"}),
        ("CPUExecutionProvider", {}),
    ]
    profile = {"trt_profile_min_shapes": "pixels:1x3x72x72"}
    chosen = provider_list(Providers("tensorrt", trt_workspace=1 << 30), cache=tmp_path, fp16=True, profile=profile)
    assert [name for name, _ in chosen] == list(PROVIDERS["tensorrt"])
    trt = chosen[0][1]
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_timing_cache_path"] == str(tmp_path)
    assert trt["trt_fp16_enable"] == "True" and trt["trt_max_workspace_size"] == str(1 << 30)
    assert trt["trt_profile_min_shapes"] == "pixels:1x3x72x72" and trt["device_id"] == "0"
    assert "trt_max_workspace_size" not in provider_list(Providers("tensorrt"), cache=tmp_path)[0][1]
    with pytest.raises(ValueError, match="engine cache directory"):
        provider_list(Providers("tensorrt"))


def test_missing_provider_names_what_is_installed_and_the_fix():
    check_available("cpu", ["CPUExecutionProvider"])
    with pytest.raises(ProviderUnavailable) as error:
        check_available("tensorrt", ["CPUExecutionProvider", "CUDAExecutionProvider"])
    message = str(error.value)
    assert "needs TensorrtExecutionProvider," in message and "this ONNX Runtime has CPUExecutionProvider" in message
    assert "pip uninstall -y onnxruntime && pip install -c constraints.txt onnxruntime-gpu" in message
    with pytest.raises(ProviderUnavailable, match="could not load CUDAExecutionProvider"):
        check_loaded("cuda", ["CPUExecutionProvider"])
    check_loaded("tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])


def test_decoder_runs_where_the_graphs_run():
    assert decoder_placement(Providers(), "fp16") == (torch.device("cpu"), torch.float32, None)
    if torch.cuda.is_available():
        assert decoder_placement(Providers("cuda", device_id=0), "fp16") == (
            torch.device("cuda", 0),
            torch.float16,
            None,
        )
    else:
        device, dtype, note = decoder_placement(Providers("cuda"), "fp16")
        assert (device, dtype) == (torch.device("cpu"), torch.float32) and "PyTorch sees no GPU" in note


def test_trt_cache_lies_outside_the_engine_directory_keyed_by_its_manifest(tmp_path, monkeypatch):
    engine = tmp_path / "engine"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert trt_cache_dir("ab12", engine, None) == (tmp_path / "xdg" / "earlytom" / "trt-ep" / "ab12").resolve()
    assert trt_cache_dir("ab12", engine, tmp_path / "mine") == (tmp_path / "mine" / "ab12").resolve()
    with pytest.raises(ValueError, match="inside the engine directory"):
        trt_cache_dir("ab12", engine, engine / "cache")


def test_profile_covers_one_to_the_directorys_frames(engine):
    """Parsed from the exported graphs: the frame dimension is symbolic, every other one fixed."""
    head = profile_shapes(onnx.load(engine / "vision_head.onnx", load_external_data=False), 8)
    assert head == {
        "trt_profile_min_shapes": "pixels:1x3x72x72",
        "trt_profile_opt_shapes": "pixels:8x3x72x72",
        "trt_profile_max_shapes": "pixels:8x3x72x72",
    }
    manifest = read_manifest(engine)
    v, (hidden,) = manifest.vision, manifest.graphs[1].inputs
    tail = profile_shapes(onnx.load(engine / manifest.graphs[1].file, load_external_data=False), 8)
    assert tail["trt_profile_max_shapes"] == f"{hidden}:8x{v.patch_tokens}x{v.hidden}"


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu installed")
def test_gpu_providers_without_onnxruntime_gpu_are_refused(engine, clips, capsys):
    with pytest.raises(ProviderUnavailable, match="needs CUDAExecutionProvider"):
        Pipeline.from_engine_dir(engine, providers=Providers("cuda"))
    args = ["run", "--engine", str(engine), "--video", str(clips["cut"]), "--prompt", PROMPT]
    assert earlytom_main([*args, "--providers", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: providers = 'tensorrt' needs TensorrtExecutionProvider") and "\n" not in err


def test_explicit_cpu_provider_is_the_default(engine, clips):
    a = Pipeline.from_engine_dir(engine, providers=Providers("cpu")).generate(clips["cut"], PROMPT, 3)
    b = Pipeline.from_engine_dir(engine).generate(clips["cut"], PROMPT, 3)
    assert torch.equal(a.visual.embeds, b.visual.embeds) and a.token_ids == b.token_ids


def test_engine_directory_stays_exactly_its_manifest(engine):
    """Opening a directory (any provider) writes nothing into it: the TensorRT cache goes elsewhere."""
    before = sha256(engine / MANIFEST), sorted(p.name for p in engine.rglob("*"))
    Pipeline.from_engine_dir(engine, providers=Providers("cpu"))
    assert (sha256(engine / MANIFEST), sorted(p.name for p in engine.rglob("*"))) == before


# --- the command line: options that do not apply


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--engine", "ENGINE", "--device", "cpu"], "--device and --dtype apply to the eager model"),
        (["--engine", "ENGINE", "--dtype", "bf16"], "--device and --dtype apply to the eager model"),
        (["--providers", "cuda"], "--providers, --trt-cache and --require-signature apply to an --engine directory"),
        (["--trt-cache", "/tmp/c"], "--providers, --trt-cache and --require-signature apply to an --engine directory"),
        (["--engine", "ENGINE", "--trt-cache", "/tmp/c"], "apply to providers = 'tensorrt', not 'cpu'"),
        (["--device", "cuda:x"], "device = 'cuda:x'; choose cpu, cuda or cuda:N"),
    ],
)
def test_cli_refuses_options_that_do_not_apply(engine, clips, capsys, extra, message):
    extra = [str(engine) if x == "ENGINE" else x for x in extra]
    assert earlytom_main(["run", "--video", str(clips["cut"]), "--prompt", PROMPT, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_gpu_validate_compares_a_path_with_the_cpu_oracle(engine, clips, tmp_path, monkeypatch):
    """gpu_validate's comparison and timing, run through ONNX Runtime's CPU provider (the one path a CPU has):
    every setting agrees with the eager oracle."""
    import shutil

    from benchmarks import gpu_validate

    shutil.copytree(engine, tmp_path / "tiny-onnxruntime-paper-fp32-8")  # what onnxruntime_on would build
    monkeypatch.setitem(gpu_validate.MAKERS, "onnxruntime cpu", gpu_validate.onnxruntime_on("cpu"))
    path = gpu_validate.GpuPath("onnxruntime cpu", True, "")
    frames = moving_square_frames(24, cut_at=12)  # what gpu_validate compares on: an array, as decoded once
    rows = gpu_validate.compare([path], tmp_path, frames, 8, "paper")
    assert [row[1] for row in rows] == ["full", "earlytom r=0.15", "global top-K r=0.15"]
    for row in rows:
        assert row[2:5] == [True, True, True] and float(row[5]) < 1e-4 and row[6] is True, row
    (label, pipe), *_ = gpu_validate.path_runs(path, tmp_path, "tiny", 8, "fp32", "paper", (0.1,))
    stages = gpu_validate.time_stages(pipe, clips["cut"], repeats=2)
    assert label == "full" and stages["ttft"]["min"] <= stages["ttft"]["median"] <= stages["ttft"]["p90"]
