"""Ahead-of-time compilation of every kernel for GPUs this machine does not have (sm_89: RTX 4090, sm_90:
H100): the PTX declares the entry, and registers and shared memory fit the target."""

import json

import pytest

from earlytom.compress import EarlyTomConfig
from earlytom.plugins import aot

REGISTERS_PER_SM = 65536
STATIC_SHARED_LIMIT = 48 * 1024  # launchable without opting in to more dynamic shared memory


@pytest.fixture(scope="module", params=["sm_89", "sm_90"])
def compiled(request):
    return aot.compile_all(request.param, aot.Shapes.of_model("llava-ov-7b", 32), EarlyTomConfig())


def test_every_kernel_compiles_and_fits(compiled):
    assert {(c.kernel, c.dtype) for c in compiled} == {(k, d) for k in aot.launch.SIGNATURES for d in aot.DTYPES}
    for c in compiled:
        assert f".visible .entry {c.entry}(" in c.ptx and c.entry == c.kernel
        assert f".target sm_{c.arch[3:]}" in c.ptx
        assert c.cubin[:4] == b"\x7fELF"
        assert c.shared_bytes <= STATIC_SHARED_LIMIT, (c.kernel, c.shared_bytes)
        assert c.registers is not None and c.registers <= 255
        assert c.registers * c.num_warps * 32 <= REGISTERS_PER_SM, (c.kernel, c.registers, c.num_warps)
        assert c.spill_bytes == 0, (c.kernel, c.dtype, c.spill_bytes)


def test_cli_writes_one_ptx_and_cubin_per_kernel_and_dtype(tmp_path):
    assert aot.main(["--arch", "sm_89", "--out", str(tmp_path), "--model", "llava-ov-0.5b", "--frames", "16"]) == 0
    assert len(list(tmp_path.glob("*.ptx"))) == len(list(tmp_path.glob("*.cubin"))) == 6 * 3
    meta = json.loads((tmp_path / "kernels.json").read_text())
    assert meta["triton"] == aot.TRITON_VERSION and meta["shapes"]["max_frames"] == 16
    assert "dynamic_topk" in (tmp_path / "dynamic_topk.fp16.ptx").read_text()


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="arch = 'sm_75'; choose one of sm_80, sm_86, sm_89, sm_90"):
        aot.compile_all("sm_75", aot.Shapes.of_model("tiny", 4), EarlyTomConfig())
