"""The released evaluation scripts' settings (DESIGN.md section 4b, "Presets") as data: per task and retain ratio,
the segmentation threshold and the merge layers, with the settings common to all (M = 6, alpha = 0.9, inner merge
at decoder layer 18 with ratio 0.5). They were tuned on LLaVA-OV-7B (26 SigLIP layers, 28 Qwen2 layers) and
LLaVA-Video-7B.

    fields = preset_config("videomme", 0.20)                  # EarlyTomConfig fields
    config = EarlyTomConfig(**with_preset(fields, {"tau_seg": user_tau_seg, ...}))   # explicit options win
"""

import math

from earlytom.compress.config import EarlyTomConfig

MODEL_FAMILIES = ("llava-ov", "llava-video")
RETAIN_RATIOS = (0.10, 0.15, 0.20, 0.25)

# task -> (tau_seg, merge_layers) for each of RETAIN_RATIOS (scripts/ov/eval_ov-7b_earlytom.sh).
TABLE = {
    "mvbench": ((0.65, (8, 14, 20)), (0.8, (6, 14, 20)), (0.8, (6, 14, 20)), (0.8, (6, 14, 20))),
    "videomme": ((0.3, (10, 21, 23)), (0.4, (8, 21, 23)), (0.5, (8, 21, 23)), (0.7, (10, 21, 23))),
    "longvideobench": ((0.3, (10, 21, 23)), (0.5, (10, 21, 23)), (0.6, (10, 21, 23)), (0.8, (4, 14, 24))),
    "egoschema": ((0.3, (10, 21, 23)), (0.5, (10, 21, 23)), (0.6, (10, 21, 23)), (0.7, (10, 21, 23))),
}
# The cells where LLaVA-Video-7B's script (scripts/llava-vid/eval_vid-7b_earlytom.sh) differs: (task, ratio) -> cell.
LLAVA_VIDEO_CELLS = {
    ("videomme", 0.25): (0.6, (10, 21, 23)),
    ("longvideobench", 0.25): (0.8, (6, 21, 23)),
}
COMMON = {"variant": "official", "alpha": 0.9, "max_window": 6, "inner_layer": 18, "inner_ratio": 0.5}


def preset_config(task: str, retain_ratio: float, *, model_family: str = "llava-ov") -> dict:
    """EarlyTomConfig fields of the released script for `task` at `retain_ratio` (one of RETAIN_RATIOS):
    variant, alpha, tau_seg, retain_ratio, merge_layers, max_window, inner_layer, inner_ratio."""
    if task not in TABLE:
        raise ValueError(f"preset = {task!r} is not a known task; presets exist for: {', '.join(TABLE)}")
    if model_family not in MODEL_FAMILIES:
        raise ValueError(f"model_family = {model_family!r} is not one of {', '.join(MODEL_FAMILIES)}")
    column = [i for i, r in enumerate(RETAIN_RATIOS) if math.isclose(r, retain_ratio, rel_tol=0, abs_tol=1e-9)]
    if not column:
        ratios = ", ".join(f"{r:.2f}" for r in RETAIN_RATIOS)
        raise ValueError(f"retain_ratio = {retain_ratio} has no {task} preset; the presets exist for r = {ratios}")
    ratio = RETAIN_RATIOS[column[0]]
    tau_seg, layers = TABLE[task][column[0]]
    if model_family == "llava-video":
        tau_seg, layers = LLAVA_VIDEO_CELLS.get((task, ratio), (tau_seg, layers))
    return COMMON | {"tau_seg": tau_seg, "retain_ratio": ratio, "merge_layers": layers}


def with_preset(preset: dict, explicit: dict) -> dict:
    """The preset's fields, then the user's explicit (non-None) options over them. Presets are official-variant
    settings: an explicit variant other than "official" is refused."""
    if explicit.get("variant") not in (None, "official"):
        raise ValueError(
            f"variant = {explicit['variant']!r} with a preset: presets are settings of variant 'official'; "
            "drop the preset or the variant"
        )
    return preset | {name: value for name, value in explicit.items() if value is not None}


def preset_fields(preset: str | None, explicit: dict, *, model: str | None = None) -> dict:
    """EarlyTomConfig fields: the user's `explicit` ones over `preset`'s (None: no preset) at the explicit retain
    ratio (else the official default), with LLaVA-Video-7B's cells when `model` names a LLaVA-Video model."""
    if preset is None:
        return explicit
    ratio = explicit.get("retain_ratio", EarlyTomConfig().retain_ratio)
    family = "llava-video" if "video" in str(model).lower() else "llava-ov"
    return with_preset(preset_config(preset, ratio, model_family=family), explicit)
