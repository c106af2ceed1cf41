"""Test modules are type-checked too: no fixture parameter typed ``Any``.

Every fixture has a real return type (a class, or an alias defined once in its conftest and
imported by test modules under ``TYPE_CHECKING``). A parameter named like a fixture that is
visible there (``kit``, ``recorder``, ``make_flow``, ``flow_kit``, ...) must carry that
type, not ``Any``; nor may a node function's ``ctx`` be ``Any``, unless the test
deliberately passes odd values and says so in a comment on that line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_DIRS = [*sorted((ROOT / "packages").glob("*/tests")), ROOT / "tests"]
PLUGIN = ROOT / "packages/penguiflow-testing/src/penguiflow/testing/pytest_plugin.py"
# pytest's own fixtures (and pytester's), visible in every test module.
BUILTIN_FIXTURES = frozenset(
    {
        "cache",
        "capfd",
        "capfdbinary",
        "caplog",
        "capsys",
        "capsysbinary",
        "doctest_namespace",
        "monkeypatch",
        "pytestconfig",
        "pytester",
        "record_property",
        "record_testsuite_property",
        "recwarn",
        "request",
        "testdir",
        "tmp_path",
        "tmp_path_factory",
        "tmpdir",
        "tmpdir_factory",
    }
)
Function = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(tree: ast.AST) -> Iterator[Function]:
    for node in ast.walk(tree):
        if isinstance(node, Function):
            yield node


def _is_fixture(func: Function) -> bool:
    for decorator in func.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr == "fixture":
            return True  # pytest.fixture, pytest_asyncio.fixture
        if isinstance(target, ast.Name) and target.id == "fixture":
            return True
    return False


def _is_any(annotation: ast.expr | None) -> bool:
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return annotation.value.strip() in ("Any", "typing.Any")
    return ast.unparse(annotation) in ("Any", "typing.Any") if annotation is not None else False


def fixtures_defined(source: str) -> set[str]:
    """Names of the fixtures a module defines (``@pytest.fixture`` and friends)."""
    return {f.name for f in _functions(ast.parse(source)) if _is_fixture(f)}


def any_typed(source: str, fixtures: set[str]) -> list[str]:
    """``line: name`` for each parameter named like a fixture (or ``ctx``) typed ``Any``.

    ``ctx: Any`` is allowed when its line carries a comment saying why (a test that
    deliberately passes something other than a ``Context``).
    """
    lines = source.splitlines()
    found = []
    for func in _functions(ast.parse(source)):
        args = func.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
            if not _is_any(arg.annotation):
                continue
            if arg.arg == "ctx" and "#" in lines[arg.lineno - 1]:
                continue
            if arg.arg in fixtures or arg.arg == "ctx":
                found.append(f"{arg.lineno}: {func.name}({arg.arg}: Any)")
    return found


def untyped_fixtures(source: str) -> list[str]:
    """``line: name`` for each fixture without a return type, or with ``Any``."""
    return [
        f"{f.lineno}: {f.name}"
        for f in _functions(ast.parse(source))
        if _is_fixture(f) and (f.returns is None or _is_any(f.returns))
    ]


def _modules() -> list[Path]:
    return sorted(p for d in TEST_DIRS for p in d.rglob("*.py") if "__pycache__" not in p.parts)


def _visible_fixtures(module: Path) -> set[str]:
    """Fixtures a module can request: pytest's, the plugin's, its conftests' and its own."""
    visible = set(BUILTIN_FIXTURES) | fixtures_defined(PLUGIN.read_text())
    folder = module.parent
    while folder == ROOT or ROOT in folder.parents:
        conftest = folder / "conftest.py"
        if conftest.is_file():
            visible |= fixtures_defined(conftest.read_text())
        folder = folder.parent
    return visible | fixtures_defined(module.read_text())


def test_the_guard_sees_the_fixtures() -> None:
    # Guards against a vacuous pass: the fixture names of the issue are all found.
    seen = set().union(*(_visible_fixtures(m) for m in _modules()))
    assert {"kit", "recorder", "make_flow", "flow_kit", "virtual_clock", "make_node"} <= seen


def test_the_guard_catches_an_any_fixture() -> None:
    source = (
        "from typing import Any\n"
        "async def test_x(kit: Any, recorder: 'Any', other: Any) -> None:\n"
        "    async def node(msg: Any, ctx: Any) -> Any: ...\n"
        "    async def odd(msg: Any, ctx: Any) -> Any: ...  # ctx: a stand-in object\n"
        "import pytest\n"
        "@pytest.fixture\n"
        "def kit() -> Any: ...\n"
        "@pytest.fixture\n"
        "def recorder(): ...\n"
    )
    assert any_typed(source, {"kit", "recorder"}) == [
        "2: test_x(kit: Any)",
        "2: test_x(recorder: Any)",
        "3: node(ctx: Any)",
    ]
    assert untyped_fixtures(source) == ["7: kit", "9: recorder"]


@pytest.mark.parametrize("module", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_fixture_parameter_is_typed_any(module: Path) -> None:
    source = module.read_text()
    assert any_typed(source, _visible_fixtures(module)) == [], (
        "annotate these with the fixture's type (define it once in the conftest, import it "
        "under TYPE_CHECKING)"
    )
    assert untyped_fixtures(source) == [], "give these fixtures a real return type"
