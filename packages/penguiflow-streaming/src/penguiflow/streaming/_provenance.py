"""Provenance: which node produced a chunk, in which stream, at which position.

The producing node's name travels with the chunk: in its ``node`` attribute where core
sets one, else in ``meta`` under :data:`NODE_META_KEY`, which :class:`StreamWriter` (or
:func:`emit_node_chunk`) writes. ``StreamWriter`` is optional sugar: one stream per node
with its own id, a ``done`` chunk on exit. A client tells the streams of one trace apart
by ``stream_id`` and knows who wrote each by the node name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple, final

from penguiflow.core import Context, Endpoint
from penguiflow.node import Node
from penguiflow.types import Message, StreamChunk

from ._errors import StreamingUsageError
from ._format import NODE_META_KEY, chunk_node

__all__ = ["NODE_META_KEY", "Provenance", "StreamWriter", "emit_node_chunk", "provenance"]


class Provenance(NamedTuple):
    """Where a chunk comes from."""

    node: str | None
    """The producing node's name, or ``None`` when the chunk was not stamped."""
    stream_id: str
    """The stream the chunk belongs to."""
    seq: int
    """The chunk's position in its stream."""


def provenance(chunk: StreamChunk) -> Provenance:
    """Return the chunk's producing node (if known), stream id and sequence number."""
    return Provenance(chunk_node(chunk), chunk.stream_id, chunk.seq)


def _owner_name(ctx: Context) -> str:
    owner = ctx.owner
    return str(owner.name)


async def emit_node_chunk(
    ctx: Context,
    *,
    parent: Message,
    text: str,
    stream_id: str | None = None,
    seq: int | None = None,
    done: bool = False,
    meta: Mapping[str, Any] | None = None,
    to: Node | Endpoint | Sequence[Node | Endpoint] | None = None,
) -> StreamChunk:
    """``ctx.emit_chunk`` with the emitting node's name stamped into ``meta``.

    Same arguments, sequencing and backpressure as ``Context.emit_chunk``; the chunk's
    ``meta`` is ``meta`` plus ``{NODE_META_KEY: ctx.owner.name}`` (the stamp wins over a
    user key of the same name).
    """
    stamped = dict(meta) if meta else {}
    stamped[NODE_META_KEY] = _owner_name(ctx)
    return await ctx.emit_chunk(
        parent=parent, text=text, stream_id=stream_id, seq=seq, done=done, meta=stamped, to=to
    )


@final
class StreamWriter:
    """Writes one stream of chunks from inside a node, with provenance.

    Each chunk's ``meta`` carries the node's name (:data:`NODE_META_KEY`). The default
    ``stream_id`` is ``"<trace_id>:<node name>"``, so nodes that stream in parallel for
    one trace (fan-out) produce distinct streams, each numbered from 0 and in order.

    Use it as an async context manager; a normal exit closes the stream with a ``done``
    chunk if :meth:`close` was not called. An exception (including the
    ``CancelledError`` of a trace cancel) leaves the stream unterminated: the trace is
    going away, and the client sees that from the end of the trace.

    Example:
        ```python
        async def llm(msg: Message, ctx: Context) -> None:
            async with StreamWriter(ctx, msg) as out:
                async for token in model.stream(msg.payload):
                    await out.write(token)
        ```

    Args:
        ctx: The node's context.
        parent: The message being answered.
        stream_id: The stream id (default ``"<trace_id>:<node name>"``).
        to: Target(s) of the chunks (default: all outgoing edges).
        meta: Meta added to every chunk (per-chunk meta is merged on top).
    """

    __slots__ = ("_closed", "_ctx", "_meta", "_parent", "_stream_id", "_to")

    def __init__(
        self,
        ctx: Context,
        parent: Message,
        *,
        stream_id: str | None = None,
        to: Node | Endpoint | Sequence[Node | Endpoint] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self._ctx = ctx
        self._parent = parent
        self._stream_id = stream_id or f"{parent.trace_id}:{_owner_name(ctx)}"
        self._to = to
        self._meta = dict(meta) if meta else {}
        self._closed = False

    @property
    def stream_id(self) -> str:
        """The id of the stream this writer writes."""
        return self._stream_id

    @property
    def closed(self) -> bool:
        """True once the ``done`` chunk was written."""
        return self._closed

    async def write(self, text: str, *, meta: Mapping[str, Any] | None = None) -> StreamChunk:
        """Emit the next chunk; waits while the trace's consumer lags (backpressure).

        Raises:
            StreamingUsageError: The stream was already closed.
        """
        return await self._emit(text, False, meta)

    async def close(self, text: str = "", *, meta: Mapping[str, Any] | None = None) -> StreamChunk:
        """Emit the last chunk (``done=True``).

        Raises:
            StreamingUsageError: The stream was already closed.
        """
        return await self._emit(text, True, meta)

    async def _emit(self, text: str, done: bool, meta: Mapping[str, Any] | None) -> StreamChunk:
        if self._closed:
            raise StreamingUsageError(
                f"StreamWriter: stream {self._stream_id!r} is closed (its done chunk was "
                "written); open a new StreamWriter with another stream_id to write more"
            )
        merged = {**self._meta, **meta} if meta else self._meta
        chunk = await emit_node_chunk(
            self._ctx,
            parent=self._parent,
            text=text,
            stream_id=self._stream_id,
            done=done,
            meta=merged,
            to=self._to,
        )
        if done:
            self._closed = True
        return chunk

    async def __aenter__(self) -> StreamWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and not self._closed:
            await self.close()
