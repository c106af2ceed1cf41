"""Request handles: one request in, exactly one outcome out.

``flow.request(message)`` follows one trace from the moment it enters the flow to its
outcome, which is one of: a result, a typed error (a node gave up, or the trace ended
without a result), a cancellation, or the flow stopping. ``flow.invoke(message)`` is the
one-line form. Both are built on the flow's per-trace view (``Subscription``): whatever
of the trace reaches Rookery comes to the handle, never to another caller.

Results are typed ``object``: what reaches Rookery depends on the graph, which a type
checker cannot follow. ``expect=Model`` types the result as ``Model`` and checks it when it
arrives (a mismatch raises ``FlowTypeError``); without ``expect`` nothing is checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, Final, Generic, Literal, Protocol, Self, TypeAlias, TypeVar, overload

from ._subscription import Outcome, Subscription, View, close, next_item
from ._trace import trace_id_of
from .errors import FlowError, FlowRuntimeError, FlowStoppedError, FlowTypeError, TraceCancelled
from .node import Node
from .types import Message, StreamChunk

__all__ = ["Request", "RequestAPI", "RequestState", "check_result", "no_result_error"]

T = TypeVar("T")

RequestState: TypeAlias = Literal["pending", "result", "failed", "cancelled", "stopped"]
"""Where a request stands: still ``"pending"``, or how it ended."""

_PENDING: Final = object()
UNWIND_GRACE_S: Final = 1.0
"""How long leaving a request waits for its cancelled work to unwind."""


class _Flow(Protocol):
    @property
    def is_running(self) -> bool: ...

    def subscribe(self, trace_id: str, *, errors: bool = False) -> Subscription: ...

    def _watch(self, trace_id: str) -> Outcome: ...

    async def emit(self, msg: Any, to: Node | Sequence[Node] | None = None) -> None: ...

    async def cancel(self, trace_id: str) -> bool: ...

    async def wait_ended(self, trace_id: str, *, timeout: float | None = None) -> bool: ...


def no_result_error(
    trace_id: str | None, last_node: str | None, *, why: str | None = None
) -> FlowError:
    """The ``NO_RESULT`` error of a trace that ended without a result.

    ``last_node`` is the node its last item was dropped at; without one, ``why`` (if given)
    says what happened instead, as the text after "ended without a result: ".
    """
    if last_node is None:
        text = f"trace {trace_id} ended without a result"
        if why:
            text += f": {why}"
    else:
        text = (
            f"trace {trace_id} ended at node {last_node!r} without a result: the item was "
            "dropped there (a router with no matching route, a join that dropped its "
            "bucket, or a node that returned None)"
        )
    return FlowError(
        trace_id=trace_id,
        node_name=last_node or "",
        node_id="",
        code="NO_RESULT",
        attempts=0,
        original=None,
        message=text,
    )


_NOTHING_ENTERED = "nothing of it entered the flow"


def ended_without_result(view: View) -> tuple[BaseException, RequestState]:
    """Why a trace's view ended with no result, as the request's outcome and state."""
    trace_id = view.trace_id
    if view.done == "drained":
        return no_result_error(trace_id, view.last_node, why=_NOTHING_ENTERED), "failed"
    if view.done == "stopped":
        return FlowStoppedError(f"the flow stopped before trace {trace_id} ended"), "stopped"
    return TraceCancelled(trace_id), "cancelled"


async def leave(flow: _Flow, view: View) -> None:
    """A request's caller is done with its trace: nothing the trace holds outlives it."""
    try:
        # "drained": the trace has ended, nothing of it is left to wait for.
        if view.done != "drained" and flow.is_running:
            if view.done is None:
                # Left before the trace ended (or with branches still running after the
                # result): cancel it.
                await flow.cancel(view.trace_id)
            # Interrupted work unwinds within a loop step or two; a node that swallows
            # cancellation is not waited for beyond the grace period.
            await flow.wait_ended(view.trace_id, timeout=UNWIND_GRACE_S)
    finally:
        close(view)


def check_result(outcome: Any, expect: type[T], trace_id: str | None) -> T:
    """Return ``outcome`` if it is an ``expect``; raise ``FlowTypeError`` saying why not."""
    if isinstance(outcome, expect):
        return outcome
    expected, actual = expect.__qualname__, type(outcome).__qualname__
    returned = f"{actual}; pass expect={actual} or fix the node"
    if isinstance(outcome, Message) and isinstance(outcome.payload, expect):
        returned = f"{actual} whose payload is {expected}; pass expect={actual} and read .payload"
    raise FlowTypeError(
        f"trace {trace_id}: expected a result of type {expected}, got {actual}: the flow's "
        f"exit node returned {returned}"
    )


