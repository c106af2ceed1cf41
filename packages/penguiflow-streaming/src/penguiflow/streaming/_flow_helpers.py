"""The two flow helpers: ``stream_flow`` and ``emit_stream_events``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping, Sequence
from typing import Any, TypeAlias

from penguiflow.core import Context, Endpoint, PenguiFlow
from penguiflow.node import Node
from penguiflow.types import Message, StreamChunk

from ._paths import check_running, check_streaming_path

__all__ = ["EventAdapter", "emit_stream_events", "stream_flow"]

EventAdapter: TypeAlias = Callable[[Any], tuple[str, bool, dict[str, Any]]]
"""Maps one source event to ``(text, done, meta)`` for ``emit_stream_events``."""


def _default_adapter(event: Any) -> tuple[str, bool, dict[str, Any]]:
    return str(event), False, {}


async def stream_flow(
    flow: PenguiFlow,
    parent_msg: Any,
    *,
    to: Node | Sequence[Node] | None = None,
    timeout: float | None = None,
    include_final: bool = False,
) -> AsyncGenerator[Any, None]:
    """Emit ``parent_msg`` into ``flow`` and yield what reaches Rookery until the answer.

    For each item fetched from Rookery, the payload (``item.payload`` when the item has
    one, else the item) is yielded:

    - a ``StreamChunk`` is yielded, and a ``done`` chunk ends the generator unless
      ``include_final`` is set;
    - anything else is the final result: it is yielded and the generator ends.

    The generator neither stops the flow nor filters by trace: with several requests in
    flight it may yield items of other traces. For a per-request view use
    :func:`penguiflow.streaming.open_stream`.

    Args:
        flow: A running flow.
        parent_msg: The request to emit.
        to: Ingress node(s) to emit to (default: every ingress node).
        timeout: Bound for each fetch, in seconds; ``TimeoutError`` propagates.
        include_final: Keep going after a ``done`` chunk, until a non-chunk arrives.

    Yields:
        Chunks, then possibly the final non-chunk payload.

    Raises:
        FlowNotRunningError: The flow is not running (nothing would ever arrive).
        StreamingPathError: No path leads from the ingress node(s) to Rookery.
        TimeoutError: A fetch took longer than ``timeout``.
    """
    check_running(flow, "stream_flow")
    check_streaming_path(flow, to, "stream_flow")
    await flow.emit(parent_msg, to=to)
    while True:
        if timeout is None:
            item = await flow.fetch()
        else:
            async with asyncio.timeout(timeout):
                item = await flow.fetch()
        payload = item.payload if hasattr(item, "payload") else item
        if isinstance(payload, StreamChunk):
            yield payload
            if payload.done and not include_final:
                return
            continue
        yield payload
        return


async def emit_stream_events(
    source: AsyncIterable[Any],
    ctx: Context,
    parent_msg: Message,
    *,
    adapter: EventAdapter | None = None,
    to: Node | Endpoint | Sequence[Node | Endpoint] | None = None,
    final_meta: Mapping[str, Any] | None = None,
) -> None:
    """Turn the events of an async iterable into stream chunks emitted from ``ctx``.

    Each event becomes ``ctx.emit_chunk(parent=parent_msg, text=text, done=done,
    meta=meta, to=to)`` with ``(text, done, meta) = adapter(event)``; the default adapter
    gives ``(str(event), False, {})``. If no event was ``done``, one terminal chunk
    (``text=""``, ``done=True``, ``meta=final_meta or {}``) closes the stream.
    Sequence numbers follow ``emit_chunk``; so does backpressure, which suspends the
    iteration of ``source`` while the trace's consumer lags.

    Args:
        source: The events, e.g. an LLM client's token stream.
        ctx: The emitting context (normally the node's ``ctx``).
        parent_msg: The message the chunks belong to (trace, headers, meta).
        adapter: Maps an event to ``(text, done, meta)``.
        to: Target(s) of the chunks (default: all outgoing edges).
        final_meta: Meta of the terminal chunk, when one is added.
    """
    adapt = adapter or _default_adapter
    saw_done = False
    async for event in source:
        text, done, meta = adapt(event)
        await ctx.emit_chunk(parent=parent_msg, text=text, done=done, meta=meta, to=to)
        saw_done = saw_done or done
    if not saw_done:
        await ctx.emit_chunk(
            parent=parent_msg, text="", done=True, meta=dict(final_meta or {}), to=to
        )
