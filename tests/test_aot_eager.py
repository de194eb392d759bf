"""kernels="aot" for the eager backend, on CPU. The tiny model's kernels are compiled ahead of time for sm_89
(aot.compile_all, in a child process without TRITON_INTERPRET), then the eager pipeline runs on them through the
AOT path's own planning and packing (launcher.contract_ops: each launch's record for its dtype, check_spec,
pack_args with the real tensors' addresses), every launch executed by Triton's interpreter from the packed
arguments read back as the driver reads them. Only cuLaunchKernel itself is left to benchmarks/gpu_validate.py."""

import importlib.util
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from test_launcher import read_back

from earlytom.cli import main as earlytom_main
from earlytom.compress import EarlyTomConfig
from earlytom.plugins import launcher
from earlytom.plugins.triton import kernels
from earlytom.runtime.backends.base import RunOptions, UnsupportedOption
from earlytom.runtime.backends.eager import EagerBackend
from earlytom.runtime.chain import kernel_ops
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.synthetic import moving_square_frames

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason=f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r}: the launches are executed by the interpreter",
)

MAX_FRAMES = 8
CLIP = moving_square_frames(24, cut_at=12)[[0, 1, 1, 2, 12, 13, 13, 14]]  # [8, H, W, 3]: repeats and a scene cut
PROMPT = "What changes?"
COMPILER_ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
COMPILE = """
import sys
from pathlib import Path
from earlytom.compress import EarlyTomConfig
from earlytom.plugins import aot
variant, frames, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
shapes = aot.Shapes.of_model("tiny", frames)
aot.write(aot.compile_all("sm_89", shapes, EarlyTomConfig(variant=variant), dtypes=("fp32",)), out, shapes)
"""
USED = {  # the kernels the eager chain launches (attention received is the model's own computation)
    "paper": {"token_cosine", "merge_plan", "weighted_merge", "window_select", "dynamic_topk", "gather_tokens"},
    "official": {"window_cosine", "official_plan", "weighted_merge", "official_keep", "compact_keep", "gather_tokens"},
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """variant -> the directory of the tiny model's kernels for it (sm_89, fp32, up to MAX_FRAMES frames)."""
    out = {}
    for variant in ("paper", "official"):
        directory = tmp_path_factory.mktemp(f"sm_89-{variant}")
        done = subprocess.run(
            [sys.executable, "-c", COMPILE, variant, str(MAX_FRAMES), str(directory)],
            env=COMPILER_ENV,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        out[variant] = directory
    return out


def interpret(record: dict, spec, packed: launcher.PackedArgs, tensors: tuple) -> None:
    """Execute one launch from what cuLaunchKernel would read: each pointer parameter's address mapped back to
    its tensor, each u32 the packed value, the hidden scratch pointers null; the record's constants and warps."""
    values = read_back(packed, record["params"])
    by_address = {t.data_ptr(): t for t in tensors}
    assert len(by_address) == len(tensors)  # every tensor has its own address
    declared = [(v, p) for v, p in zip(values, record["params"], strict=True) if not p["hidden"]]
    assert [v for v, p in zip(values, record["params"], strict=True) if p["hidden"]] == [0, 0]
    args = [by_address[v] if p["type"] == "ptr" else v for v, p in declared]
    kernel = getattr(kernels, spec.kernel)
    kernel[spec.grid](*args, **record["constexprs"], num_warps=record["num_warps"], **spec.options)


def interpreted_aot(directory) -> tuple[launcher.AotOps, list]:
    """The AOT ops of `directory` with `interpret` for the driver, and the list of (kernel, dtype) launched."""
    contract = launcher.Contract(directory)
    launched = []

    def execute(record, spec, packed, tensors):
        launched.append((record["kernel"], record["dtype"]))
        interpret(record, spec, packed, tensors)

    return launcher.AotOps(contract, launcher.contract_ops(contract, execute)), launched


def aot_pipeline(tiny, directory, variant: str, **options) -> tuple[Pipeline, list]:
    aot, launched = interpreted_aot(directory)
    defaults = RunOptions(config=EarlyTomConfig(variant=variant), num_frames=MAX_FRAMES, kernels="aot", **options)
    return Pipeline(EagerBackend(tiny, defaults, aot)), launched


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_eager_pipeline_on_the_aot_kernels_decides_like_the_reference(tiny, compiled, variant):
    """Same merges (frame counts, merged frames), same selected tokens, embeddings to fp32 rounding, same answer;
    every launch has a compiled record, in the dtype the plan checked."""
    pipe, launched = aot_pipeline(tiny, compiled[variant], variant)
    ours = pipe.generate(CLIP, PROMPT, max_new_tokens=4)
    reference = Pipeline.from_model(tiny, config=pipe.config, num_frames=MAX_FRAMES, kernels="reference")
    expected = reference.generate(CLIP, PROMPT, max_new_tokens=4)
    assert expected.counts["frames_after_merge"] < MAX_FRAMES  # the clip merges frames
    assert ours.counts == expected.counts
    assert torch.equal(ours.visual.source, expected.visual.source)
    assert torch.equal(ours.visual.frame, expected.visual.frame)
    assert torch.equal(ours.visual.index, expected.visual.index)
    torch.testing.assert_close(ours.visual.embeds, expected.visual.embeds, rtol=1e-4, atol=1e-5)
    assert ours.token_ids == expected.token_ids
    records = launcher.Contract(compiled[variant]).records
    assert {kernel for kernel, _ in launched} == USED[variant]
    assert set(launched) <= set(records)
    assert all(dtype in launcher.run_dtypes(kernel, variant, "fp32") for kernel, dtype in launched)


def test_the_ops_through_the_aot_kernels_match_the_jit_kernels(compiled):
    """attention_received and the official selection through the compiled records (blocks for MAX_FRAMES)."""
    from earlytom.plugins.triton import ops

    aot, launched = interpreted_aot(compiled["official"])
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(3, 2, 81, 16, generator=g) for _ in range(2))  # tiny: 2 heads of 16, 81 patches
    torch.testing.assert_close(aot.ops.attention_received(q, k, scale=0.25), ops.attention_received(q, k, scale=0.25))
    tokens, scores = torch.randn(5, 25, 64, generator=g), torch.rand(5, 25, generator=g)
    segments = torch.tensor([[0, 1], [2, 4]])
    ours = aot.ops.official_select(tokens, scores, segments, retain_ratio=0.3, num_frames=MAX_FRAMES)
    jit = ops.official_select(tokens, scores, segments, retain_ratio=0.3, num_frames=MAX_FRAMES)
    assert torch.equal(ours.frame, jit.frame) and torch.equal(ours.index, jit.index)
    assert torch.equal(ours.tokens, jit.tokens)
    assert {kernel for kernel, _ in launched} == {
        "attention_row_stats",
        "attention_received",
        "official_keep",
        "compact_keep",
        "gather_tokens",
    }


@pytest.mark.parametrize(
    "variant, change, match",
    [
        ("paper", {"tau_seg": 0.5}, "'TAU_SEG': 0.5"),
        ("paper", {"tau_merge": 0.9}, "'TAU_MERGE': 0.9"),
        ("official", {"max_window": 4}, "'MAX_WINDOW': 4"),
        ("official", {"alpha": 0.8}, "'ALPHA': 0.8"),
    ],
)
def test_other_thresholds_are_refused_before_any_launch(tiny, compiled, variant, change, match):
    pipe, launched = aot_pipeline(tiny, compiled[variant], variant)
    with pytest.raises(UnsupportedOption, match=match) as refused:
        pipe.with_options(config=replace(pipe.config, **change))
    flag = "--" + next(iter(change)).replace("_", "-")
    assert "python -m earlytom.plugins.aot --arch sm_89" in str(refused.value)
    assert f"{flag} {next(iter(change.values()))}" in str(refused.value)  # the rebuild command has the new value
    assert launched == []


def test_more_frames_than_compiled_are_refused_before_any_launch(tiny, compiled):
    pipe, launched = aot_pipeline(tiny, compiled["paper"], "paper")
    with pytest.raises(UnsupportedOption, match=f"frames = 9: .* compiled for at most {MAX_FRAMES} frames"):
        pipe.with_options(num_frames=MAX_FRAMES + 1)
    assert pipe.with_options(num_frames=4, method="full").options.num_frames == 4  # full tokens launch nothing
    assert pipe.with_options(num_frames=16, method="full").options.num_frames == 16
    with pytest.raises(ValueError, match="max_frames = 8 is below the 9 frames given"):
        pipe.backend.aot.ops.token_select(
            torch.zeros(9, 25, 64), torch.rand(9, 25), torch.zeros(9, dtype=torch.bool), retain_ratio=0.5, num_frames=9
        )
    assert launched == []


def test_another_variant_or_a_missing_dtype_is_refused(tiny, compiled):
    with pytest.raises(UnsupportedOption, match=r"has no attention_row_stats kernel for fp32 \(it has \[\]\)"):
        aot_pipeline(tiny, compiled["paper"], "official")
    contract = launcher.Contract(compiled["official"])
    with pytest.raises(ValueError, match=r"has no attention_row_stats kernel for bf16 \(it has \['fp32'\]\)"):
        contract.check_run(contract.shapes, EarlyTomConfig(), "bf16")


def test_the_dtypes_a_run_launches():
    assert launcher.run_dtypes("token_cosine", "paper", "bf16") == {"bf16"}
    assert launcher.run_dtypes("merge_plan", "paper", "bf16") == {"fp32"}
    assert launcher.run_dtypes("weighted_merge", "paper", "fp16") == {"fp16"}
    assert launcher.run_dtypes("weighted_merge", "official", "fp16") == {"fp16", "fp32"}  # fp32 attention rows


def test_kernels_aot_needs_the_kernels_directory(tiny):
    assert RunOptions(kernels="aot").kernels == "aot"
    with pytest.raises(UnsupportedOption, match=r"aot_kernels=DIR\) or --aot-kernels DIR"):
        Pipeline.from_model(tiny, kernels="aot")
    with pytest.raises(ValueError, match="--aot-kernels DIR"):
        kernel_ops("aot", torch.device("cuda"))
    assert Pipeline.from_model(tiny).options.kernels == "auto"


def test_aot_kernels_refuse_a_cpu_model_and_a_missing_driver_api(compiled):
    with pytest.raises(ValueError, match="on a CUDA GPU, the model is on cpu: load it with --device cuda"):
        launcher.open_aot_kernels(compiled["paper"], torch.device("cpu"))
    with pytest.raises(ValueError, match="on a CUDA GPU"):  # before the model loads
        Pipeline.from_pretrained("no-such-model", aot_kernels=compiled["paper"])
    if importlib.util.find_spec("cuda") is None:
        with pytest.raises(ValueError, match=r"cuda-python, which is not installed: pip install 'earlytom\[gpu\]'"):
            launcher.open_aot_kernels(compiled["paper"], torch.device("cuda"))


def test_the_gpu_arch_must_be_the_directorys(compiled, tmp_path):
    assert [launcher.gpu_arch(c) for c in [(8, 0), (8, 6), (8, 9), (9, 0)]] == ["sm_80", "sm_86", "sm_89", "sm_90"]
    with pytest.raises(ValueError, match=r"compute capability 7.5 \(sm_75\): .* use kernels='triton'"):
        launcher.gpu_arch((7, 5))
    contract = launcher.Contract(compiled["paper"])
    contract.check_gpu((8, 9))
    with pytest.raises(ValueError, match=r"holds kernels for sm_89; this GPU \(compute capability 8.6\) needs sm_86"):
        contract.check_gpu((8, 6))
    with pytest.raises(ValueError, match="has no kernels.json"):
        launcher.Contract(tmp_path)


def test_cli_aot_kernels_errors_are_one_line(compiled, clips, capsys):
    base = ["run", "--video", str(clips["cut"]), "--prompt", PROMPT, "--aot-kernels", str(compiled["paper"])]
    assert earlytom_main(base) == 2
    assert "error: kernels = 'aot' launches the compiled kernels on a CUDA GPU" in capsys.readouterr().err
    assert earlytom_main([*base, "--engine", "ENGINE"]) == 2
    assert "error: --aot-kernels applies to the eager model" in capsys.readouterr().err