class Request(Generic[T]):
    """A handle on one request: its trace id, its stream chunks and its outcome.

    Use it as ``async with flow.request(message) as req:``. Entering emits the message
    (waiting for room like ``emit``); leaving the block before the outcome cancels the
    trace, and leaving it after the outcome releases whatever the trace still holds.

    ``chunks()`` and ``result()`` read the same per-trace stream; call them from one task.
    ``T`` is the result's type: ``object``, or the class given as
    ``flow.request(message, expect=...)``.
    """

    __slots__ = ("_expect", "_flow", "_message", "_outcome", "_sub", "_to", "state", "trace_id")

    def __init__(
        self,
        flow: _Flow,
        message: Any,
        to: Node | Sequence[Node] | None,
        expect: type[T] | None = None,
    ) -> None:
        trace_id = _trace_id_of_request(message)
        self._flow = flow
        self._message = message
        self._to = to
        self._expect = expect
        self._sub: Subscription | None = None
        self._outcome: Any = _PENDING
        self.trace_id: str = trace_id
        """The request's trace id (to log it, or to ``flow.cancel`` it from elsewhere)."""
        self.state: RequestState = "pending"
        """``"pending"`` until the outcome is known, then how the request ended."""

    async def __aenter__(self) -> Self:
        flow = self._flow
        sub = self._sub = flow.subscribe(self.trace_id, errors=True)
        try:
            await flow.emit(self._message, to=self._to)
        except BaseException:
            # Part of the message may be in the flow already (an emit to several entry
            # nodes, interrupted while it waited for room at one): that part is cancelled,
            # as when the block is left early.
            self._sub = None
            await leave(flow, sub)
            raise
        if not sub.started:
            # Nothing was enqueued (``to=[]``, or a repeated controller message): the
            # request is over before it began.
            self._settle(no_result_error(self.trace_id, None, why=_NOTHING_ENTERED), "failed")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        sub = self._sub
        if sub is None:
            return
        self._sub = None
        try:
            await leave(self._flow, sub)
        finally:
            if self.state == "pending":
                self._settle(TraceCancelled(self.trace_id), "cancelled")

    def _settle(self, outcome: Any, state: RequestState) -> None:
        if self._outcome is _PENDING:
            self._outcome = outcome
            self.state = state

    async def _next(self) -> StreamChunk | None:
        """Read the next item; return a chunk, or None once the outcome is settled."""
        sub = self._sub
        if sub is None:
            raise FlowRuntimeError(
                "this request handle is closed; read it inside `async with flow.request(...)`"
            )
        try:
            item = await next_item(sub)
        except StopAsyncIteration:
            self._settle(*ended_without_result(sub))
            return None
        if type(item) is Message or isinstance(item, Message):
            payload = item.payload
            if isinstance(payload, StreamChunk):
                return payload
        if isinstance(item, FlowError):
            self._settle(item, "failed")
        else:
            self._settle(item, "result")
        return None

    async def next_chunk(self) -> StreamChunk | None:
        """The next stream chunk, or ``None`` once the outcome is known.

        Safe to cancel (for example under ``asyncio.timeout`` to send keep-alives): a
        cancelled call loses nothing, and the next call carries on.
        """
        while self._outcome is _PENDING:
            chunk = await self._next()
            if chunk is not None:
                return chunk
        return None

    async def chunks(self) -> AsyncIterator[StreamChunk]:
        """Yield the trace's stream chunks as they arrive (in order per stream).

        Iteration ends when the outcome is known; ``result()`` then returns it at once.
        """
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def result(self) -> T:
        """Wait for the outcome: return the result, or raise why there is none.

        Chunks not read through ``chunks()`` are skipped.

        Returns:
            What ``flow.fetch()`` would have returned for this trace: the item that reached
            Rookery, as it was delivered (including deadline and budget answers). Typed
            ``object``, or the ``expect=`` class the request was made with.

        Raises:
            FlowTypeError: The request was made with ``expect=`` and the result is not an
                instance of it; the message names both types and the trace id.
            FlowError: A node gave up (``node_name``, ``code``, ``attempts``; the node's
                exception is the ``__cause__``), or the trace ended without a result
                (``code="NO_RESULT"``, naming the node that dropped it).
            TraceCancelled: The trace was cancelled.
            FlowStoppedError: The flow stopped first.
        """
        while self._outcome is _PENDING:
            await self._next()
        outcome = self._outcome
        if self.state == "result":
            if self._expect is None:
                result: T = outcome
                return result
            return check_result(outcome, self._expect, self.trace_id)
        raise outcome

    async def cancel(self) -> bool:
        """Cancel the request's trace; ``result()`` then raises ``TraceCancelled``.

        Returns:
            True if the trace still had work to cancel.
        """
        if not self._flow.is_running:
            return False
        return await self._flow.cancel(self.trace_id)


