"""The plugins of earlytom.plugins.tensorrt declared to TensorRT's QDP registry: importing this module registers
them (import it before parsing or deserialising a network). It imports TensorRT and Triton, so only the code
that runs TensorRT imports it; earlytom.plugins.tensorrt holds what the plugins take and give, testable without."""

import math
from typing import Tuple, Union  # QDP's validator expects the typing forms its samples use

import numpy as np
import numpy.typing as npt
import tensorrt as trt
import tensorrt.plugin as trtp
import triton

from earlytom.plugins import aot
from earlytom.plugins.tensorrt import table_lookup
from earlytom.plugins.triton import launch


def dtype_name(desc) -> str:
    return {trt.float16: "fp16", trt.bfloat16: "bf16", trt.float32: "fp32"}[desc.dtype]


def kernel(spec: launch.Launch, dtype: str):
    """(entry name, PTX, launch params, SymInt32 extra args) for the GPU this build runs on."""
    target = triton.runtime.driver.active.get_current_target()
    compiled = aot.compile_kernel(spec, dtype, f"sm_{target.arch}")
    params = trtp.KernelLaunchParams()
    params.grid_x, params.grid_y, params.grid_z = spec.grid
    params.block_x = spec.block_threads
    params.shared_mem = compiled.shared_bytes
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(x) for x in spec.scalars])
    return compiled.entry, compiled.ptx_tensorrt, params, extra  # the PTX without Triton's scratch params


def const(expr) -> int:
    return expr.constant_value()


i32, f32 = trt.int32, trt.float32
AotResult = Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]


@trtp.register("earlytom::token_cosine")
def token_cosine_desc(hidden: trtp.TensorDesc) -> trtp.TensorDesc:
    B, L, _ = hidden.shape_expr
    return trtp.from_shape_expr((B, L), f32)  # rows 0 .. B-2 are written


@trtp.aot_impl("earlytom::token_cosine")
def token_cosine_aot(hidden: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc], tactic: int) -> AotResult:
    B, L, D = hidden.shape_expr
    return kernel(launch.token_cosine(B, const(L), const(D)), dtype_name(hidden))


@trtp.register("earlytom::merge_plan")
def merge_plan_desc(
    cos: trtp.TensorDesc, alpha: float, tau_seg: float, tau_merge: float
) -> Tuple[
    trtp.TensorDesc,
    trtp.TensorDesc,
    trtp.TensorDesc,
    trtp.TensorDesc,
    trtp.TensorDesc,
    trtp.TensorDesc,
    trtp.TensorDesc,
]:
    B = cos.shape_expr[0]
    row = lambda dtype: trtp.from_shape_expr((B,), dtype)  # noqa: E731
    return (
        row(f32),
        row(i32),
        row(i32),
        trtp.from_shape_expr((B, 2), f32),
        row(i32),
        row(i32),
        trtp.from_shape_expr((1,), i32),
    )


@trtp.aot_impl("earlytom::merge_plan")
def merge_plan_aot(
    cos: trtp.TensorDesc,
    alpha: float,
    tau_seg: float,
    tau_merge: float,
    outputs: Tuple[trtp.TensorDesc],
    tactic: int,
) -> AotResult:
    B, L = cos.shape_expr
    return kernel(launch.merge_plan(B, const(L), alpha=alpha, tau_seg=tau_seg, tau_merge=tau_merge), "fp32")


@trtp.register("earlytom::weighted_merge")
def weighted_merge_desc(
    hidden: trtp.TensorDesc,
    first: trtp.TensorDesc,
    last: trtp.TensorDesc,
    weight: trtp.TensorDesc,
    count: trtp.TensorDesc,
) -> trtp.TensorDesc:
    return hidden.like()


@trtp.aot_impl("earlytom::weighted_merge")
def weighted_merge_aot(
    hidden: trtp.TensorDesc,
    first: trtp.TensorDesc,
    last: trtp.TensorDesc,
    weight: trtp.TensorDesc,
    count: trtp.TensorDesc,
    outputs: Tuple[trtp.TensorDesc],
    tactic: int,
) -> AotResult:
    F, *row = hidden.shape_expr  # hidden [F, L, D] or attention [F, L]: rows of `width` elements
    width = math.prod(const(d) for d in row)
    return kernel(launch.weighted_merge(F, 1, width), dtype_name(hidden))


@trtp.register("earlytom::window_select")
def window_select_desc(
    scores: trtp.TensorDesc, is_static: trtp.TensorDesc, k_target: int, max_frames: int
) -> trtp.TensorDesc:
    return trtp.from_shape_expr(scores.shape_expr, i32)


@trtp.aot_impl("earlytom::window_select")
def window_select_aot(
    scores: trtp.TensorDesc,
    is_static: trtp.TensorDesc,
    k_target: int,
    max_frames: int,
    outputs: Tuple[trtp.TensorDesc],
    tactic: int,
) -> AotResult:
    N, T = scores.shape_expr
    return kernel(launch.window_select(N, const(T), k_target, max_frames), dtype_name(scores))


@trtp.register("earlytom::dynamic_topk")
def dynamic_topk_desc(
    scores: trtp.TensorDesc, is_static: trtp.TensorDesc, keep: trtp.TensorDesc, k_target: int, max_frames: int
) -> Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:
    return (
        trtp.from_shape_expr((k_target,), i32),
        trtp.from_shape_expr((k_target,), i32),
        trtp.from_shape_expr((1,), i32),
    )


