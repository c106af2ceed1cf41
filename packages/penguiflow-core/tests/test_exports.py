"""The root package's public surface and the lazy add-on names."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import types
from typing import Any

import pytest

import penguiflow
import penguiflow.core
import penguiflow.metrics
import penguiflow.middlewares
import penguiflow.node
import penguiflow.registry
import penguiflow.types
from penguiflow.errors import MissingExtraError, PenguiFlowError

CORE_NAMES = {
    "__version__": None,
    "PenguiFlow": penguiflow.core,
    "create": penguiflow.core,
    "Context": penguiflow.core,
    "CycleError": penguiflow.core,
    "call_playbook": penguiflow.core,
    "DEFAULT_QUEUE_MAXSIZE": penguiflow.core,
    "Node": penguiflow.node,
    "NodePolicy": penguiflow.node,
    "ModelRegistry": penguiflow.registry,
    "FlowEvent": penguiflow.metrics,
    "Middleware": penguiflow.middlewares,
    "Headers": penguiflow.types,
    "Message": penguiflow.types,
    "StreamChunk": penguiflow.types,
    "PlanStep": penguiflow.types,
    "Thought": penguiflow.types,
    "WM": penguiflow.types,
    "FinalAnswer": penguiflow.types,
}

ADDONS = {
    "map_concurrent": ("penguiflow.patterns", "penguiflow-patterns"),
    "join_k": ("penguiflow.patterns", "penguiflow-patterns"),
    "predicate_router": ("penguiflow.patterns", "penguiflow-patterns"),
    "union_router": ("penguiflow.patterns", "penguiflow-patterns"),
    "format_sse_event": ("penguiflow.streaming", "penguiflow-streaming"),
    "chunk_to_ws_json": ("penguiflow.streaming", "penguiflow-streaming"),
    "stream_flow": ("penguiflow.streaming", "penguiflow-streaming"),
    "emit_stream_events": ("penguiflow.streaming", "penguiflow-streaming"),
    "flow_to_mermaid": ("penguiflow.viz", "penguiflow-viz"),
    "flow_to_dot": ("penguiflow.viz", "penguiflow-viz"),
}

ALLOWED_EXTRAS = {"TraceCancelled", "PenguiFlowError"}


def test_root_all_contains_every_core_name() -> None:
    assert set(CORE_NAMES) <= set(penguiflow.__all__)
    assert len(penguiflow.__all__) == len(set(penguiflow.__all__))


def test_root_all_has_no_unexpected_names() -> None:
    assert set(penguiflow.__all__) - set(CORE_NAMES) - set(ADDONS) <= ALLOWED_EXTRAS


def test_root_all_contains_the_installed_add_on_names() -> None:
    # The add-on names belong in __all__; core adds each one only when its
    # distribution is installed, so star-import still works with core alone.
    installed = {name for name in ADDONS if importlib.util.find_spec(ADDONS[name][0]) is not None}
    assert installed <= set(penguiflow.__all__)
    assert set(penguiflow.__all__) & set(ADDONS) == installed


@pytest.mark.parametrize("name", sorted(set(CORE_NAMES) - {"__version__"}))
def test_root_names_are_the_module_objects(name: str) -> None:
    module = CORE_NAMES[name]
    assert getattr(penguiflow, name) is getattr(module, name)


def test_extras_are_the_same_objects() -> None:
    from penguiflow.core import TraceCancelled
    from penguiflow.errors import PenguiFlowError

    assert penguiflow.TraceCancelled is TraceCancelled
    assert penguiflow.PenguiFlowError is PenguiFlowError


def test_version_is_the_distribution_version() -> None:
    assert isinstance(penguiflow.__version__, str)
    assert penguiflow.__version__ == importlib.metadata.version("penguiflow-core")


def test_star_import_works_with_core_alone() -> None:
    namespace: dict[str, Any] = {}
    exec("from penguiflow import *", namespace)
    assert namespace["PenguiFlow"] is penguiflow.PenguiFlow


def test_unknown_root_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError):
        # Also an error for type checkers (the module's __getattr__ is hidden from them):
        # were it visible again, this ignore would be unused and mypy would say so.
        _ = penguiflow.does_not_exist  # type: ignore[attr-defined]


def _isolate_cache(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make sure ``name`` is not cached in the package and is removed afterwards."""
    monkeypatch.setitem(vars(penguiflow), name, None)
    del vars(penguiflow)[name]


