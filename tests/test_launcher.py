"""The driver-API launcher's argument packing (CPU: the kernelParams array read back through its pointers) and,
where cuda-python and a GPU exist, one real launch of an AOT cubin against the PyTorch reference."""

import ctypes
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from earlytom.compress import adjacent_similarity
from earlytom.plugins import launcher
from earlytom.plugins.triton import launch

PARAMS = [
    {"name": "hidden", "type": "ptr", "hidden": False},
    {"name": "B", "type": "u32", "hidden": False},
    {"name": "L", "type": "u32", "hidden": False},
    {"name": "D", "type": "u32", "hidden": False},
    {"name": "cos", "type": "ptr", "hidden": False},
    {"name": "global_scratch", "type": "ptr", "hidden": True},
    {"name": "profile_scratch", "type": "ptr", "hidden": True},
]


def read_back(packed: launcher.PackedArgs, params: list[dict]) -> list[int]:
    """What the driver would read: each kernelParams entry dereferenced with its parameter's size."""
    out = []
    for pointer, p in zip(packed.pointers, params, strict=True):
        out.append(ctypes.cast(pointer, ctypes.POINTER(launcher.PARAM_CTYPES[p["type"]])).contents.value)
    return out


def test_packing_puts_every_argument_in_ptx_order_with_null_scratch_pointers():
    spec = launch.token_cosine(4, 9, 16)
    args = launch.ordered_args(spec, (0x7F0000001000, 0x7F0000002000))
    packed = launcher.pack_args(PARAMS, args)
    assert len(packed.pointers) == len(PARAMS) == 7
    assert read_back(packed, PARAMS) == [0x7F0000001000, 4, 9, 16, 0x7F0000002000, 0, 0]
    assert [ctypes.sizeof(v) for v in packed.values] == [8, 4, 4, 4, 8, 8, 8]
    assert packed.address == ctypes.addressof(packed.pointers)


def test_wrong_argument_count_or_range_is_refused():
    with pytest.raises(ValueError, match="4 arguments for 5 parameters"):
        launcher.pack_args(PARAMS, [1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"B = -1; a u32 argument must be an int in \[0, 2147483647\]"):
        launcher.pack_args(PARAMS, [1, -1, 3, 4, 5])
    with pytest.raises(ValueError, match="PTX type 'f32'"):
        launcher.pack_args([{"name": "x", "type": "f32", "hidden": False}], [1])
    with pytest.raises(ValueError, match="token_cosine takes 2 tensors"):
        launch.ordered_args(launch.token_cosine(4, 9, 16), (1,))


def test_a_spec_for_other_build_time_constants_is_refused():
    record = {"constexprs": {"BLOCK_D": 16}}
    launcher.check_spec(record, launch.token_cosine(4, 9, 16))
    with pytest.raises(ValueError, match="compiled with {'BLOCK_D': 16}, this launch needs {'BLOCK_D': 32}"):
        launcher.check_spec(record, launch.token_cosine(4, 9, 32))


GPU_REASON = (
    "needs cuda-python (pip install earlytom[gpu]) and a CUDA GPU"
    if importlib.util.find_spec("cuda") is None or not torch.cuda.is_available()
    else None
)


@pytest.mark.skipif(GPU_REASON is not None, reason=GPU_REASON or "")
def test_token_cosine_cubin_runs_through_the_driver_api(tmp_path):  # pragma: no cover - GPU only
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "earlytom.plugins.aot", "--arch", arch, "--out", tmp_path]
    subprocess.run(command, env=env, check=True)
    kernels = launcher.AotKernels(tmp_path)
    spec_shapes = launcher.Contract(tmp_path).records[("token_cosine", "fp32")]["constexprs"]
    B, L, D = 32, 729, 1152
    spec = launch.token_cosine(B, L, D)
    assert spec.constexprs == spec_shapes
    hidden = torch.randn(B, L, D, device="cuda")
    cos = torch.empty(B - 1, L, device="cuda")
    kernels.launch(spec, "fp32", hidden, cos, stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    torch.testing.assert_close(cos.mean(1).cpu(), adjacent_similarity(hidden.cpu()), rtol=0, atol=1e-5)
