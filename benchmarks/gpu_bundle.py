"""Build the folder to carry to the borrowed GPU machine (the device tool's `nvidia-h200`: no network, at most
64 MiB carried) and print the one command that runs the GPU proof (benchmarks.gpu_validate) there.

    python -m benchmarks.gpu_bundle [--out build/gpu-bundle] [--budget-s 420]

The folder holds `repo/` (the tracked files of this checkout, `git ls-files`, without the plots and docs the
proof does not read) and `wheels/`: the project's dependencies that machine lacks, for its Python 3.12 on
manylinux x86-64, without their own dependencies (`pip download --no-deps`). PyAV is one of them: the pipeline's
video module imports it, and the TTFT part decodes a real clip. Each wheel is pinned to the version installed
here (the one the tests pass with). A folder over 64 MiB is refused with its sizes.

What that machine has installed is written below from the device tool's notes (KINDS.md, read 2026-11-17);
where its versions differ from this project's pins (torch, triton, numpy), the proof runs on the installed ones
and the build prints the differences.
"""

import argparse
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LIMIT_BYTES = 64 * 2**20  # what one call of the device tool carries: the working tree and the carried paths
TARGET_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
EXCLUDED = ("benchmarks/results/", "docs/", "cpp/", "CMakeLists.txt")  # tracked, but not read by the proof
SITE = "/tmp/earlytom-site"  # where the wheels are installed there
DEFAULT_BUDGET_S = 420  # the proof's own budget: under the 8 minutes the issue allows, start-up excluded
KILL_MARGIN_S = 60  # `timeout` ends the proof this long after its budget if it has not stopped by itself

# The Python distributions installed on that machine (KINDS.md, "Python packages already there").
INSTALLED_THERE = frozenset(
    canonicalize_name(name)
    for name in """accelerate cuda-bindings cuda-core cuda-pathfinder huggingface-hub hypothesis jinja2 matplotlib
    ml-dtypes networkx numpy nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless packaging
    pillow protobuf psutil pytest pyyaml regex requests safetensors sentencepiece setuptools tokenizers torch
    tqdm transformers triton typing-extensions""".split()
)
# The versions KINDS.md's pip list gives for the ones this project pins or bounds.
VERSIONS_THERE = {
    "torch": "2.11.0",
    "triton": "3.6.0",
    "transformers": "5.17.0",
    "numpy": "2.5.2",
    "onnx": "1.23.1",
    "onnxruntime": "1.30.0",
    "onnxscript": "0.7.2",
    "safetensors": "0.8.0",
    "tokenizers": "0.23.2",
    "huggingface-hub": "1.33.0",
}


class BundleTooLarge(ValueError):
    """The folder to carry exceeds what the device tool carries."""


@dataclass(frozen=True)
class Plan:
    files: list[str]  # repository paths, relative to its root
    wheels: list[str]  # pinned requirements to download ("av==15.1.0")
    differences: list[str]  # installed-there versions outside this project's requirements


def dependencies(pyproject: Path) -> list[Requirement]:
    """The [project] dependencies of `pyproject` (a pyproject.toml)."""
    return [Requirement(line) for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]


def missing_there(requirements: list[Requirement], installed: frozenset[str] = INSTALLED_THERE) -> list[Requirement]:
    """The requirements whose distribution is not installed there (names compared canonically)."""
    return [r for r in requirements if canonicalize_name(r.name) not in installed]


def pinned(requirement: Requirement, version_here: str | None) -> str:
    """`requirement` pinned to the version installed here (the tested one) when it satisfies it, else as given."""
    if version_here is not None and requirement.specifier.contains(version_here, prereleases=True):
        return f"{requirement.name}=={version_here}"
    return str(requirement)


def version_differences(requirements: list[Requirement], there: dict[str, str] = VERSIONS_THERE) -> list[str]:
    """One line per requirement that the version installed there does not meet."""
    out = []
    for r in requirements:
        version = there.get(canonicalize_name(r.name))
        if version is not None and not r.specifier.contains(version, prereleases=True):
            out.append(f"{r.name} {version} there (this project asks {r.name}{r.specifier})")
    return out


