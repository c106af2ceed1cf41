"""``ModelRegistry``: the in/out pydantic models of each validating node."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

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
