"""Ahead-of-time compilation of every kernel for GPUs this machine does not have (sm_89: RTX 4090, sm_90:
H100), through the command users run: the PTX declares the entry, registers and shared memory fit.

The compiler runs in a child process without TRITON_INTERPRET (this test session interprets kernels)."""

import json
import os
import subprocess
import sys

import pytest

from earlytom.plugins import aot

REGISTERS_PER_SM = 65536
STATIC_SHARED_LIMIT = 48 * 1024  # launchable without opting in to more dynamic shared memory
COMPILER_ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.fixture(scope="module", params=["sm_89", "sm_90"])
def compiled(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    done = subprocess.run(
        [sys.executable, "-m", "earlytom.plugins.aot", "--arch", request.param, "--out", str(out)],
        env=COMPILER_ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return request.param, out, json.loads((out / "kernels.json").read_text())


def test_every_kernel_and_dtype_is_written(compiled):
    arch, out, meta = compiled
    assert meta["triton"] == aot.TRITON_VERSION
    assert meta["shapes"] == {"hidden": 1152, "tokens": 729, "tokens_per_frame": 196, "max_frames": 32}
    expected = {(k, d) for k in aot.launch.SIGNATURES for d in aot.DTYPES}
    assert {(k["kernel"], k["dtype"]) for k in meta["kernels"]} == expected
    assert len(list(out.glob("*.ptx"))) == len(list(out.glob("*.cubin"))) == len(expected)


def test_ptx_declares_the_entry_and_resources_fit(compiled):
    arch, out, meta = compiled
    for k in meta["kernels"]:
        ptx = (out / f"{k['kernel']}.{k['dtype']}.ptx").read_text()
        assert f".visible .entry {k['entry']}(" in ptx and k["entry"] == k["kernel"]
        assert f".target {arch}" in ptx
        assert (out / f"{k['kernel']}.{k['dtype']}.cubin").read_bytes()[:4] == b"\x7fELF"
        assert k["shared_bytes"] <= STATIC_SHARED_LIMIT, k
        assert k["registers"] is not None and k["registers"] <= 255, k
        assert k["registers"] * k["num_warps"] * 32 <= REGISTERS_PER_SM, k
        assert k["spill_bytes"] == 0, k


def test_compiling_under_the_interpreter_is_refused():
    with pytest.raises(RuntimeError, match="needs TRITON_INTERPRET unset"):
        aot.compile_all("sm_89", aot.Shapes.of_model("tiny", 4), aot.EarlyTomConfig(variant="paper"))


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="arch = 'sm_75'; choose one of sm_80, sm_86, sm_89, sm_90"):
        aot.compile_all("sm_75", aot.Shapes.of_model("tiny", 4), aot.EarlyTomConfig(variant="paper"))
