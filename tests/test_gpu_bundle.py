"""benchmarks.gpu_bundle's planning (which files and wheels to carry, the 64 MiB check) and the command it
prints, run for real in a shell on a bundle made here (a hand-made wheel, a stand-in proof module). No network:
the wheel download is the one step not run here."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from benchmarks import gpu_bundle

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20


def names(requirements) -> list[str]:
    return [r.name for r in requirements]


def test_this_project_carries_pyav_and_onnxconverter_common_only():
    """Of pyproject's dependencies, the GPU machine (KINDS.md's list) lacks exactly these two."""
    assert names(gpu_bundle.missing_there(gpu_bundle.dependencies(ROOT / "pyproject.toml"))) == [
        "onnxconverter-common",
        "av",
    ]


def test_names_are_compared_canonically():
    requirements = [Requirement("Huggingface_Hub>=1"), Requirement("PILLOW"), Requirement("Some.Thing==1")]
    installed = frozenset({"huggingface-hub", "pillow"})
    assert names(gpu_bundle.missing_there(requirements, installed)) == ["Some.Thing"]


@pytest.mark.parametrize(
    ("requirement", "here", "expected"),
    [
        ("av>=14", "15.1.0", "av==15.1.0"),  # the tested version, when it satisfies the requirement
        ("av>=14", "13.0.0", "av>=14"),  # an older one here does not: the requirement as written
        ("av>=14", None, "av>=14"),  # not installed here
        ("onnxconverter-common>=1.14", "1.16.0", "onnxconverter-common==1.16.0"),
    ],
)
def test_wheels_are_pinned_to_the_tested_version(requirement, here, expected):
    assert gpu_bundle.pinned(Requirement(requirement), here) == expected


def test_version_differences_name_the_pins_that_machine_does_not_meet():
    requirements = [Requirement("torch==2.13.0"), Requirement("numpy>=1.26,<2.4"), Requirement("onnx>=1.18")]
    there = {"torch": "2.11.0", "numpy": "2.5.2", "onnx": "1.23.1"}
    assert gpu_bundle.version_differences(requirements, there) == [
        "torch 2.11.0 there (this project asks torch==2.13.0)",
        "numpy 2.5.2 there (this project asks numpy<2.4,>=1.26)",
    ]


def test_excluded_prefixes_drop_folders_and_exact_files_only():
    tracked = ["docs/a.md", "docsy.py", "cpp/x.cpp", "CMakeLists.txt", "CMakeLists.txt.bak", "earlytom/a.py"]
    assert gpu_bundle.carried_files(tracked) == ["docsy.py", "CMakeLists.txt.bak", "earlytom/a.py"]


def test_size_check_accepts_up_to_the_limit():
    assert gpu_bundle.check_size({"a": 40 * MIB, "b": 24 * MIB}) == 64 * MIB


def test_size_check_refuses_with_the_sizes():
    sizes = {"wheels/av.whl": 38 * MIB, "wheels/big.whl": 30 * MIB, "repo/x.py": 1000}
    with pytest.raises(gpu_bundle.BundleTooLarge) as error:
        gpu_bundle.check_size(sizes)
    message = str(error.value)
    assert "the bundle is 68.0 MiB, over the 64.0 MiB" in message
    assert message.index("wheels/av.whl 38.0 MiB") < message.index("wheels/big.whl 30.0 MiB")


def test_folder_sizes_reads_every_file(tmp_path):
    (tmp_path / "repo" / "pkg").mkdir(parents=True)
    (tmp_path / "repo" / "pkg" / "a.py").write_bytes(b"x" * 10)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "w.whl").write_bytes(b"y" * 3)
    assert gpu_bundle.folder_sizes(tmp_path) == {"repo/pkg/a.py": 10, "wheels/w.whl": 3}


def test_the_printed_command_fits_the_device_tool_and_keeps_a_kill_margin():
    command = gpu_bundle.run_command("build/gpu-bundle", 420)
    assert len(command) < 2000  # the device tool's limit on one command
    assert "timeout -k 10 480 python3 -m benchmarks.gpu_validate --budget-s 420" in command
    assert "--target /tmp/earlytom-site build/gpu-bundle/wheels/*.whl" in command
    with pytest.raises(ValueError, match="budget_s = 0"):
        gpu_bundle.run_command("b", 0)


def hand_made_wheel(folder: Path) -> Path:
    """A pure-Python wheel of one module, `carried_probe`, written as pip expects a wheel."""
    wheel = folder / "carried_probe-1.0-py3-none-any.whl"
    info = "carried_probe-1.0.dist-info"
    files = {
        "carried_probe.py": "WHERE = __file__\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: carried-probe\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return wheel


def test_the_printed_command_installs_the_wheels_and_runs_the_proof_from_the_repo(tmp_path):
    """The command, run by bash from the folder holding the bundle: the carried wheel imports, the carried
    repository comes first on the path, and the proof gets its budget and the report folder."""
    bundle = tmp_path / "build" / "gpu-bundle"
    (bundle / "wheels").mkdir(parents=True)
    hand_made_wheel(bundle / "wheels")
    proof = bundle / "repo" / "benchmarks"
    proof.mkdir(parents=True)
    (proof / "__init__.py").write_text("")
    (proof / "gpu_validate.py").write_text(
        "import os, sys, carried_probe\n"
        "print('ARGS', sys.argv[1:])\n"
        "print('CWD', os.getcwd())\n"
        "print('PROBE', carried_probe.WHERE)\n"
    )
    site = tmp_path / "site"
    command = gpu_bundle.run_command("build/gpu-bundle", 30).replace(gpu_bundle.SITE, str(site))
    command = command.replace("python3 ", f"{sys.executable} ")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OUT")}
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    report = str(bundle / "repo" / "gpu-proof")
    assert lines["ARGS"] == str(["--budget-s", "30", "--out", report])
    assert lines["CWD"] == str(bundle / "repo")
    assert lines["PROBE"] == str(site / "carried_probe.py")
