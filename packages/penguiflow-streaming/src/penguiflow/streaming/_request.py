"""One request's stream as an async iterator, built on ``flow.subscribe``.

``open_stream(flow, message)`` subscribes to the message's trace, emits the message, and
then yields that trace's chunks in the order they reached Rookery: only this request's
output, whatever else the flow is doing. The subscription's buffer is bounded by the
flow's ``queue_maxsize``, so a consumer that reads slowly back-pressures the producing
node instead of letting output pile up. Leaving the ``async with`` early (a client that
went away) cancels the trace, and that cleanup runs even if the leaving task is itself
being cancelled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol, final

from penguiflow.core import PenguiFlow
from penguiflow.errors import FlowStoppedError, TraceCancelled
from penguiflow.node import Node
from penguiflow.types import Message, StreamChunk

from ._paths import check_running, check_streaming_path, require_message
from ._shield import finish

__all__ = ["FlowStream", "StreamEnd", "StreamResult", "open_stream"]

StreamEnd = Literal["drained", "cancelled", "stopped", "closed"]
"""Why a stream ended: the trace finished (``drained``), was cancelled, the flow stopped,
or the stream was closed before the trace finished (``closed``)."""


class _Subscription(Protocol):
    """What ``flow.subscribe(trace_id)`` returns (core documents the behaviour, not a type)."""

    @property
    def done(self) -> str | None: ...

    async def get(self, timeout: float | None = None) -> Any: ...

    async def aclose(self) -> None: ...


@final
@dataclasses.dataclass(frozen=True, slots=True)
class StreamResult:
    """A non-chunk item of the trace that reached Rookery (normally the final answer)."""

    value: Any
    """The payload (``item.payload`` for a ``Message``, else the item itself)."""
    item: Any
    """The item exactly as it reached Rookery."""


@final
class _Events:
    """``stream.events()``: chunks and results, in arrival order."""

    __slots__ = ("_stream",)

    def __init__(self, stream: FlowStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> StreamChunk | StreamResult:
        return await self._stream._next_event()


@final
class FlowStream:
    """The output of one request (one trace) of a running flow.

    Create it with :func:`open_stream` and use it as an async context manager:

    ```python
    async with open_stream(flow, message) as stream:
        async for chunk in stream:          # this trace's StreamChunks, in order
            print(chunk.text, end="")
        answer = await stream.result()      # the final non-chunk payload, or None
    ```

    Iterating the stream yields the trace's ``StreamChunk`` objects; other items of the
    trace (the final answer) are kept in :attr:`results`. :meth:`events` yields both,
    in arrival order. Several streams of one trace (fan-out) arrive interleaved, each in
    its own ``seq`` order; :func:`~penguiflow.streaming.provenance` tells them apart.

    Iteration ends when the trace has no work left. If the trace is cancelled by someone
    else it raises ``TraceCancelled``; if the flow stops it raises ``FlowStoppedError``;
    if nothing arrives within ``idle_timeout`` it raises ``TimeoutError``.

    Leaving the ``async with`` (or :meth:`aclose`) before the trace finished cancels the
    trace when ``cancel_on_exit`` is true (the default): in-flight node invocations see
    ``CancelledError``, playbooks under the trace stop too. This cleanup is shielded: it
    completes even when the task leaving the block is being cancelled.
    """

    __slots__ = (
        "_cancel_on_exit",
        "_cancelling",
        "_closed",
        "_flow",
        "_idle_timeout",
        "_message",
        "_sub",
        "_to",
        "ended",
        "results",
    )

    def __init__(
        self,
        flow: PenguiFlow,
        message: Message,
        *,
        to: Node | Sequence[Node] | None = None,
        idle_timeout: float | None = None,
        cancel_on_exit: bool = True,
    ) -> None:
        self._flow = flow
        self._message = message
        self._to = to
        self._idle_timeout = idle_timeout
        self._cancel_on_exit = cancel_on_exit
        self._sub: _Subscription | None = None
        self._closed = False
        self._cancelling = False
        self.ended: StreamEnd | None = None
        """Why the stream ended, or ``None`` while it may still produce items."""
        self.results: list[Any] = []
        """Payloads of the non-chunk items seen so far, in arrival order."""

    @property
    def trace_id(self) -> str:
        """The trace this stream follows (the message's ``trace_id``)."""
        return self._message.trace_id

    @property
    def flow(self) -> PenguiFlow:
        """The flow the request runs in."""
        return self._flow

    @property
    def started(self) -> bool:
        """True once the message was emitted."""
        return self._sub is not None

    async def start(self) -> None:
        """Subscribe to the trace and emit the message (``async with`` does this).

        Waits while the flow's ingress edges are full (backpressure on new requests).

        Raises:
            FlowNotRunningError: The flow is not running.
            StreamingPathError: No path leads from the ingress node(s) to Rookery.
            FlowRuntimeError: The trace id already has a subscriber.
            RuntimeError: The stream was already started or closed.
        """
        if self._sub is not None or self._closed:
            raise RuntimeError("the stream was already started")
        flow = self._flow
        check_running(flow, "open_stream")
        check_streaming_path(flow, self._to, "open_stream")
        sub = flow.subscribe(self.trace_id)
        self._sub = sub
        try:
            await flow.emit(self._message, to=self._to)
        except BaseException:
            self._closed = True
            self.ended = "closed"
            await finish(sub.aclose())
            raise

    def __aiter__(self) -> FlowStream:
        return self

    async def __anext__(self) -> StreamChunk:
        while True:
            event = await self._next_event()
            if isinstance(event, StreamChunk):
                return event

    def events(self) -> AsyncIterator[StreamChunk | StreamResult]:
        """Iterate chunks and results of the trace in arrival order."""
        return _Events(self)

    async def result(self) -> Any:
        """Consume what is left of the trace and return its last non-chunk payload.

        Chunks not read yet are discarded. Returns ``None`` if the trace produced no
        non-chunk item.

        Raises:
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
        if self._sub is None or not self._flow.is_running:
            return False
        self._cancelling = True  # our own cancel: iteration ends quietly
        return await self._flow.cancel(self.trace_id)

    async def _next_event(self) -> StreamChunk | StreamResult:
        sub = self._sub
        if sub is None:
            raise RuntimeError(
                "the stream is not started; use 'async with open_stream(...)' or start()"
            )
        if self._closed or self.ended is not None:
            raise StopAsyncIteration
        try:
            item = await sub.get(self._idle_timeout)
        except StopAsyncIteration:
            reason = _end_reason(sub.done)
            if reason == "drained" and not self._flow.is_running:
                # stop() completes the in-flight items of the trace while it cancels the
                # workers, so core reports "drained" for a trace that stop() cut short.
                reason = "stopped"
            self.ended = reason
            if reason == "cancelled" and not self._cancelling:
                raise TraceCancelled(self.trace_id) from None
            if reason == "stopped":
                raise FlowStoppedError(
                    f"the flow stopped while streaming trace {self.trace_id}"
                ) from None
            raise
        payload = item.payload if isinstance(item, Message) else item
        if isinstance(payload, StreamChunk):
            return payload
        self.results.append(payload)
        return StreamResult(payload, item)

    async def aclose(self) -> None:
        """End the stream: cancel the unfinished trace (if asked to), then unsubscribe.

        Idempotent, and shielded: it completes even if the calling task is being
        cancelled (the ``CancelledError`` is re-raised afterwards).
        """
        if self._closed:
            return
        self._closed = True
        sub = self._sub
        if sub is None:
            self.ended = self.ended or "closed"
            return
        await finish(self._cleanup(sub))

    async def _cleanup(self, sub: _Subscription) -> None:
        try:
            if self._cancel_on_exit and sub.done is None and self._flow.is_running:
                await self._flow.cancel(self.trace_id)
        finally:
            await sub.aclose()
            if self.ended is None:
                self.ended = _end_reason(sub.done)

    async def __aenter__(self) -> FlowStream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _end_reason(done: str | None) -> StreamEnd:
    if done == "drained":
        return "drained"
    if done == "cancelled":
        return "cancelled"
    if done == "stopped":
        return "stopped"
    return "closed"


def open_stream(
    flow: PenguiFlow,
    message: Message,
    *,
    to: Node | Sequence[Node] | None = None,
    idle_timeout: float | None = None,
    cancel_on_exit: bool = True,
) -> FlowStream:
    """Return the stream of one request; ``async with`` it to emit and follow the trace.

    Args:
        flow: A running flow with a path from its ingress to Rookery.
        message: The request; its ``trace_id`` identifies the stream and must not be in
            use by another stream.
        to: Ingress node(s) to emit to (default: every ingress node).
        idle_timeout: Longest wait for the next item, in seconds (``None``: no limit).
        cancel_on_exit: Cancel the trace when the stream is left before it finished.

    Returns:
        The unstarted :class:`FlowStream`.

    Raises:
        TypeError: ``message`` is not a ``Message``.
    """
    return FlowStream(
        flow,
        require_message(message, "open_stream"),
        to=to,
        idle_timeout=idle_timeout,
        cancel_on_exit=cancel_on_exit,
    )
