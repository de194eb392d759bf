"""TensorRT Quickly Deployable Plugins (QDP) running the Triton kernels ahead of time (no Python at run time).

TensorRT's AOT plugins launch exactly one kernel each, and FrameMerge / TokenSelect each need three launches
with a grid-wide dependency between them (every similarity before the scan, the scan before the merge).
So each op is a few plugin layers in the network, one per kernel:

    paper    FrameMerge      token_cosine -> merge_plan -> weighted_merge                 (vision_head.plan)
             TokenSelect     window_select -> dynamic_topk -> gather_tokens               (vision_tail.plan)
    official compression     window_cosine -> official_plan -> weighted_merge (hidden rows)
                                                            -> weighted_merge (attention rows) (every plan but the last)
             selection       window_cosine -> official_plan (re-segmentation: labels)
                             -> official_keep -> compact_keep -> gather_tokens           (the last plan)

No output shape depends on data: merged frames fill an [F, ...] buffer (count says how many are valid) and
selected tokens a [K, D'] one with K fixed at build time (paper: round(r * B * T); official: a bound).
The official selection's per-frame counts depend on N, the frames after the last merge: official_keep takes
them as int32 arguments looked up in tables over N = 1 .. max_frames (`table_lookup`), so the kernel gets
exactly what `official_budget` computes on the host, as a TensorRT shape expression of the input's frame axis.

`PLUGINS` says what each plugin takes and gives; importing earlytom.plugins.qdp declares them to TensorRT (it
needs the `tensorrt` package and a GPU; tests check the declarations against `PLUGINS` and the kernels statically).
Rules of the TensorRT 11.x validator followed here: tensors first, then attributes, all annotated, none
defaulted; every aot_impl declares all attributes in registration order, then `outputs` and `tactic`, and a
return annotation; extra kernel arguments are SymInt32 only; float hyper-parameters are compile-time
constants of the kernel; integer tables are `npt.NDArray[np.int32]` attributes.
"""

from collections.abc import Sequence
from dataclasses import dataclass

NAMESPACE = "earlytom"


@dataclass(frozen=True)
class PluginSpec:
    """A plugin: its kernel, input and output tensors (names = the kernel's pointer parameters), attributes
    as (name, annotation) with the annotation as the register function spells it."""

    kernel: str
    inputs: tuple[str, ...]
    attributes: tuple[tuple[str, str], ...]
    outputs: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{NAMESPACE}::{self.kernel}"


PLUGINS = {
    spec.kernel: spec
    for spec in (
        PluginSpec("token_cosine", ("hidden",), (), ("cos",)),
        PluginSpec(
            "merge_plan",
            ("cos",),
            (("alpha", "float"), ("tau_seg", "float"), ("tau_merge", "float")),
            ("s", "first", "last", "weight", "segment", "is_static", "count"),
        ),
        PluginSpec("weighted_merge", ("hidden", "first", "last", "weight", "count"), (), ("merged",)),
        PluginSpec("window_select", ("scores", "is_static"), (("k_target", "int"), ("max_frames", "int")), ("keep",)),
        PluginSpec(
            "dynamic_topk",
            ("scores", "is_static", "keep"),
            (("k_target", "int"), ("max_frames", "int")),
            ("frame", "index", "count"),
        ),
        PluginSpec("gather_tokens", ("tokens", "frame", "index", "count"), (), ("selected",)),
        PluginSpec("window_cosine", ("hidden",), (("width", "int"),), ("cos",)),
        PluginSpec(
            "official_plan",
            ("cos",),
            (("alpha", "float"), ("tau_seg", "float"), ("max_window", "int")),
            ("similarity", "first", "last", "weight", "segments", "label", "counts"),
        ),
        PluginSpec(
            "official_keep",
            ("scores", "label"),
            (("k_dynamic", "npt.NDArray[np.int32]"), ("windows", "npt.NDArray[np.int32]")),
            ("keep",),
        ),
        PluginSpec("compact_keep", ("keep",), (("k_bound", "int"), ("max_frames", "int")), ("frame", "index", "count")),
    )
}


def table_lookup(n, table: Sequence[int]):
    """table[n - 1] for a frame count n in 1 .. len(table), as arithmetic TensorRT shape expressions support
    (+, *, <; comparisons give 0 or 1): the last entry plus the steps down to it. n: an int or a trtp.ShapeExpr
    (on the left of every operation, as ShapeExpr has no reflected operators)."""
    values = [int(v) for v in table]
    if not values:
        raise ValueError("an empty table; give one value per frame count 1 .. max_frames")
    result = n * 0 + values[-1]
    for i in range(len(values) - 1):  # n < i + 2 holds for n <= i + 1: entries 0 .. i carry this step
        step = values[i] - values[i + 1]
        if step:
            result = result + (n < i + 2) * step
    return result
