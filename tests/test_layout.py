"""Meta-tests for the monorepo layout (style guide, Part 2 gotchas)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
ADDONS = [p for p in PACKAGES if p.name != "penguiflow-core"]


def test_every_distribution_is_here() -> None:
    assert [p.name for p in PACKAGES] == [
        "penguiflow-core",
        "penguiflow-otel",
        "penguiflow-patterns",
        "penguiflow-redis",
        "penguiflow-streaming",
        "penguiflow-testing",
        "penguiflow-viz",
    ]


@pytest.mark.parametrize("package", ADDONS, ids=lambda p: p.name)
def test_addons_ship_no_root_module(package: Path) -> None:
    # An add-on shipping penguiflow/__init__.py (or any root module) would overwrite
    # core's on install, and `from penguiflow import create` would break.
    root = package / "src" / "penguiflow"
    assert not list(root.glob("*.py")), f"{package.name} ships root modules"
    subpackages = [p for p in root.iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert [p.name for p in subpackages] == [package.name.removeprefix("penguiflow-")]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_package_metadata(package: Path) -> None:
    meta = tomllib.loads((package / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["name"] == package.name
    assert project["dynamic"] == ["version"]
    assert project["requires-python"] == ">=3.11"
    for name in ("README.md", "CHANGELOG.md"):
        assert (package / name).is_file(), f"{package.name} lacks {name}"
    version_file = meta["tool"]["hatch"]["version"]["path"]
    assert (package / version_file).is_file()
    assert (package / version_file).with_name("py.typed").is_file()
    deps = project["dependencies"]
    if package.name == "penguiflow-core":
        assert [d.split(">")[0] for d in deps] == ["pydantic"]
    else:
        # Add-ons depend on core only (never on each other), with a compatible range.
        assert [d for d in deps if d.startswith("penguiflow")] == ["penguiflow-core>=0.1,<0.2"]


def test_root_pyproject_is_tool_configuration_only() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "project" not in meta


@pytest.mark.parametrize("package", ADDONS, ids=lambda p: p.name)
def test_addons_use_only_the_public_core_surface(package: Path) -> None:
    # Add-ons never reach into core's private modules, and never import each other.
    own = package.name.removeprefix("penguiflow-")
    imports = re.compile(r"^\s*(?:from|import)\s+penguiflow\.(\w+)", re.MULTILINE)
    public_core = {"core", "types", "node", "registry", "metrics", "middlewares", "errors"}
    public_core |= {"clock", "inspect"}
    for source in (package / "src").rglob("*.py"):
        for module in imports.findall(source.read_text()):
            assert module == own or module in public_core, (
                f"{source.relative_to(ROOT)} imports penguiflow.{module}"
            )
