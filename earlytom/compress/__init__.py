"""The EarlyTom algorithm in plain PyTorch: the reference every other backend is checked against."""

from earlytom.compress.config import EarlyTomConfig
from earlytom.compress.merge import (
    MergePlan,
    MergeResult,
    StreamingFrameMerge,
    adjacent_similarity,
    apply_merge,
    frame_merge,
    plan_merge,
)
from earlytom.compress.select import (
    SelectResult,
    global_topk,
    selection_budget,
    token_select,
    uniform,
    visual_budget,
)

__all__ = [
    "EarlyTomConfig",
    "MergePlan",
    "MergeResult",
    "SelectResult",
    "StreamingFrameMerge",
    "adjacent_similarity",
    "apply_merge",
    "frame_merge",
    "global_topk",
    "plan_merge",
    "selection_budget",
    "token_select",
    "uniform",
    "visual_budget",
]
