"""PenguiFlow streaming: get ``StreamChunk``s from a flow to real clients.

The four core helpers (``__all__``, also exported from ``penguiflow``):

- :func:`format_sse_event`, :func:`chunk_to_ws_json`: wire formats for a chunk
  (Server-Sent Events frame, WebSocket JSON); multi-line text is split into one
  ``data:`` line per line.
- :func:`stream_flow`: emit a message and yield what reaches Rookery until the answer.
- :func:`emit_stream_events`: turn an async iterable (an LLM's tokens) into chunks.

More (importable from here, not in ``__all__``):

- :func:`open_stream` / :class:`FlowStream`: one request's chunks and final result as an
  async iterator, on a per-trace, bounded, back-pressured subscription; leaving early
  cancels the trace; a node that gives up raises its ``FlowError``.
- :class:`EventSourceEncoder`: the framing of the SSE responses (one JSON object per
  event, increasing ids, ``start``/``chunk``/``result``/``error``/``end`` events).
- :class:`ErrorEvent`, :class:`ErrorCode`, :func:`error_event`: what a client is told
  when a stream fails (a stable code, the node or component, a message; no traceback).
- :class:`StreamWriter`, :func:`emit_node_chunk`, :func:`provenance`: chunks that carry
  the producing node's name next to ``stream_id`` and ``seq``.
- :mod:`penguiflow.streaming.asgi` (extra ``penguiflow-streaming[asgi]``): an SSE
  response and a WebSocket handler for Starlette/FastAPI apps.

Only the ASGI module needs more than penguiflow-core.
"""

from __future__ import annotations

from ._errors import (
    ErrorCode as ErrorCode,
    ErrorEvent as ErrorEvent,
    StreamingArgumentError as StreamingArgumentError,
    StreamingPathError as StreamingPathError,
    StreamingUsageError as StreamingUsageError,
    error_event as error_event,
)
from ._flow_helpers import (
    EventAdapter as EventAdapter,
    emit_stream_events as emit_stream_events,
    stream_flow as stream_flow,
)
from ._format import (
    EventSourceEncoder as EventSourceEncoder,
    chunk_event_data as chunk_event_data,
    chunk_node as chunk_node,
    chunk_to_ws_json as chunk_to_ws_json,
    dumps as dumps,
    format_sse_comment as format_sse_comment,
    format_sse_event as format_sse_event,
    format_sse_json as format_sse_json,
    format_sse_message as format_sse_message,
    to_jsonable as to_jsonable,
)
from ._provenance import (
    NODE_META_KEY as NODE_META_KEY,
    Provenance as Provenance,
    StreamWriter as StreamWriter,
    emit_node_chunk as emit_node_chunk,
    provenance as provenance,
)
from ._request import (
    FlowStream as FlowStream,
    StreamEnd as StreamEnd,
    StreamResult as StreamResult,
    open_stream as open_stream,
)
from ._version import __version__ as __version__

__all__ = ["format_sse_event", "chunk_to_ws_json", "stream_flow", "emit_stream_events"]

for _obj in (
    emit_stream_events,
    stream_flow,
    StreamingPathError,
    StreamingUsageError,
    StreamingArgumentError,
    ErrorCode,
    ErrorEvent,
    error_event,
    EventSourceEncoder,
    chunk_event_data,
    chunk_node,
    dumps,
    chunk_to_ws_json,
    format_sse_comment,
    format_sse_event,
    format_sse_json,
    format_sse_message,
    to_jsonable,
    Provenance,
    StreamWriter,
    emit_node_chunk,
    provenance,
    FlowStream,
    StreamResult,
    open_stream,
):
    _obj.__module__ = __name__
del _obj