async def invoke(
    flow: _Flow,
    message: Any,
    timeout: float | None,
    to: Node | Sequence[Node] | None,
    expect: type[T] | None = None,
) -> T:
    """Run one request to its outcome; see ``PenguiFlow.invoke``.

    The same outcome as ``Request.result()``, through an ``Outcome`` view: it keeps the
    trace's first result as it reaches Rookery and queues nothing (no chunks to read).
    """
    if timeout is not None:
        async with asyncio.timeout(timeout):
            return await invoke(flow, message, None, to, expect)
    trace_id = message.trace_id if type(message) is Message else _trace_id_of_request(message)
    view = flow._watch(trace_id)
    try:
        await flow.emit(message, to=to)
        if view.started:
            await view.future
        elif not view.has_result:  # nothing was enqueued (see ``Request.__aenter__``)
            raise no_result_error(trace_id, None, why=_NOTHING_ENTERED)
        if view.has_result:
            outcome = view.result
            if isinstance(outcome, FlowError):
                raise outcome
        else:
            raise ended_without_result(view)[0]
    finally:
        if view.done == "drained":
            close(view)  # ``leave`` with nothing to wait for, without its coroutine
        else:
            await leave(flow, view)
    if expect is None:
        result: T = outcome
        return result
    return check_result(outcome, expect, trace_id)


def _trace_id_of_request(message: Any) -> str:
    trace_id = trace_id_of(message)
    if trace_id is None:
        raise FlowRuntimeError(
            f"a request needs a message with a trace id; got {type(message).__name__}. "
            "Wrap the payload: Message(payload=..., headers=Headers(tenant=...))"
        )
    return trace_id


class RequestAPI:
    """``flow.invoke`` and ``flow.request``: the request API, on top of the flow's
    per-trace views (``subscribe`` for a handle, an outcome view for ``invoke``), ``emit``
    and ``cancel``."""

    @overload
    def invoke(
        self: _Flow,
        message: Any,
        *,
        timeout: float | None = None,
        to: Node | Sequence[Node] | None = None,
        expect: None = None,
    ) -> Coroutine[Any, Any, object]: ...

    @overload
    def invoke(
        self: _Flow,
        message: Any,
        *,
        timeout: float | None = None,
        to: Node | Sequence[Node] | None = None,
        expect: type[T],
    ) -> Coroutine[Any, Any, T]: ...

    def invoke(
        self: _Flow,
        message: Any,
        *,
        timeout: float | None = None,
        to: Node | Sequence[Node] | None = None,
        expect: type[Any] | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """Send one request through the flow and wait for its outcome.

        Many concurrent calls may share one running flow; each gets its own trace's
        outcome. ``timeout`` covers emitting too; when it passes the trace is cancelled,
        then ``TimeoutError`` is raised. Returns what ``fetch()`` would have returned for
        the trace, or raises as ``Request.result()`` does (``FlowError``,
        ``TraceCancelled``, ``FlowStoppedError``).

        The result is typed ``object``: narrow it with ``isinstance``, or pass the class
        you expect, ``expect=Message`` for example, to have it typed as that class and
        checked when it arrives. A result that is not an ``expect`` raises
        ``FlowTypeError`` naming both types and the trace id.
        """
        # The request's own coroutine, returned as is: one frame per call, not two.
        return invoke(self, message, timeout, to, expect)

    @overload
    def request(
        self: _Flow,
        message: Any,
        *,
        to: Node | Sequence[Node] | None = None,
        expect: None = None,
    ) -> Request[object]: ...

    @overload
    def request(
        self: _Flow,
        message: Any,
        *,
        to: Node | Sequence[Node] | None = None,
        expect: type[T],
    ) -> Request[T]: ...

    def request(
        self: _Flow,
        message: Any,
        *,
        to: Node | Sequence[Node] | None = None,
        expect: type[Any] | None = None,
    ) -> Request[Any]:
        """A handle on one request, for streaming its chunks and waiting for its outcome.

        ``async with flow.request(message) as req:`` emits the message; then
        ``async for chunk in req.chunks()`` yields its stream chunks, ``await
        req.result()`` waits for the outcome (as ``invoke`` returns or raises it), and
        ``await req.cancel()`` cancels it. Leaving the block early cancels the trace.

        The handle is a ``Request[object]``; with ``expect=Model`` it is a
        ``Request[Model]``, whose ``result()`` checks the result as ``invoke`` does.
        """
        return Request(self, message, to, expect)
