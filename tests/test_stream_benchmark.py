"""benchmarks/stream.py's arithmetic: the presets the lead runs, the estimates that stop a sweep, the goals' PASS/FAIL
lines (on hand-made measurements, worked out by hand)."""

import subprocess

from benchmarks.stream import estimate, failure, goals, parse


def test_presets_give_the_runs_the_issue_names():
    tiny, small = parse(["--preset", "tiny"]), parse(["--preset", "0.5b"])
    assert (tiny.model, tiny.latency_frames, tiny.sizes) == ("tiny", 32, [32, 128, 256, 768])
    assert (small.model, small.latency_frames, small.sizes) == ("llava-ov-0.5b", 32, [32, 128])
    assert parse(["--preset", "tiny", "--sizes", "64", "16"]).sizes == [16, 64]


def test_estimate_scales_time_and_memory_by_the_frames():
    # 4x the frames: 2 s load + 4 x 1.5 s; loaded 100 MiB + 4 x (160 - 100) MiB of growth.
    before = {"frames": 32, "ttft_ms": 1500.0, "rss_loaded_mib": 100.0, "rss_peak_mib": 160.0}
    assert estimate(before, 128, 2.0) == (8.0, 340.0)


def test_a_killed_child_is_named_out_of_memory():
    killed = subprocess.CompletedProcess([], -9, "", "")
    assert "out-of-memory" in failure(killed)
    broken = subprocess.CompletedProcess([], 1, "", "Traceback ...\nValueError: no frames\n")
    assert failure(broken) == "ValueError: no frames"


def run(frames: int, ttft: float, peak: float, candidates: float = 1.0) -> dict:
    return {"backend": "eager", "mode": "cascade", "frames": frames, "ttft_ms": ttft, "rss_peak_mib": peak,
            "candidates_mib": candidates}  # fmt: skip


def test_goals_pass_and_fail_at_their_limits():
    report = {
        "latency": [
            {"backend": "eager", "frames": 32, "answer_ms": 150.0, "offline_ttft_ms": 1000.0},  # 15%: passes
            {"backend": "onnxruntime", "frames": 32, "answer_ms": 151.0, "offline_ttft_ms": 1000.0},
        ],
        # RSS limit 1.5 x 1000 + 10 = 1510 MiB; TTFT limit 1.1 x 24 x 100 = 2640 ms
        "sweep": [run(32, 100.0, 1000.0), run(128, 500.0, 1200.0), run(768, 2641.0, 1510.0, 10.0)],
    }
    lines = goals(report)
    assert [line[:4] for line in lines] == ["PASS", "FAIL", "PASS", "FAIL"]
    assert "15.0%" in lines[0] and "= 1510 MiB" in lines[2] and "= 2640 ms" in lines[3]
    assert "the goals name 768" not in lines[2]


def test_goals_say_where_a_sweep_stopped():
    stopped = {**run(256, 0.0, 0.0), "stopped": "estimated 70.0 min > --max-minutes 60"}
    lines = goals({"latency": [], "sweep": [run(32, 100.0, 1000.0), run(128, 400.0, 1000.0), stopped]})
    assert all("at 128 frames (the goals name 768; the sweep ends at 128: estimated 70.0 min" in x for x in lines)
    assert goals({"latency": [], "sweep": [run(32, 100.0, 1000.0), stopped]})[0].startswith("----")
