"""Compile every Triton kernel ahead of time for NVIDIA GPUs, without one: PTX, cubin and metadata.

    python -m earlytom.plugins.aot --arch sm_89 --out DIR [--model llava-ov-0.5b] [--frames 32]

writes DIR/<kernel>.<dtype>.ptx and .cubin for fp16, bf16 and fp32 inputs, and DIR/kernels.json with each
kernel's entry name, warps, shared memory and (from cuobjdump) registers. The TensorRT plugins embed the
PTX; build_engine stores the whole set in the engine directory's plugins/<arch>/. Tested with the Triton
version pinned in pyproject.toml (newer ones add hidden kernel parameters TensorRT does not fill).
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

from earlytom.compress import EarlyTomConfig
from earlytom.plugins.triton import kernels, launch

ARCHS = {"sm_80": 80, "sm_86": 86, "sm_89": 89, "sm_90": 90}
DTYPES = ("fp16", "bf16", "fp32")
TRITON_VERSION = "3.5.0"


@dataclass(frozen=True)
class Shapes:
    """The build-time facts the kernels are specialised for."""

    hidden: int  # D, vision width
    tokens: int  # L, patch tokens per frame
    tokens_per_frame: int  # T, after pooling
    max_frames: int  # B at most

    @classmethod
    def of_model(cls, name: str, max_frames: int) -> "Shapes":
        from earlytom.models.registry import packaged_config

        v = packaged_config(name).vision_config
        grid = v.image_size // v.patch_size
        return cls(v.hidden_size, grid * grid, ((grid + 1) // 2) ** 2, max_frames)


@dataclass(frozen=True)
class Compiled:
    kernel: str
    dtype: str
    arch: str
    entry: str
    num_warps: int
    shared_bytes: int
    registers: int | None  # per thread, from cuobjdump
    spill_bytes: int | None  # local memory per thread (register spills)
    ptx: str
    cubin: bytes


def launches(shapes: Shapes, config: EarlyTomConfig) -> list[launch.Launch]:
    """One launch spec per kernel at the largest shapes (constants depend only on build-time facts)."""
    B, L, D, T = shapes.max_frames, shapes.tokens, shapes.hidden, shapes.tokens_per_frame
    k_target = max(1, round(config.retain_ratio * B * T))
    return [
        launch.token_cosine(B, L, D),
        launch.merge_plan(B, L, config),
        launch.weighted_merge(B, L, D),
        launch.window_select(B, T, k_target, B),
        launch.dynamic_topk(B, T, k_target, B),
        launch.gather_tokens(k_target, T, D),
    ]


def signature(spec: launch.Launch, dtype: str) -> dict[str, str]:
    types = {name: kind.replace("*x", f"*{dtype}") for name, kind in launch.SIGNATURES[spec.kernel]}
    return types | dict.fromkeys(spec.constexprs, "constexpr")


def resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, local bytes) per thread as cuobjdump reports them (it ships with Triton's NVIDIA backend)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    registers, local = re.search(r"REG:(\d+)", out), re.search(r"LOCAL:(\d+)", out)
    return (int(registers.group(1)) if registers else None, int(local.group(1)) if local else None)


def compile_kernel(spec: launch.Launch, dtype: str, arch: str) -> Compiled:
    source = ASTSource(fn=getattr(kernels, spec.kernel), signature=signature(spec, dtype), constexprs=spec.constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", ARCHS[arch], 32), options={"num_warps": spec.num_warps})
    md = compiled.metadata
    cubin = compiled.asm["cubin"]
    registers, spill = resource_usage(cubin)
    return Compiled(
        spec.kernel, dtype, arch, md.name, md.num_warps, md.shared, registers, spill, compiled.asm["ptx"], cubin
    )


def compile_all(arch: str, shapes: Shapes, config: EarlyTomConfig, dtypes=DTYPES) -> list[Compiled]:
    if arch not in ARCHS:
        raise ValueError(f"arch = {arch!r}; choose one of {', '.join(ARCHS)}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("AOT compilation needs TRITON_INTERPRET unset: with it the kernels are interpreter objects")
    if triton.__version__ != TRITON_VERSION:
        raise RuntimeError(f"the AOT path is tested with triton {TRITON_VERSION}, found {triton.__version__}")
    return [compile_kernel(spec, dtype, arch) for spec in launches(shapes, config) for dtype in dtypes]


def write(compiled: list[Compiled], out: Path, shapes: Shapes) -> list[Path]:
    """<kernel>.<dtype>.ptx / .cubin and kernels.json into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    files, table = [], []
    for c in compiled:
        ptx, cubin = out / f"{c.kernel}.{c.dtype}.ptx", out / f"{c.kernel}.{c.dtype}.cubin"
        ptx.write_text(c.ptx)
        cubin.write_bytes(c.cubin)
        files += [ptx, cubin]
        table.append({k: v for k, v in asdict(c).items() if k not in ("ptx", "cubin")})
    meta = out / "kernels.json"
    meta.write_text(json.dumps({"triton": triton.__version__, "shapes": asdict(shapes), "kernels": table}, indent=2))
    return [*files, meta]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m earlytom.plugins.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=list(ARCHS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="llava-ov-7b", help="whose vision dims to compile for")
    parser.add_argument("--frames", type=int, default=32, help="most frames a request may have")
    parser.add_argument("--retain-ratio", type=float, default=EarlyTomConfig().retain_ratio)
    args = parser.parse_args(argv)
    shapes = Shapes.of_model(args.model, args.frames)
    compiled = compile_all(args.arch, shapes, EarlyTomConfig(variant="paper", retain_ratio=args.retain_ratio))
    write(compiled, args.out, shapes)
    for c in compiled:
        print(
            f"{c.arch} {c.kernel:15s} {c.dtype:5s} warps {c.num_warps}  shared {c.shared_bytes:6d} B  "
            f"registers {c.registers}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
