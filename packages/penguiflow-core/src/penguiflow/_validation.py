"""Per-node validation, built once per ``run()``.

A node registered with a bare pydantic in-model that receives a ``Message`` sees the
validated *payload*; its bare return value is out-validated and re-wrapped into the
incoming envelope, so ``trace_id``, ``headers``, ``deadline_s`` and ``meta`` travel on.
Bare items, and in-models that are ``Message`` types, are validated as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pydantic import BaseModel

from ._copy import with_payload
from .errors import FlowRuntimeError
from .types import Message

__all__ = ["AdapterSource", "Validator", "build_validators"]


class AdapterSource(Protocol):
    """Anything with a registry-compatible ``adapters(name)`` method."""

    def adapters(self, node_name: str) -> tuple[Any, Any]: ...


def _fast_validate(adapter: Any, model: Any) -> Callable[[Any], Any]:
    """Return a validation function equivalent to ``adapter.validate_python``.

    An instance whose type is exactly the registered model, and whose model does not ask
    to revalidate instances, is returned as is, which is what pydantic would do too;
    everything else goes straight to the compiled core validator.
    """
    core = getattr(adapter, "validator", None)
    validate: Callable[[Any], Any] = (
        core.validate_python if core is not None else adapter.validate_python
    )
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return validate
    if model.model_config.get("revalidate_instances", "never") != "never":
        return validate

    def check(value: Any) -> Any:
        if type(value) is model:
            return value
        return validate(value)

    return check


class Validator:
    """The validation plan of one node for one registry.

    ``prepare`` turns an incoming item into the function argument; ``finish`` turns the
    function's result into what gets routed. Both are synchronous so the worker's hot
    loop awaits only the node function itself.
    """

    __slots__ = ("envelope_aware", "in_validate", "out_validate")

    def __init__(self, node_name: str, validate: str, registry: AdapterSource) -> None:
        in_adapter, out_adapter = registry.adapters(node_name)
        in_model: Any = None
        out_model: Any = None
        models = getattr(registry, "models", None)
        if models is not None:
            in_model, out_model = models(node_name)
        self.in_validate = (
            _fast_validate(in_adapter, in_model) if validate in ("in", "both") else None
        )
        self.out_validate = (
            _fast_validate(out_adapter, out_model) if validate in ("out", "both") else None
        )
        self.envelope_aware = not (isinstance(in_model, type) and issubclass(in_model, Message))

    def prepare(self, item: Any) -> Any:
        """Return the argument the node function receives for ``item``."""
        if self.envelope_aware and isinstance(item, Message):
            payload = item.payload
            return payload if self.in_validate is None else self.in_validate(payload)
        return item if self.in_validate is None else self.in_validate(item)

    def finish(self, item: Any, result: Any) -> Any:
        """Return what gets routed for the node function's ``result`` on ``item``."""
        if result is None:
            return None
        out = self.out_validate
        if self.envelope_aware and isinstance(item, Message):
            if isinstance(result, Message):
                if out is None:
                    return result
                payload = result.payload
                checked = out(payload)
                return result if checked is payload else with_payload(result, checked)
            return with_payload(item, result if out is None else out(result))
        return result if out is None else out(result)


def build_validators(
    nodes: Sequence[tuple[str, str]], registry: AdapterSource | None
) -> list[Validator | None]:
    """One validator per ``(node name, validate mode)`` (``None`` where nothing is
    validated), all checked against ``registry`` up front.

    Raises:
        FlowRuntimeError: ``registry`` lacks nodes that validate, all named at once.
    """
    if registry is None:
        return [None] * len(nodes)
    missing = []
    for name, validate in nodes:
        if validate == "none":
            continue
        try:
            registry.adapters(name)
        except KeyError:
            missing.append(name)
    if missing:
        raise FlowRuntimeError(
            "ModelRegistry is missing entries for nodes requiring validation: "
            + ", ".join(sorted(set(missing)))
        )
    return [
        None if validate == "none" else Validator(name, validate, registry)
        for name, validate in nodes
    ]
