"""Writing an engine directory safely: everything goes into a staging directory beside the target and is
swapped into place by renames at the end.

    .<name>.earlytom-partial-<pid>   the build in progress (removed on failure; a later build removes the
                                     ones whose process is gone)
    .<name>.earlytom-old-<pid>       the engine being replaced, for the instant between the two renames

A failure between the two renames is rolled back at once; a crash there (SIGKILL, power loss) leaves no <name>
and the old engine under its hidden name: `recover` (run by every build and every load) renames it back. A crash
after both renames leaves a hidden old copy that `recover` deletes. `recover` only touches hidden directories of
processes that are gone (a build in progress elsewhere keeps its own), and a load never fails because a stale
one cannot be deleted. Only directories this tool created are ever deleted or replaced: `--overwrite` replaces an
empty directory or an engine directory that verifies (its manifest's schema, and exactly its files with their
hashes: a manifest that merely claims the format is not enough), and refuses anything else untouched.
"""

import contextlib
import json
import os
import shutil
from pathlib import Path

from earlytom.engine.layout import MANIFEST
from earlytom.engine.manifest import EngineDirError, read_manifest

PARTIAL, OLD = ".earlytom-partial-", ".earlytom-old-"


class OutputError(ValueError):
    """An output path this tool must not write to, or may only replace when asked."""


def hidden(output: Path, kind: str, pid: int) -> Path:
    return output.parent / f".{output.name}{kind}{pid}"


def siblings(output: Path, kind: str) -> list[Path]:
    return sorted(output.parent.glob(f".{output.name}{kind}*")) if output.parent.is_dir() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner(hidden_dir: Path, kind: str) -> int | None:
    """The pid in the name of a hidden directory of ours of `kind` (None: not one of ours)."""
    suffix = hidden_dir.name.rpartition(kind)[2]
    return int(suffix) if suffix.isdigit() else None


def abandoned(output: Path, kind: str) -> list[Path]:
    """The hidden directories of `kind` beside `output` whose process is gone (or is this one, which is not
    writing them now)."""
    pids = ((path, owner(path, kind)) for path in siblings(output, kind))
    return [path for path, pid in pids if pid is not None and (pid == os.getpid() or not alive(pid))]


def is_engine_dir(path: Path) -> bool:
    """A directory whose manifest.json is an engine manifest (of any format version)."""
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("format", "")).startswith("earlytom-engine/")


def recover(output: Path) -> None:
    """Finish or roll back a swap that was interrupted, and delete staging directories of dead builds."""
    for old in abandoned(output, OLD):
        if output.exists() or output.is_symlink():
            shutil.rmtree(old, ignore_errors=True)  # the swap completed: the old engine is retired
        elif is_engine_dir(old):
            old.rename(output)  # the swap stopped half-way: the old engine comes back
    for partial in abandoned(output, PARTIAL):
        shutil.rmtree(partial, ignore_errors=True)


def check_output(output: Path, *, overwrite: bool) -> None:
    """Refuse, before any work, an output that is a file or link, or that exists and may not be replaced."""
    if not output.name:
        raise OutputError(f"--output {output} has no directory name of its own; give a path such as engines/NAME")
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise OutputError(f"--output {output} is a file or a link, not a directory; choose a directory path")
    if output.parent.exists() and not output.parent.is_dir():
        raise OutputError(f"--output {output}: its parent {output.parent} is a file; choose another path")
    if not output.exists():
        return
    if not overwrite:
        raise OutputError(f"{output} already exists; pass --overwrite to replace it (it stays intact until then)")
    if not any(output.iterdir()):
        return
    try:
        read_manifest(output)
    except EngineDirError as error:
        raise OutputError(
            f"{output} is not empty and does not verify as an engine directory ({error}): --overwrite replaces only "
            "an engine directory whose files match its manifest, or an empty directory; nothing was changed. "
            "Choose another --output, or remove the directory yourself if it is yours to delete"
        ) from error


@contextlib.contextmanager
def staged(output: Path, *, overwrite: bool):
    """`with staged(DIR, overwrite=...) as staging:` write everything into `staging`; on success it replaces
    DIR by renames, on any failure (Ctrl-C included) it is removed, DIR is untouched and the parent
    directories it created are removed again."""
    output = Path(os.path.abspath(output))  # `.` and `a/..` get a name and a parent; links are not followed
    recover(output)
    check_output(output, overwrite=overwrite)
    created = [parent for parent in output.parents if not parent.exists()]  # deepest first
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = hidden(output, PARTIAL, os.getpid())
    try:
        staging.mkdir()
        yield staging
        swap(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in created:
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def swap(staging: Path, output: Path) -> None:
    """Put the finished `staging` at `output`, retiring an existing engine there. The result is readable by all
    (some writers create owner-only modes)."""
    for path in [staging, *staging.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    if not output.exists():
        staging.rename(output)
        return
    old = hidden(output, OLD, os.getpid())
    output.rename(old)
    try:
        staging.rename(output)
    except BaseException:
        old.rename(output)
        raise
    shutil.rmtree(old, ignore_errors=True)  # what is left (a failed delete) goes at the next build or load
