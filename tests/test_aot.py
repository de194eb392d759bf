"""Ahead-of-time compilation of every kernel for GPUs this machine does not have (sm_89: RTX 4090, sm_90:
H100), through the command users run, and the launch contract it records: every PTX entry equals the
`params` of kernels.json, scratch sizes are 0, and the PTX TensorRT gets has exactly `launch.SIGNATURES`
(checked by assembling it with ptxas and reading the parameters back from the cubin).

The compiler runs in a child process without TRITON_INTERPRET (this test session interprets kernels)."""

import json
import os
import re
import subprocess
import sys

import pytest
import triton

from earlytom.compress import EarlyTomConfig
from earlytom.plugins import aot

REGISTERS_PER_SM = 65536
STATIC_SHARED_LIMIT = 48 * 1024  # launchable without opting in to more dynamic shared memory
COMPILER_ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


OFFICIAL_KERNELS = {
    "attention_row_stats",
    "attention_received",
    "window_cosine",
    "official_plan",
    "weighted_merge",
    "official_keep",
    "compact_keep",
    "gather_tokens",
}
PAPER_KERNELS = {"token_cosine", "merge_plan", "weighted_merge", "window_select", "dynamic_topk", "gather_tokens"}
TINY = aot.Shapes(hidden=32, tokens=81, tokens_per_frame=25, max_frames=4, lm_hidden=48, heads=2)


