"""``ModelRegistry``: the in/out pydantic models of each validating node."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from pydantic import BaseModel, TypeAdapter

from .errors import FlowTypeError
from .node import Node

__all__ = ["ModelRegistry"]


class ModelRegistry:
    """Maps node names to their input and output models, with cached ``TypeAdapter``s.

    Each adapter is built once, when the node is registered; the runtime looks them up
    once per ``run()``, never per message.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[
            str, tuple[type[BaseModel], type[BaseModel], TypeAdapter[Any], TypeAdapter[Any]]
        ] = {}

    def register(
        self, node_name: str, in_model: type[BaseModel], out_model: type[BaseModel]
    ) -> None:
        """Register the models of ``node_name``.

        Raises:
            ValueError: ``node_name`` is already registered.
            TypeError: A model is not a ``pydantic.BaseModel`` subclass.
        """
        if node_name in self._entries:
            raise ValueError(f"Node '{node_name}' already registered")
        for model in (in_model, out_model):
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise TypeError("Models must inherit from pydantic.BaseModel")
        self._entries[node_name] = (
            in_model,
            out_model,
            TypeAdapter(in_model),
            TypeAdapter(out_model),
        )

    @classmethod
    def from_nodes(cls, *nodes: Node[Any, Any]) -> ModelRegistry:
        """Build a registry from the annotations of the nodes' functions.

        ``async def f(msg: In, ctx: Context) -> Out`` registers ``(In, Out)`` under the
        node's name, exactly as ``register(name, In, Out)`` would. A return annotation
        ``Out | None`` registers ``Out`` (returning ``None`` drops the item).

        Raises:
            FlowTypeError: A node's message parameter or return value is not annotated
                with a pydantic model (the message names the node and the annotation).
            ValueError: Two nodes have the same name.
        """
        registry = cls()
        for node in nodes:
            registry.register_node(node)
        return registry

    def register_node(self, node: Node[Any, Any]) -> None:
        """Register ``node`` with the models its function is annotated with.

        Raises:
            FlowTypeError: An annotation is missing or is not a pydantic model.
            ValueError: A node of that name is already registered.
        """
        in_model, out_model = _annotated_models(node)
        self.register(node.name, in_model, out_model)

    def _entry(
        self, node_name: str
    ) -> tuple[type[BaseModel], type[BaseModel], TypeAdapter[Any], TypeAdapter[Any]]:
        try:
            return self._entries[node_name]
        except KeyError:
            raise KeyError(f"Node '{node_name}' not registered") from None

    def adapters(self, node_name: str) -> tuple[TypeAdapter[Any], TypeAdapter[Any]]:
        """Return the cached ``(in, out)`` adapters of ``node_name``.

        Raises:
            KeyError: ``node_name`` is not registered.
        """
        entry = self._entry(node_name)
        return entry[2], entry[3]

    def models(self, node_name: str) -> tuple[type[BaseModel], type[BaseModel]]:
        """Return the registered ``(in, out)`` models of ``node_name``.

        Raises:
            KeyError: ``node_name`` is not registered.
        """
        entry = self._entry(node_name)
        return entry[0], entry[1]

    def names(self) -> tuple[str, ...]:
        """Return the registered node names in registration order."""
        return tuple(self._entries)

    def __contains__(self, node_name: object) -> bool:
        return node_name in self._entries

    def __repr__(self) -> str:
        return f"ModelRegistry({', '.join(self._entries)})"


def _annotated_models(node: Node[Any, Any]) -> tuple[type[BaseModel], type[BaseModel]]:
    func: Any = node.func
    target = func if isinstance(func, types.FunctionType | types.MethodType) else func.__call__
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:  # a name the annotations use is not importable from there
        raise FlowTypeError(
            f"node {node.name!r}: cannot read the annotations of its function ({exc}); "
            "define the models at module level, or register them with registry.register()"
        ) from None
    names = _params(target)
    found: list[type[BaseModel]] = []
    for label, key in (("message parameter", names[0] if names else None), ("return", "return")):
        annotation = hints.get(key) if key is not None else None
        members = [m for m in typing.get_args(annotation) if m is not type(None)]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(members) == 1:
            annotation = members[0]  # ``Out | None``: None drops the item
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            shown = "missing" if annotation is None else repr(annotation)
            raise FlowTypeError(
                f"node {node.name!r}: the {label} annotation must be a pydantic model to "
                f"register it from annotations, got {shown}; annotate it, or register the "
                "node with registry.register(name, InModel, OutModel)"
            )
        found.append(annotation)
    return found[0], found[1]


def _params(func: Any) -> list[str]:
    return [
        p.name
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