def carried_files(tracked: list[str], excluded: tuple[str, ...] = EXCLUDED) -> list[str]:
    """The tracked paths without those under (or equal to) an `excluded` prefix."""
    return [p for p in tracked if not any(p == e or (e.endswith("/") and p.startswith(e)) for e in excluded)]


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def make_plan(tracked: list[str], pyproject: Path) -> Plan:
    requirements = dependencies(pyproject)
    wheels = [pinned(r, installed_version(r.name)) for r in missing_there(requirements)]
    return Plan(carried_files(tracked), wheels, version_differences(requirements))


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def check_size(sizes: dict[str, int], limit: int = LIMIT_BYTES) -> int:
    """The total of `sizes` (path -> bytes); BundleTooLarge naming the largest entries when it exceeds `limit`."""
    total = sum(sizes.values())
    if total > limit:
        largest = sorted(sizes.items(), key=lambda item: -item[1])[:8]
        listing = "; ".join(f"{path} {mib(size)}" for path, size in largest)
        raise BundleTooLarge(
            f"the bundle is {mib(total)}, over the {mib(limit)} the device tool carries. Largest: {listing}. "
            "Carry fewer wheels (a package already on the machine needs none) or exclude more files (EXCLUDED)"
        )
    return total


def folder_sizes(folder: Path) -> dict[str, int]:
    """Every file under `folder` (path relative to it) -> its size in bytes."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def run_command(bundle: str, budget_s: int, out: str = '"${OUT:-$PWD/gpu-proof}"') -> str:
    """The shell command that runs the proof there, from the folder that holds `bundle` (a relative path): the
    wheels installed into a target folder, PYTHONPATH set to the carried repository and that folder, the proof
    run from the repository with its budget, and `timeout` as a last resort KILL_MARGIN_S after it. `out`: the
    report folder (shell syntax; default: the device tool's $OUT, else ./gpu-proof)."""
    if budget_s <= 0:
        raise ValueError(f"budget_s = {budget_s}: give the proof a positive number of seconds")
    b = shlex.quote(bundle)
    return (
        f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target {SITE} "
        f"{b}/wheels/*.whl && export PYTHONPATH=$PWD/{b}/repo:{SITE} PYTHONUNBUFFERED=1 && "
        f"(cd {b}/repo && timeout -k 10 {budget_s + KILL_MARGIN_S} python3 -m benchmarks.gpu_validate "
        f"--budget-s {budget_s} --out {out})"
    )


def tracked_files(root: Path) -> list[str]:
    done = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
    return [p for p in done.stdout.decode().split("\0") if p and (root / p).is_file()]


def download(wheels: list[str], dest: Path) -> None:
    """pip download each pinned requirement as a wheel for TARGET_PYTHON on manylinux x86-64, without deps."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", TARGET_PYTHON, "--implementation", "cp", *platforms, "-d", str(dest), *wheels]
    subprocess.run(command, check=True)


def build(out: Path, root: Path = ROOT) -> tuple[Plan, int]:
    """Write the bundle into `out` (emptied first); returns the plan and the bundle's size in bytes."""
    plan = make_plan(tracked_files(root), root / "pyproject.toml")
    shutil.rmtree(out, ignore_errors=True)
    for path in plan.files:
        target = out / "repo" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, target)
    (out / "wheels").mkdir(parents=True)
    if plan.wheels:
        download(plan.wheels, out / "wheels")
    return plan, check_size(folder_sizes(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "build" / "gpu-bundle", help="the folder to write")
    p.add_argument("--budget-s", type=int, default=DEFAULT_BUDGET_S, help="the proof's time budget there")
    args = p.parse_args(argv)
    try:
        plan, total = build(args.out)
    except BundleTooLarge as error:
        print(error, file=sys.stderr)
        return 1
    relative = args.out.resolve().relative_to(ROOT) if args.out.resolve().is_relative_to(ROOT) else args.out
    print(f"bundle: {args.out} ({mib(total)} of {mib(LIMIT_BYTES)}): {len(plan.files)} files, wheels {plan.wheels}")
    for line in plan.differences:
        print(f"  runs on {line}")
    print(f"\nthere, from the folder holding {relative} (the device tool: carry {relative!s}):\n")
    print(run_command(str(relative), args.budget_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
