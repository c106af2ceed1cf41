"""The public surface and packaging conventions of penguiflow-testing."""

from __future__ import annotations

import types
from importlib.metadata import entry_points
from pathlib import Path

import penguiflow.testing as testing

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def test_all_is_sorted_and_complete() -> None:
    assert testing.__all__ == sorted(testing.__all__)
    public = {
        name
        for name, value in vars(testing).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # from __future__ import annotations
    }
    assert public | {"__version__"} == set(testing.__all__)


def test_exported_objects_report_the_public_module() -> None:
    for name in testing.__all__:
        value = getattr(testing, name)
        if isinstance(value, type) or callable(value):
            assert value.__module__ == "penguiflow.testing", name


def test_the_add_on_ships_no_root_package_init() -> None:
    src = PACKAGE_ROOT / "src" / "penguiflow"
    assert not (src / "__init__.py").exists()
    assert sorted(p.name for p in src.iterdir() if p.suffix == ".py") == []
    assert (src / "testing" / "py.typed").exists()


def test_pytest_plugin_entry_point() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("penguiflow") == "penguiflow.testing.pytest_plugin"


def test_version_is_a_string() -> None:
    assert isinstance(testing.__version__, str)
    assert testing.__version__.count(".") == 2
