"""Issue 27: preset_fields looks the cells up for the model given. LLaVA-Video-7B's script differs from
LLaVA-OV-7B's in two cells (DESIGN.md 4b); the expected values are written out from the two scripts."""

import pytest

from earlytom.models.presets import preset_fields

# (task, ratio) -> (LLaVA-OV-7B's (tau_seg, merge_layers), LLaVA-Video-7B's), from the released scripts.
CELLS = {
    ("videomme", 0.25): ((0.7, (10, 21, 23)), (0.6, (10, 21, 23))),
    ("longvideobench", 0.25): ((0.8, (4, 14, 24)), (0.8, (6, 21, 23))),
    ("videomme", 0.20): ((0.5, (8, 21, 23)), (0.5, (8, 21, 23))),  # a cell both scripts share
}


@pytest.mark.parametrize(("task", "ratio"), sorted(CELLS))
@pytest.mark.parametrize(
    ("model", "video"),
    [("llava-video-7b", True), ("lmms-lab/LLaVA-Video-7B-Qwen2", True), ("llava-ov-7b", False), (None, False)],
)
def test_cells_follow_the_model(task, ratio, model, video):
    fields = preset_fields(task, {"retain_ratio": ratio}, model=model)
    assert (fields["tau_seg"], tuple(fields["merge_layers"])) == CELLS[task, ratio][video]
    assert fields["retain_ratio"] == ratio and fields["variant"] == "official"
