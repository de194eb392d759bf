"""Issue 27: `Visual.source` (each output frame's first and last source frame) after the second merge layer of
the official chain, against two merge plans composed by hand: a plain loop over the traced plans, sharing no
code with compose_source. The frames repeat so that both merge layers merge rows."""

import numpy as np
import torch

from earlytom.compress import EarlyTomConfig
from earlytom.runtime.pipeline import Pipeline
from earlytom.runtime.synthetic import moving_square_frames
from earlytom.runtime.timing import StageTimer


def composed_by_hand(plans: list[list[list[int]]], frames: int) -> list[list[int]]:
    """Each output row's first and last original frame: the rows start as [f, f]; a plan row [a, b] (first and
    last input row) spans from row a's first frame to row b's last."""
    rows = [[f, f] for f in range(frames)]
    for plan in plans:
        rows = [[rows[a][0], rows[b][1]] for a, b in plan]
    return rows


def test_source_after_the_second_official_merge_layer(tiny):
    base = moving_square_frames(6)
    frames = np.stack([base[i] for i in (0, 0, 0, 1, 1, 2, 3, 3, 4, 5, 5, 5)])  # 12 frames, runs of repeats
    config = EarlyTomConfig(variant="official", merge_layers=(0, 2), tau_seg=0.0, max_window=6)
    pipe = Pipeline.from_model(tiny, num_frames=12, config=config)
    plans = []

    def trace(event, **info):
        if event == "merge":
            plans.append(info["plan"].source.tolist())

    with torch.inference_mode():
        visual = pipe.backend.encode([tiny.processor(torch.from_numpy(frames))], pipe.options, StageTimer(), trace)
    assert len(plans) == 2
    assert len(plans[1]) < len(plans[0]) < 12  # both layers merge rows: the composition is exercised
    assert any(a != b for a, b in plans[1])
    assert visual.source.tolist() == composed_by_hand(plans, 12)
    spans = visual.source.tolist()
    assert spans[0][0] == 0 and spans[-1][1] == 11  # the rows cover the video in order, without gaps
