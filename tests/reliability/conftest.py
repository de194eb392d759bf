"""Shared by the reliability suite: one tiny engine directory per session (frames=4, reused by every test that only
reads it) and a clip. The shared checks are in reliability_support."""

import shutil
from pathlib import Path

import pytest

from earlytom.engine_builder.build import build
from earlytom.runtime.synthetic import moving_square_frames, write_clip


@pytest.fixture(scope="session")
def engine(tmp_path_factory) -> Path:
    """A tiny official-variant engine directory for at most 4 frames. Read-only for the tests: copy it to change it."""
    out = tmp_path_factory.mktemp("reliability") / "tiny"
    build("tiny", out, frames=4, progress=False)
    return out


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", moving_square_frames(8))


@pytest.fixture
def engine_copy(engine, tmp_path) -> Path:
    """A private copy of the session engine in its own parent directory."""
    return shutil.copytree(engine, tmp_path / "parent" / "engine")
