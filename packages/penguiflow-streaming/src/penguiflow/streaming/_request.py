"""One request's stream as an async iterator, built on core's request handle.

``open_stream(flow, message)`` opens a request on the message (``flow.request``), which
emits it, and then yields that trace's chunks in the order they reached Rookery: only
this request's output, whatever else the flow is doing. The request's buffer is bounded
by the flow's ``queue_maxsize``, so a consumer that reads slowly back-pressures the
producing node instead of letting output pile up. Leaving the ``async with`` early (a client that
went away) cancels the trace, and that cleanup runs even if the leaving task is itself
being cancelled.

The result is typed ``object`` (as core's ``flow.request`` types it), or, with
``open_stream(flow, message, expect=Model)``, ``Model``: checked when it arrives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Generic, final

from penguiflow.core import PenguiFlow
from penguiflow.node import Node
from penguiflow.types import Message, StreamChunk

from ._paths import require_message
from ._source import ResultT, StreamEnd, StreamResult, TraceSource

__all__ = ["FlowStream", "StreamEnd", "StreamResult", "open_stream"]


@final
class _Events(Generic[ResultT]):
    """``stream.events()``: chunks and results, in arrival order."""

    __slots__ = ("_stream",)

    def __init__(self, stream: FlowStream[ResultT]) -> None:
        self._stream = stream

    def __aiter__(self) -> _Events[ResultT]:
        return self

    async def __anext__(self) -> StreamChunk | StreamResult[ResultT]:
        return await self._stream._next_event()


@final
class FlowStream(Generic[ResultT]):
    """The output of one request (one trace) of a running flow.

    Create it with :func:`open_stream` and use it as an async context manager:

    ```python
    async with open_stream(flow, message) as stream:
        async for chunk in stream:          # this trace's StreamChunks, in order
            print(chunk.text, end="")
        answer = await stream.result()      # the final non-chunk payload, or None
    ```

    The result is typed ``object``: a ``FlowStream`` is a ``FlowStream[object]``. Open it
    with ``expect=Model`` to get a ``FlowStream[Model]``: its result (``result()``,
    :attr:`results`, ``StreamResult.value``) is typed ``Model`` and checked when it
    arrives; a payload that is not a ``Model`` raises ``FlowTypeError`` (naming both
    types and the trace id) and ends the stream as ``"failed"``.

    Iterating the stream yields the trace's ``StreamChunk`` objects; the trace's result
    (the first non-chunk item that reaches Rookery) is kept in :attr:`results` and ends
    the stream. :meth:`events` yields both, in arrival order. Several streams of one
    trace (fan-out) arrive interleaved, each in its own ``seq`` order;
    :func:`~penguiflow.streaming.provenance` tells them apart.

    Iteration ends with the result, or when the trace has no work left after streaming
    chunks. If a node gives up on the request it raises that ``FlowError`` (whatever
    ``emit_errors_to_rookery`` says); if the request ended with no output at all it
    raises ``FlowError(code="NO_RESULT")`` naming the node that dropped it; if the trace
    is cancelled by someone else it raises ``TraceCancelled``; if the flow stops it
    raises ``FlowStoppedError``; if nothing arrives within ``idle_timeout`` it raises
    ``TimeoutError`` (and the stream stays usable).

    Leaving the ``async with`` (or :meth:`aclose`) before the trace finished cancels the
    trace when ``cancel_on_exit`` is true (the default): in-flight node invocations see
    ``CancelledError``, playbooks under the trace stop too. This cleanup is shielded: it
    completes even when the task leaving the block is being cancelled.
    """

    __slots__ = ("_cancel_on_exit", "_idle_timeout", "_source", "results")

    def __init__(
        self,
        flow: PenguiFlow,
        message: Message,
        *,
        to: Node | Sequence[Node] | None = None,
        idle_timeout: float | None = None,
        cancel_on_exit: bool = True,
        expect: type[ResultT] | None = None,
    ) -> None:
        self._source: TraceSource[ResultT] = TraceSource(flow, message, to=to, expect=expect)
        self._idle_timeout = idle_timeout
        self._cancel_on_exit = cancel_on_exit
        self.results: list[ResultT] = []
        """The result's payload once it arrived (a one-item list), else empty."""

    @property
    def trace_id(self) -> str:
        """The trace this stream follows (the message's ``trace_id``)."""
        return self._source.trace_id

    @property
    def flow(self) -> PenguiFlow:
        """The flow the request runs in."""
        return self._source.flow

    @property
    def started(self) -> bool:
        """True once the message was emitted."""
        return self._source.started

    @property
    def ended(self) -> StreamEnd | None:
        """Why the stream ended, or ``None`` while it may still produce items."""
        return self._source.ended

    async def start(self) -> None:
        """Open the request on the trace, emitting the message (``async with`` does this).

        Waits while the flow's ingress edges are full (backpressure on new requests).

        Raises:
            FlowNotRunningError: The flow is not running.
            StreamingPathError: No path leads from the ingress node(s) to Rookery.
            FlowRuntimeError: The trace id is already followed by another stream.
            StreamingUsageError: The stream was already started or closed.
        """
        await self._source.start("open_stream")

    def __aiter__(self) -> FlowStream[ResultT]:
        return self

    async def __anext__(self) -> StreamChunk:
        while True:
            event = await self._next_event()
            if isinstance(event, StreamChunk):
                return event

    def events(self) -> AsyncIterator[StreamChunk | StreamResult[ResultT]]:
        """Iterate chunks and results of the trace in arrival order."""
        return _Events(self)

    async def result(self) -> ResultT | None:
        """Consume what is left of the trace and return its result's payload.

        Chunks not read yet are discarded. Returns ``None`` if the trace produced no
        non-chunk item.

        Returns:
            The payload, typed ``object`` or the stream's ``expect=`` class (or ``None``).

        Raises:
            FlowError: A node gave up on the request, or it ended with no output at
                all (``code="NO_RESULT"``).
            FlowTypeError: The stream was opened with ``expect=`` and the payload is not
                an instance of it.
            TraceCancelled: The trace was cancelled by someone else.
            FlowStoppedError: The flow stopped before the trace finished.
            TimeoutError: Nothing arrived within ``idle_timeout``.
        """
        async for _ in self.events():
            pass
        return self.results[-1] if self.results else None

    async def cancel(self) -> bool:
        """Cancel the trace now (see ``PenguiFlow.cancel``); iteration then ends.

        Returns:
            True if the trace still had work.
        """
        return await self._source.cancel()

    async def _next_event(self) -> StreamChunk | StreamResult[ResultT]:
        event = await self._source.next(self._idle_timeout)
        if isinstance(event, StreamResult):
            self.results.append(event.value)
        return event

    async def aclose(self) -> None:
        """End the stream: cancel the unfinished trace (if asked to), then let go of it.

        Idempotent, and shielded: it completes even if the calling task is being
        cancelled (the ``CancelledError`` is re-raised afterwards).
        """
        await self._source.aclose(cancel=self._cancel_on_exit)

    async def __aenter__(self) -> FlowStream[ResultT]:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def open_stream(
    flow: PenguiFlow,
    message: Message,
    *,
    to: Node | Sequence[Node] | None = None,
    idle_timeout: float | None = None,
    cancel_on_exit: bool = True,
    expect: type[ResultT] | None = None,
) -> FlowStream[ResultT]:
    """Return the stream of one request; ``async with`` it to emit and follow the trace.

    Args:
        flow: A running flow with a path from its ingress to Rookery.
        message: The request; its ``trace_id`` identifies the stream and must not be in
            use by another stream.
        to: Ingress node(s) to emit to (default: every ingress node).
        idle_timeout: Longest wait for the next item, in seconds (``None``: no limit).
        cancel_on_exit: Cancel the trace when the stream is left before it finished.
        expect: The class of the result's payload, if known: the stream is then a
            ``FlowStream[expect]`` and a payload of another type raises
            ``FlowTypeError``. Without it the result is typed ``object``, unchecked.

    Returns:
        The unstarted :class:`FlowStream` (``FlowStream[object]`` without ``expect``).

    Raises:
        TypeError: ``message`` is not a ``Message``.
    """
    return FlowStream(
        flow,
        require_message(message, "open_stream"),
        to=to,
        idle_timeout=idle_timeout,
        cancel_on_exit=cancel_on_exit,
        expect=expect,
    )
