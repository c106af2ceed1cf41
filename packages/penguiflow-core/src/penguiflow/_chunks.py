"""Stream chunks: sequence numbers per stream, and the envelope a chunk travels in.

``ctx.emit_chunk`` numbers the chunks of each stream (``stream_id``, by default the
trace id) of each trace. The numbers run per stream of a trace across the whole flow, so
two nodes writing the same stream of a request never repeat a number, and two requests
whose nodes use the same ``stream_id`` each number theirs from 0. The counters of a
trace's streams are forgotten when the trace ends, with or without a ``done`` chunk;
``inspect()`` shows the open ones under ``STREAMS_PROBE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel

from .clock import wall_time
from .types import Message, StreamChunk

__all__ = ["STREAMS_PROBE", "StreamCounters", "chunk_envelope"]

STREAMS_PROBE: Final = "penguiflow.streams"
"""``inspect().resources`` key: open stream counters (no ``done`` chunk yet) per trace."""


class StreamCounters:
    """The last sequence number of every open stream of a flow, by trace."""

    __slots__ = ("by_trace",)

    def __init__(self) -> None:
        self.by_trace: dict[str, dict[str, int]] = {}
        """trace id -> its open streams: stream id -> last sequence number sent."""

    def advance(self, trace_id: str, sid: str, seq: int | None) -> tuple[int, bool]:
        """Record the next chunk of ``sid``; return its seq and whether it is the first."""
        streams = self.by_trace.get(trace_id)
        if streams is None:
            streams = self.by_trace[trace_id] = {}
        prev = streams.get(sid)
        if seq is None:
            seq = 0 if prev is None else prev + 1
        streams[sid] = seq
        return seq, prev is None

    def close(self, trace_id: str, sid: str) -> None:
        """The stream sent its ``done`` chunk."""
        streams = self.by_trace.get(trace_id)
        if streams is not None:
            streams.pop(sid, None)
            if not streams:
                del self.by_trace[trace_id]

    def forget(self, trace_id: str) -> None:
        """Drop every counter of a trace (it ended or was cancelled)."""
        self.by_trace.pop(trace_id, None)

    def open_streams(self, *others: StreamCounters) -> dict[str, int]:
        """Open streams per trace, here and in ``others``."""
        counts: dict[str, int] = {}
        for counters in (self, *others):
            for tid, streams in counters.by_trace.items():
                if streams:
                    counts[tid] = counts.get(tid, 0) + len(streams)
        return counts


_CHUNK_SET: Final = frozenset(("stream_id", "seq", "text", "done", "meta", "node"))
_ENVELOPE_SET: Final = frozenset(("payload", "headers", "trace_id", "deadline_s", "meta"))
_set = object.__setattr__


def _built(cls: type[BaseModel], data: dict[str, Any], fields_set: frozenset[str]) -> Any:
    """A pydantic model from fields already known to be valid, without re-validating.

    What ``model_construct`` does, for the two models built on every chunk; measured at
    under half the cost of validating them (and ``model_construct`` is slower still).
    """
    obj = cls.__new__(cls)
    _set(obj, "__dict__", data)
    _set(obj, "__pydantic_fields_set__", set(fields_set))
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


def chunk_envelope(
    parent: Message,
    sid: str,
    seq: int,
    text: str,
    done: bool,
    meta: Mapping[str, Any] | None,
    node: str | None,
) -> tuple[StreamChunk, Message]:
    """The chunk, and the envelope carrying it under the parent's trace, headers and meta."""
    chunk_meta = dict(meta) if meta else {}
    if type(text) is str and type(sid) is str and type(seq) is int and type(done) is bool:
        chunk: StreamChunk = _built(
            StreamChunk,
            {
                "stream_id": sid,
                "seq": seq,
                "text": text,
                "done": done,
                "meta": chunk_meta,
                "node": node,
            },
            _CHUNK_SET,
        )
    else:  # something unusual was passed: let pydantic coerce it or say what is wrong
        chunk = StreamChunk(
            stream_id=sid, seq=seq, text=text, done=done, meta=chunk_meta, node=node
        )
    envelope: Message = _built(
        Message,
        {
            "payload": chunk,
            "headers": parent.headers,
            "trace_id": parent.trace_id,
            "ts": wall_time(),
            "deadline_s": parent.deadline_s,
            "meta": dict(parent.meta),
        },
        _ENVELOPE_SET,
    )
    return chunk, envelope
