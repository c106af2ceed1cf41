"""What crosses Redis, and how: payloads as JSON through pydantic, tagged by role.

A payload is written with a *tag* that names how to rebuild it: the registry's models are
tagged by the node and side they were registered for (``"triage:in"``), core's own models
by their name (``"FinalAnswer"``), a list of one model by ``"[]"`` plus its tag, and plain
JSON values by ``"json"``. Client and worker build the same flow definition, so they build
the same table; module paths are never sent (they differ between a script run as
``__main__`` and the same module imported by a worker).

Errors cross as their code, node, attempts and text; never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import pydantic_core
from pydantic import BaseModel, TypeAdapter
from pydantic.errors import PydanticInvalidForJsonSchema, PydanticUserError

from penguiflow.core import OPEN_SEA, ROOKERY, PenguiFlow
from penguiflow.errors import FlowError, FlowTypeError
from penguiflow.node import Node
from penguiflow.registry import ModelRegistry
from penguiflow.types import WM, FinalAnswer, Headers, Message, PlanStep, StreamChunk, Thought

__all__ = ["JSON_TAG", "Codec", "RemoteError", "decode_error", "encode_error", "local_error"]

JSON_TAG: Final = "json"
"""The tag of a plain JSON value (str, number, bool, None, list, dict)."""
_LIST: Final = "[]"
_CORE_MODELS: Final[tuple[type[BaseModel], ...]] = (FinalAnswer, WM, Thought, PlanStep, StreamChunk)


class RemoteError(Exception):
    """The exception a node raised in a worker process, as the client sees it.

    Only its type name and text cross processes, never a traceback; it is the
    ``__cause__`` (and ``original``) of the ``FlowError`` the client raises.

    Attributes:
        type_name: The exception's class name in the worker (``"ValueError"``).
        text: ``str()`` of the exception in the worker.
    """

    def __init__(self, type_name: str, text: str) -> None:
        super().__init__(f"{type_name}: {text}" if text else type_name)
        self.type_name = type_name
        self.text = text


@dataclass(frozen=True, slots=True)
class _Entry:
    tag: str
    adapter: TypeAdapter[Any]
    list_adapter: TypeAdapter[Any]


def _wire_nodes(flow: PenguiFlow) -> tuple[set[str], set[str]]:
    """The names of the flow's ingress nodes and of its egress nodes."""
    ingress: set[str] = set()
    egress: set[str] = set()
    for floe in flow.floes:
        source, target = floe.source, floe.target
        if source is OPEN_SEA and isinstance(target, Node):
            ingress.add(target.name)
        if target is ROOKERY and isinstance(source, Node):
            egress.add(source.name)
    return ingress, egress


def _check_json(model: type[BaseModel], node: str, side: str) -> None:
    """Fail now, naming the node and type, if ``model`` cannot cross as JSON."""
    try:
        model.model_json_schema(mode="validation")
        model.model_json_schema(mode="serialization")
    except (PydanticInvalidForJsonSchema, PydanticUserError) as exc:
        raise FlowTypeError(
            f"node {node!r}: its {side}-model {model.__qualname__} cannot cross processes as "
            f"JSON ({exc}); give it JSON-serializable fields so workers can rebuild it"
        ) from exc


