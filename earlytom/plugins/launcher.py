"""Run the AOT-compiled kernels (`python -m earlytom.plugins.aot`) through the CUDA driver API, with exactly the
parameter list kernels.json records: the declared parameters, then null pointers for the two hidden scratch
parameters Triton 3.5.0 appends (their sizes are 0; the compiler refuses anything else).

    kernels = AotKernels(engine_dir / "plugins" / "sm_89")          # needs cuda-python and a GPU
    kernels.launch(launch.token_cosine(B, L, D), "fp16", hidden, cos, stream=torch.cuda.current_stream().cuda_stream)

Argument packing (`pack_args`) is plain ctypes and runs anywhere; loading and launching need the `gpu` extra.
"""

import ctypes
import json
from dataclasses import dataclass
from pathlib import Path

from earlytom.plugins.triton import launch

# How each PTX parameter type is passed: a 64-bit device address or a 32-bit integer.
PARAM_CTYPES = {"ptr": ctypes.c_uint64, "u32": ctypes.c_uint32}
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class PackedArgs:
    """values: one ctypes value per PTX parameter; pointers: the void*[n] array cuLaunchKernel reads, pointing at
    `values` (keep this object alive until the launch call returns)."""

    values: tuple
    pointers: ctypes.Array

    @property
    def address(self) -> int:
        """The kernelParams argument of cuLaunchKernel."""
        return ctypes.addressof(self.pointers)


def pack_args(params: list[dict], args: list[int]) -> PackedArgs:
    """params: kernels.json's list for one kernel ({"name", "type", "hidden"}, PTX order); args: one int per
    non-hidden parameter, in order (a device address for "ptr", a value in [0, 2^31) for "u32" int32 scalars).
    Hidden parameters get null pointers."""
    declared = [p for p in params if not p["hidden"]]
    if len(args) != len(declared):
        raise ValueError(f"{len(args)} arguments for {len(declared)} parameters {[p['name'] for p in declared]}")
    given = iter(args)
    values = []
    for p in params:
        if p["type"] not in PARAM_CTYPES:
            raise ValueError(f"parameter {p['name']!r} has PTX type {p['type']!r}; the launcher passes only ptr / u32")
        value = 0 if p["hidden"] else next(given)
        high = INT32_MAX if p["type"] == "u32" else 2**64 - 1
        if not isinstance(value, int) or not 0 <= value <= high:
            raise ValueError(f"{p['name']} = {value!r}; a {p['type']} argument must be an int in [0, {high}]")
        values.append(PARAM_CTYPES[p["type"]](value))
    pointers = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
    return PackedArgs(tuple(values), pointers)


def read_contract(directory: Path) -> dict[tuple[str, str], dict]:
    """kernels.json of a plugins/<arch>/ directory as {(kernel, dtype): record}."""
    meta = json.loads((Path(directory) / "kernels.json").read_text())
    return {(k["kernel"], k["dtype"]): k for k in meta["kernels"]}


def check_spec(record: dict, spec: launch.Launch) -> None:
    """A cubin is specialised for its compile-time constants; refuse a launch spec computed for other ones."""
    if record["constexprs"] != spec.constexprs:
        raise ValueError(
            f"{spec.kernel} was compiled with {record['constexprs']}, this launch needs {spec.constexprs}: "
            "rebuild the kernels for these shapes (python -m earlytom.plugins.aot, or build_engine)"
        )


class AotKernels:  # pragma: no cover - needs cuda-python and a GPU
    """The cubins of one plugins/<arch>/ directory, loaded into the current CUDA context on first use."""

    def __init__(self, directory: Path):
        from cuda.bindings import driver

        self._driver = driver
        self._directory = Path(directory)
        self._records = read_contract(self._directory)
        self._functions = {}

    def _check(self, result):
        error, *rest = result
        if error != self._driver.CUresult.CUDA_SUCCESS:
            _, text = self._driver.cuGetErrorString(error)
            raise RuntimeError(f"CUDA driver error {error.name}: {text.decode() if text else '?'}")
        return rest[0] if len(rest) == 1 else rest

    def _function(self, record: dict):
        key = (record["kernel"], record["dtype"])
        if key not in self._functions:
            cubin = (self._directory / record["files"]["cubin"]).read_bytes()
            module = self._check(self._driver.cuModuleLoadData(cubin))
            function = self._check(self._driver.cuModuleGetFunction(module, record["entry"].encode()))
            self._functions[key] = (module, function)
        return self._functions[key][1]

    def launch(self, spec: launch.Launch, dtype: str, *tensors, stream: int) -> None:
        """Launch `spec` on CUDA tensors (one per pointer parameter, in order) on `stream` (a CUstream handle)."""
        record = self._records.get((spec.kernel, dtype))
        if record is None:
            raise ValueError(f"{self._directory} has no {spec.kernel} kernel for {dtype}")
        check_spec(record, spec)
        packed = pack_args(record["params"], launch.ordered_args(spec, tuple(t.data_ptr() for t in tensors)))
        gx, gy, gz = spec.grid
        self._check(
            self._driver.cuLaunchKernel(
                self._function(record),
                gx,
                gy,
                gz,
                spec.block_threads,
                1,
                1,
                record["shared_bytes"],
                stream,
                packed.address,
                0,
            )
        )
