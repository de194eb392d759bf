"""Launch parameters of the kernels as plain functions of the shapes: grid, warps, compile-time constants and
the int32 scalar arguments in kernel order. The Python runners (ops.py), the AOT compiler (aot.py) and the
TensorRT plugins all take them from here.

Compile-time constants depend only on build-time facts (model dims, the most frames a request may have,
the EarlyTom thresholds), never on data, so one compiled kernel serves every request of an engine.
"""

from dataclasses import dataclass, field

from earlytom.compress.official import band_width

COPY_BLOCK = 1024  # elements per program of the two copy kernels
ATTENTION_BLOCK = 32  # query and key rows per block of the attention-received kernels
SINGLE_STAGE = {"num_stages": 1}  # no software pipelining: each block is used once per loop step
EXACT_FP32 = {"enable_fp_fusion": False}  # no a*b + c -> fma: every product and sum rounds to float32 as in PyTorch


def next_pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def warps_for(block: int) -> int:
    """Warps for a program holding `block` elements: 4 up to 1024, 8 up to 4096, 16 beyond (<= 16 each)."""
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


@dataclass(frozen=True)
class Launch:
    """grid: programs per axis; block_threads = num_warps * 32; scalars: the int32 arguments, in order;
    options: further compile options (EXACT_FP32 for the scans that must round like the reference)."""

    kernel: str
    grid: tuple[int, int, int]
    num_warps: int
    constexprs: dict
    scalars: tuple[int, ...]
    options: dict = field(default_factory=dict)

    @property
    def block_threads(self) -> int:
        return self.num_warps * 32


def token_cosine(B: int, L: int, D: int) -> Launch:
    block_d = next_pow2(D)
    return Launch("token_cosine", (L, 1, 1), warps_for(block_d), {"BLOCK_D": block_d}, (B, L, D))


def merge_plan(B: int, L: int, *, alpha: float, tau_seg: float, tau_merge: float) -> Launch:
    """The thresholds become compile-time constants (checked by the caller: EarlyTomConfig or check_thresholds)."""
    constexprs = {"ALPHA": alpha, "TAU_SEG": tau_seg, "TAU_MERGE": tau_merge, "BLOCK_L": min(1024, next_pow2(L))}
    return Launch("merge_plan", (1, 1, 1), 4, constexprs, (B, L))


def weighted_merge(B: int, L: int, D: int) -> Launch:
    """B programs along axis 0 (rows past the count exit without touching memory)."""
    return Launch("weighted_merge", (B, cdiv(L * D, COPY_BLOCK), 1), 4, {"BLOCK": COPY_BLOCK}, (L * D,))


def selection_blocks(max_frames: int, T: int) -> dict:
    """Block sizes of the selection kernels: every frame a request may have, every token of them."""
    return {"BLOCK_N": max(2, next_pow2(max_frames)), "BLOCK_T": next_pow2(T), "BLOCK": next_pow2(max_frames * T)}


def window_select(N: int, T: int, k_target: int, max_frames: int) -> Launch:
    blocks = selection_blocks(max_frames, T)
    constexprs = {"BLOCK_T": blocks["BLOCK_T"], "BLOCK_N": blocks["BLOCK_N"]}
    return Launch("window_select", (N, 1, 1), 4, constexprs, (N, T, k_target))


def dynamic_topk(N: int, T: int, k_target: int, max_frames: int) -> Launch:
    blocks = selection_blocks(max_frames, T)
    constexprs = {"BLOCK": blocks["BLOCK"], "BLOCK_N": blocks["BLOCK_N"]}
    return Launch("dynamic_topk", (1, 1, 1), warps_for(blocks["BLOCK"]), constexprs, (N, T, k_target))


def gather_tokens(K: int, T: int, DM: int) -> Launch:
    return Launch("gather_tokens", (K, cdiv(DM, COPY_BLOCK), 1), 4, {"BLOCK": COPY_BLOCK}, (T, DM))


def attention_constexprs(HD: int, scale: float) -> dict:
    """The compile-time constants both attention kernels share: the softmax scale and their block sizes."""
    return {"SCALE": scale, "BLOCK_M": ATTENTION_BLOCK, "BLOCK_N": ATTENTION_BLOCK, "BLOCK_D": max(16, next_pow2(HD))}


def attention_row_stats(F: int, H: int, L: int, HD: int, scale: float) -> Launch:
    """Softmax row statistics of q, k [F, H, L, HD]: one program per (frame, head) and block of query rows."""
    grid = (F * H, cdiv(L, ATTENTION_BLOCK), 1)
    return Launch("attention_row_stats", grid, 4, attention_constexprs(HD, scale), (H, L, HD), SINGLE_STAGE)


def attention_received(F: int, H: int, L: int, HD: int, scale: float) -> Launch:
    """Attention received [F, L]: one program per frame and block of key columns."""
    grid = (F, cdiv(L, ATTENTION_BLOCK), 1)
    return Launch("attention_received", grid, 4, attention_constexprs(HD, scale), (H, L, HD), SINGLE_STAGE)


def similarity_width(F: int, max_window: int) -> int:
    """W: the frame distances the official plan reads (compress.official.band_width), at least 1 (the kernels'
    buffers need a column even for one frame)."""
    return max(1, band_width(max_window, F))


def window_cosine(F: int, L: int, D: int, W: int) -> Launch:
    block_d = next_pow2(D)
    return Launch("window_cosine", (L, W, 1), warps_for(block_d), {"BLOCK_D": block_d}, (F, L, D, W))


