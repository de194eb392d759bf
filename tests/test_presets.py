"""Presets: every cell of DESIGN.md section 4b's table (and the two LLaVA-Video-7B cells), refusals, and explicit
options winning over a preset."""

import pytest

from earlytom.compress import EarlyTomConfig
from earlytom.models.presets import preset_config, with_preset

# The table of section 4b, typed in again from DESIGN.md: task -> {r: (tau_seg, merge_layers)}.
DESIGN_TABLE = {
    "mvbench": {
        0.10: (0.65, (8, 14, 20)),
        0.15: (0.8, (6, 14, 20)),
        0.20: (0.8, (6, 14, 20)),
        0.25: (0.8, (6, 14, 20)),
    },
    "videomme": {
        0.10: (0.3, (10, 21, 23)),
        0.15: (0.4, (8, 21, 23)),
        0.20: (0.5, (8, 21, 23)),
        0.25: (0.7, (10, 21, 23)),
    },
    "longvideobench": {
        0.10: (0.3, (10, 21, 23)),
        0.15: (0.5, (10, 21, 23)),
        0.20: (0.6, (10, 21, 23)),
        0.25: (0.8, (4, 14, 24)),
    },
    "egoschema": {
        0.10: (0.3, (10, 21, 23)),
        0.15: (0.5, (10, 21, 23)),
        0.20: (0.6, (10, 21, 23)),
        0.25: (0.7, (10, 21, 23)),
    },
}
LLAVA_VIDEO_DIFFERENCES = {("videomme", 0.25): (0.6, (10, 21, 23)), ("longvideobench", 0.25): (0.8, (6, 21, 23))}

CELLS = [(task, r) for task, row in DESIGN_TABLE.items() for r in row]


@pytest.mark.parametrize(("task", "ratio"), CELLS)
@pytest.mark.parametrize("family", ["llava-ov", "llava-video"])
def test_every_cell(task, ratio, family):
    fields = preset_config(task, ratio, model_family=family)
    tau_seg, layers = DESIGN_TABLE[task][ratio]
    if family == "llava-video":
        tau_seg, layers = LLAVA_VIDEO_DIFFERENCES.get((task, ratio), (tau_seg, layers))
    assert fields == {
        "variant": "official",
        "alpha": 0.9,
        "max_window": 6,
        "inner_layer": 18,
        "inner_ratio": 0.5,
        "tau_seg": tau_seg,
        "retain_ratio": ratio,
        "merge_layers": layers,
    }
    config = EarlyTomConfig(**fields).for_model(26, 28)  # valid for LLaVA-OV-7B as it stands
    assert (config.tau_seg, config.merge_layers, config.retain_ratio) == (tau_seg, layers, ratio)


def test_ratio_between_columns_is_refused_with_the_ratios_that_exist():
    with pytest.raises(ValueError, match=r"retain_ratio = 0.12 has no videomme preset; .* r = 0.10, 0.15, 0.20, 0.25"):
        preset_config("videomme", 0.12)


def test_unknown_task_lists_the_tasks():
    with pytest.raises(ValueError, match=r"preset = 'mmbench' .* mvbench, videomme, longvideobench, egoschema"):
        preset_config("mmbench", 0.2)
    with pytest.raises(ValueError, match=r"model_family = 'qwen' is not one of llava-ov, llava-video"):
        preset_config("mvbench", 0.2, model_family="qwen")


def test_explicit_options_win_over_the_preset():
    fields = with_preset(preset_config("mvbench", 0.10), {"tau_seg": 0.7, "merge_layers": None, "max_window": 4})
    config = EarlyTomConfig(**fields)
    assert (config.tau_seg, config.merge_layers, config.max_window) == (0.7, (8, 14, 20), 4)
    with pytest.raises(ValueError, match=r"variant = 'paper' with a preset"):
        with_preset(preset_config("mvbench", 0.10), {"variant": "paper"})


def test_preset_on_a_shallow_model_is_refused_by_for_model():
    config = EarlyTomConfig(**preset_config("videomme", 0.2))
    with pytest.raises(ValueError, match=r"layer = 8 must be an integer in \[0, 3\] for a 4-layer encoder"):
        config.for_model(4, 2)
