"""Issue 12, memory: the ONNX Runtime backend serves requests of varying frame counts without growing (its arena,
which keeps blocks per shape, is off). The full-size measurement is benchmarks/ort_memory.py."""

import sys
from pathlib import Path

import pytest

from benchmarks.ort_memory import frame_counts, measure
from earlytom.runtime.pipeline import Pipeline

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")


def test_sessions_share_the_process_arena_without_memory_patterns(engine):
    pipe = Pipeline.from_engine_dir(engine)
    for session in pipe.backend.sessions:
        options = session.get_session_options()
        assert options.enable_cpu_mem_arena and not options.enable_mem_pattern
        assert options.get_session_config_entry("session.use_env_allocators") == "1"


def test_peak_rss_stays_flat_over_varying_frame_counts(engine, clip):
    """20 requests of 1..4 frames: after the first 5, no request's peak exceeds the 5th's by more than 32 MB
    (the tiny engine's largest request needs a few MB; a per-shape cache would add that per new shape)."""
    pipe = Pipeline.from_engine_dir(engine)
    rows = measure(pipe, Path(clip), frame_counts(20, 1, 4))
    settled = rows[4][2]
    assert max(peak for _, _, peak in rows[5:]) - settled < 32, rows
