"""Class 5 of issue 12: when the environment fails (full disk, read-only or forbidden output, out of memory, a
closed output pipe, Ctrl-C, SIGTERM, SIGKILL) the command prints one `error:` line and exits with its documented
status (1 environment, 130 Ctrl-C, 143 SIGTERM); nothing half-written stays; `--debug` shows the traceback."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_support import assert_one_error, child_env, command, terminal_signals, tree
from safetensors.torch import save_file

from earlytom.cli import main as earlytom_main
from earlytom.command_line import report
from earlytom.engine.manifest import read_manifest
from earlytom.engine_builder.build import BuildError
from earlytom.engine_builder.build import main as build_main
from earlytom.runtime import pipeline as pipeline_module
from earlytom.runtime.pipeline import Pipeline


@contextlib.contextmanager
def tmpfs(directory: Path, options: str):
    """A tmpfs mounted at `directory` for the block (skips the test where mounting is not allowed)."""
    directory.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_full_disk_is_one_error_and_leaves_nothing(tmp_path, capsys):
    """A 64 kB file system (the first graph alone is ~180 kB): exit 1, the fix named, the file system empty."""
    with tmpfs(tmp_path / "small", "size=64k") as small:
        code = build_main(["--model", "tiny", "--output", str(small / "e"), "--frames", "2", "--variant", "paper"])
        assert code == 1
        assert_one_error(capsys.readouterr().err, "No space left on device", "free disk space or write elsewhere")
        assert list(small.iterdir()) == []


def test_full_disk_seen_by_a_rust_library_is_an_environment_error(tmp_path, capsys):
    """safetensors (Rust) reports a full disk as its own error type with "(os error 28)" in the message: it is
    still exit 1 with the fix, not an unexpected error."""
    with tmpfs(tmp_path / "small", "size=16k") as small:
        with pytest.raises(Exception, match=r"os error 28") as caught:
            save_file({"x": torch.zeros(64, 1024)}, small / "x.safetensors")
    assert not isinstance(caught.value, OSError)
    assert report(caught.value) == 1
    assert_one_error(capsys.readouterr().err, "No space left on device", "free disk space or write elsewhere")


@pytest.mark.parametrize("output", ["e", "missing/parent/e"])
def test_read_only_output_is_one_error(tmp_path, capsys, output):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        code = build_main(["--model", "tiny", "--output", str(ro / output), "--frames", "2"])
        assert code == 1
        assert_one_error(capsys.readouterr().err, "Read-only file system", "choose a path on a writable file system")


def test_permission_denied_output_is_one_error(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere; the read-only file system case covers a refused write")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = build_main(["--model", "tiny", "--output", str(locked / "e"), "--frames", "2"])
    assert code == 1
    assert_one_error(capsys.readouterr().err, "Permission denied", "choose a path you may write to")


def test_output_whose_parent_is_a_file_is_bad_input(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code = build_main(["--model", "tiny", "--output", str(tmp_path / "afile" / "e"), "--frames", "2"])
    assert code == 2
    assert_one_error(capsys.readouterr().err, "its parent", "is a file")


def out_of_memory(*args, **kwargs):
    raise MemoryError


def test_out_of_memory_is_one_error_and_debug_shows_it(engine, clip, capsys, monkeypatch):
    monkeypatch.setattr(pipeline_module, "stream_video", out_of_memory)
    argv = ["run", "--engine", str(engine), "--video", str(clip), "--prompt", "x"]
    assert earlytom_main(argv) == 1
    assert_one_error(capsys.readouterr().err, "out of memory", "fewer --frames")
    with pytest.raises(MemoryError):
        earlytom_main([*argv, "--debug"])


def test_unexpected_error_names_its_type_and_debug(engine, clip, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipeline_module, "stream_video", broken)
    assert earlytom_main(["run", "--engine", str(engine), "--video", str(clip), "--prompt", "x"]) == 1
    assert_one_error(capsys.readouterr().err, "RuntimeError: a bug", "--debug")


def test_closed_stdout_pipe_is_one_error(engine, clip):
    """`earlytom run ... | head -0`: the reader is gone before the answer is written. With Python's output
    buffering (the default outside this test machine) the write fails only when stdout is flushed."""
    argv = command("earlytom.cli", "run", "--engine", str(engine), "--video", str(clip), "--prompt", "x", "--json")
    env = child_env(drop=("PYTHONUNBUFFERED",))
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.stdout.close()
    _, err = child.communicate(timeout=180)
    assert child.returncode == 1, err[-2000:]
    assert_one_error(err, "the output pipe was closed")


def staging_dirs(output: Path) -> list[Path]:
    return list(output.parent.glob(f".{output.name}.earlytom-partial-*"))


def wait_for_first_graph(output: Path, child: subprocess.Popen, timeout: float = 150) -> None:
    """Until the build's staging directory holds its first finished graph file."""
    deadline = time.monotonic() + timeout
    while not any(list(d.glob("*.onnx")) for d in staging_dirs(output)):
        assert child.poll() is None, child.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no graph appeared in the staging directory"
        time.sleep(0.05)


