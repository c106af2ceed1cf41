"""Stream chunks: sequence numbers per stream, and the envelope a chunk travels in.

``ctx.emit_chunk`` numbers the chunks of each stream (``stream_id``, by default the
trace id) and remembers which streams of a trace are still open, so a cancelled trace
forgets its counters and ``inspect()`` can show open streams under ``STREAMS_PROBE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .types import Message, StreamChunk

__all__ = ["STREAMS_PROBE", "StreamCounters", "chunk_envelope"]

STREAMS_PROBE: Final = "penguiflow.streams"
"""``inspect().resources`` key: open stream counters (no ``done`` chunk yet) per trace."""


class StreamCounters:
    """The last sequence number of every open stream one producer writes, by trace."""

    __slots__ = ("by_trace", "last")

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        """stream id -> last sequence number sent."""
        self.by_trace: dict[str, set[str]] = {}
        """trace id -> its open stream ids."""

    def advance(self, trace_id: str, sid: str, seq: int | None) -> tuple[int, bool]:
        """Record the next chunk of ``sid``; return its seq and whether it is the first."""
        last = self.last
        prev = last.get(sid)
        if seq is None:
            seq = 0 if prev is None else prev + 1
        last[sid] = seq
        sids = self.by_trace.get(trace_id)
        if sids is None:
            sids = self.by_trace[trace_id] = set()
        sids.add(sid)
        return seq, prev is None

    def close(self, trace_id: str, sid: str) -> None:
        """The stream sent its ``done`` chunk."""
        self.last.pop(sid, None)
        sids = self.by_trace.get(trace_id)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self.by_trace[trace_id]

    def forget(self, trace_id: str) -> None:
        """Drop every counter of a trace (it was cancelled)."""
        sids = self.by_trace.pop(trace_id, None)
        if sids:
            for sid in sids:
                self.last.pop(sid, None)

    def count_into(self, counts: dict[str, int]) -> None:
        """Add this producer's open streams per trace to ``counts``."""
        for tid, sids in self.by_trace.items():
            if sids:
                counts[tid] = counts.get(tid, 0) + len(sids)


def chunk_envelope(
    parent: Message,
    sid: str,
    seq: int,
    text: str,
    done: bool,
    meta: Mapping[str, Any] | None,
) -> tuple[StreamChunk, Message]:
    """The chunk, and the envelope carrying it under the parent's trace, headers and meta."""
    chunk = StreamChunk(
        stream_id=sid, seq=seq, text=text, done=done, meta=dict(meta) if meta else {}
    )
    envelope = Message(
        payload=chunk,
        headers=parent.headers,
        trace_id=parent.trace_id,
        deadline_s=parent.deadline_s,
        meta=dict(parent.meta),
    )
    return chunk, envelope
