"""The core's module structure: sizes, a layered import graph, named interfaces only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import penguiflow
import penguiflow.core

SRC = Path(penguiflow.__file__).parent
CORE_MODULES = sorted(p for p in SRC.glob("*.py"))
DOC = Path(__file__).parents[3] / "docs" / "core-public-api.md"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _local_imports(path: Path) -> set[str]:
    """Core modules ``path`` imports, type-only and function-level imports included."""
    found: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is None:
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.split(".")[0])
    return {name for name in found if (SRC / f"{name}.py").exists()}


def test_the_kernel_stays_within_1000_lines_and_every_other_module_within_500() -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in CORE_MODULES}
    assert sizes["_runtime.py"] <= 1000
    too_big = {name: n for name, n in sizes.items() if name != "_runtime.py" and n > 500}
    assert too_big == {}


def test_the_core_import_graph_has_no_cycle() -> None:
    graph = {p.stem: _local_imports(p) - {"__init__"} for p in CORE_MODULES}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, " -> ".join([*visiting, module])
        visiting.append(module)
        for dep in sorted(graph.get(module, ())):
            visit(dep)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def _own_names(tree: ast.Module) -> set[str]:
    """Names a module defines: functions, classes, assigned attributes, slots."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == "__slots__":
                    value = node.value
                    if isinstance(value, ast.Tuple | ast.List):
                        own.update(
                            e.value
                            for e in value.elts
                            if isinstance(e, ast.Constant) and isinstance(e.value, str)
                        )
    return own


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: p.name)
def test_no_module_reads_another_modules_private_names(path: Path) -> None:
    tree = _tree(path)
    own = _own_names(tree)
    # Private helpers of the standard library (``sys._getframe``) are not ours to police.
    stdlib = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    foreign = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            foreign += [a.name for a in node.names if re.match(r"_[a-z]", a.name)]
        elif isinstance(node, ast.Attribute) and re.match(r"_[a-z]", node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", *stdlib):
                continue
            if node.attr not in own:
                foreign.append(f"line {node.lineno}: .{node.attr}")
    assert foreign == []


def _doc_row(label: str) -> set[str]:
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith(f"| {label} |"):
            return set(re.findall(r"`([A-Za-z_]+)`", line.split("|")[2]))
    raise AssertionError(f"no row {label!r} in {DOC.name}")


def test_core_all_is_the_documented_list() -> None:
    assert set(penguiflow.core.__all__) == _doc_row("`penguiflow.core` (`__all__`)")


def test_every_documented_core_name_is_importable() -> None:
    names = _doc_row("`penguiflow.core` (`__all__`)") | _doc_row("`penguiflow.core` (by name)")
    missing = sorted(name for name in names if not hasattr(penguiflow.core, name))
    assert missing == []
