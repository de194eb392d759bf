"""--device / --dtype for the eager backend: everything a CPU can check (parsing and validation, SDPA attention,
the dtype through the eager pipeline with decisions close to fp32, clear errors for devices this machine lacks)."""

import pytest
import torch

from benchmarks.gpu_validate import Installed, settings
from earlytom.cli import main as earlytom_main
from earlytom.compress import EarlyTomConfig
from earlytom.dtypes import torch_dtype
from earlytom.runtime.backends.eager import eager_device, load_eager
from earlytom.runtime.chain import kernel_ops
from earlytom.runtime.pipeline import Pipeline

NO_CUDA = not torch.cuda.is_available()
PROMPT = "What changes?"


# --- eager: device and dtype ---------------------------------------------------------------------------------


def test_device_names_are_parsed_and_bad_ones_refused():
    assert eager_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "CUDA", "cpu:0", "cuda:x", "cuda:", ""):
        with pytest.raises(ValueError, match="choose cpu, cuda or cuda:N"):
            eager_device(bad)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="sees no CUDA GPU; use --device cpu"):
            eager_device(name)


def test_dtype_names():
    assert [torch_dtype(n) for n in ("fp32", "fp16", "bf16")] == [torch.float32, torch.float16, torch.bfloat16]
    with pytest.raises(ValueError, match="choose one of fp32, fp16, bf16"):
        torch_dtype("float16")


def test_device_and_dtype_are_checked_before_the_model_is_loaded():
    """A bad --device or --dtype is reported as such, not as whatever loading the model would have said."""
    with pytest.raises(ValueError, match="device = 'tpu'"):
        load_eager("no-such-model", device="tpu")
    with pytest.raises(ValueError, match="dtype = 'int8'"):
        load_eager("no-such-model", dtype="int8")


def test_eager_model_uses_sdpa_attention(tiny):
    config = tiny.model.config
    assert config.vision_config._attn_implementation == "sdpa"
    assert config.text_config._attn_implementation == "sdpa"


@pytest.fixture(scope="module")
def runs(clips):
    """(variant, dtype) -> the eager tiny pipeline's result on the cut clip, 16 frames."""
    out = {}
    for variant in ("paper", "official"):
        for dtype in ("fp32", "bf16", "fp16"):
            pipe = Pipeline.from_pretrained("tiny", dtype=dtype, config=EarlyTomConfig(variant=variant), num_frames=16)
            out[variant, dtype] = pipe.generate(clips["cut"], PROMPT, max_new_tokens=4)
    return out


def rows(visual) -> dict[tuple[int, int], int]:
    """(frame, index) of each selected token -> its row in visual.embeds."""
    pairs = zip(visual.frame.tolist(), visual.index.tolist(), strict=True)
    return {pair: row for row, pair in enumerate(pairs)}


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_eager_pipeline_runs_in_that_dtype_and_decides_like_fp32(runs, variant, dtype):
    """bf16 / fp16 on CPU: the model's dtype reaches the visual tokens, the merges are the fp32 merges, and the
    selected tokens are (nearly) the fp32 ones with close embeddings."""
    low, ref = runs[variant, dtype], runs[variant, "fp32"]
    assert low.visual.embeds.dtype == torch_dtype(dtype)
    assert low.visual.embeds.device == low.visual.source.device == low.visual.frame.device == torch.device("cpu")
    assert low.counts == ref.counts
    assert torch.equal(low.visual.source, ref.visual.source)  # same frames merged
    picked, wanted = rows(low.visual), rows(ref.visual)
    shared = picked.keys() & wanted.keys()
    assert len(shared) / len(picked.keys() | wanted.keys()) >= 0.9  # near-tied scores may swap a token or two
    a = low.visual.embeds[[picked[key] for key in shared]].float()
    b = ref.visual.embeds[[wanted[key] for key in shared]]
    assert float((a - b).abs().max() / b.abs().max()) < 3e-2  # bf16 keeps 8 bits of mantissa


def test_no_device_copy_stage_when_the_pixels_are_already_there(runs):
    assert "to_device" not in runs["paper", "fp32"].timings_ms


# --- the command line ---


def test_cli_dtype_reaches_the_eager_model(clips, capsys):
    args = ["run", "--video", str(clips["cut"]), "--prompt", PROMPT, "--frames", "6", "--max-new-tokens", "2"]
    assert earlytom_main([*args, "--dtype", "bf16", "--device", "cpu", "--json"]) == 0
    assert '"visual_tokens"' in capsys.readouterr().out


# --- benchmarks/gpu_validate: which paths run, and why the others do not ----------------------------------------

EVERYTHING = Installed(
    cuda_gpu=True,
    triton=True,
    cuda_python=True,
    ort_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    tensorrt_missing=(),
    nvdec=True,
)


def test_gpu_validate_times_full_earlytom_and_topk_at_each_ratio():
    assert settings((0.1, 0.25)) == [
        ("full", "full", 0.15),
        ("earlytom r=0.10", "earlytom", 0.1),
        ("earlytom r=0.25", "earlytom", 0.25),
        ("global top-K r=0.10", "global_topk", 0.1),
        ("global top-K r=0.25", "global_topk", 0.25),
    ]


def test_cuda_picks_the_triton_kernels_for_both_variants():
    """`auto` runs the Triton kernels on CUDA and the PyTorch reference on CPU."""
    from earlytom.compress.ops import REFERENCE, CompressOps
    from earlytom.plugins.triton.ops import JIT

    assert kernel_ops("auto", torch.device("cuda")) is JIT  # only the device type is read: no GPU needed
    assert kernel_ops("auto", torch.device("cpu")) is REFERENCE
    operations = [name for name in vars(CompressOps) if not name.startswith("_")]
    assert sorted(operations) == ["frame_merge", "official_compress", "official_select", "token_select"]
    for implementation in (JIT, REFERENCE):  # each implements every operation of the interface
        assert all(callable(getattr(implementation, name)) for name in operations)
