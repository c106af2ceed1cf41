"""The one place that obtains a trace's chunks, result and failure from a flow.

Everything else in the package (``open_stream``, the SSE response, the WebSocket handler)
reads one request through :class:`TraceSource`: ``start()`` emits the message, ``next()``
returns the trace's next chunk or its result, ``cancel()`` cancels the trace, ``aclose()``
lets go of it. How those are obtained is this module's business alone.

It is built on core's request handle (``flow.request``): the handle follows one trace
from the moment it enters the flow to its single outcome, so a node that gives up arrives
as a typed ``penguiflow.errors.FlowError`` whatever ``emit_errors_to_rookery`` says, and
the reason a stream ended is the handle's ``state``. Its ``next_chunk()`` is safe to
cancel, which is what idle timeouts and keep-alive pings rely on.

A result is typed ``object``, like core's: what reaches Rookery depends on the graph.
``expect=Model`` types it as ``Model`` and checks it when it arrives; a stream's result
is the payload (not the ``Message`` around it), so that is what ``expect`` is checked
against, and a mismatch raises core's ``FlowTypeError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Generic, Literal, cast, final

from penguiflow.core import PenguiFlow, Request, RequestState
from penguiflow.errors import FlowError, FlowStoppedError, FlowTypeError, TraceCancelled
from penguiflow.node import Node
from penguiflow.types import Message, StreamChunk

from ._errors import StreamingUsageError
from ._paths import check_running, check_streaming_path
from ._shield import finish

if TYPE_CHECKING:
    # Type checkers read the PEP 696 defaults below (as core's ``Node`` does); at run time
    # they change nothing, so the package needs no dependency beyond core and pydantic.
    from typing_extensions import TypeVar
else:
    from typing import TypeVar as _TypeVar

    def TypeVar(name: str, *, covariant: bool = False, default: object = None) -> object:
        return _TypeVar(name, covariant=covariant)


__all__ = ["ResultT", "ResultT_co", "StreamEnd", "StreamResult", "TraceSource"]

# Defaults keep a bare ``FlowStream`` / ``StreamResult`` meaning ``...[object]``.
ResultT = TypeVar("ResultT", default=object)
"""A stream's result type: ``object``, or the class given as ``expect=``."""
ResultT_co = TypeVar("ResultT_co", covariant=True, default=object)

StreamEnd = Literal["drained", "cancelled", "failed", "stopped", "closed"]
"""Why a stream ended: the trace finished (``drained``), was cancelled, a node gave up
or the trace ended with no output at all or its result was not an ``expect=`` instance
(``failed``), the flow stopped, or the stream was closed before the trace finished
(``closed``)."""

_ENDS: dict[RequestState, StreamEnd] = {
    "pending": "closed",
    "result": "drained",
    "failed": "failed",
    "cancelled": "cancelled",
    "stopped": "stopped",
}
"""A stream closed before it was read to the end ended the way its request did."""

_released: set[asyncio.Task[None]] = set()
"""Requests let go of without cancelling (``aclose(cancel=False)``), running to their end."""


@final
@dataclasses.dataclass(frozen=True, slots=True)
class StreamResult(Generic[ResultT_co]):
    """The item of the trace that reached Rookery as its outcome (normally the answer).

    ``StreamResult[object]`` (a bare ``StreamResult``), or ``StreamResult[Model]`` from a
    stream opened with ``expect=Model``.
    """

    value: ResultT_co
    """The payload (``item.payload`` for a ``Message``, else the item itself); typed
    ``object``, or the stream's ``expect=`` class (checked)."""
    item: object
    """The item exactly as it reached Rookery."""


def check_payload(value: object, item: object, expect: type[ResultT], trace_id: str) -> ResultT:
    """Return ``value`` if it is an ``expect``; raise ``FlowTypeError`` saying why not."""
    if isinstance(value, expect):
        return value
    expected, actual = expect.__qualname__, type(value).__qualname__
    if value is item:
        fix = f"the flow's exit node returned {actual}: pass expect={actual} or fix the node"
    elif isinstance(item, expect):
        fix = (
            f"a stream's result is the payload of the {type(item).__qualname__} that reached "
            f"Rookery: pass expect={actual}"
        )
    else:
        fix = (
            f"the flow's exit node returned a {type(item).__qualname__} whose payload is "
            f"{actual}: pass expect={actual} or fix the node"
        )
    raise FlowTypeError(
        f"trace {trace_id}: expected a result of type {expected}, got {actual}; {fix}"
    )


