"""``ModelRegistry``: per-node in/out models and their cached adapters."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter

import penguiflow.registry as registry_mod
from penguiflow.registry import ModelRegistry


class A(BaseModel):
    a: int


class B(BaseModel):
    b: str


def test_module_all() -> None:
    assert registry_mod.__all__ == ["ModelRegistry"]


def test_register_and_lookup_adapters() -> None:
    reg = ModelRegistry()
    reg.register("n", A, B)
    in_adapter, out_adapter = reg.adapters("n")
    assert isinstance(in_adapter, TypeAdapter)
    assert isinstance(out_adapter, TypeAdapter)
    assert in_adapter.validate_python({"a": "3"}) == A(a=3)
    assert out_adapter.validate_python({"b": "x"}) == B(b="x")


def test_adapters_are_built_once_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    real = TypeAdapter

    def counting(model: Any) -> Any:
        built.append(model)
        return real(model)

    monkeypatch.setattr(registry_mod, "TypeAdapter", counting)
    reg = ModelRegistry()
    reg.register("n", A, B)
    assert built == [A, B]
    first = reg.adapters("n")
    for _ in range(5):
        again = reg.adapters("n")
        assert again[0] is first[0] and again[1] is first[1]
    assert built == [A, B]


def test_duplicate_registration_raises_value_error() -> None:
    reg = ModelRegistry()
    reg.register("n", A, B)
    with pytest.raises(ValueError, match="Node 'n' already registered"):
        reg.register("n", B, A)
    assert reg.adapters("n")[0].validate_python({"a": 1}) == A(a=1)


def test_duplicate_is_checked_before_model_types() -> None:
    reg = ModelRegistry()
    reg.register("n", A, B)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("n", int, str)  # type: ignore[arg-type]


@pytest.mark.parametrize(("in_model", "out_model"), [(int, B), (A, dict), (A(a=1), B), (A, "B")])
def test_non_basemodel_raises_type_error(in_model: Any, out_model: Any) -> None:
    reg = ModelRegistry()
    with pytest.raises(TypeError, match=r"Models must inherit from pydantic\.BaseModel"):
        reg.register("n", in_model, out_model)
    with pytest.raises(KeyError):
        reg.adapters("n")


def test_unknown_name_raises_key_error() -> None:
    with pytest.raises(KeyError, match="Node 'ghost' not registered"):
        ModelRegistry().adapters("ghost")


def test_registry_takes_no_arguments() -> None:
    with pytest.raises(TypeError):
        ModelRegistry({"n": (A, B)})  # type: ignore[call-arg]
