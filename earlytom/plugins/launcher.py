"""Run the AOT-compiled kernels (`python -m earlytom.plugins.aot`) through the CUDA driver API, with exactly the
parameter list kernels.json records: the declared parameters, then null pointers for the two hidden scratch
parameters Triton 3.5.0 appends (their sizes are 0; the compiler refuses anything else).

    kernels = AotKernels(engine_dir / "plugins" / "sm_89")          # needs cuda-python and a GPU
    kernels.launch(launch.token_cosine(B, L, D), "fp16", hidden, cos, stream=torch.cuda.current_stream().cuda_stream)

The eager backend's `kernels="aot"` runs the compression ops (triton.ops.KernelOps) on them: `open_aot_kernels`
checks the directory against the GPU, `AotOps.check_run` a run's options against the compiled constants before
any launch, and every launch goes through `Contract.prepare` (record, check_spec, pack_args).

The contract, its checks and argument packing (`pack_args`) are plain Python and run anywhere; loading and
launching need the `gpu` extra.
"""

import ctypes
import importlib.util
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from earlytom.compress import EarlyTomConfig
from earlytom.dtypes import dtype_name
from earlytom.models.backbone import VisionDims
from earlytom.plugins import aot
from earlytom.plugins.triton import launch
from earlytom.plugins.triton.ops import KernelOps

# How each PTX parameter type is passed: a 64-bit device address or a 32-bit integer.
PARAM_CTYPES = {"ptr": ctypes.c_uint64, "u32": ctypes.c_uint32}
INT32_MAX = 2**31 - 1
REBUILD = "rebuild the kernels for these shapes (python -m earlytom.plugins.aot, or build_engine)"


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


def check_spec(record: dict, spec: launch.Launch, fix: str = REBUILD) -> None:
    """A cubin is specialised for its compile-time constants; refuse a launch spec computed for other ones."""
    if record["constexprs"] != spec.constexprs:
        raise ValueError(
            f"{spec.kernel} was compiled with {record['constexprs']}, this launch needs {spec.constexprs}: {fix}"
        )


def launch_dtype(spec: launch.Launch, tensors: tuple) -> str:
    """The kernels.json dtype of a launch: its data tensors' (the "*x" parameters); "fp32" for a kernel without
    any (merge_plan, official_plan, compact_keep), as the TensorRT plugins key them."""
    pointers = [kind for _, kind in launch.SIGNATURES[spec.kernel] if kind != "i32"]
    data = {t.dtype for kind, t in zip(pointers, tensors, strict=True) if kind == "*x"}
    if len(data) > 1:
        raise ValueError(f"{spec.kernel}: its data tensors mix dtypes {sorted(map(str, data))}")
    return dtype_name(data.pop()) if data else "fp32"


def run_dtypes(kernel: str, variant: str, dtype: str) -> set[str]:
    """The dtypes a run whose model computes in `dtype` launches `kernel` in (see launch_dtype): `dtype` for a
    kernel reading data, else fp32; the official variant's weighted_merge in both (hidden rows, fp32 attention)."""
    reads_data = any(kind == "*x" for _, kind in launch.SIGNATURES[kernel])
    return {dtype if reads_data else "fp32"} | (
        {"fp32"} if (kernel, variant) == ("weighted_merge", "official") else set()
    )


def gpu_arch(capability: tuple[int, int]) -> str:
    """A CUDA compute capability (major, minor) -> the plugins/<arch>/ name of its cubins (8, 9) -> "sm_89";
    refused when the AOT compiler does not target it."""
    major, minor = capability
    arch = f"sm_{major}{minor}"
    if arch not in aot.ARCHS:
        raise ValueError(
            f"compute capability {major}.{minor} ({arch}): the AOT kernels are compiled for {', '.join(aot.ARCHS)} "
            "only; use kernels='triton' (the JIT) on this GPU"
        )
    return arch


def rebuild_command(arch: str, config: EarlyTomConfig, frames: int) -> str:
    """The command compiling kernels for a run of `config` with up to `frames` frames (MODEL, DIR: the user's)."""
    thresholds = {"alpha": config.alpha, "tau-seg": config.tau_seg}
    thresholds |= {"tau-merge": config.tau_merge} if config.variant == "paper" else {"max-window": config.max_window}
    options = " ".join(f"--{name} {value}" for name, value in thresholds.items())
    return (
        f"python -m earlytom.plugins.aot --arch {arch} --model MODEL --frames {frames} --variant {config.variant} "
        f"{options} --out DIR"
    )


