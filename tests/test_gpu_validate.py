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

from benchmarks import gpu_validate as gv
from earlytom.plugins import aot

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


def test_the_h200_runs_paths_1_to_4_and_skips_5_with_the_reasons(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the proof runs the compiler, not the interpreter
    sections = gv.planned(gv.CHECKS, H200, "cuda")
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
    on_cuda = gv.planned(gv.CHECKS, CPU_ONLY, "cuda")
    assert [s.key for s in on_cuda if s.status == "planned"] == ["3a"]
    assert all(gv.NO_GPU in s.reason for s in on_cuda if s.key in ("1", "2", "3b", "4", "5a"))
    on_cpu = gv.planned(gv.CHECKS, CPU_ONLY, "cpu", keys=["1", "2", "3a"])
    assert statuses(on_cpu) == {"1": "planned", "2": "skipped", "3a": "planned"}
    assert "interpreter" in on_cpu[1].reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "TRITON_INTERPRET=1 is set" in gv.planned(gv.CHECKS, CPU_ONLY, "cpu", keys=["3a"])[0].reason


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
    return gv.Check("9", "a check", 5, lambda have, device: "", run)


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
