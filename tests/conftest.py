"""Shared fixtures: the tiny LLaVA-OV model (random weights) and small real mp4 clips written with PyAV.

Triton's interpreter runs the kernels on CPU; it must be chosen before triton is first imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from earlytom.models.registry import load_model  # noqa: E402
from earlytom.runtime.synthetic import moving_square_frames, write_clip  # noqa: E402


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