def official_plan(F: int, L: int, W: int, *, alpha: float, tau_seg: float, max_window: int) -> Launch:
    """The thresholds and window cap become compile-time constants; BETA = 1 - alpha as the reference rounds it."""
    constexprs = {
        "ALPHA": alpha,
        "BETA": 1 - alpha,
        "TAU_SEG": tau_seg,
        "MAX_WINDOW": max_window,
        "BLOCK_L": min(1024, next_pow2(L)),
    }
    return Launch("official_plan", (1, 1, 1), 4, constexprs, (F, L, W), dict(EXACT_FP32))


def official_keep(N: int, T: int, k_dynamic: int, windows: int) -> Launch:
    """k_dynamic: tokens per dynamic frame, ceil(T * r_hat); windows: per static frame, max(1, round(T * r_hat))."""
    return Launch("official_keep", (N, 1, 1), 4, {"BLOCK_T": next_pow2(T)}, (N, T, k_dynamic, windows))


def compact_keep(N: int, T: int, max_frames: int) -> Launch:
    block = next_pow2(max_frames * T)
    return Launch("compact_keep", (1, 1, 1), warps_for(block), {"BLOCK": block}, (N, T))


# Kernel parameters in order, as (name, type): "*x" is a pointer to the data dtype (fp16, bf16 or fp32),
# "i32" an int32 scalar. Inputs, then scalars, then outputs, as TensorRT's AOT plugins require.
SIGNATURES = {
    "token_cosine": [("hidden", "*x"), ("B", "i32"), ("L", "i32"), ("D", "i32"), ("cos", "*fp32")],
    "merge_plan": [
        ("cos", "*fp32"),
        ("B", "i32"),
        ("L", "i32"),
        ("s", "*fp32"),
        ("first", "*i32"),
        ("last", "*i32"),
        ("weight", "*fp32"),
        ("segment", "*i32"),
        ("is_static", "*i32"),
        ("count", "*i32"),
    ],
    "weighted_merge": [
        ("hidden", "*x"),
        ("first", "*i32"),
        ("last", "*i32"),
        ("weight", "*fp32"),
        ("count", "*i32"),
        ("LD", "i32"),
        ("merged", "*x"),
    ],
    "window_select": [
        ("scores", "*x"),
        ("is_static", "*i32"),
        ("N", "i32"),
        ("T", "i32"),
        ("K_TARGET", "i32"),
        ("keep", "*i32"),
    ],
    "dynamic_topk": [
        ("scores", "*x"),
        ("is_static", "*i32"),
        ("keep", "*i32"),
        ("N", "i32"),
        ("T", "i32"),
        ("K_TARGET", "i32"),
        ("frame", "*i32"),
        ("index", "*i32"),
        ("count", "*i32"),
    ],
    "gather_tokens": [
        ("tokens", "*x"),
        ("frame", "*i32"),
        ("index", "*i32"),
        ("count", "*i32"),
        ("T", "i32"),
        ("DM", "i32"),
        ("selected", "*x"),
    ],
    "attention_row_stats": [
        ("q", "*x"),
        ("k", "*x"),
        ("H", "i32"),
        ("L", "i32"),
        ("HD", "i32"),
        ("row_max", "*fp32"),
        ("row_sum", "*fp32"),
    ],
    "attention_received": [
        ("q", "*x"),
        ("k", "*x"),
        ("row_max", "*fp32"),
        ("row_sum", "*fp32"),
        ("H", "i32"),
        ("L", "i32"),
        ("HD", "i32"),
        ("attention", "*fp32"),
    ],
    "window_cosine": [("hidden", "*x"), ("F", "i32"), ("L", "i32"), ("D", "i32"), ("W", "i32"), ("cos", "*fp32")],
    "official_plan": [
        ("cos", "*fp32"),
        ("F", "i32"),
        ("L", "i32"),
        ("W", "i32"),
        ("similarity", "*fp32"),
        ("first", "*i32"),
        ("last", "*i32"),
        ("weight", "*fp32"),
        ("segments", "*i32"),
        ("label", "*i32"),
        ("counts", "*i32"),
    ],
    "official_keep": [
        ("scores", "*x"),
        ("label", "*i32"),
        ("N", "i32"),
        ("T", "i32"),
        ("K_DYNAMIC", "i32"),
        ("WINDOWS", "i32"),
        ("keep", "*i32"),
    ],
    "compact_keep": [
        ("keep", "*i32"),
        ("N", "i32"),
        ("T", "i32"),
        ("frame", "*i32"),
        ("index", "*i32"),
        ("count", "*i32"),
    ],
}


def ordered_args(spec: Launch, tensors: tuple) -> list:
    """The kernel's arguments in signature order: `tensors` (one per pointer parameter, in order) with the
    spec's int32 scalars put in their places. Raises ValueError on a wrong number of tensors."""
    kinds = [kind for _, kind in SIGNATURES[spec.kernel]]
    pointers = sum(kind != "i32" for kind in kinds)
    if len(tensors) != pointers:
        raise ValueError(f"{spec.kernel} takes {pointers} tensors (pointer parameters), got {len(tensors)}")
    scalars, pointer_args = iter(spec.scalars), iter(tensors)
    return [next(scalars) if kind == "i32" else next(pointer_args) for kind in kinds]
