"""Shared fixtures: the tiny LLaVA-OV model (random weights) and small real mp4 clips written with PyAV."""

import pytest

from earlytom.models.registry import load_model
from earlytom.runtime.synthetic import moving_square_frames, write_clip


@pytest.fixture(scope="session")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """{"moving": a square sliding over a still background, "cut": the same with a hard scene cut at frame 12}."""
    root = tmp_path_factory.mktemp("clips")
    return {
        "moving": write_clip(root / "moving.mp4", moving_square_frames(24)),
        "cut": write_clip(root / "cut.mp4", moving_square_frames(24, cut_at=12)),
    }
