"""Class 1 of issue 12: `--overwrite` replaces only engine directories (or empty ones), nothing outside the output
ever changes, and a build that fails or crashes at any step of the final swap leaves the old engine loadable and,
after the next build or load, nothing stale."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from manifest_digest import redigested
from reliability_support import assert_one_error, child_env, tree

from earlytom.compress import EarlyTomConfig
from earlytom.engine.layout import FORMAT
from earlytom.engine.manifest import read_manifest
from earlytom.engine.staging import OutputError, recover, staged
from earlytom.engine_builder import build as build_module
from earlytom.engine_builder.build import build
from earlytom.engine_builder.build import main as build_main
from earlytom.runtime.pipeline import Pipeline


def stamped_copy(engine: Path, into: Path, stamp: str) -> None:
    """A valid copy of `engine` in `into` whose manifest says `stamp` (`created` is in no file hash; the manifest's
    own digest is recomputed)."""
    shutil.copytree(engine, into, dirs_exist_ok=True)
    manifest = json.loads((into / "manifest.json").read_text())
    (into / "manifest.json").write_text(json.dumps(redigested(manifest | {"created": stamp})))


def stamp_of(directory: Path) -> str:
    return read_manifest(directory).created


def assert_loads_clean(output: Path, stamp: str) -> None:
    """A load finds the engine `stamp` at `output`, verified, and leaves no hidden directory of ours beside it."""
    Pipeline.from_engine_dir(output)
    assert stamp_of(output) == stamp
    assert sorted(p.name for p in output.parent.iterdir()) == [output.name]


def nth_call_fails(monkeypatch, owner, name: str, n: int, error: BaseException) -> list:
    """Make the n-th call of owner.name (1-based) raise `error`; the others run. Returns the call log."""
    real, calls = getattr(owner, name), []

    def patched(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, patched)
    return calls


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("error", [OSError(5, "I/O error"), KeyboardInterrupt()], ids=["OSError", "Ctrl-C"])
def test_rename_failure_at_each_step_keeps_the_old_engine(engine_copy, monkeypatch, n, error):
    """Rename 1 retires the old engine, rename 2 puts the new one in place: a failure at either leaves the old
    engine at its path at once (rename 2 is rolled back), and no staging directory."""
    stamp_before = stamp_of(engine_copy)
    calls = nth_call_fails(monkeypatch, Path, "rename", n, error)
    with pytest.raises(type(error)), staged(engine_copy, overwrite=True) as staging:
        stamped_copy(engine_copy, staging, "new")
    assert len(calls) >= n
    monkeypatch.undo()
    assert read_manifest(engine_copy).created == stamp_before  # in place at once, before any recovery
    assert_loads_clean(engine_copy, stamp_before)


def test_crash_after_both_renames_leaves_the_new_engine_and_the_next_load_cleans(engine_copy, monkeypatch):
    """Ctrl-C while the retired engine is being deleted: the new engine is in place; the hidden old copy is
    removed by the next load."""
    nth_call_fails(monkeypatch, shutil, "rmtree", 1, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt), staged(engine_copy, overwrite=True) as staging:
        stamped_copy(engine_copy, staging, "new")
    monkeypatch.undo()
    assert any(".earlytom-old-" in p.name for p in engine_copy.parent.iterdir())
    assert_loads_clean(engine_copy, "new")


def test_failed_delete_of_the_old_engine_is_not_a_failed_build(engine_copy, monkeypatch):
    """The swap has succeeded once the new engine is in place: a delete that fails half-way (the manifest of
    the old copy already gone) does not fail the build, and the next load removes the rest."""

    def half_delete(path, ignore_errors=False, **kwargs):
        (Path(path) / "manifest.json").unlink()
        if not ignore_errors:
            raise OSError(16, "Device or resource busy", str(path))

    monkeypatch.setattr(shutil, "rmtree", half_delete)
    with staged(engine_copy, overwrite=True) as staging:
        stamped_copy(engine_copy, staging, "new")
    monkeypatch.undo()
    assert_loads_clean(engine_copy, "new")


SWAP_KILLER = """
import os, shutil, signal, sys
from pathlib import Path
from earlytom.engine.staging import staged

output, source, call, target = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
owner = Path if target == "rename" else shutil
real, count = getattr(owner, target), [0]

def killing(*args, **kwargs):
    count[0] += 1
    if count[0] == call:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

with staged(output, overwrite=True) as staging:
    shutil.copytree(source, staging, dirs_exist_ok=True)
    setattr(owner, target, killing)