@trtp.aot_impl("earlytom::dynamic_topk")
def dynamic_topk_aot(
    scores: trtp.TensorDesc,
    is_static: trtp.TensorDesc,
    keep: trtp.TensorDesc,
    k_target: int,
    max_frames: int,
    outputs: Tuple[trtp.TensorDesc],
    tactic: int,
) -> AotResult:
    N, T = scores.shape_expr
    return kernel(launch.dynamic_topk(N, const(T), k_target, max_frames), dtype_name(scores))


@trtp.register("earlytom::gather_tokens")
def gather_tokens_desc(
    tokens: trtp.TensorDesc, frame: trtp.TensorDesc, index: trtp.TensorDesc, count: trtp.TensorDesc
) -> trtp.TensorDesc:
    return trtp.from_shape_expr((frame.shape_expr[0], tokens.shape_expr[2]), tokens.dtype)


@trtp.aot_impl("earlytom::gather_tokens")
def gather_tokens_aot(
    tokens: trtp.TensorDesc,
    frame: trtp.TensorDesc,
    index: trtp.TensorDesc,
    count: trtp.TensorDesc,
    outputs: Tuple[trtp.TensorDesc],
    tactic: int,
) -> AotResult:
    _, T, DM = tokens.shape_expr
    K = frame.shape_expr[0]
    return kernel(launch.gather_tokens(const(K), const(T), const(DM)), dtype_name(tokens))


@trtp.register("earlytom::window_cosine")
def window_cosine_desc(hidden: trtp.TensorDesc, width: int) -> trtp.TensorDesc:
    F, L, _ = hidden.shape_expr
    return trtp.from_shape_expr((F, width, L), f32)  # [i, d - 1, l] written for d <= i


@trtp.aot_impl("earlytom::window_cosine")
def window_cosine_aot(hidden: trtp.TensorDesc, width: int, outputs: Tuple[trtp.TensorDesc], tactic: int) -> AotResult:
    F, L, D = hidden.shape_expr
    return kernel(launch.window_cosine(F, const(L), const(D), width), dtype_name(hidden))


@trtp.register("earlytom::official_plan")
def official_plan_desc(
    cos: trtp.TensorDesc, alpha: float, tau_seg: float, max_window: int
) -> Tuple[
    trtp.TensorDesc,
    trtp.TensorDesc,
    trtp.TensorDesc,
    trtp.TensorDesc,
    trtp.TensorDesc,
    trtp.TensorDesc,
    trtp.TensorDesc,
]:
    F, W, _ = cos.shape_expr
    row = lambda dtype: trtp.from_shape_expr((F,), dtype)  # noqa: E731
    return (
        trtp.from_shape_expr((F, W), f32),
        row(i32),
        row(i32),
        trtp.from_shape_expr((F, 2), f32),
        trtp.from_shape_expr((F, 2), i32),
        row(i32),
        trtp.from_shape_expr((2,), i32),  # (N, S)
    )


@trtp.aot_impl("earlytom::official_plan")
def official_plan_aot(
    cos: trtp.TensorDesc,
    alpha: float,
    tau_seg: float,
    max_window: int,
    outputs: Tuple[trtp.TensorDesc],
    tactic: int,
) -> AotResult:
    F, W, L = cos.shape_expr
    spec = launch.official_plan(F, const(L), const(W), alpha=alpha, tau_seg=tau_seg, max_window=max_window)
    return kernel(spec, "fp32")


@trtp.register("earlytom::official_keep")
def official_keep_desc(
    scores: trtp.TensorDesc,
    label: trtp.TensorDesc,
    k_dynamic: npt.NDArray[np.int32],
    windows: npt.NDArray[np.int32],
) -> trtp.TensorDesc:
    return trtp.from_shape_expr(scores.shape_expr, i32)


@trtp.aot_impl("earlytom::official_keep")
def official_keep_aot(
    scores: trtp.TensorDesc,
    label: trtp.TensorDesc,
    k_dynamic: npt.NDArray[np.int32],
    windows: npt.NDArray[np.int32],
    outputs: Tuple[trtp.TensorDesc],
    tactic: int,
) -> AotResult:
    N, T = scores.shape_expr  # the counts for N frames: table lookups, evaluated by TensorRT at run time
    spec = launch.official_keep(N, const(T), table_lookup(N, k_dynamic), table_lookup(N, windows))
    return kernel(spec, dtype_name(scores))


@trtp.register("earlytom::compact_keep")
def compact_keep_desc(
    keep: trtp.TensorDesc, k_bound: int, max_frames: int
) -> Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:
    return (
        trtp.from_shape_expr((k_bound,), i32),
        trtp.from_shape_expr((k_bound,), i32),
        trtp.from_shape_expr((1,), i32),
    )


@trtp.aot_impl("earlytom::compact_keep")
def compact_keep_aot(
    keep: trtp.TensorDesc, k_bound: int, max_frames: int, outputs: Tuple[trtp.TensorDesc], tactic: int
) -> AotResult:
    N, T = keep.shape_expr
    return kernel(launch.compact_keep(N, const(T), max_frames), "fp32")  # int32 tensors only
