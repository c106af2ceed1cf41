"""Wire formats: Server-Sent Events frames and WebSocket JSON for ``StreamChunk``.

No I/O here. ``format_sse_event`` and ``chunk_to_ws_json`` keep the documented PenguiFlow
format byte for byte for single-line text; multi-line text gets one ``data:`` line per
line, so the SSE framing stays valid and a client that joins the ``data`` lines with
``"\\n"`` (as browsers do) gets the text back.

:class:`EventSourceEncoder` is the framing of the ASGI responses: every event's data is
one JSON object, so a browser's ``EventSource`` hands ``JSON.parse``-able text to its
listeners; ``id:`` increases per response; the event names are ``start``, ``chunk``,
``result``, ``error`` and ``end``.

Every JSON text goes through one encoder, :func:`dumps` (pydantic's
``to_jsonable_python``), so a ``datetime`` or a model in a result or in ``meta`` is sent
as JSON, not as its Python repr.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, final

from pydantic_core import to_jsonable_python

from penguiflow.types import Message, StreamChunk

from ._errors import ErrorEvent, StreamingArgumentError

__all__ = [
    "EventSourceEncoder",
    "chunk_event_data",
    "chunk_node",
    "chunk_to_ws_json",
    "dumps",
    "format_sse_comment",
    "format_sse_event",
    "format_sse_json",
    "format_sse_message",
    "to_jsonable",
]

# SSE lines end with CRLF, LF or CR (WHATWG HTML, "event stream interpretation"). Only
# these three: str.splitlines() would also split on \v, \f, \x1c..\x1e, \x85, \u2028 and
# \u2029, which are ordinary characters to an SSE parser.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

NODE_META_KEY = "node"
"""The ``StreamChunk.meta`` key holding the name of the node that emitted the chunk."""


def to_jsonable(value: Any) -> Any:
    """Turn a flow result into plain JSON data (dicts, lists, str, numbers, bools, None).

    A ``Message`` becomes its payload; the rest goes through pydantic's
    ``to_jsonable_python`` (models, dataclasses, ``datetime``, ``UUID``, ``Decimal``,
    sets, ...). A value pydantic cannot encode becomes ``str(value)``.
    """
    if isinstance(value, Message):
        value = value.payload
    return to_jsonable_python(value, fallback=str)


def dumps(value: Any) -> str:
    """The one JSON encoder of the package: ``json.dumps(to_jsonable(value))``, UTF-8 kept."""
    return json.dumps(to_jsonable(value), ensure_ascii=False)


def _require_chunk(chunk: object, func: str) -> StreamChunk:
    if isinstance(chunk, StreamChunk):
        return chunk
    hint = ""
    if isinstance(chunk, Message) and isinstance(chunk.payload, StreamChunk):
        hint = "; pass message.payload, the StreamChunk inside the Message"
    raise StreamingArgumentError(
        f"{func}() expects a penguiflow.types.StreamChunk, got {type(chunk).__name__}{hint}"
    )


def _field(name: str, value: str) -> str:
    """One SSE field per line of ``value`` (a value never spans lines on the wire)."""
    return "\n".join(f"{name}: {line}" for line in _LINE_BREAK.split(value))


def _single_line(name: str, value: str) -> str:
    if _LINE_BREAK.search(value):
        raise StreamingArgumentError(
            f"SSE {name} must be a single line (a line break would end the field), got {value!r}"
        )
    return value


def chunk_node(chunk: StreamChunk) -> str | None:
    """The name of the node that produced ``chunk``, when the chunk carries it.

    An explicit ``meta["node"]`` (written by ``StreamWriter`` / ``emit_node_chunk``)
    wins; otherwise the chunk's ``node``, which core sets to the emitting node.
    """
    node = chunk.meta.get(NODE_META_KEY)
    if not isinstance(node, str):
        node = chunk.node
    return node if isinstance(node, str) else None


def format_sse_event(
    chunk: StreamChunk, *, event_name: str | None = None, retry_ms: int | None = None
) -> str:
    """Render a chunk as one Server-Sent Events frame (PenguiFlow's documented format).

    The frame is ``event:``, ``id:`` (the chunk's ``seq``), one ``data:`` line per line of
    the text, a ``data:`` line with the JSON of ``meta`` when it is not empty, and
    ``retry:`` when ``retry_ms`` is given; lines are joined with ``"\\n"`` and the frame
    ends with a blank line.

    A browser's ``EventSource`` joins the ``data:`` lines, so its listeners see text and
    meta mixed in one string; the ASGI responses therefore use
    :class:`EventSourceEncoder`, whose data is one JSON object.

    Example:
        >>> format_sse_event(StreamChunk(stream_id="s", seq=2, text="hi", meta={"k": 1}),
        ...                  retry_ms=1500)
        'event: chunk\\nid: 2\\ndata: hi\\ndata: {"k": 1}\\nretry: 1500\\n\\n'

    Args:
        chunk: The chunk to render.
        event_name: The SSE event type; ``None`` or ``""`` means ``"done"`` for the last
            chunk of a stream and ``"chunk"`` otherwise.
        retry_ms: The reconnection delay to announce, in milliseconds.

    Returns:
        The frame, ready to write to the response body.

    Raises:
        StreamingArgumentError: ``chunk`` is not a ``StreamChunk`` (a ``TypeError``), or
            ``event_name`` contains a line break (a ``ValueError``).
    """
    chunk = _require_chunk(chunk, "format_sse_event")
    if event_name:
        event = _single_line("event name", event_name)
    else:
        event = "done" if chunk.done else "chunk"
    lines = [f"event: {event}", f"id: {chunk.seq}", _field("data", chunk.text)]
    if chunk.meta:
        lines.append(f"data: {dumps(chunk.meta)}")
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    return "\n".join(lines) + "\n\n"


def chunk_to_ws_json(chunk: StreamChunk, *, extra: Mapping[str, Any] | None = None) -> str:
    """Render a chunk as one compact JSON text for a WebSocket frame.

    The object has the keys ``stream_id``, ``seq``, ``text``, ``done`` and ``meta`` in
    that order, then the items of ``extra``, which override keys of the same name. It is
    ``json.dumps(obj, ensure_ascii=False)`` with the default separators, after
    pydantic's ``to_jsonable_python`` (so ``datetime`` values in ``meta`` are ISO text).

    Args:
        chunk: The chunk to render.
        extra: More keys for the object (for example ``{"type": "chunk"}``).

    Returns:
        The JSON text.

    Raises:
        StreamingArgumentError: ``chunk`` is not a ``StreamChunk`` (a ``TypeError``).
    """
    chunk = _require_chunk(chunk, "chunk_to_ws_json")
    obj: dict[str, Any] = {
        "stream_id": chunk.stream_id,
        "seq": chunk.seq,
        "text": chunk.text,
        "done": chunk.done,
        "meta": chunk.meta,
    }
    if extra:
        obj.update(extra)
    return dumps(obj)


def format_sse_json(chunk: StreamChunk, *, extra: Mapping[str, Any] | None = None) -> str:
    """Render a chunk as an SSE frame whose single ``data:`` line is its full JSON.

    ``event: chunk``/``done``, ``id: <seq>``, ``data: <chunk_to_ws_json>``.

    Raises:
        StreamingArgumentError: ``chunk`` is not a ``StreamChunk`` (a ``TypeError``).
    """
    chunk = _require_chunk(chunk, "format_sse_json")
    event = "done" if chunk.done else "chunk"
    return f"event: {event}\nid: {chunk.seq}\ndata: {chunk_to_ws_json(chunk, extra=extra)}\n\n"


def format_sse_message(
    data: str, *, event: str | None = None, id: str | None = None, retry_ms: int | None = None
) -> str:
    """Render an arbitrary SSE frame.

    Args:
        data: The payload; each line becomes one ``data:`` line.
        event: The event type, if any.
        id: The event id, if any.
        retry_ms: The reconnection delay to announce, if any.

    Returns:
        The frame, ending with a blank line.

    Raises:
        StreamingArgumentError: ``event`` or ``id`` contains a line break.
    """
    lines = []
    if event:
        lines.append(f"event: {_single_line('event name', event)}")
    if id is not None:
        lines.append(f"id: {_single_line('id', id)}")
    lines.append(_field("data", data))
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    return "\n".join(lines) + "\n\n"


def format_sse_comment(text: str = "") -> str:
    """Render an SSE comment frame (``: text``), e.g. a keep-alive that clients ignore."""
    return "\n".join(f": {line}" if line else ":" for line in _LINE_BREAK.split(text)) + "\n\n"


def chunk_event_data(chunk: StreamChunk, trace_id: str | None = None) -> dict[str, Any]:
    """The data object of a ``chunk`` event in :class:`EventSourceEncoder`'s framing.

    Keys: ``trace_id``, ``stream_id``, ``seq``, ``node`` (the producing node, or
    ``None``), ``text``, ``done``, ``meta``.

    Raises:
        StreamingArgumentError: ``chunk`` is not a ``StreamChunk`` (a ``TypeError``).
    """
    chunk = _require_chunk(chunk, "chunk_event_data")
    return {
        "trace_id": trace_id,
        "stream_id": chunk.stream_id,
        "seq": chunk.seq,
        "node": chunk_node(chunk),
        "text": chunk.text,
        "done": chunk.done,
        "meta": chunk.meta,
    }


@final
class EventSourceEncoder:
    """Frames one response's events for a browser's ``EventSource``.

    Each event is ``event: <name>``, ``id: <n>`` and a single ``data:`` line holding one
    JSON object, so ``JSON.parse(e.data)`` always works and text can never be confused
    with metadata. ``n`` starts at 1 and increases by one per event of the response, so
    ids never repeat across the streams of a trace. Event names and data:

    - ``start``: ``{"trace_id"}``, sent first, so a client knows its trace at once;
    - ``chunk``: :func:`chunk_event_data` (``done`` marks a stream's last chunk);
    - ``result``: ``{"trace_id", "result"}``, a non-chunk output (the answer);
    - ``error``: :meth:`ErrorEvent.to_dict` (``code``, ``node``, ``component``,
      ``message``); the stream ends after it;
    - ``end``: ``{"trace_id", "reason"}``, the trace finished.

    A browser's ``EventSource`` also fires an ``error`` event of its own on connection
    problems; that one has no ``data``.

    Args:
        trace_id: The trace whose events this encoder frames.
    """

    __slots__ = ("_next_id", "trace_id")

    def __init__(self, trace_id: str) -> None:
        self.trace_id: str = trace_id
        self._next_id = 1

    @property
    def last_id(self) -> int:
        """The id of the last framed event (0 before the first)."""
        return self._next_id - 1

    def event(self, name: str, data: Mapping[str, Any]) -> str:
        """Frame one event with the next id; ``data`` is encoded with :func:`dumps`."""
        ident = self._next_id
        self._next_id += 1
        return f"event: {_single_line('event name', name)}\nid: {ident}\ndata: {dumps(data)}\n\n"

    def start(self) -> str:
        """The ``start`` event: ``{"trace_id"}``."""
        return self.event("start", {"trace_id": self.trace_id})

    def chunk(self, chunk: StreamChunk) -> str:
        """A ``chunk`` event (see :func:`chunk_event_data`)."""
        return self.event("chunk", chunk_event_data(chunk, self.trace_id))

    def result(self, value: Any) -> str:
        """A ``result`` event; ``value`` is encoded with :func:`dumps`."""
        return self.event("result", {"trace_id": self.trace_id, "result": value})

    def error(self, error: ErrorEvent) -> str:
        """An ``error`` event carrying ``error.to_dict()``."""
        return self.event("error", error.to_dict())

    def end(self, reason: str) -> str:
        """The ``end`` event: ``{"trace_id", "reason"}``."""
        return self.event("end", {"trace_id": self.trace_id, "reason": reason})

    @staticmethod
    def ping() -> str:
        """A keep-alive comment line (``: ping``); clients ignore it."""
        return ": ping\n\n"