@pytest.fixture(scope="module", params=[("sm_90", "official"), ("sm_86", "paper")])
def compiled(request, tmp_path_factory):
    arch, variant = request.param
    out = tmp_path_factory.mktemp(arch)
    done = subprocess.run(
        [sys.executable, "-m", "earlytom.plugins.aot", "--arch", arch, "--variant", variant, "--out", str(out)],
        env=COMPILER_ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((out / "kernels.json").read_text())
    assert {k["kernel"] for k in meta["kernels"]} == (OFFICIAL_KERNELS if variant == "official" else PAPER_KERNELS)
    return arch, out, meta


def test_every_kernel_and_dtype_is_written(compiled):
    arch, out, meta = compiled
    assert meta["triton"] == triton.__version__ and meta["triton"] in aot.TRITON_VERSIONS
    assert meta["shapes"] == {
        "hidden": 1152,
        "tokens": 729,
        "tokens_per_frame": 196,
        "max_frames": 32,
        "lm_hidden": 3584,
        "heads": 16,
    }
    expected = {(k["kernel"], d) for k in meta["kernels"] for d in aot.DTYPES}
    assert {(k["kernel"], k["dtype"]) for k in meta["kernels"]} == expected
    for suffix in ("ptx", "trt.ptx", "cubin"):
        assert {p.name for p in out.glob(f"*.{suffix}")} >= {aot.file_names(*key)[suffix] for key in expected}


def test_ptx_declares_the_entry_and_resources_fit(compiled):
    arch, out, meta = compiled
    for k in meta["kernels"]:
        ptx = (out / k["files"]["ptx"]).read_text()
        assert f".visible .entry {k['entry']}(" in ptx and k["entry"] == k["kernel"]
        assert f".target {arch}" in ptx
        assert (out / k["files"]["cubin"]).read_bytes()[:4] == b"\x7fELF"
        assert k["shared_bytes"] <= STATIC_SHARED_LIMIT, k
        assert k["registers"] is not None and k["registers"] <= 255, k
        assert k["registers"] * k["num_warps"] * 32 <= REGISTERS_PER_SM, k
        assert k["spill_bytes"] == 0, k


def test_every_ptx_entry_is_the_recorded_parameter_list(compiled):
    """The contract a launcher reads: the PTX entry, parameter for parameter, is `params`; the declared ones
    come first in SIGNATURES order, then Triton's two scratch pointers, whose sizes must stay 0."""
    arch, out, meta = compiled
    for k in meta["kernels"]:
        ptx = (out / k["files"]["ptx"]).read_text()
        found = aot.entry_params(ptx, k["entry"])
        assert [name for name, _ in found] == [f"{k['entry']}_param_{i}" for i in range(len(found))]
        assert [t for _, t in found] == [p["type"] for p in k["params"]], k["kernel"]
        assert [p["name"] for p in k["params"]] == [n for n, _ in aot.launch.SIGNATURES[k["kernel"]]] + list(
            aot.HIDDEN_PARAMS
        )
        assert [p["hidden"] for p in k["params"]] == [False] * (len(k["params"]) - 2) + [True, True]
        assert k["global_scratch_bytes"] == 0 and k["profile_scratch_bytes"] == 0, k


def test_the_official_scan_rounds_every_operation_like_the_reference(compiled):
    """official_plan is compiled without FMA contraction (launch.EXACT_FP32): its EMA and weights round each product
    and sum to float32 as the PyTorch reference does, so equal similarities give equal decisions on the GPU too."""
    arch, out, meta = compiled
    for k in meta["kernels"]:
        if k["kernel"] == "official_plan":
            assert "fma" not in (out / k["files"]["ptx"]).read_text()


def cubin_param_count(ptx_path, tmp_path) -> int:
    """Assemble a PTX file with ptxas for its own .target and count the kernel parameters the cubin declares."""
    cubin = tmp_path / (ptx_path.name + ".cubin")
    target = re.search(r"^\.target (\w+)", ptx_path.read_text(), re.MULTILINE).group(1)  # sm_90 PTX says sm_90a
    subprocess.run([aot.nvidia_tool("ptxas"), f"-arch={target}", ptx_path, "-o", cubin], check=True)
    elf = subprocess.run([aot.nvidia_tool("cuobjdump"), "-elf", cubin], capture_output=True, text=True, check=True)
    return len(set(re.findall(r"Ordinal : (0x[0-9a-f]+)", elf.stdout)))


def test_tensorrt_ptx_has_exactly_the_declared_signature(compiled, tmp_path):
    """TensorRT's AOT plugins pass input pointers, SymInt32 scalars and output pointers only: the .trt.ptx entry
    is exactly SIGNATURES, and ptxas accepts it (its cubin has that many parameters; Triton's has two more)."""
    arch, out, meta = compiled
    for k in meta["kernels"]:
        trt_ptx = out / k["files"]["trt.ptx"]
        found = aot.entry_params(trt_ptx.read_text(), k["entry"])
        assert [t for _, t in found] == [p.type for p in aot.declared_params(k["kernel"])], k["kernel"]
        original = (out / k["files"]["ptx"]).read_text()
        assert trt_ptx.read_text().split(")", 1)[1] == original.split(")", 1)[1]  # the body is untouched
    k = meta["kernels"][0]
    assert cubin_param_count(out / k["files"]["trt.ptx"], tmp_path) == len(aot.launch.SIGNATURES[k["kernel"]])
    assert cubin_param_count(out / k["files"]["ptx"], tmp_path) == len(k["params"])


PTX = """.version 8.7
.target sm_89
.visible .entry k(
	.param .u64 .ptr .global .align 1 k_param_0,
	.param .u32 k_param_1,
	.param .u64 .ptr .global .align 1 k_param_2,
	.param .u64 .ptr .global .align 1 k_param_3
)
{
	ld.param.b64 	%rd1, [k_param_0];
	ld.param.b32 	%r1, [k_param_1];
BODY
	ret;
}
"""
PARAMS = [aot.Param("x", "ptr", False), aot.Param("n", "u32", False)] + [
    aot.Param(name, "ptr", True) for name in aot.HIDDEN_PARAMS
]


def test_dropping_unread_hidden_parameters_keeps_the_rest():
    dropped = aot.drop_hidden_params(PTX.replace("BODY", ""), "k", PARAMS)
    assert aot.entry_params(dropped, "k") == [("k_param_0", "ptr"), ("k_param_1", "u32")]
    assert "k_param_2" not in dropped and "k_param_3" not in dropped


@pytest.mark.parametrize("use", ["ld.param.b64 %rd2, [k_param_2];", "mov.b64 %rd2, k_param_3;"])
def test_a_hidden_parameter_the_body_reads_is_never_dropped(use):
    with pytest.raises(ValueError, match="reads its hidden parameter"):
        aot.drop_hidden_params(PTX.replace("BODY", use), "k", PARAMS)


def test_a_similar_name_is_not_a_read():
    """k_param_20 is not k_param_2: only whole names count as uses."""
    assert aot.unread(PTX.replace("BODY", "// k_param_20 k_param_2x"), "k_param_2")


def test_an_entry_that_differs_from_the_contract_is_refused():
    with pytest.raises(ValueError, match="the contract says"):
        aot.drop_hidden_params(PTX.replace("BODY", ""), "k", PARAMS[:3])
    with pytest.raises(ValueError, match="has no .entry other"):
        aot.entry_params(PTX, "other")


def test_budget_is_visual_budget_and_gather_uses_the_language_width():
    """K comes from compress.visual_budget (which refuses 0 tokens); gather_tokens copies rows of width D'."""
    specs = {s.kernel: s for s in aot.launches(TINY, EarlyTomConfig(variant="paper", retain_ratio=0.15))}
    assert specs["gather_tokens"].scalars == (25, 48) and specs["gather_tokens"].grid[0] == 15  # round(.15*4*25)
    with pytest.raises(ValueError, match="keeps round"):
        aot.launches(TINY, EarlyTomConfig(variant="paper", retain_ratio=0.001))


def test_official_build_compiles_the_official_kernels_for_the_config():
    specs = {s.kernel: s for s in aot.launches(TINY, EarlyTomConfig(tau_seg=0.3, max_window=4))}
    assert set(specs) == OFFICIAL_KERNELS
    assert specs["official_plan"].constexprs["TAU_SEG"] == 0.3 and specs["official_plan"].scalars == (4, 81, 3)
    assert specs["attention_received"].constexprs["SCALE"] == 16**-0.5  # head width 32 // 2


def test_compiling_under_the_interpreter_is_refused():
    with pytest.raises(RuntimeError, match="needs TRITON_INTERPRET unset"):
        aot.compile_all("sm_89", TINY, EarlyTomConfig())


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="arch = 'sm_75'; choose one of sm_80, sm_86, sm_89, sm_90"):
        aot.compile_all("sm_75", TINY, EarlyTomConfig())
