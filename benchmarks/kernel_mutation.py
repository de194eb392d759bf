"""Mutation testing of the @triton.jit kernel bodies (earlytom/plugins/triton/kernels.py), which mutmut leaves
alone (it mutates no decorated function, and Triton compiles a kernel from its source, so mutmut's trampolines could
not run there anyway). mutmut's own operators are applied to one node of one kernel body at a time; each mutant is
written into a copy of the repository, where the kernel tests run on it under Triton's interpreter.

    python -m benchmarks.kernel_mutation                      every mutant (hours on 2 cores), then the table
    python -m benchmarks.kernel_mutation --only merge_plan    the mutants of the kernels named
    python -m benchmarks.kernel_mutation --list               the mutants, one line each, none run
    python -m benchmarks.kernel_mutation --table              the table and survivors of the runs so far

Results go to mutants-kernels/results.json (a mutant already run with the same code is not run again), the copy to
mutants-kernels/tree. A mutant is killed when the tests fail, a timeout when they run 5x longer than on the
unmutated code (counted as killed, as mutmut counts it), survived when they pass. See docs/mutation.md.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import libcst as cst
from mutmut.mutation.mutators import mutation_operators

from benchmarks.common import print_table

KERNELS = Path("earlytom/plugins/triton/kernels.py")
TESTS = ["tests/test_triton_kernels.py", "tests/test_official_kernels.py"]
WORK = Path("mutants-kernels")
TIMEOUT_FACTOR = 5


@dataclass(frozen=True)
class Mutant:
    name: str  # <kernel>__<n>, n counting from 1 in the order the nodes are visited
    line: int  # of the mutated node in kernels.py
    before: str  # the node's code
    after: str  # what the mutant has instead
    code: str  # the whole mutated file


class KernelNodes(cst.CSTVisitor):
    """Collects the nodes inside the bodies of @triton.jit functions, annotations and decorators excluded."""

    METADATA_DEPENDENCIES = (cst.metadata.PositionProvider,)

    def __init__(self, module: cst.Module):
        self.module = module
        self.kernel: str | None = None
        self.nodes: list[tuple[str, int, cst.CSTNode]] = []

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        decorators = [self.module.code_for_node(d.decorator) for d in node.decorators]
        if "triton.jit" not in decorators:
            return False
        self.kernel = node.name.value
        node.body.visit(self)  # the body only: not the parameters (their tl.constexpr), not the decorator
        self.kernel = None
        return False

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.FunctionDef):
            return self.visit_FunctionDef(node)
        if isinstance(node, cst.Annotation):
            return False
        if self.kernel is not None:
            line = self.get_metadata(cst.metadata.PositionProvider, node).start.line
            self.nodes.append((self.kernel, line, node))
        return True


def kernel_mutants(source: str) -> list[Mutant]:
    """Every mutant mutmut's operators make of a node inside a @triton.jit function of `source`."""
    wrapper = cst.metadata.MetadataWrapper(cst.parse_module(source))
    visitor = KernelNodes(wrapper.module)
    wrapper.visit(visitor)
    mutants, counts = [], {}
    for kernel, line, node in visitor.nodes:
        for kind, operator in mutation_operators:
            if not isinstance(node, kind):
                continue
            for mutated in operator(node):
                counts[kernel] = counts.get(kernel, 0) + 1
                code = wrapper.module.deep_replace(node, mutated).code
                before, after = (wrapper.module.code_for_node(n) for n in (node, mutated))
                mutants.append(Mutant(f"{kernel}__{counts[kernel]}", line, before, after, code))
    return mutants


def copy_tree(target: Path) -> None:
    """The repository's tracked and untracked-but-not-ignored files, copied to `target` (made afresh)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], capture_output=True, check=True
    ).stdout.decode()
    shutil.rmtree(target, ignore_errors=True)
    for name in filter(None, listed.split("\0")):
        if Path(name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(name, target / name)


def run_tests(tree: Path, timeout: float | None) -> tuple[str, float]:
    """('passed' | 'failed' | 'timeout', seconds) of the kernel tests in `tree`, interpreted, first failure ends."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start
    return ("passed" if done.returncode == 0 else "failed"), time.perf_counter() - start


def digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def run(mutants: list[Mutant], results: dict) -> None:
    """Run each mutant not yet in `results` (by name and code) and record it there and in results.json."""
    tree = WORK / "tree"
    copy_tree(tree)
    status, baseline = run_tests(tree, None)
    if status != "passed":
        raise SystemExit(f"the kernel tests fail on the unmutated code in {tree}; fix them first")
    print(f"unmutated: {baseline:.0f} s; timeout {TIMEOUT_FACTOR}x", flush=True)
    original = (tree / KERNELS).read_text()
    try:
        for m in mutants:
            if results.get(m.name, {}).get("digest") == digest(m.code):
                continue
            (tree / KERNELS).write_text(m.code)
            status, seconds = run_tests(tree, TIMEOUT_FACTOR * baseline + 10)
            status = {"failed": "killed", "passed": "survived"}.get(status, status)
            results[m.name] = {"status": status, "line": m.line, "before": m.before, "after": m.after}
            results[m.name]["digest"] = digest(m.code)
            (WORK / "results.json").write_text(json.dumps(results, indent=1))
            print(f"{m.name:28s} line {m.line:4d} {status:8s} {seconds:4.0f} s {m.before!r} -> {m.after!r}", flush=True)
    finally:
        (tree / KERNELS).write_text(original)


def report(results: dict) -> None:
    kernels: dict[str, dict[str, int]] = {}
    for name, r in results.items():
        counts = kernels.setdefault(name.rsplit("__", 1)[0], {"killed": 0, "timeout": 0, "survived": 0})
        counts[r["status"]] += 1
    rows = []
    for kernel, c in kernels.items():
        ran = sum(c.values())
        rows.append([kernel, c["killed"], c["timeout"], c["survived"], f"{100 * (ran - c['survived']) / ran:.1f}%"])
    print_table(["kernel", "killed", "timeout", "survived", "score"], rows)
    for name, r in results.items():
        if r["status"] == "survived":
            print(f"survived: {name} (line {r['line']}): {r['before']!r} -> {r['after']!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, help="kernel names (default: every @triton.jit function)")
    parser.add_argument("--list", action="store_true", help="list the mutants, run none")
    parser.add_argument("--table", action="store_true", help="only print the results so far")
    args = parser.parse_args(argv)
    mutants = kernel_mutants(KERNELS.read_text())
    if args.only is not None:
        mutants = [m for m in mutants if m.name.rsplit("__", 1)[0] in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name:28s} line {m.line:4d}  {m.before!r} -> {m.after!r}")
        return 0
    path = WORK / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if not args.table:
        WORK.mkdir(exist_ok=True)
        run(mutants, results)
    report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
