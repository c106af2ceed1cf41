"""Wire formats: Server-Sent Events frames and WebSocket JSON for ``StreamChunk``.

Pure functions with no I/O. ``format_sse_event`` and ``chunk_to_ws_json`` follow the API
contract (§9) byte for byte for single-line text; multi-line text gets one ``data:`` line
per line (§13 B13), so the SSE framing stays valid and a client that joins the ``data``
lines with ``"\\n"`` (as browsers do) gets the text back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from penguiflow.types import Message, StreamChunk

__all__ = [
    "chunk_to_ws_json",
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


def _require_chunk(chunk: object, func: str) -> StreamChunk:
    if isinstance(chunk, StreamChunk):
        return chunk
    hint = ""
    if isinstance(chunk, Message) and isinstance(chunk.payload, StreamChunk):
        hint = "; pass message.payload, the StreamChunk inside the Message"
    raise TypeError(
        f"{func}() expects a penguiflow.types.StreamChunk, got {type(chunk).__name__}{hint}"
    )


def _field(name: str, value: str) -> str:
    """One SSE field per line of ``value`` (a value never spans lines on the wire)."""
    return "\n".join(f"{name}: {line}" for line in _LINE_BREAK.split(value))


def _single_line(name: str, value: str) -> str:
    if _LINE_BREAK.search(value):
        raise ValueError(f"SSE {name} must be a single line, got {value!r}")
    return value


def format_sse_event(
    chunk: StreamChunk, *, event_name: str | None = None, retry_ms: int | None = None
) -> str:
    """Render a chunk as one Server-Sent Events frame.

    The frame is ``event:``, ``id:`` (the chunk's ``seq``), one ``data:`` line per line of
    the text, a ``data:`` line with the JSON of ``meta`` when it is not empty, and
    ``retry:`` when ``retry_ms`` is given; lines are joined with ``"\\n"`` and the frame
    ends with a blank line.

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
        TypeError: ``chunk`` is not a ``StreamChunk``.
        ValueError: ``event_name`` contains a line break (it would break the framing).
    """
    chunk = _require_chunk(chunk, "format_sse_event")
    if event_name:
        event = _single_line("event name", event_name)
    else:
        event = "done" if chunk.done else "chunk"
    lines = [f"event: {event}", f"id: {chunk.seq}", _field("data", chunk.text)]
    if chunk.meta:
        lines.append(f"data: {json.dumps(chunk.meta, ensure_ascii=False)}")
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    return "\n".join(lines) + "\n\n"


def chunk_to_ws_json(chunk: StreamChunk, *, extra: Mapping[str, Any] | None = None) -> str:
    """Render a chunk as one compact JSON text for a WebSocket frame.

    The object has the keys ``stream_id``, ``seq``, ``text``, ``done`` and ``meta`` in
    that order, then the items of ``extra``, which override keys of the same name. It is
    ``json.dumps(obj, ensure_ascii=False)`` with the default separators.

    Args:
        chunk: The chunk to render.
        extra: More keys for the object (for example ``{"type": "chunk"}``).

    Returns:
        The JSON text.

    Raises:
        TypeError: ``chunk`` is not a ``StreamChunk``, or ``meta``/``extra`` hold values
            JSON cannot encode.
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
    return json.dumps(obj, ensure_ascii=False)


def format_sse_json(chunk: StreamChunk, *, extra: Mapping[str, Any] | None = None) -> str:
    """Render a chunk as an SSE frame whose single ``data:`` line is its full JSON.

    An alternative to :func:`format_sse_event` for clients that want every field
    (``stream_id`` included, for provenance) and no ambiguity between text lines and the
    meta line: ``event: chunk``/``done``, ``id: <seq>``, ``data: <chunk_to_ws_json>``.

    Raises:
        TypeError: ``chunk`` is not a ``StreamChunk``.
    """
    chunk = _require_chunk(chunk, "format_sse_json")
    event = "done" if chunk.done else "chunk"
    return f"event: {event}\nid: {chunk.seq}\ndata: {chunk_to_ws_json(chunk, extra=extra)}\n\n"


def format_sse_message(
    data: str, *, event: str | None = None, id: str | None = None, retry_ms: int | None = None
) -> str:
    """Render an arbitrary SSE frame (used for results, errors and the end marker).

    Args:
        data: The payload; each line becomes one ``data:`` line.
        event: The event type, if any.
        id: The event id, if any.
        retry_ms: The reconnection delay to announce, if any.

    Returns:
        The frame, ending with a blank line.

    Raises:
        ValueError: ``event`` or ``id`` contains a line break.
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


def to_jsonable(value: Any) -> Any:
    """Turn a flow result into something ``json.dumps`` accepts.

    Pydantic models become their JSON-mode dump, a ``Message`` becomes its payload's
    JSON form, and anything else that JSON cannot encode becomes ``str(value)``.
    """
    if isinstance(value, Message):
        value = value.payload
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value