def test_signals_during_a_build_keep_the_old_engine(engine, tmp_path):
    """SIGINT, SIGTERM and SIGKILL to `build_engine --overwrite` once the first graph is in its staging
    directory: the old engine still loads; SIGINT exits 130 and SIGTERM 143, each with one `error:` line and no
    staging directory left; after SIGKILL (no cleanup can run) the next load removes the dead build's staging."""
    signals = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 143), "SIGKILL": (signal.SIGKILL, -9)}
    children, before = {}, {}
    for name in signals:
        output = shutil.copytree(engine, tmp_path / name / "engine")
        (output.parent / "mine.txt").write_text("the user's")
        before[name] = tree(output.parent)
        argv = command("earlytom.engine_builder.build", "--model", "tiny", "--output", str(output), "--overwrite")
        children[name] = subprocess.Popen(
            [*argv, "--frames", "2"],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=terminal_signals,  # the same however pytest was started
        )
    for name, (signum, _) in signals.items():
        output = tmp_path / name / "engine"
        wait_for_first_graph(output, children[name])
        children[name].send_signal(signum)
    for name, (signum, status) in signals.items():
        output = tmp_path / name / "engine"
        _, err = children[name].communicate(timeout=120)
        assert children[name].returncode == status, err[-2000:]
        if signum != signal.SIGKILL:
            assert_one_error(err, "interrupted", "nothing half-written was kept")
            assert tree(output.parent) == before[name]  # no staging left, nothing changed
        else:
            assert staging_dirs(output)  # what SIGKILL leaves, until the next load
        Pipeline.from_engine_dir(output)
        assert read_manifest(output).max_frames == 4
        assert tree(output.parent) == before[name]


CTRL_C_AT_TORCH = """
import os, signal, sys

class CtrlCAtTorch:
    \"\"\"Presses Ctrl-C (a real SIGINT to this process) when `torch` is first imported.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCAtTorch())
from {module} import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize(
    ("module", "argv"), [("earlytom.cli", ["demo"]), ("earlytom.serve.__main__", ["--model", "tiny"])]
)
def test_ctrl_c_while_the_command_line_is_still_importing_is_one_line(module, argv):
    """Ctrl-C lands while `main` imports torch (the command's first seconds): one line and 130, no traceback. The
    entry modules import no torch themselves: the signal must arrive after `main` began, where it is handled."""
    script = CTRL_C_AT_TORCH.format(module=module, argv=argv)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=terminal_signals,
    )
    assert (done.returncode, done.stderr) == (130, "error: interrupted (Ctrl-C); nothing half-written was kept\n")


def test_debug_raises_instead_of_one_line(tmp_path):
    with pytest.raises(BuildError, match="frames = 1"):
        build_main(["--model", "tiny", "--output", str(tmp_path / "e"), "--frames", "1", "--debug"])
    assert list(tmp_path.iterdir()) == []