class Codec:
    """Encodes and decodes payloads, envelopes and outcomes for one flow definition.

    Built once per client and per worker; ``connect()`` and the worker build it before
    touching Redis, so a model that cannot cross processes fails there, naming its node.
    """

    __slots__ = ("_by_tag", "_by_type")

    def __init__(self, flow: PenguiFlow, registry: ModelRegistry | None) -> None:
        by_type: dict[type[Any], _Entry] = {}
        by_tag: dict[str, _Entry] = {}

        def add(model: type[BaseModel], tag: str) -> None:
            if model in by_type:
                return
            entry = _Entry(tag, TypeAdapter(model), TypeAdapter(list[model]))  # type: ignore[valid-type]
            by_type[model] = entry
            by_tag[tag] = entry

        for model in _CORE_MODELS:
            add(model, model.__name__)
        if registry is not None:
            ingress, egress = _wire_nodes(flow)
            for name in registry.names():
                in_model, out_model = registry.models(name)
                if name in ingress:
                    _check_json(in_model, name, "in")
                if name in egress:
                    _check_json(out_model, name, "out")
                add(in_model, f"{name}:in")
                add(out_model, f"{name}:out")
        self._by_type = by_type
        self._by_tag = by_tag

    # -- payloads -------------------------------------------------------------------------

    def encode(self, value: Any) -> tuple[str, bytes]:
        """Return ``(tag, json)`` for a payload.

        Raises:
            FlowTypeError: ``value`` is a model the registry does not know, or not JSON.
        """
        entry = self._by_type.get(type(value))
        if entry is not None:
            return entry.tag, entry.adapter.dump_json(value)
        if isinstance(value, list) and value:
            first = type(value[0])
            entry = self._by_type.get(first)
            if entry is not None and all(type(v) is first for v in value):
                return _LIST + entry.tag, entry.list_adapter.dump_json(value)
        if isinstance(value, BaseModel):
            raise FlowTypeError(
                f"payload type {type(value).__qualname__} cannot cross processes: it is not a "
                "model of the registry given to connect() and to the workers; register it as "
                "the in- or out-model of the node that takes or returns it"
            )
        try:
            return JSON_TAG, pydantic_core.to_json(value)
        except pydantic_core.PydanticSerializationError as exc:
            raise FlowTypeError(
                f"payload type {type(value).__qualname__} cannot cross processes as JSON: {exc}"
            ) from exc

    def decode(self, tag: str, data: bytes) -> Any:
        """Rebuild a payload written by ``encode``.

        Raises:
            ValueError: An unknown tag (the other side runs a different flow definition)
                or data that does not validate.
        """
        if tag == JSON_TAG:
            return pydantic_core.from_json(data)
        if tag.startswith(_LIST):
            entry = self._by_tag.get(tag[len(_LIST) :])
            if entry is not None:
                return entry.list_adapter.validate_json(data)
        else:
            entry = self._by_tag.get(tag)
            if entry is not None:
                return entry.adapter.validate_json(data)
        raise ValueError(
            f"unknown payload tag {tag!r}: client and worker run different flow definitions "
            "(their registries differ)"
        )

    # -- envelopes ------------------------------------------------------------------------

    def encode_message(self, message: Message) -> dict[str, bytes | str]:
        """The stream fields of an envelope: ``e`` (trace, headers, times, meta), ``k``, ``p``."""
        tag, payload = self.encode(message.payload)
        envelope = {
            "trace_id": message.trace_id,
            "headers": message.headers.model_dump(mode="json"),
            "ts": message.ts,
            "deadline_s": message.deadline_s,
            "meta": message.meta,
        }
        try:
            raw = pydantic_core.to_json(envelope)
        except pydantic_core.PydanticSerializationError as exc:
            raise FlowTypeError(f"Message.meta cannot cross processes as JSON: {exc}") from exc
        return {"e": raw, "k": tag, "p": payload}

    def decode_message(self, fields: Mapping[bytes, bytes]) -> Message:
        """Rebuild an envelope written by ``encode_message``."""
        envelope = pydantic_core.from_json(fields[b"e"])
        payload = self.decode(fields[b"k"].decode(), fields[b"p"])
        return Message(
            payload=payload,
            headers=Headers.model_validate(envelope["headers"]),
            trace_id=envelope["trace_id"],
            ts=envelope["ts"],
            deadline_s=envelope["deadline_s"],
            meta=envelope["meta"],
        )

    def encode_result(self, item: Any) -> dict[str, bytes | str]:
        """The fields of a result: an envelope (``m=1``) or a bare payload (``m=0``)."""
        if isinstance(item, Message):
            return {"m": "1", **self.encode_message(item)}
        tag, payload = self.encode(item)
        return {"m": "0", "k": tag, "p": payload}

    def decode_result(self, fields: Mapping[bytes, bytes]) -> Any:
        """Rebuild a result written by ``encode_result``."""
        if fields[b"m"] == b"1":
            return self.decode_message(fields)
        return self.decode(fields[b"k"].decode(), fields[b"p"])


def encode_error(error: FlowError) -> bytes:
    """A ``FlowError`` as JSON: code, node, attempts, text and the original's type and text."""
    original = error.original
    return pydantic_core.to_json(
        {
            "code": error.code,
            "node_name": error.node_name,
            "node_id": error.node_id,
            "attempts": error.attempts,
            "message": str(error),
            "original": None
            if original is None
            else {"type": type(original).__name__, "text": str(original)},
        }
    )


def decode_error(trace_id: str, data: bytes) -> FlowError:
    """Rebuild a ``FlowError`` written by ``encode_error`` (a ``RemoteError`` as its cause)."""
    fields = pydantic_core.from_json(data)
    original = fields.get("original")
    return FlowError(
        trace_id=trace_id,
        node_name=fields["node_name"],
        node_id=fields["node_id"],
        code=fields["code"],
        attempts=fields["attempts"],
        original=None if original is None else RemoteError(original["type"], original["text"]),
        message=fields["message"],
    )


def local_error(trace_id: str, code: str, text: str) -> FlowError:
    """A ``FlowError`` made by this package (an undecodable request or result)."""
    return FlowError(
        trace_id=trace_id,
        node_name="",
        node_id="",
        code=code,
        attempts=0,
        original=None,
        message=f"trace {trace_id}: {text}",
    )