"""


def test_sigkill_during_the_swap_is_finished_or_rolled_back_by_the_next_load(engine, tmp_path):
    """SIGKILL (no cleanup can run) between the two renames, and after both: the next load puts the old engine
    back (first case) or keeps the new one (second), and removes every hidden directory."""
    new = tmp_path / "new"
    stamped_copy(engine, new, "new")
    cases = {"between": ("rename", 2, "old"), "after": ("rmtree", 1, "new")}
    children = {}
    for name, (target, call, _) in cases.items():
        output = tmp_path / name / "engine"
        stamped_copy(engine, output, "old")
        argv = [sys.executable, "-c", textwrap.dedent(SWAP_KILLER), str(output), str(new), str(call), target]
        children[name] = subprocess.Popen(argv, env=child_env(), stderr=subprocess.PIPE, text=True)
    for name, (_, _, expected) in cases.items():
        child = children[name]
        assert child.wait(timeout=120) == -signal.SIGKILL, child.stderr.read()[-2000:]
        output = tmp_path / name / "engine"
        assert any(".earlytom-" in p.name for p in output.parent.iterdir())  # the crash left its traces
        assert output.exists() == (name == "after")
        assert_loads_clean(output, expected)


def test_stale_staging_of_a_dead_build_is_removed_and_a_live_ones_kept(engine_copy):
    parent = engine_copy.parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = parent / f".engine.earlytom-partial-{int(dead.stdout)}"
    live = parent / f".engine.earlytom-partial-{os.getppid()}"  # a running process (pytest's parent)
    for directory in (stale, live):
        (directory / "decoder").mkdir(parents=True)
        (directory / "vision_head.onnx").write_bytes(b"half")
    recover(engine_copy)
    assert not stale.exists() and live.exists()
    shutil.rmtree(live)


# --- --overwrite: what it may replace, and that nothing outside the output changes ----------------------------


def user_files(parent: Path) -> None:
    """Things of the user's beside the output: a file, a directory, a link, and a near-namesake."""
    (parent / "notes.txt").write_text("mine")
    (parent / "data").mkdir()
    (parent / "data" / "clip.mp4").write_bytes(os.urandom(64))
    (parent / "link").symlink_to(parent / "notes.txt")
    (parent / ".engine.bak").mkdir()
    (parent / ".engine.bak" / "x").write_text("mine too")


def refused_target(kind: str, output: Path, engine: Path) -> None:
    """Make `output` something --overwrite must refuse."""
    if kind == "user dir":
        output.mkdir()
        (output / "thesis.tex").write_text("years of work")
    elif kind == "user dir with a broken manifest":
        output.mkdir()
        (output / "manifest.json").write_text('{"format": "something else"}')
    elif kind.startswith("user dir claiming the format"):  # a manifest that only names the format is no engine
        output.mkdir()
        (output / "thesis.txt").write_text("years of work")
        (output / "manifest.json").write_text(json.dumps({"format": kind.rpartition(" ")[2]}))
    elif kind == "engine holding a user file":  # a real engine, plus a file its manifest does not list
        shutil.copytree(engine, output)
        (output / "thesis.txt").write_text("years of work")
    elif kind == "file":
        output.write_text("a file")
    elif kind == "link to a dir":
        (output.parent / "real").mkdir()
        (output.parent / "real" / "f").write_text("x")
        output.symlink_to(output.parent / "real")
    elif kind == "dangling link":
        output.symlink_to(output.parent / "nowhere")


REFUSED = [
    "user dir",
    "user dir with a broken manifest",
    "user dir claiming the format earlytom-engine/0",
    f"user dir claiming the format {FORMAT}",
    "engine holding a user file",
    "file",
    "link to a dir",
    "dangling link",
]


@pytest.mark.parametrize("kind", REFUSED)
def test_overwrite_refuses_what_is_not_an_engine_and_changes_nothing(tmp_path, capsys, kind, engine):
    parent = tmp_path / "parent"
    parent.mkdir()
    user_files(parent)
    output = parent / "engine"
    refused_target(kind, output, engine)
    before = tree(tmp_path)
    code = build_main(["--model", "tiny", "--output", str(output), "--frames", "2", "--overwrite"])
    assert code == 2
    err = capsys.readouterr().err
    assert_one_error(err, str(output))
    if output.is_dir() and not output.is_symlink():
        assert "does not verify as an engine directory" in err and "nothing was changed" in err
    assert tree(tmp_path) == before
    with pytest.raises(OutputError, match=str(output)):
        build("tiny", output, frames=2, overwrite=True, progress=False)
    assert tree(tmp_path) == before


def test_overwrite_of_a_failing_build_changes_nothing(engine_copy, monkeypatch):
    """A build that fails half-way (after its first graph was written) leaves the parent exactly as it was."""
    parent = engine_copy.parent
    user_files(parent)
    before = tree(parent.parent)
    nth_call_fails(monkeypatch, build_module, "export_and_verify", 2, OSError(28, "No space left on device"))
    with pytest.raises(OSError):
        build("tiny", engine_copy, frames=2, overwrite=True, progress=False)
    assert tree(parent.parent) == before


def test_overwrite_of_an_engine_changes_only_the_output(engine_copy):
    """A successful --overwrite replaces the engine directory and nothing else (the user's files beside it,
    links included, stay byte for byte)."""
    parent = engine_copy.parent
    user_files(parent)
    outside = {k: v for k, v in tree(parent).items() if not k.startswith("engine/") and k != "engine"}
    paper = EarlyTomConfig(variant="paper")  # two graphs: the quickest real build
    manifest = build("tiny", engine_copy, frames=2, config=paper, overwrite=True, progress=False)
    after = tree(parent)
    assert {k: v for k, v in after.items() if not k.startswith("engine/") and k != "engine"} == outside
    assert read_manifest(engine_copy).max_frames == 2 == manifest.max_frames


def test_overwrite_replaces_an_empty_directory_and_dot_paths_resolve(tmp_path, engine, monkeypatch):
    """An empty directory may be replaced; `.` names the current directory (not its parent's hidden files)."""
    target = tmp_path / "empty"
    target.mkdir()
    monkeypatch.chdir(target)
    with staged(Path("."), overwrite=True) as staging:
        stamped_copy(engine, staging, "dot")
    monkeypatch.chdir(tmp_path)
    assert_loads_clean(target, "dot")
    with pytest.raises(OutputError, match="no directory name"):
        with staged(Path("/"), overwrite=True):
            pass
