"""The console scripts as pip installs them (`build_engine`, `earlytom` next to the interpreter), not `python -m`:
their entry points resolve, and a user's mistake is one `error:` line with exit code 2, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    path = BIN / script
    if not path.exists():
        pytest.skip(f"{path} is not installed (pip install -e . installs it)")
    return subprocess.run([str(path), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        (
            "build_engine",
            ["--model", "tiny", "--output", "{tmp}/e", "--frames", "0"],
            "error: frames = 0: engines take",
        ),
        (
            "earlytom",
            ["run", "--video", "{tmp}/none.mp4", "--prompt", "x"],
            "error: video {tmp}/none.mp4 does not exist",
        ),
    ],
)
def test_installed_script_reports_one_error_line(tmp_path, script, args, message):
    done = run(script, *(a.format(tmp=tmp_path) for a in args))
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(message.format(tmp=tmp_path))
    assert "Traceback" not in done.stderr and not (tmp_path / "e").exists()
