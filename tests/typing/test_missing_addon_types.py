"""Add-on names re-exported from ``penguiflow`` under mypy --strict and pyright strict.

With the add-on installed, ``from penguiflow import join_k`` carries the add-on's own
signature; without it, the same line is an error for both checkers, never ``Any``.

Each case installs a ``penguiflow`` package into a fresh virtual environment, as the
wheels lay it out (core alone, or core plus every add-on), next to pydantic and its
dependencies and nothing else, then type-checks a small user module against that
environment. The checkers run in parallel, with their own caches.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "packages" / "penguiflow-core" / "src" / "penguiflow"
# pydantic and what it imports: the only other packages the environment holds.
DEPENDENCIES = ("pydantic", "pydantic_core", "typing_extensions", "annotated_types")
OPTIONAL_DEPENDENCIES = ("typing_inspection",)

USER_CODE = """\
from penguiflow import Node, create
from penguiflow import join_k
from penguiflow import stream_flow
from penguiflow import flow_to_mermaid

reveal_type(join_k)
reveal_type(stream_flow)
reveal_type(flow_to_mermaid)
joiner: Node = join_k("join", 2)
flow = create(joiner.to())
"""
IMPORT_LINES = {2: "join_k", 3: "stream_flow", 4: "flow_to_mermaid"}

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None or importlib.util.find_spec("pyright") is None,
    reason="needs both mypy and pyright",
)


@dataclass
class Env:
    """A virtual environment whose site-packages holds a chosen ``penguiflow``."""

    root: Path
    python: Path
    site: Path

    def install(self, sources: list[Path]) -> None:
        """Lay out ``penguiflow`` from these source trees, as the wheels install it."""
        target = self.site / "penguiflow"
        shutil.rmtree(target, ignore_errors=True)
        for source in sources:
            shutil.copytree(
                source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
            )


def _origin(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    origin = Path(spec.origin)
    return origin.parent if origin.name == "__init__.py" else origin


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("addon-types")
    venv.create(root / "venv", with_pip=False)
    python = root / "venv" / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    for module in DEPENDENCIES + OPTIONAL_DEPENDENCIES:
        if module in OPTIONAL_DEPENDENCIES and importlib.util.find_spec(module) is None:
            continue
        origin = _origin(module)
        (site / origin.name).symlink_to(origin)
    (root / "user.py").write_text(USER_CODE)
    (root / "mypy.ini").write_text("[mypy]\nstrict = True\npython_version = 3.11\n")
    config = {"include": ["user.py"], "typeCheckingMode": "strict", "pythonVersion": "3.11"}
    (root / "pyrightconfig.json").write_text(json.dumps(config))
    yield Env(root, python, site)


@dataclass
class Report:
    mypy: list[str]
    """mypy's output lines for user.py."""
    pyright: list[tuple[int, str, str]]
    """pyright's diagnostics: (1-based line, severity, message)."""


def _check(env: Env) -> Report:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    mypy = subprocess.Popen(
        [sys.executable, "-m", "mypy", "--python-executable", str(env.python), "user.py"],
        cwd=env.root,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pyright_command = [sys.executable, "-m", "pyright", "--pythonpath", str(env.python)]
    pyright = subprocess.Popen(
        [*pyright_command, "--outputjson", "-p", "pyrightconfig.json"],
        cwd=env.root,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    mypy_out, _ = mypy.communicate(timeout=120)
    pyright_out, pyright_err = pyright.communicate(timeout=120)
    try:
        diagnostics = json.loads(pyright_out)["generalDiagnostics"]
    except (json.JSONDecodeError, KeyError):
        pytest.fail(f"pyright failed:\n{pyright_out}\n{pyright_err}")
    return Report(
        mypy=[line for line in mypy_out.splitlines() if line.startswith("user.py:")],
        pyright=[
            (d["range"]["start"]["line"] + 1, d["severity"], d["message"]) for d in diagnostics
        ],
    )


def _errors(report: Report) -> tuple[list[str], list[tuple[int, str, str]]]:
    return (
        [line for line in report.mypy if ": error:" in line],
        [d for d in report.pyright if d[1] == "error"],
    )


def test_missing_add_on_names_are_errors_for_both_checkers(env: Env) -> None:
    env.install([CORE])
    report = _check(env)
    mypy_errors, pyright_errors = _errors(report)
    for line, name in IMPORT_LINES.items():
        assert (
            f'user.py:{line}: error: Module "penguiflow" has no attribute "{name}"  [attr-defined]'
        ) in mypy_errors, report.mypy
        assert (line, "error", f'"{name}" is unknown import symbol') in pyright_errors, (
            report.pyright
        )
    # Core's own names stay typed, and nothing became Any on the way.
    assert not any(": error:" in line for line in report.mypy if line.startswith("user.py:1:"))
    assert not [d for d in pyright_errors if d[0] == 1]


def test_installed_add_on_names_carry_their_signatures(env: Env) -> None:
    env.install(sorted(ROOT.glob("packages/*/src/penguiflow")))
    report = _check(env)
    assert _errors(report) == ([], []), report
    revealed = "\n".join(report.mypy)
    assert "def (name: str, k: int, *, timeout_s: float | None =" in revealed
    assert "PenguiFlow, parent_msg: Any, *, to: " in revealed  # stream_flow
    assert "PenguiFlow, *, direction: Literal[" in revealed  # flow_to_mermaid
    pyright_revealed = "\n".join(message for _, _, message in report.pyright)
    assert 'Type of "join_k" is "(name: str, k: int, *, timeout_s: float | None' in (
        pyright_revealed
    )
    assert 'Type of "stream_flow" is "(flow: PenguiFlow, parent_msg: Any' in pyright_revealed
    assert 'Type of "flow_to_mermaid" is "(flow: PenguiFlow, *, direction:' in pyright_revealed


def test_star_imports_for_checkers_match_the_runtime_names() -> None:
    # Type checkers see each add-on's __all__ (``from .patterns import *``); at run time
    # the root resolves the names listed in _ADDONS. The two lists must agree.
    import penguiflow

    addons: dict[str, tuple[str, str]] = vars(penguiflow)["_ADDONS"]
    by_module: dict[str, set[str]] = {}
    for name, (module, _) in addons.items():
        by_module.setdefault(module, set()).add(name)
    for module, names in by_module.items():
        assert set(importlib.import_module(module).__all__) == names, module
