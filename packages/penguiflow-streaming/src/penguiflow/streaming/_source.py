"""The one place that obtains a trace's chunks, results and failure from a flow.

Everything else in the package (``open_stream``, the SSE response, the WebSocket handler)
reads one request through :class:`TraceSource`: ``start()`` emits the message, ``next()``
returns the trace's next chunk or result, ``cancel()`` cancels the trace, ``aclose()``
lets go of it. How those are obtained is this module's business alone.

Today it is built on public core API: ``flow.subscribe(trace_id)`` diverts the trace's
Rookery output into a bounded per-trace queue, then ``flow.emit`` sends the message. A
node that gives up reaches the subscription as a ``penguiflow.errors.FlowError`` when the
flow was created with ``emit_errors_to_rookery=True``; ``next()`` raises it. Without that
option core drops the failed item and the trace simply drains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal, final

from penguiflow.core import PenguiFlow, Subscription
from penguiflow.errors import FlowError, FlowStoppedError, TraceCancelled
from penguiflow.node import Node
from penguiflow.types import Message, StreamChunk

from ._errors import StreamingUsageError
from ._paths import check_running, check_streaming_path
from ._shield import finish

__all__ = ["StreamEnd", "StreamResult", "TraceSource"]

StreamEnd = Literal["drained", "cancelled", "failed", "stopped", "closed"]
"""Why a stream ended: the trace finished (``drained``), was cancelled, a node gave up
(``failed``), the flow stopped, or the stream was closed before the trace finished
(``closed``)."""


@final
@dataclasses.dataclass(frozen=True, slots=True)
class StreamResult:
    """A non-chunk item of the trace that reached Rookery (normally the final answer)."""

    value: Any
    """The payload (``item.payload`` for a ``Message``, else the item itself)."""
    item: Any
    """The item exactly as it reached Rookery."""


@final
class TraceSource:
    """One request's output: emit it, then read its chunks and results until it ends.

    ``next()`` returns a ``StreamChunk`` or a :class:`StreamResult`, and ends with:

    - ``StopAsyncIteration``: the trace drained, or this source cancelled it;
    - ``FlowError``: a node gave up on the request (``ended == "failed"``);
    - ``TraceCancelled``: someone else cancelled the trace;
    - ``FlowStoppedError``: the flow stopped;
    - ``TimeoutError``: nothing arrived within the ``timeout`` given to that call (the
      source stays usable; the caller decides whether that ends the stream).
    """

    __slots__ = ("_cancelling", "_closed", "_flow", "_message", "_sub", "_to", "ended")

    def __init__(
        self, flow: PenguiFlow, message: Message, *, to: Node | Sequence[Node] | None = None
    ) -> None:
        self._flow = flow
        self._message = message
        self._to = to
        self._sub: Subscription | None = None
        self._closed = False
        self._cancelling = False
        self.ended: StreamEnd | None = None
        """Why the stream ended, or ``None`` while it may still produce items."""

    @property
    def trace_id(self) -> str:
        """The request's trace."""
        return self._message.trace_id

    @property
    def flow(self) -> PenguiFlow:
        """The flow the request runs in."""
        return self._flow

    @property
    def started(self) -> bool:
        """True once the message was emitted."""
        return self._sub is not None

    async def start(self, who: str) -> None:
        """Subscribe to the trace and emit the message; ``who`` names the caller in errors.

        Raises:
            FlowNotRunningError: The flow is not running.
            StreamingPathError: No path leads from the ingress node(s) to Rookery.
            FlowRuntimeError: The trace id already has a subscriber.
            StreamingUsageError: The source was already started or closed.
        """
        if self._sub is not None or self._closed:
            raise StreamingUsageError(
                f"{who}: the stream of trace {self.trace_id} was already started; "
                "open a new stream for each request"
            )
        flow = self._flow
        check_running(flow, who)
        check_streaming_path(flow, self._to, who)
        sub = flow.subscribe(self.trace_id)
        self._sub = sub
        try:
            await flow.emit(self._message, to=self._to)
        except BaseException:
            self._closed = True
            self.ended = "closed"
            await finish(sub.aclose())
            raise

    async def next(self, timeout: float | None = None) -> StreamChunk | StreamResult:
        """Return the trace's next chunk or result (see the class docstring for the ends).

        Raises:
            StreamingUsageError: The source was not started.
        """
        sub = self._sub
        if sub is None:
            raise StreamingUsageError(
                "the stream is not started; use 'async with open_stream(...)' or call start()"
            )
        if self._closed or self.ended is not None:
            raise StopAsyncIteration
        try:
            item = await sub.get(timeout)
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
        if isinstance(item, FlowError):
            self.ended = "failed"
            raise item
        payload = item.payload if isinstance(item, Message) else item
        if isinstance(payload, StreamChunk):
            return payload
        return StreamResult(payload, item)

    async def cancel(self) -> bool:
        """Cancel the trace now; ``next()`` then ends quietly.

        Returns:
            True if the trace still had work.
        """
        if self._sub is None or not self._flow.is_running:
            return False
        self._cancelling = True
        return await self._flow.cancel(self.trace_id)

    async def aclose(self, *, cancel: bool = True) -> None:
        """Let go of the trace: cancel it if unfinished (and ``cancel``), then unsubscribe.

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
        await finish(self._cleanup(sub, cancel))

    async def _cleanup(self, sub: Subscription, cancel: bool) -> None:
        try:
            unfinished = sub.done is None
            if cancel and unfinished and self._flow.is_running:
                await self._flow.cancel(self.trace_id)
        finally:
            await sub.aclose()
            if self.ended is None:
                self.ended = _end_reason(sub.done)


def _end_reason(done: str | None) -> StreamEnd:
    if done == "drained":
        return "drained"
    if done == "cancelled":
        return "cancelled"
    if done == "stopped":
        return "stopped"
    return "closed"
