"""Compile every Triton kernel ahead of time for NVIDIA GPUs, without one: PTX, cubin and metadata.

    python -m earlytom.plugins.aot --arch sm_89 --out DIR [--model llava-ov-0.5b] [--frames 32] [EarlyTom options]

writes, for fp16, bf16 and fp32 inputs, DIR/<kernel>.<dtype>.ptx and .cubin (Triton's output) and
DIR/<kernel>.<dtype>.trt.ptx (the PTX TensorRT gets), and DIR/kernels.json with the launch contract of each
(see `contract`). build_engine stores the whole set in the engine directory's plugins/<arch>/.

The launch contract. Triton 3.5.0 and 3.6.0 append two pointer parameters (global scratch, profile scratch) to every
kernel's PTX `.entry`, after the ones `launch.SIGNATURES` declares; `params` in kernels.json lists them all
in PTX order with `hidden: true` for those two, and a launcher of the cubin (earlytom.plugins.launcher) passes
null pointers for them, which is right because both scratch sizes are 0 (compile_kernel refuses anything
else). TensorRT's AOT plugins cannot pass them: a QDP `aot_impl` returns only input pointers, SymInt32
scalars and output pointers (`trtp.SymIntExprs`, `PluginArgType::kINT` in NvInferPythonPlugin.h), so the
.trt.ptx drops the two parameters from the entry, after checking that nothing in the PTX reads them; its
entry then equals `SIGNATURES` exactly.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from earlytom.command_line import add_config_args, config_from_args
from earlytom.compress import EarlyTomConfig, visual_budget
from earlytom.dtypes import DTYPES as DTYPE_TABLE
from earlytom.models import DEFAULT_MODEL
from earlytom.models.backbone import VisionDims
from earlytom.plugins.triton import kernels, launch

ARCHS = {"sm_80": 80, "sm_86": 86, "sm_89": 89, "sm_90": 90}
DTYPES = tuple(DTYPE_TABLE)  # every precision the kernels are compiled in
TRITON_VERSION = "3.5.0"  # CI's (constraints.txt)
# The versions whose entries are known to end in exactly HIDDEN_PARAMS, never read, with zero scratch sizes (3.6.0:
# every kernel of both variants in fp16 / bf16 / fp32 compiled for sm_90 and read back, 2026-12-03).
TRITON_VERSIONS = (TRITON_VERSION, "3.6.0")
HIDDEN_PARAMS = ("global_scratch", "profile_scratch")  # what Triton appends to every entry, in order


@dataclass(frozen=True)
class Shapes:
    """The build-time facts the kernels are specialised for."""

    hidden: int  # D, vision width
    tokens: int  # L, patch tokens per frame
    tokens_per_frame: int  # T, after pooling
    max_frames: int  # B at most
    lm_hidden: int  # D', the language model's width (the selected tokens')
    heads: int  # H, the vision encoder's attention heads (head width D // H)

    @classmethod
    def of_model(cls, name: str, max_frames: int) -> "Shapes":
        """The shapes of a packaged model (an alias) at `max_frames` units."""
        from earlytom.models.registry import packaged_dims

        return cls.of_dims(packaged_dims(name), max_frames)

    @classmethod
    def of_dims(cls, dims: VisionDims, max_frames: int) -> "Shapes":
        """The shapes of a model of vision dims `dims` at `max_frames` units."""
        return cls(dims.hidden, dims.patch_tokens, dims.tokens_per_frame, max_frames, dims.llm_hidden, dims.heads)


@dataclass(frozen=True)
class Param:
    """One parameter of a PTX entry: `type` is "ptr" (a 64-bit global pointer) or the PTX scalar type ("u32")."""

    name: str
    type: str
    hidden: bool


@dataclass(frozen=True)
class Compiled:
    kernel: str
    dtype: str
    arch: str
    entry: str
    num_warps: int
    shared_bytes: int
    constexprs: dict
    params: tuple[Param, ...]  # the cubin's and `ptx`'s parameters, in order, hidden ones included
    global_scratch_bytes: int
    profile_scratch_bytes: int
    registers: int | None  # per thread, from cuobjdump
    spill_bytes: int | None  # local memory per thread (register spills)
    ptx: str  # Triton's
    ptx_tensorrt: str  # the entry without the hidden parameters: exactly launch.SIGNATURES
    cubin: bytes


def launches(shapes: Shapes, config: EarlyTomConfig) -> list[launch.Launch]:
    """One launch spec per kernel of `config.variant` at the largest shapes (constants depend only on build-time
    facts: dims, the most frames, the thresholds)."""
    B, L, D, T = shapes.max_frames, shapes.tokens, shapes.hidden, shapes.tokens_per_frame
    if config.variant == "official":
        return official_launches(shapes, config)
    k_target = visual_budget(retain_ratio=config.retain_ratio, num_frames=B, tokens_per_frame=T, available=B * T)
    return [
        launch.token_cosine(B, L, D),
        launch.merge_plan(B, L, alpha=config.alpha, tau_seg=config.tau_seg, tau_merge=config.tau_merge),
        launch.weighted_merge(B, L, D),
        launch.window_select(B, T, k_target, B),
        launch.dynamic_topk(B, T, k_target, B),
        launch.gather_tokens(k_target, T, shapes.lm_hidden),
    ]


def official_launches(shapes: Shapes, config: EarlyTomConfig) -> list[launch.Launch]:
    """The official variant's kernels; weighted_merge serves hidden rows and (fp32) attention rows alike, and the
    selection counts (per frame, from r_hat) are int32 arguments, so any N <= B runs on these."""
    B, L, D, T, H = shapes.max_frames, shapes.tokens, shapes.hidden, shapes.tokens_per_frame, shapes.heads
    head_dim = D // H
    W = launch.similarity_width(B, config.max_window)
    return [
        launch.attention_row_stats(B, H, L, head_dim, head_dim**-0.5),
        launch.attention_received(B, H, L, head_dim, head_dim**-0.5),
        launch.window_cosine(B, L, D, W),
        launch.official_plan(B, L, W, alpha=config.alpha, tau_seg=config.tau_seg, max_window=config.max_window),
        launch.weighted_merge(B, L, D),
        launch.official_keep(B, T, T, T),
        launch.compact_keep(B, T, B),
        launch.gather_tokens(B * T, T, shapes.lm_hidden),
    ]


def signature(spec: launch.Launch, dtype: str) -> dict[str, str]:
    types = {name: kind.replace("*x", f"*{dtype}") for name, kind in launch.SIGNATURES[spec.kernel]}
    return types | dict.fromkeys(spec.constexprs, "constexpr")


def declared_params(kernel: str) -> list[Param]:
    """The parameters `launch.SIGNATURES` declares, as they appear in PTX (Triton passes i32 as .u32)."""
    return [Param(name, "ptr" if kind.startswith("*") else "u32", False) for name, kind in launch.SIGNATURES[kernel]]


def expected_params(kernel: str) -> list[Param]:
    """The full PTX parameter list Triton (TRITON_VERSIONS) produces: the declared ones, then the two scratch
    pointers."""
    return declared_params(kernel) + [Param(name, "ptr", True) for name in HIDDEN_PARAMS]


def _entry_header(ptx: str, entry: str) -> re.Match:
    header = re.search(rf"\.entry\s+{re.escape(entry)}\s*\((.*?)\)", ptx, re.DOTALL)
    if header is None:
        raise ValueError(f"the PTX has no .entry {entry}(...)")
    return header


def entry_params(ptx: str, entry: str) -> list[tuple[str, str]]:
    """(PTX name, type) of each parameter of `.entry <entry>(...)`, in order; type "ptr" for `.u64 .ptr`
    parameters, else the scalar type without its dot ("u32")."""
    out = []
    for declaration in filter(None, (d.strip() for d in _entry_header(ptx, entry).group(1).split(","))):
        words = declaration.split()
        if words[0] != ".param" or not words[1].startswith("."):
            raise ValueError(f"unexpected PTX parameter declaration {declaration!r} in .entry {entry}")
        out.append((words[-1], "ptr" if ".ptr" in words else words[1][1:]))
    return out


def unread(ptx: str, name: str) -> bool:
    """True iff the PTX mentions parameter `name` only where it declares it (no ld.param, no address taken)."""
    return len(re.findall(rf"(?<![\w$]){re.escape(name)}(?![\w$])", ptx)) == 1


def drop_hidden_params(ptx: str, entry: str, params: list[Param]) -> str:
    """The PTX with the entry's hidden parameters removed. They must be its last ones and never read; anything
    else is refused, since the remaining parameters would no longer be where a launcher puts them."""
    names = entry_params(ptx, entry)
    if [t for _, t in names] != [p.type for p in params]:
        raise ValueError(f".entry {entry} has parameters {names}, the contract says {params}")
    keep = [not p.hidden for p in params]
    if keep != sorted(keep, reverse=True):
        raise ValueError(f".entry {entry}: hidden parameters are not the last ones: {params}")
    read = [name for (name, _), p in zip(names, params, strict=True) if p.hidden and not unread(ptx, name)]
    if read:
        raise ValueError(f".entry {entry} reads its hidden parameter(s) {read}: they cannot be dropped")
    header = _entry_header(ptx, entry)
    declarations = [d.strip() for d in header.group(1).split(",")]
    kept = ",\n\t".join(d for d, k in zip(declarations, keep, strict=True) if k)
    return ptx[: header.start(1)] + "\n\t" + kept + "\n" + ptx[header.end(1) :]


def nvidia_tool(name: str) -> Path:
    """A CUDA binary tool that ships with Triton's NVIDIA backend (ptxas, cuobjdump, nvdisasm)."""
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


def resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, local bytes) per thread as cuobjdump reports them."""
    tool = nvidia_tool("cuobjdump")
    if not tool.exists():
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    registers, local = re.search(r"REG:(\d+)", out), re.search(r"LOCAL:(\d+)", out)
    return (int(registers.group(1)) if registers else None, int(local.group(1)) if local else None)


def compile_kernel(spec: launch.Launch, dtype: str, arch: str) -> Compiled:
    """Compile one kernel; refuses a non-zero scratch size (the launchers pass null scratch pointers) and, in
    drop_hidden_params, a PTX entry that differs from `expected_params`."""
    source = ASTSource(fn=getattr(kernels, spec.kernel), signature=signature(spec, dtype), constexprs=spec.constexprs)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", ARCHS[arch], 32), options={"num_warps": spec.num_warps, **spec.options}
    )
    md = compiled.metadata
    ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
    params = expected_params(spec.kernel)
    if md.global_scratch_size or md.profile_scratch_size:
        raise RuntimeError(
            f"{spec.kernel} ({dtype}, {arch}) needs scratch memory (global {md.global_scratch_size} B, profile "
            f"{md.profile_scratch_size} B); the launchers pass null scratch pointers"
        )
    registers, spill = resource_usage(cubin)
    return Compiled(
        kernel=spec.kernel,
        dtype=dtype,
        arch=arch,
        entry=md.name,
        num_warps=md.num_warps,
        shared_bytes=md.shared,
        constexprs=dict(spec.constexprs),
        params=tuple(params),
        global_scratch_bytes=md.global_scratch_size,
        profile_scratch_bytes=md.profile_scratch_size,
        registers=registers,
        spill_bytes=spill,
        ptx=ptx,
        ptx_tensorrt=drop_hidden_params(ptx, md.name, params),
        cubin=cubin,
    )


def compile_all(arch: str, shapes: Shapes, config: EarlyTomConfig, dtypes=DTYPES) -> list[Compiled]:
    if arch not in ARCHS:
        raise ValueError(f"arch = {arch!r}; choose one of {', '.join(ARCHS)}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("AOT compilation needs TRITON_INTERPRET unset: with it the kernels are interpreter objects")
    if triton.__version__ not in TRITON_VERSIONS:
        raise RuntimeError(
            f"the AOT path is tested with triton {' and '.join(TRITON_VERSIONS)}, found {triton.__version__}"
        )
    return [compile_kernel(spec, dtype, arch) for spec in launches(shapes, config) for dtype in dtypes]


def file_names(kernel: str, dtype: str) -> dict[str, str]:
    return {suffix: f"{kernel}.{dtype}.{suffix}" for suffix in ("ptx", "trt.ptx", "cubin")}


def contract(c: Compiled) -> dict:
    """kernels.json's record of one compiled kernel: everything a launcher needs besides the shapes."""
    skip = ("ptx", "ptx_tensorrt", "cubin")
    return {k: v for k, v in asdict(c).items() if k not in skip} | {"files": file_names(c.kernel, c.dtype)}


