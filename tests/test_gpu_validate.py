"""The GPU proof (benchmarks.gpu_validate) on a CPU: which paths it plans on this machine and on the H200 it is
meant for, how its budget stops a path and keeps what it has, the fixed report (one JSON, one Markdown), and the
parts a CPU runs for real: path 1 on the CPU, path 2's checks under Triton's interpreter, path 3a's AOT compile."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import gpu_validate as gv
from earlytom.plugins import aot
from earlytom.runtime import timing

ROOT = Path(__file__).resolve().parent.parent
CPU_ONLY = gv.Installed(
    cuda_gpu=False,
    triton=True,
    cuda_python=False,
    ort_providers=("CPUExecutionProvider",),
    tensorrt_missing=("the tensorrt Python package", "the tensorrt_llm Python package", "an NVIDIA GPU"),
    nvdec=False,
)
# The device tool's H200 (KINDS.md): CUDA torch, triton, cuda-bindings, onnxruntime's CPU build, no TensorRT, no
# PyNvVideoCodec.
H200 = gv.Installed(
    cuda_gpu=True,
    triton=True,
    cuda_python=True,
    ort_providers=("AzureExecutionProvider", "CPUExecutionProvider"),
    tensorrt_missing=("the tensorrt Python package", "the tensorrt_llm Python package"),
    nvdec=False,
)


def statuses(sections) -> dict[str, str]:
    return {s.key: s.status for s in sections}


def options(*argv: str) -> argparse.Namespace:
    return gv.parser().parse_args(list(argv))


def test_the_h200_runs_paths_1_to_4_and_skips_5_with_the_reasons(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the proof runs the compiler, not the interpreter
    sections = gv.planned(gv.CHECKS, H200, options())
    assert statuses(sections) == {
        "1": "planned",
        "2": "planned",
        "3a": "planned",
        "3b": "planned",
        "4": "planned",
        "5a": "skipped",
        "5b": "skipped",
        "5c": "skipped",
        "5d": "skipped",
    }
    reasons = {s.key: s.reason for s in sections}
    assert "PyNvVideoCodec is not installed" in reasons["5a"]
    assert "onnxruntime has no CUDAExecutionProvider (it has AzureExecutionProvider" in reasons["5b"]
    assert "onnxruntime has no TensorrtExecutionProvider" in reasons["5c"]
    assert reasons["5d"] == "the tensorrt Python package is missing; the tensorrt_llm Python package is missing"
    assert all(s.reason == "" and s.estimate_s > 0 for s in sections if s.status == "planned")


def test_a_cpu_plans_only_the_aot_compile_or_with_device_cpu_path_1_too(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    on_cuda = gv.planned(gv.CHECKS, CPU_ONLY, options())
    assert [s.key for s in on_cuda if s.status == "planned"] == ["3a"]
    assert all(gv.NO_GPU in s.reason for s in on_cuda if s.key in ("1", "2", "3b", "4", "5a"))
    on_cpu = gv.planned(gv.CHECKS, CPU_ONLY, options("--device", "cpu", "--paths", "1", "2", "3a"))
    assert statuses(on_cpu) == {"1": "planned", "2": "skipped", "3a": "planned"}
    assert "interpreter" in on_cpu[1].reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    (contract,) = gv.planned(gv.CHECKS, CPU_ONLY, options("--device", "cpu", "--paths", "3a"))
    assert "TRITON_INTERPRET=1 is set" in contract.reason


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_budget_counts_down_and_refuses_what_does_not_fit():
    clock = Clock()
    budget = gv.Budget(60, clock)
    clock.now += 45
    assert budget.left() == 15 and budget.elapsed() == 45
    budget.check(15, "a request")  # exactly what is left: fits
    with pytest.raises(gv.OutOfBudget, match="loading llava-ov-7b needs about 16 s, 15 s of the budget left"):
        budget.check(16, "loading llava-ov-7b")
    with pytest.raises(ValueError, match="budget = 0 s"):
        gv.Budget(0)


def context(budget: gv.Budget) -> gv.Context:
    return gv.Context(argparse.Namespace(), H200, budget, Path("."), None, Path("clip.mp4"))


def check(run) -> gv.Check:
    return gv.Check("9", "a check", gv.about(5), lambda have, device: "", run)


def test_a_path_stopped_by_the_budget_keeps_its_rows():
    clock = Clock()

    def run(section, ctx):
        section.rows.append(["first", 1.0])
        clock.now += 50
        ctx.budget.check(30, "the second row")
        section.rows.append(["second", 2.0])
        return "passed"

    section = gv.Section("9", "a check")
    gv.run_section(check(run), section, context(gv.Budget(60, clock)))
    assert section.status == "stopped" and section.rows == [["first", 1.0]]
    assert section.reason == "the second row needs about 30 s, 10 s of the budget left"


def test_a_path_that_raises_is_an_error_with_its_traceback_and_the_next_one_still_runs():
    def broken(section, ctx):
        raise RuntimeError("the AOT path is tested with triton 3.5.0, found 9.9\nsecond line")

    sections = [gv.Section("9", "broken"), gv.Section("9", "fine")]
    runs = iter([broken, lambda section, ctx: "failed"])
    for section in sections:
        gv.run_section(check(next(runs)), section, context(gv.Budget(60, Clock())))
    assert [s.status for s in sections] == ["error", "failed"]
    assert sections[0].reason == "RuntimeError: the AOT path is tested with triton 3.5.0, found 9.9"
    assert "Traceback" in sections[0].notes[0] and "second line" in sections[0].notes[0]


def test_a_path_does_not_start_with_less_than_start_s_left():
    clock = Clock()
    budget = gv.Budget(60, clock)
    clock.now += 60 - gv.START_S + 1
    section = gv.Section("9", "late")
    gv.run_section(check(lambda section, ctx: pytest.fail("must not run")), section, context(budget))
    assert (section.status, section.reason) == ("not run", f"{gv.START_S - 1} s of the budget left")


def sample_report() -> dict:
    sections = [
        gv.Section("1", "agreement", "passed", seconds=12.34, columns=["model", "err", "same"]),
        gv.Section("4", "ttft", "stopped", "loading llava-ov-7b needs about 150 s, 20 s of the budget left", 3.0),
        gv.Section("5a", "nvdec", "skipped", "PyNvVideoCodec is not installed"),
    ]
    sections[0].rows = [["tiny", 0.000248, True], ["tiny | pipe", float("nan"), None]]
    sections[0].notes = ["fp32 rows must be exact"]
    machine = {"python": "3.12.3", "torch": "2.11.0", "gpu": "NVIDIA H200", "capability": "9.0", "av": None}
    return gv.report(sections, machine, {"budget_s": 420}, 420, 61.25)


def test_the_json_report_has_every_path_with_its_status_numbers_and_reason():
    data = json.loads(json.dumps(sample_report(), allow_nan=False))  # valid JSON, NaN included
    assert data["format"] == "earlytom-gpu-proof/1"
    assert (data["budget_s"], data["elapsed_s"], data["stopped_early"]) == (420, 61.2, True)
    assert [(p["key"], p["status"]) for p in data["paths"]] == [("1", "passed"), ("4", "stopped"), ("5a", "skipped")]
    first = data["paths"][0]
    assert set(first) == {"key", "title", "status", "reason", "seconds", "estimate_s", "columns", "rows", "notes"}
    assert first["rows"] == [["tiny", 0.000248, True], ["tiny | pipe", "nan", None]]
    assert data["paths"][2]["reason"] == "PyNvVideoCodec is not installed"


def test_the_markdown_report_has_the_summary_and_each_paths_table():
    lines = gv.markdown(sample_report()).splitlines()
    assert lines[0] == "# EarlyTom GPU proof"
    assert lines[2] == "Machine: NVIDIA H200 (compute capability 9.0); python 3.12.3, torch 2.11.0."
    assert lines[3].startswith("Budget 420 s, used 61 s (stopped early")
    assert "| 1 | agreement | passed | 12.3 | - |" in lines
    assert "| 4 | ttft | stopped | 3.0 | loading llava-ov-7b needs about 150 s, 20 s of the budget left |" in lines
    assert "| 5a | nvdec | skipped | 0.0 | PyNvVideoCodec is not installed |" in lines
    table = lines.index("| model | err | same |")
    assert lines[table + 1 : table + 4] == [
        "|---|---|---|",
        "| tiny | 0.000248 | True |",
        "| tiny \\| pipe | nan | - |",
    ]
    assert "- fp32 rows must be exact" in lines
    assert "Reason: PyNvVideoCodec is not installed" in lines


def test_write_report_writes_one_json_and_one_markdown(tmp_path):
    paths = gv.write_report(tmp_path / "out", sample_report())
    assert [p.name for p in paths] == ["gpu_proof.json", "gpu_proof.md"]
    assert json.loads(paths[0].read_text())["paths"][1]["status"] == "stopped"
    assert paths[1].read_text() == gv.markdown(sample_report())


def test_plan_mode_lists_the_paths_and_writes_the_report(tmp_path, capsys):
    assert gv.main(["--plan", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gpu_proof.json").read_text())
    assert [p["key"] for p in data["paths"]] == [c.key for c in gv.CHECKS]
    assert {p["status"] for p in data["paths"]} <= {"planned", "skipped"}
    assert all(p["reason"] for p in data["paths"] if p["status"] == "skipped")
    assert "estimated" in capsys.readouterr().out


def test_nothing_to_run_exits_2_with_the_report(tmp_path):
    if gv.probe().cuda_gpu:
        pytest.skip("this machine has a GPU: path 4 would run")
    assert gv.main(["--paths", "4", "--out", str(tmp_path), "--budget-s", "30"]) == 2
    data = json.loads((tmp_path / "gpu_proof.json").read_text())
    assert [p["status"] for p in data["paths"]] == ["skipped"]


def test_path_1_on_the_cpu_agrees_with_the_oracle_in_fp32(tmp_path):
    argv = ["--device", "cpu", "--paths", "1", "--agreement-models", "tiny", "--dtypes", "fp32", "bf16"]
    assert gv.main([*argv, "--agreement-frames", "4", "--frames", "8", "--out", str(tmp_path)]) == 0
    (path,) = json.loads((tmp_path / "gpu_proof.json").read_text())["paths"]
    assert path["status"] == "passed"
    settings = ["full", "earlytom r=0.15", "global top-K r=0.15"]
    assert [row[:3] for row in path["rows"]] == [["tiny", d, s] for d in ("fp32", "bf16") for s in settings]
    for row in path["rows"][:3]:  # fp32 on the CPU with the same kernels: identical
        assert row[3:] == [True, True, True, 0.0, True, 1.0]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs Triton's interpreter (conftest sets it)")
@pytest.mark.skipif(
    tuple(int(part) for part in np.__version__.split(".")[:2]) >= (2, 4),
    reason="Triton 3.5/3.6's interpreter calls int() on 1-element arrays, which NumPy >= 2.4 refuses (on a GPU path 2 "
    "compiles the kernels instead)",
)
def test_path_2_checks_pass_under_the_interpreter():
    """Path 2's comparisons, on CPU tensors run by the interpreter at small sizes, find the kernels equal to the
    reference: same decisions and errors within tolerance for every op of both variants."""
    shapes = aot.Shapes(hidden=16, tokens=16, tokens_per_frame=9, max_frames=12, lm_hidden=8, heads=2)
    rows = list(gv.kernel_rows(shapes, "cpu", ("fp32",), gv.Budget(600)))
    assert [row[:2] for row in rows] == [
        ["paper", "frame_merge"],
        ["paper", "token_select"],
        ["official", "attention_received"],
        ["official", "official_compress"],
        ["official", "official_select"],
    ]
    for row in rows:
        assert row[4] is True and row[5] <= row[6] == 1e-4, row


def test_path_3a_compiles_for_sm_90_and_reads_the_contract_back(tmp_path):
    """The AOT compile, run as the proof runs it (a child process without TRITON_INTERPRET): every kernel of both
    variants, its PTX entry as kernels.json records it (the declared parameters, then the two scratch pointers)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    argv = ["--device", "cpu", "--paths", "3a", "--dtypes", "fp32", "--agreement-frames", "4", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_validate", *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (path,) = json.loads((tmp_path / "gpu_proof.json").read_text())["paths"]
    assert path["status"] == "passed"
    kernels = {(row[0], row[1]) for row in path["rows"]}
    assert len(kernels) == len(path["rows"]) == 14  # 8 official + 6 paper, one dtype
    for _, kernel, dtype, params, hidden, recorded, *_ in path["rows"]:
        assert dtype == "fp32" and recorded is True
        assert hidden == "global_scratch, profile_scratch"
        assert params == len(aot.declared_params(kernel)) + 2


# --- path 4: the plan of its rows, the budget that skips a model, the CUDA-event stage bookkeeping ---------------


def test_path_4_times_llavas_table_1_rows_then_qwens_table_7_rows():
    plan = gv.ttft_plan(options())
    assert list(plan) == ["llava-ov-7b", "qwen2.5-vl-7b"]
    llava = [(row.label, row.method, row.ratio, row.repeats, row.primary) for row in plan["llava-ov-7b"]]
    assert llava == [
        ("full", "full", 0.15, 5, True),
        ("earlytom r=0.10", "earlytom", 0.10, 5, True),
        ("earlytom r=0.15", "earlytom", 0.15, 3, False),
        ("earlytom r=0.25", "earlytom", 0.25, 3, False),
        ("global top-K r=0.10", "global_topk", 0.10, 3, False),
    ]
    qwen = [(row.label, row.method, row.ratio, row.repeats, row.primary) for row in plan["qwen2.5-vl-7b"]]
    assert qwen == [("full", "full", 0.15, 5, True), ("earlytom r=0.15", "earlytom", 0.15, 5, True)]
    # --ratios / --topk-ratios / --secondary-repeats move LLaVA's rows only: Qwen keeps Table 7's setting
    plan = gv.ttft_plan(options("--ratios", "0.25", "--topk-ratios", "0.25", "0.5", "--secondary-repeats", "1"))
    assert [(row.label, row.repeats) for row in plan["llava-ov-7b"]] == [
        ("full", 5),
        ("earlytom r=0.25", 5),
        ("global top-K r=0.25", 1),
        ("global top-K r=0.50", 1),
    ]
    assert [row.label for row in plan["qwen2.5-vl-7b"]] == ["full", "earlytom r=0.15"]


def test_path_4s_estimate_counts_each_load_and_request_with_its_warm_up():
    seconds, lines = gv.ttft_estimate(options())
    requests = {"llava-ov-7b": 6 + 6 + 4 + 4 + 4, "qwen2.5-vl-7b": 6 + 6}  # repeats + 1 warm-up, row by row
    assert seconds == pytest.approx(sum(gv.LOAD_S[m] + n * gv.REQUEST_S[m] for m, n in requests.items()))
    assert lines[0].startswith("plan: llava-ov-7b at 384x384 px, 32 frames = 32 units, 6272 visual tokens in full")
    assert lines[1].startswith("plan: qwen2.5-vl-7b at 448x448 px, 32 frames = 16 units, 4096 visual tokens in full")
    assert "full x5, earlytom r=0.15 x5;" in lines[1]


def test_plan_on_the_h200_prints_path_4s_rows_and_fits_the_budget_with_margin(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(gv, "probe", lambda: H200)  # the machine's inventory, as the H200 reports it
    assert gv.main(["--plan", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "       plan: qwen2.5-vl-7b at 448x448 px, 32 frames = 16 units" in out
    paths = {p["key"]: p for p in json.loads((tmp_path / "gpu_proof.json").read_text())["paths"]}
    assert [note.split(" px")[0] for note in paths["4"]["notes"]] == [
        "plan: llava-ov-7b at 384x384",
        "plan: qwen2.5-vl-7b at 448x448",
    ]
    total = sum(p["estimate_s"] for p in paths.values() if p["status"] == "planned")
    assert paths["4"]["estimate_s"] == gv.ttft_estimate(options())[0]
    assert total <= 0.9 * gv.DEFAULT_BUDGET_S
    assert f"estimated {total:.0f} s of the 420 s budget;" in out


def ttft_context(tmp_path, budget: gv.Budget, *argv: str) -> gv.Context:
    args = options("--device", "cpu", "--frames", "4", "--repeats", "2", "--secondary-repeats", "1", *argv)
    frames = gv.moving_square_frames(16, size=96, cut_at=8)
    return gv.Context(args, CPU_ONLY, budget, tmp_path, frames, gv.write_clip(tmp_path / "clip.mp4", frames))


def test_path_4_on_the_cpu_times_a_llava_and_a_qwen_architecture(tmp_path):
    """Path 4's code on the tiny architectures of both families (the CPU's wall clock: no CUDA events)."""
    ctx = ttft_context(tmp_path, gv.Budget(3600), "--models", "tiny", "qwen-tiny", "--ratios", "0.25")
    section = gv.Section("4", "time to first token")
    assert gv.run_ttft(section, ctx) == "passed" and section.reason == ""
    columns = section.columns
    assert columns[:9] == [
        "model",
        "frame size",
        "setting",
        "frames after merges",
        "visual tokens",
        "min ms",
        "median ms",
        "p90 ms",
        "wall median ms",
    ]
    assert columns[9:] == [
        "vision encoding ms",
        "visual token processing ms",
        "LLM prefill ms",
        "system overhead ms",
        "paper A100 ms",
        "stage medians (ms)",
    ]
    assert [row[:3] for row in section.rows] == [
        ["tiny", "72x72", "full"],
        ["tiny", "72x72", "earlytom r=0.25"],
        ["tiny", "72x72", "global top-K r=0.10"],
        ["qwen-tiny", "448x448", "full"],  # not in TABLE_SETTINGS (the paper's Qwen2.5-VL-7B is): --ratios
        ["qwen-tiny", "448x448", "earlytom r=0.25"],
        ["qwen-tiny", "448x448", "global top-K r=0.10"],
    ]
    by_setting = {(row[0], row[2]): dict(zip(columns, row, strict=True)) for row in section.rows}
    assert by_setting["tiny", "full"]["visual tokens"] == 4 * 25  # 4 frames of 5 x 5 tokens
    assert by_setting["qwen-tiny", "full"]["visual tokens"] == 2 * 256  # 4 frames = 2 slices of 16 x 16 tokens
    assert by_setting["qwen-tiny", "full"]["frames after merges"] == 2
    for row in by_setting.values():
        assert 0 < row["min ms"] <= row["median ms"] <= row["p90 ms"]
        assert row["wall median ms"] is None and row["paper A100 ms"] is None  # no CUDA; not a Table 1 model
        assert row["vision encoding ms"] > 0 and row["LLM prefill ms"] > 0
        assert "vision_head" in row["stage medians (ms)"] and "first_token" in row["stage medians (ms)"]


def test_path_4_skips_a_model_whose_load_and_table_rows_do_not_fit(tmp_path):
    """tiny fits; qwen-tiny (no estimate: 60 s to load, 30 s a request) needs 60 + 2 rows x 3 requests x 30 s."""
    clock = Clock()
    ctx = ttft_context(tmp_path, gv.Budget(100, clock), "--models", "tiny", "qwen-tiny", "--topk-ratios", "0.25")
    section = gv.Section("4", "time to first token")
    assert gv.run_ttft(section, ctx) == "stopped"
    assert [row[0] for row in section.rows] == ["tiny"] * 5
    assert section.reason == "not timed: qwen-tiny's load and primary rows needs about 240 s, 100 s of the budget left"
    assert section.notes[-1] == section.reason


def test_event_breakdown_sums_each_stage_and_ends_at_the_last_mark():
    """Hand-made marks (ms since the origin event): two chunks through preprocess and vision_head, a gap before the
    prefill (the GPU idle), decoding on the wall clock."""
    marks = [
        ("video_decode", 0.0, 0.5),
        ("preprocess", 1.0, 1.5),
        ("vision_head", 1.5, 4.0),
        ("preprocess", 4.0, 4.25),
        ("vision_head", 4.25, 6.0),
        ("token_select", 6.0, 6.5),
        ("prefill", 7.0, 10.0),
        ("first_token", 10.0, 10.125),
    ]
    assert timing.event_breakdown(marks, {"video_decode": 3.0}) == {
        "video_decode": 3.5,
        "preprocess": 0.75,
        "vision_head": 4.25,
        "token_select": 0.5,
        "prefill": 3.0,
        "first_token": 0.125,
        "ttft": 10.125,
    }
    assert timing.event_breakdown([], {"video_decode": 1.0}) == {"video_decode": 1.0, "ttft": 0.0}
    same_stage = [("vision_mid0", 2.0, 3.0), ("vision_mid0", 1.0, 1.5)]  # order of recording, not of time
    assert timing.event_breakdown(same_stage, {}) == {"vision_mid0": 1.5, "ttft": 3.0}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU's behaviour")
def test_without_cuda_the_timer_stays_on_the_wall_clock_inside_cuda_event_timing():
    with timing.cuda_event_timing():
        timer = timing.StageTimer()
        with timer.stage("prefill"):
            pass
    assert timer.events is False and timer.marks == []
    assert set(timer.breakdown()) == {"prefill", "ttft"}
    assert timing.StageTimer().events is False
