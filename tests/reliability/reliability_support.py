"""Checks and helpers the reliability tests share (a module of its own: `conftest` is a name every test
directory uses)."""

import hashlib
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def assert_one_error(err: str, *needles: str) -> str:
    """`err` (a command's stderr) has exactly one line with `error:`, no traceback, and the line names every
    needle; returns that line."""
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def command(module: str, *args: str) -> list[str]:
    """argv running `python -m module args` with this worktree first on the path."""
    return [sys.executable, "-m", module, *args]


def terminal_signals() -> None:
    """A child's `preexec_fn`: SIGINT and SIGTERM at their defaults, as under a terminal. Children inherit ignored
    signals, and pytest started in the background (`&`, nohup) ignores SIGINT: Python then raises no
    KeyboardInterrupt on it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def child_env(*, drop: tuple[str, ...] = ()) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` (files, directories, links) -> what it is (a file's bytes, a link's target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
