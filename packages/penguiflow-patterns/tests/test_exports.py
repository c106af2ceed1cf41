"""The public surface of penguiflow.patterns and the namespace-package rules."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

import penguiflow
import penguiflow.patterns as patterns
from penguiflow.node import Node

SRC = Path(__file__).resolve().parents[1] / "src"


def test_all_is_exactly_the_four_factories() -> None:
    assert patterns.__all__ == ["map_concurrent", "join_k", "predicate_router", "union_router"]
    public = {
        name
        for name, value in vars(patterns).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public == set(patterns.__all__)


@pytest.mark.parametrize("name", ["map_concurrent", "join_k", "predicate_router", "union_router"])
def test_names_are_reexported_by_the_root_package(name: str) -> None:
    value = getattr(patterns, name)
    assert getattr(penguiflow, name) is value
    assert value.__module__ == "penguiflow.patterns"
    assert value.__doc__


def test_addon_ships_no_root_init() -> None:
    assert not (SRC / "penguiflow" / "__init__.py").exists()
    assert sorted(p.name for p in (SRC / "penguiflow").iterdir()) == ["patterns"]
    assert (SRC / "penguiflow" / "patterns" / "py.typed").exists()


def test_private_modules_are_private() -> None:
    for mod in ("_join", "_map", "_routers", "_perflow"):
        importlib.import_module(f"penguiflow.patterns.{mod}")


def _dummy(item: object) -> None:
    return None


@pytest.mark.parametrize(
    "node",
    [
        pytest.param(lambda: patterns.join_k("j", 2), id="join_k"),
        pytest.param(lambda: patterns.predicate_router("p", _dummy), id="predicate_router"),
        pytest.param(lambda: patterns.predicate_router("m", {"x": bool}), id="mapping_router"),
        pytest.param(lambda: patterns.union_router("u", int | str), id="union_router"),
    ],
)
def test_factories_return_plain_nodes(node: object) -> None:
    built = node()  # type: ignore[operator]
    assert type(built) is Node
    assert built.policy.validate == "none"
    assert built.policy.max_retries == 0
    assert built.policy.timeout_s is None
    assert built.allow_cycle is False
    assert built.name in {"j", "p", "m", "u"}
    assert built.func.__name__ == built.name
