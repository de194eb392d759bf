"""The package's layering, read from the source (every import statement, module level or not): no cycle between
subpackages, nothing below reaching up, and no model family named outside earlytom/models."""

import ast
import re
from pathlib import Path

import earlytom

ROOT = Path(earlytom.__file__).parent
LOWER = ("earlytom.compress", "earlytom.models", "earlytom.engine", "earlytom.video", "earlytom.dtypes")
UPPER = ("earlytom.runtime", "earlytom.engine_builder", "earlytom.export")


def subpackage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("earlytom.")}


def edges() -> dict[str, set[str]]:
    """subpackage -> the other subpackages (and top-level modules) it imports."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        source = subpackage(module_name(path))
        targets = {subpackage(name) for name in imports(path)}
        graph.setdefault(source, set()).update(targets - {source})
    return graph


def test_no_cycle_between_subpackages():
    graph = edges()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    cycles = sorted(node for node in graph if reaches(node, node, {node}))
    assert not cycles, f"import cycles through {cycles}"


def test_lower_layers_never_import_the_upper_ones():
    graph = edges()
    upward = {(low, up) for low in LOWER for up in graph.get(low, ()) if up in UPPER}
    assert not upward
    assert not graph["earlytom.runtime"] & {"earlytom.engine_builder", "earlytom.export"}
    assert "earlytom.runtime" not in graph["earlytom.export"]


def test_no_family_is_named_outside_models():
    """Code outside earlytom/models names no model family (comments and docstrings may)."""
    pattern = re.compile(r"llava|image_newline|qwen2_5_vl|Qwen2_5_VL", re.IGNORECASE)
    named = []
    for path in ROOT.rglob("*.py"):
        if path.is_relative_to(ROOT / "models"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            text = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                text = node.value
            elif isinstance(node, ast.Name | ast.Attribute):
                text = node.id if isinstance(node, ast.Name) else node.attr
            elif isinstance(node, ast.alias):
                text = node.name
            if text and pattern.search(text):
                named.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: {text[:60]!r}")
    assert not named, "\n".join(named)