@final
class TraceSource(Generic[ResultT]):
    """One request's output: emit it, then read its chunks and result until it ends.

    ``next()`` returns a ``StreamChunk`` or the :class:`StreamResult`, and ends with:

    - ``StopAsyncIteration``: the trace finished (after its result, or after its chunks
      when it had no result), or this source cancelled it;
    - ``FlowError``: a node gave up on the request, or the trace ended with no output at
      all (``code="NO_RESULT"``, naming the node that dropped it); ``ended == "failed"``;
    - ``FlowTypeError``: the result's payload is not an instance of ``expect``;
      ``ended == "failed"``;
    - ``TraceCancelled``: someone else cancelled the trace;
    - ``FlowStoppedError``: the flow stopped;
    - ``TimeoutError``: nothing arrived within the ``timeout`` given to that call (the
      source stays usable; the caller decides whether that ends the stream).
    """

    __slots__ = (
        "_cancelling",
        "_closed",
        "_expect",
        "_flow",
        "_message",
        "_outputs",
        "_req",
        "_result_sent",
        "_to",
        "ended",
    )

    def __init__(
        self,
        flow: PenguiFlow,
        message: Message,
        *,
        to: Node | Sequence[Node] | None = None,
        expect: type[ResultT] | None = None,
    ) -> None:
        self._flow = flow
        self._message = message
        self._to = to
        self._expect = expect
        self._req: Request[object] | None = None
        self._closed = False
        self._cancelling = False
        self._outputs = 0  # chunks handed out so far
        self._result_sent = False
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
        return self._req is not None

    async def start(self, who: str) -> None:
        """Open a request handle on the trace (emitting the message); ``who`` names the caller.

        Raises:
            FlowNotRunningError: The flow is not running.
            StreamingPathError: No path leads from the ingress node(s) to Rookery.
            FlowRuntimeError: The trace id is already followed by another stream.
            StreamingUsageError: The source was already started or closed.
        """
        if self._req is not None or self._closed:
            raise StreamingUsageError(
                f"{who}: the stream of trace {self.trace_id} was already started; "
                "open a new stream for each request"
            )
        flow = self._flow
        check_running(flow, who)
        check_streaming_path(flow, self._to, who)
        req = flow.request(self._message, to=self._to)
        try:
            await req.__aenter__()  # emits; on failure it lets go of the trace itself
        except BaseException:
            self._closed = True
            self.ended = "closed"
            raise
        self._req = req

    async def next(self, timeout: float | None = None) -> StreamChunk | StreamResult[ResultT]:
        """Return the trace's next chunk or its result (see the class docstring for the ends).

        Raises:
            StreamingUsageError: The source was not started.
        """
        req = self._req
        if req is None:
            raise StreamingUsageError(
                "the stream is not started; use 'async with open_stream(...)' or call start()"
            )
        if self._closed or self.ended is not None:
            raise StopAsyncIteration
        if timeout is None:
            chunk = await req.next_chunk()
        else:
            async with asyncio.timeout(timeout):  # next_chunk() loses nothing if cut short
                chunk = await req.next_chunk()
        if chunk is not None:
            self._outputs += 1
            return chunk
        return await self._outcome(req)

    async def _outcome(self, req: Request[object]) -> StreamResult[ResultT]:
        """The request has its outcome: hand out the result once, or end the stream."""
        try:
            item = await req.result()  # known already: returns or raises at once
        except FlowError as error:
            if error.code == "NO_RESULT" and self._outputs:
                # A streaming node that sent its chunks and returned nothing: done.
                self.ended = "drained"
                raise StopAsyncIteration from None
            self.ended = "failed"
            raise
        except TraceCancelled:
            self.ended = "cancelled"
            if self._cancelling:
                raise StopAsyncIteration from None
            raise
        except FlowStoppedError as error:
            self.ended = "stopped"
            raise FlowStoppedError(
                f"the flow stopped while streaming trace {self.trace_id}"
            ) from error
        if self._result_sent:
            self.ended = "drained"
            raise StopAsyncIteration
        self._result_sent = True
        payload: object = item.payload if isinstance(item, Message) else item
        if self._expect is None:
            return StreamResult(cast(ResultT, payload), item)  # ResultT is object here
        try:
            return StreamResult(check_payload(payload, item, self._expect, self.trace_id), item)
        except FlowTypeError:
            self.ended = "failed"
            raise

    async def cancel(self) -> bool:
        """Cancel the trace now; ``next()`` then ends quietly.

        Returns:
            True if the trace still had work.
        """
        req = self._req
        if req is None or not self._flow.is_running:
            return False
        self._cancelling = True
        return await req.cancel()

    async def aclose(self, *, cancel: bool = True) -> None:
        """Let go of the trace: cancel it if unfinished (and ``cancel``), then release it.

        With ``cancel=False`` an unfinished trace keeps running to its end; what it still
        produces is discarded. Idempotent, and shielded: it completes even if the calling
        task is being cancelled (the ``CancelledError`` is re-raised afterwards).
        """
        if self._closed:
            return
        self._closed = True
        req = self._req
        if req is None:
            self.ended = self.ended or "closed"
            return
        if not cancel and req.state == "pending" and self._flow.is_running:
            self.ended = self.ended or "closed"
            task = asyncio.get_running_loop().create_task(
                _run_out(req), name=f"penguiflow-streaming:released:{self.trace_id}"
            )
            _released.add(task)
            task.add_done_callback(_released.discard)
            return
        try:
            await finish(req.__aexit__(None, None, None))
        finally:
            if self.ended is None:
                self.ended = _ENDS[req.state]


async def _run_out(req: Request[object]) -> None:
    """Wait for a released request's outcome (discarding it), then let go of its trace."""
    try:
        with contextlib.suppress(Exception):
            await req.result()
    finally:
        await req.__aexit__(None, None, None)