def write(compiled: list[Compiled], out: Path, shapes: Shapes) -> list[Path]:
    """<kernel>.<dtype>.ptx / .trt.ptx / .cubin and kernels.json into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for c in compiled:
        names = file_names(c.kernel, c.dtype)
        (out / names["ptx"]).write_text(c.ptx)
        (out / names["trt.ptx"]).write_text(c.ptx_tensorrt)
        (out / names["cubin"]).write_bytes(c.cubin)
        files += [out / name for name in names.values()]
    meta = out / "kernels.json"
    table = [contract(c) for c in compiled]
    meta.write_text(json.dumps({"triton": triton.__version__, "shapes": asdict(shapes), "kernels": table}, indent=2))
    return [*files, meta]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m earlytom.plugins.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=list(ARCHS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"whose vision dims to compile for ({DEFAULT_MODEL})")
    parser.add_argument("--frames", type=int, default=32, help="most frames a request may have")
    add_config_args(parser)  # the variant and its thresholds are compile-time constants
    args = parser.parse_args(argv)
    shapes = Shapes.of_model(args.model, args.frames)
    compiled = compile_all(args.arch, shapes, config_from_args(args))
    write(compiled, args.out, shapes)
    for c in compiled:
        print(
            f"{c.arch} {c.kernel:15s} {c.dtype:5s} warps {c.num_warps}  shared {c.shared_bytes:6d} B  "
            f"registers {c.registers}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