class Contract:
    """kernels.json of one plugins/<arch>/ directory: `records` {(kernel, dtype): record}, the build-time
    `shapes` the cubins are specialised for (aot.Shapes), and their `arch`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        path = self.directory / "kernels.json"
        if not path.is_file():
            raise ValueError(
                f"{self.directory} has no kernels.json: give an engine directory's plugins/<arch>/, or a directory "
                "written by python -m earlytom.plugins.aot --arch sm_XX --out DIR"
            )
        meta = json.loads(path.read_text())
        self.records = {(k["kernel"], k["dtype"]): k for k in meta["kernels"]}
        self.shapes = aot.Shapes(**meta["shapes"])
        archs = {k["arch"] for k in meta["kernels"]}
        if len(archs) != 1:
            raise ValueError(f"{path} holds kernels for {sorted(archs)}; one plugins/<arch>/ directory has one arch")
        (self.arch,) = archs

    def record(self, kernel: str, dtype: str, fix: str = REBUILD) -> dict:
        """The record of `kernel` compiled for `dtype`."""
        if (kernel, dtype) not in self.records:
            have = sorted(d for k, d in self.records if k == kernel)
            raise ValueError(f"{self.directory} has no {kernel} kernel for {dtype} (it has {have}): {fix}")
        return self.records[(kernel, dtype)]

    def prepare(self, spec: launch.Launch, dtype: str, tensors: tuple) -> tuple[dict, PackedArgs]:
        """The record of `spec` for `dtype`, its constants checked (check_spec), and the packed arguments with the
        tensors' addresses (tensors: one per pointer parameter, in order)."""
        record = self.record(spec.kernel, dtype)
        check_spec(record, spec)
        return record, pack_args(record["params"], launch.ordered_args(spec, tuple(t.data_ptr() for t in tensors)))

    def check_gpu(self, capability: tuple[int, int]) -> None:
        """Refuse cubins of another arch than the GPU's (compute capability (major, minor))."""
        needed = gpu_arch(capability)
        if self.arch != needed:
            raise ValueError(
                f"{self.directory} holds kernels for {self.arch}; this GPU (compute capability "
                f"{capability[0]}.{capability[1]}) needs {needed}: use an engine's plugins/{needed}/, or "
                f"python -m earlytom.plugins.aot --arch {needed} --out DIR"
            )

    def check_run(self, shapes: aot.Shapes, config: EarlyTomConfig, dtype: str) -> None:
        """Refuse, before any launch, a run the cubins were not compiled for: `shapes` the model's with max_frames
        = the run's frame count, `config` its EarlyTom parameters, `dtype` the model's. Refused: more frames than
        the build's max_frames, a missing kernel or dtype, and other compile-time constants (model dims,
        thresholds) than the compiled ones."""
        most = self.shapes.max_frames
        fix = rebuild_command(self.arch, config, max(shapes.max_frames, most))
        if shapes.max_frames > most:
            raise ValueError(
                f"frames = {shapes.max_frames}: the AOT kernels in {self.directory} were compiled for at most "
                f"{most} frames; use --frames {most} or fewer, or rebuild them: {fix}"
            )
        for spec in aot.launches(replace(shapes, max_frames=most), config):
            for d in sorted(run_dtypes(spec.kernel, config.variant, dtype)):
                check_spec(self.record(spec.kernel, d, fix), spec, fix)


def contract_ops(contract: Contract, execute) -> KernelOps:
    """The compression ops launching through `contract`: each launch's record for its dtype (launch_dtype), its
    spec checked and its arguments packed (Contract.prepare), then execute(record, spec, packed, tensors); the
    selection blocks sized for the build's max_frames."""

    def run(spec: launch.Launch, *tensors) -> None:
        record, packed = contract.prepare(spec, launch_dtype(spec, tensors), tensors)
        execute(record, spec, packed, tensors)

    return KernelOps(run, max_frames=contract.shapes.max_frames)


@dataclass(frozen=True)
class AotOps:
    """What the eager backend runs kernels="aot" with: the directory's contract and the ops launching its cubins."""

    contract: Contract
    ops: KernelOps

    def check_run(self, dims: VisionDims, config: EarlyTomConfig, num_frames: int, dtype: torch.dtype) -> None:
        """Contract.check_run for a run of `num_frames` frames of a model of vision `dims` in `dtype`."""
        shapes = aot.Shapes.of_dims(dims, dims.units(num_frames))
        self.contract.check_run(shapes, config, dtype_name(dtype))


def has_driver_api() -> bool:
    """cuda-python's CUDA driver API (cuda.bindings), which AotKernels launches through, is installed."""
    return importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None


def open_aot_kernels(directory: Path, device: torch.device) -> AotOps:
    """The AOT kernels of `directory` (a plugins/<arch>/) for the eager model on `device`; refused on a CPU
    device, without cuda-python, or when the directory's arch is not the GPU's."""
    if device.type != "cuda":
        raise ValueError(
            f"kernels = 'aot' launches the compiled kernels on a CUDA GPU, the model is on {device}: load it with "
            "--device cuda (device='cuda'), or use --kernels reference without --aot-kernels"
        )
    if not has_driver_api():
        raise ValueError(
            "kernels = 'aot' launches through the CUDA driver API of cuda-python, which is not installed: "
            "pip install 'earlytom[gpu]' (or cuda-python>=12.6)"
        )
    kernels = AotKernels(directory)  # pragma: no cover - needs cuda-python and a GPU
    kernels.contract.check_gpu(torch.cuda.get_device_capability(device))  # pragma: no cover

    def execute(record, spec, packed, tensors):  # pragma: no cover
        with torch.cuda.device(device):
            kernels.execute(record, spec, packed, stream=torch.cuda.current_stream(device).cuda_stream)

    return AotOps(kernels.contract, contract_ops(kernels.contract, execute))  # pragma: no cover


class AotKernels:  # pragma: no cover - needs cuda-python and a GPU
    """The cubins of one plugins/<arch>/ directory, loaded into the current CUDA context on first use."""

    def __init__(self, directory: Path):
        from cuda.bindings import driver

        self._driver = driver
        self.contract = Contract(directory)
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
            cubin = (self.contract.directory / record["files"]["cubin"]).read_bytes()
            module = self._check(self._driver.cuModuleLoadData(cubin))
            function = self._check(self._driver.cuModuleGetFunction(module, record["entry"].encode()))
            self._functions[key] = (module, function)
        return self._functions[key][1]

    def execute(self, record: dict, spec: launch.Launch, packed: PackedArgs, *, stream: int) -> None:
        """cuLaunchKernel of `record`'s cubin with the grid and block of `spec` and the arguments `packed`."""
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

    def launch(self, spec: launch.Launch, dtype: str, *tensors, stream: int) -> None:
        """Launch `spec` on CUDA tensors (one per pointer parameter, in order) on `stream` (a CUstream handle)."""
        record, packed = self.contract.prepare(spec, dtype, tensors)
        self.execute(record, spec, packed, stream=stream)
