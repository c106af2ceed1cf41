"""The public surface of penguiflow.viz and the namespace-package rules."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import penguiflow
import penguiflow.viz as viz

SRC = Path(__file__).resolve().parents[1] / "src"


def test_all_is_exactly_the_two_renderers() -> None:
    assert viz.__all__ == ["flow_to_mermaid", "flow_to_dot"]
    public = {
        name
        for name, value in vars(viz).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public == {"flow_to_mermaid", "flow_to_dot"}


def test_renderers_are_reexported_by_the_root_package() -> None:
    for name in viz.__all__:
        value = getattr(viz, name)
        assert getattr(penguiflow, name) is value
        assert value.__module__ == "penguiflow.viz"
        assert value.__doc__


def test_signatures_match_the_documented_api() -> None:
    mermaid = inspect.signature(viz.flow_to_mermaid)
    assert list(mermaid.parameters) == ["flow", "direction", "snapshot", "playbooks"]
    assert mermaid.parameters["direction"].default == "TD"
    dot = inspect.signature(viz.flow_to_dot)
    assert list(dot.parameters) == ["flow", "rankdir", "snapshot", "playbooks"]
    assert dot.parameters["rankdir"].default == "TB"
    for sig in (mermaid, dot):
        assert all(
            p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(sig.parameters.values())[1:]
        )
        assert sig.parameters["snapshot"].default is None
        assert sig.parameters["playbooks"].default is None


def test_addon_ships_no_root_init() -> None:
    assert not (SRC / "penguiflow" / "__init__.py").exists()
    assert sorted(p.name for p in (SRC / "penguiflow").iterdir()) == ["viz"]
    assert (SRC / "penguiflow" / "viz" / "py.typed").exists()


def test_private_modules_import_and_version() -> None:
    for mod in ("_api", "_escape", "_model", "_mermaid", "_dot", "_version"):
        importlib.import_module(f"penguiflow.viz.{mod}")
    assert viz.__version__ == importlib.import_module("penguiflow.viz._version").__version__