@pytest.mark.parametrize("name", sorted(ADDONS))
def test_missing_add_on_names_the_distribution(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _, dist = ADDONS[name]

    def missing(mod: str, package: str | None = None) -> Any:
        raise ModuleNotFoundError(f"No module named {mod!r}", name=mod)

    _isolate_cache(monkeypatch, name)
    monkeypatch.setattr(penguiflow, "importlib", types.SimpleNamespace(import_module=missing))
    # Reading the attribute: an AttributeError (so hasattr() is False) that says what to do.
    with pytest.raises(AttributeError, match=f"pip install {dist}") as read:
        getattr(penguiflow, name)
    assert isinstance(read.value, PenguiFlowError)
    assert not hasattr(penguiflow, name)
    assert getattr(penguiflow, name, None) is None
    # The import statement: an ImportError with the same words.
    with pytest.raises(MissingExtraError, match=f"pip install {dist}") as imported:
        exec(f"from penguiflow import {name}", {})
    assert isinstance(imported.value, ImportError)


def test_missing_add_on_via_sys_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    _isolate_cache(monkeypatch, "flow_to_dot")
    monkeypatch.setitem(__import__("sys").modules, "penguiflow.viz", None)
    with pytest.raises(AttributeError, match="penguiflow-viz"):
        _ = penguiflow.flow_to_dot
    with pytest.raises(ImportError, match="pip install penguiflow-viz"):
        from penguiflow import flow_to_dot  # noqa: F401


def test_a_broken_dependency_inside_an_add_on_is_not_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(mod: str, package: str | None = None) -> Any:
        raise ModuleNotFoundError("No module named 'graphviz'", name="graphviz")

    _isolate_cache(monkeypatch, "flow_to_dot")
    monkeypatch.setattr(penguiflow, "importlib", types.SimpleNamespace(import_module=broken))
    with pytest.raises(ModuleNotFoundError) as info:
        _ = penguiflow.flow_to_dot
    assert not isinstance(info.value, MissingExtraError)
    assert info.value.name == "graphviz"


@pytest.mark.parametrize("name", sorted(ADDONS))
def test_installed_add_on_name_resolves_to_the_module_object(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    module_name, _ = ADDONS[name]
    fake = types.ModuleType(module_name)
    sentinel = object()
    setattr(fake, name, sentinel)
    imported: list[str] = []

    def present(mod: str, package: str | None = None) -> Any:
        imported.append(mod)
        return fake

    _isolate_cache(monkeypatch, name)
    monkeypatch.setattr(penguiflow, "importlib", types.SimpleNamespace(import_module=present))
    assert getattr(penguiflow, name) is sentinel
    assert getattr(penguiflow, name) is sentinel
    assert imported == [module_name]  # resolved once, then cached


@pytest.mark.parametrize(
    "module_name", ["penguiflow.patterns", "penguiflow.streaming", "penguiflow.viz"]
)
def test_real_environment_add_on_state(module_name: str) -> None:
    names = [n for n, (m, _) in ADDONS.items() if m == module_name]
    dist = ADDONS[names[0]][1]
    if importlib.util.find_spec(module_name) is None:
        for name in names:
            assert not hasattr(penguiflow, name)
            assert name not in dir(penguiflow)
            with pytest.raises(AttributeError, match=dist):
                getattr(penguiflow, name)
    else:
        module = importlib.import_module(module_name)
        for name in names:
            assert getattr(penguiflow, name) is getattr(module, name)


def test_dir_lists_exactly_the_installed_add_on_names() -> None:
    installed = {name for name in ADDONS if importlib.util.find_spec(ADDONS[name][0]) is not None}
    assert set(dir(penguiflow)) & set(ADDONS) == installed
    assert set(CORE_NAMES) <= set(dir(penguiflow))
