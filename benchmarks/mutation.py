"""Mutation testing of the algorithm (earlytom/compress/) and the engine-directory verification
(earlytom/engine/manifest.py) with mutmut, configured in pyproject.toml [tool.mutmut]; see docs/mutation.md.

    python -m benchmarks.mutation                 run every mutant (hours on 2 cores), then print the table
    python -m benchmarks.mutation --only 'earlytom.compress.merge*'   a subset (mutmut's name patterns)
    python -m benchmarks.mutation --table         print the table of the last run only

Run from the repository root without PYTHONPATH (mutmut imports its mutated copy under mutants/). Not run in CI.
"""

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks.common import print_table

# mutmut's exit-code meanings (mutmut.stats.status_by_exit_code).
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout"}
STATUS |= {code: "timeout" for code in (-24, 24, 152, 255)}


def statuses(mutants: Path) -> dict[str, Counter]:
    """Module path -> Counter of mutant statuses, from mutmut's .meta files under `mutants`."""
    out = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        if codes:
            module = meta.relative_to(mutants).as_posix().removesuffix(".meta")
            out[module] = Counter("not run" if c is None else STATUS.get(c, "suspicious") for c in codes)
    return out


def score(counts: Counter) -> str:
    """Killed (timeouts count as killed, as mutmut counts them) over the mutants that ran."""
    ran = counts["killed"] + counts["timeout"] + counts["survived"] + counts["no tests"]
    return f"{100 * (counts['killed'] + counts['timeout']) / ran:.1f}%" if ran else "-"


def table(mutants: Path) -> None:
    columns = ["killed", "timeout", "survived", "no tests", "not run"]
    rows = [[module, *(counts[c] for c in columns), score(counts)] for module, counts in statuses(mutants).items()]
    print_table(["module", *columns, "score"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="mutmut mutant-name pattern (repeatable)")
    parser.add_argument("--table", action="store_true", help="only print the table of the last run")
    parser.add_argument("--max-children", type=int, default=None, help="parallel mutants (default: mutmut's)")
    args = parser.parse_args(argv)
    if not args.table:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TRITON_INTERPRET": "1"}
        command = [str(Path(sys.executable).parent / "mutmut"), "run", *args.only]
        if args.max_children is not None:
            command[2:2] = ["--max-children", str(args.max_children)]
        done = subprocess.run(command, env=env)
        if done.returncode not in (0, 1):
            return done.returncode
    table(Path("mutants"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
