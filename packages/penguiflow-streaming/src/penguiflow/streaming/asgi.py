"""ASGI delivery for Starlette and FastAPI: an SSE response and a WebSocket handler.

Needs the ``asgi`` extra: ``pip install 'penguiflow-streaming[asgi]'``.

- :class:`EventStreamResponse` streams one request's chunks (and final result) as
  Server-Sent Events; :func:`sse_endpoint` builds a route endpoint from a flow.
- :func:`serve_websocket` / :func:`websocket_endpoint` serve requests over a WebSocket:
  each text frame the client sends is one request; the reply is one JSON frame per chunk,
  one per result, and an ``end`` (or ``error``) frame.

What both guarantee:

- **Disconnect cancels the trace.** A task watches the connection from the moment the
  request is emitted; when the client goes away, the send loop is cancelled and
  ``flow.cancel(trace_id)`` runs, so in-flight node invocations see ``CancelledError``
  and playbooks under the trace stop. A request still waiting for room at the flow's
  ingress (a full ``queue_maxsize``) is withdrawn instead, and never runs. This cleanup
  is shielded: it completes even when the handler itself is being cancelled (server
  shutdown, an outer timeout).
- **One stalled client never holds the others.** A send that the client does not accept
  within ``send_timeout`` seconds (it stopped reading and the socket buffers are full)
  cancels the trace and closes the connection, so the node slot it held is freed.
- **Backpressure, no unbounded buffers.** A chunk is read from the trace only after the
  previous one was handed to the server, and the server's ``send`` waits while the
  socket is full. The per-trace buffer holds at most ``queue_maxsize`` items and
  ``emit_chunk`` waits for per-trace capacity, so a slow client slows the producing node.
- **Failures are reported, never as a traceback.** A node that gives up (whatever
  ``emit_errors_to_rookery`` says), a request dropped with no output at all, a trace
  cancelled elsewhere, a stopped flow or an idle timeout end the stream with an
  ``error`` event: ``{"trace_id", "code", "node",
  "component", "message"}`` (see :class:`~penguiflow.streaming.ErrorEvent`).
- **A request the flow does not take** gets one answer: a flow that is not running
  answers ``503`` (SSE) or an ``error`` frame ``FLOW_NOT_RUNNING`` (WebSocket); a wait
  for room at the ingress longer than ``idle_timeout`` answers ``503`` or
  ``IDLE_TIMEOUT``; a trace id that another request is using answers ``409`` or
  ``BAD_REQUEST``.

SSE body (:class:`~penguiflow.streaming.EventSourceEncoder`): ``start``, then ``chunk``
and ``result`` events, then ``end`` or ``error``. Every event's ``data`` is one JSON
object and ids increase per response. While the stream is idle, a ``: ping`` comment goes
out every ``ping_interval`` seconds so proxies keep the connection open. The trace id is
in the ``X-Trace-Id`` header and in the ``start`` event.

WebSocket frames (JSON text): ``{"type": "start", "trace_id"}``, ``{"stream_id", "seq",
"text", "done", "meta", "type": "chunk", "trace_id", "node"}``, ``{"type": "result",
"trace_id", "result"}``, ``{"type": "end", "trace_id", "reason"}``, ``{"type": "error",
"trace_id", "code", "node", "component", "message"}``. While a request streams (or waits
for room at the ingress), the client may send ``{"type": "cancel"}`` to cancel it; other
frames sent meanwhile are not run, and one ``error`` frame (``BUSY``) after the stream
says how many there were.

**Concurrency.** Each request is one trace, served by one invocation of the streaming
node. A node's ``NodePolicy(max_concurrency=...)`` defaults to 1, which serves clients
one after another; give a streaming node that serves many clients a ``max_concurrency``
of about the number of clients you expect at once.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

from penguiflow.core import PenguiFlow
from penguiflow.errors import (
    FlowError,
    FlowNotRunningError,
    FlowRuntimeError,
    FlowStoppedError,
    MissingExtraError,
    PenguiFlowError,
    TraceCancelled,
)
from penguiflow.node import Node
from penguiflow.types import Message, StreamChunk

from ._errors import (
    ErrorCode,
    ErrorEvent,
    StreamingPathError,
    StreamingUsageError,
    error_event,
    logger,
)
from ._format import EventSourceEncoder, chunk_node, chunk_to_ws_json, dumps, to_jsonable
from ._paths import check_streaming_path, require_message
from ._shield import settle
from ._source import StreamEnd, StreamResult, TraceSource

try:
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.types import Receive, Scope, Send
    from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
except ModuleNotFoundError as _missing:  # pragma: no cover - exercised in a subprocess test
    if _missing.name is None or _missing.name.partition(".")[0] != "starlette":
        raise
    raise MissingExtraError(
        "penguiflow.streaming.asgi needs Starlette: pip install 'penguiflow-streaming[asgi]'",
        name=_missing.name,
    ) from None

__all__ = [
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_SEND_TIMEOUT",
    "EventStreamResponse",
    "RequestToMessage",
    "DataToMessage",
    "serve_websocket",
    "sse_endpoint",
    "websocket_endpoint",
]

RequestToMessage: TypeAlias = Callable[[Request], "Message | Awaitable[Message]"]
"""Builds the flow's input message from an HTTP request (sync or async)."""

DataToMessage: TypeAlias = Callable[[Any], "Message | Awaitable[Message]"]
"""Builds the flow's input message from one WebSocket request (parsed JSON, or the raw
text when the frame is not JSON)."""

ResultEncoder: TypeAlias = Callable[[Any], Any]

DEFAULT_SEND_TIMEOUT = 5.0
"""Seconds a client may leave one send unaccepted before its trace is cancelled."""

DEFAULT_PING_INTERVAL = 15.0
"""Seconds of idleness after which an SSE keep-alive comment is sent."""

_T = TypeVar("_T")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class _SendTimedOut(Exception):
    """The client did not accept a send within ``send_timeout`` (it stopped reading)."""


async def _maybe_await(value: _T | Awaitable[_T]) -> _T:
    if inspect.isawaitable(value):
        return await value
    return value


async def _bounded(send: Awaitable[None], timeout: float | None) -> None:
    """Await one send; raise ``_SendTimedOut`` if it takes longer than ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            await send
    except TimeoutError:
        raise _SendTimedOut from None


async def _wait_disconnect(receive: Receive) -> None:
    """Return when the HTTP client has gone away (request body messages are skipped)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _race(
    main: Awaitable[_T], watch: Awaitable[None], name: str
) -> tuple[bool, asyncio.Task[_T]]:
    """Run ``main`` and ``watch`` until one finishes; cancel and reap the other.

    Returns ``(watch_won, main_task)``: ``watch_won`` is True when ``watch`` returned
    (the client went away). The reaping is shielded, so neither task outlives the call,
    even when the caller is cancelled. An error raised by ``watch`` propagates.
    """
    loop = asyncio.get_running_loop()
    main_task = loop.create_task(_as_coro(main), name=f"{name}:send")
    watch_task = loop.create_task(_as_coro(watch), name=f"{name}:watch")
    try:
        await asyncio.wait((main_task, watch_task), return_when=asyncio.FIRST_COMPLETED)
        # A server may report "disconnect" as soon as the response is complete, so the
        # watcher counts only if it finished while the main task was still running.
        watch_won = watch_task.done() and not main_task.done()
    finally:
        await settle(main_task, watch_task)
    if watch_won and not watch_task.cancelled():
        error = watch_task.exception()
        if error is not None:
            raise error
    return watch_won, main_task


async def _as_coro(aw: Awaitable[_T]) -> _T:
    return await aw


async def _next_or_ping(
    source: TraceSource,
    ping_interval: float | None,
    idle_deadline: float | None,
    ping: Callable[[], Awaitable[None]],
) -> StreamChunk | StreamResult:
    """The trace's next item; calls ``ping()`` each ``ping_interval`` of idleness.

    Raises ``TimeoutError`` once ``idle_deadline`` (loop time) has passed.
    """
    loop = asyncio.get_running_loop()
    while True:
        wait, idle_bound = ping_interval, False
        if idle_deadline is not None:
            left = idle_deadline - loop.time()
            if wait is None or left <= wait:
                wait, idle_bound = left, True
        try:
            return await source.next(wait)
        except TimeoutError:
            if idle_bound:
                raise
        await ping()


class EventStreamResponse(Response):
    """A Starlette response that streams one request's output as Server-Sent Events.

    Return it from a Starlette or FastAPI endpoint. When the response is sent, the
    message is emitted into the flow and the trace's events are written as they arrive
    (see the module docstring). A client disconnect cancels the trace; a slow client
    back-pressures the producing node; a client that accepts nothing for
    ``send_timeout`` seconds has its trace cancelled and its connection closed. A flow
    that is not running when the response is sent answers ``503``; so does a request
    that waited longer than ``idle_timeout`` for room at the flow's ingress, and a trace
    id that another request is using answers ``409``.

    Args:
        flow: A flow with a path from its ingress to Rookery (running when the response
            is sent).
        message: The request; its ``trace_id`` must not be streamed by anyone else.
        to: Ingress node(s) to emit to (default: every ingress node).
        idle_timeout: Longest wait for the next item, in seconds; on expiry the client
            gets an ``error`` event (``IDLE_TIMEOUT``) and the trace is cancelled. It
            also bounds the wait for room at the ingress (then: ``503``).
        send_timeout: Longest time one send may wait for the client, in seconds
            (``None``: no limit).
        ping_interval: Seconds of idleness between keep-alive comments (``None``: none).
        retry_ms: Reconnection delay announced to the client first (``retry:``).
        chunk_format: Renders one chunk instead of the default JSON ``chunk`` event,
            e.g. :func:`~penguiflow.streaming.format_sse_event` for the documented
            PenguiFlow frame.
        encode_result: Turns a result payload into JSON-able data (default
            :func:`~penguiflow.streaming.to_jsonable`).
        status_code: HTTP status.
        headers: Extra response headers.
        background: Starlette background task run after the response.

    Raises:
        StreamingArgumentError: ``message`` is not a ``Message``.
        StreamingPathError: Nothing emitted could reach Rookery.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        flow: PenguiFlow,
        message: Message,
        *,
        to: Node | Sequence[Node] | None = None,
        idle_timeout: float | None = None,
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
        ping_interval: float | None = DEFAULT_PING_INTERVAL,
        retry_ms: int | None = None,
        chunk_format: Callable[[StreamChunk], str] | None = None,
        encode_result: ResultEncoder = to_jsonable,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        message = require_message(message, "EventStreamResponse")
        check_streaming_path(flow, to, "EventStreamResponse")
        self._source = TraceSource(flow, message, to=to)
        self.disconnected: bool = False
        """True once the client went away before the stream ended."""
        self.stalled: bool = False
        """True when the client stopped reading for ``send_timeout`` and was cut off."""
        self._idle_timeout = idle_timeout
        self._send_timeout = send_timeout
        self._ping_interval = ping_interval
        self._retry_ms = retry_ms
        self._chunk_format = chunk_format
        self._encode_result = encode_result
        self.status_code = status_code
        self.background = background
        self.init_headers({**_SSE_HEADERS, "x-trace-id": message.trace_id, **(headers or {})})

    @property
    def trace_id(self) -> str:
        """The request's trace (also sent as ``X-Trace-Id`` and in the ``start`` event)."""
        return self._source.trace_id

    @property
    def ended(self) -> StreamEnd | None:
        """Why the stream ended (``"drained"``, ``"failed"``, ...), ``None`` until then."""
        return self._source.ended

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream the response; returns once the trace ended or the client left."""
        source = self._source
        try:
            # The start runs under the disconnect watcher too: it may wait for room at
            # the ingress, and a client that leaves meanwhile must not be served later.
            watch_won, pump = await _race(
                self._pump(scope, receive, send),
                _wait_disconnect(receive),
                f"penguiflow-sse:{self.trace_id}",
            )
            if watch_won:
                self.disconnected = True
            elif not pump.cancelled():
                error = pump.exception()
                if isinstance(error, OSError):  # ASGI >= 2.4 servers: send to a closed client
                    self.disconnected = True
                elif isinstance(error, _SendTimedOut):
                    # Leave the response incomplete: the server then closes the
                    # connection, and the client cannot mistake it for a finished answer.
                    self.stalled = True
                    logger.warning(
                        "SSE client of trace %s accepted nothing for %ss; trace cancelled",
                        self.trace_id,
                        self._send_timeout,
                    )
                elif error is not None:
                    raise error
        finally:
            await source.aclose()
        if (
            self.background is not None
            and source.started
            and not (self.disconnected or self.stalled)
        ):
            await self.background()

    async def _pump(self, scope: Scope, receive: Receive, send: Send) -> None:
        source = self._source
        send_timeout = self._send_timeout
        refusal = await _start(source, "EventStreamResponse", self._idle_timeout)
        if refusal is not None:
            await _bounded(_refusal_response(refusal)(scope, receive, send), send_timeout)
            return
        frames = EventSourceEncoder(self.trace_id)

        async def write(frame: str) -> None:
            body = {"type": "http.response.body", "body": frame.encode(), "more_body": True}
            await _bounded(send(body), send_timeout)

        async def ping() -> None:
            await write(frames.ping())

        await _bounded(
            send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            ),
            send_timeout,
        )
        retry = "" if self._retry_ms is None else f"retry: {self._retry_ms}\n\n"
        await write(retry + frames.start())
        loop = asyncio.get_running_loop()
        idle = self._idle_timeout
        last: str
        try:
            while True:
                deadline = None if idle is None else loop.time() + idle
                event = await _next_or_ping(source, self._ping_interval, deadline, ping)
                if isinstance(event, StreamChunk):
                    fmt = self._chunk_format
                    await write(frames.chunk(event) if fmt is None else fmt(event))
                else:
                    await write(frames.result(self._encode_result(event.value)))
        except StopAsyncIteration:
            last = frames.end(source.ended or "drained")
        except (FlowError, TraceCancelled, FlowStoppedError, TimeoutError) as exc:
            last = frames.error(error_event(exc, self.trace_id))
        except _SendTimedOut:
            raise
        except Exception as exc:  # e.g. encode_result failed: logged, reported as INTERNAL
            last = frames.error(error_event(exc, self.trace_id))
        await write(last)
        end = {"type": "http.response.body", "body": b"", "more_body": False}
        await _bounded(send(end), send_timeout)


def _not_running() -> Response:
    return PlainTextResponse(
        "the flow is not running; try again later", status_code=503, headers={"retry-after": "1"}
    )


async def _start(
    source: TraceSource, who: str, limit: float | None, gate: _StartGate | None = None
) -> ErrorEvent | None:
    """Emit the request; return why the flow did not take it, or ``None`` once it did.

    The wait for room at the ingress is bounded by ``limit`` (the stream's idle timeout)
    and, for a WebSocket, ended early by the client's cancel frame (``gate``). Cancelling
    the start lets go of the trace, so a request given up here never runs.
    """
    tid = source.trace_id
    try:
        async with asyncio.timeout(limit) as scope:
            if gate is not None:
                gate.enter(scope)
            try:
                await source.start(who)
            finally:
                if gate is not None:
                    gate.leave()
    except TimeoutError as exc:  # the caller checks ``gate.cancelled`` first
        return error_event(exc, tid)
    except (FlowNotRunningError, FlowStoppedError, StreamingPathError, StreamingUsageError) as exc:
        # A closed flow, or a mistake on the server's side (INTERNAL, logged).
        return error_event(exc, tid)
    except FlowRuntimeError as exc:
        # Typically a trace id the client chose that another request is using.
        logger.warning("the flow did not take the request of trace %s: %s", tid, exc)
        return ErrorEvent(ErrorCode.BAD_REQUEST, _NOT_TAKEN, "request", trace_id=tid)
    except PenguiFlowError as exc:
        return error_event(exc, tid)
    return None


_NOT_TAKEN = "the flow did not take the request (is its trace id already in use?)"


def _refusal_response(error: ErrorEvent) -> Response:
    """The plain HTTP answer to an SSE request the flow did not take."""
    if error.code in (ErrorCode.FLOW_NOT_RUNNING, ErrorCode.FLOW_STOPPED):
        return _not_running()
    if error.code == ErrorCode.IDLE_TIMEOUT:
        return PlainTextResponse(
            "the flow is busy; try again later", status_code=503, headers={"retry-after": "1"}
        )
    if error.code == ErrorCode.BAD_REQUEST:
        return PlainTextResponse(error.message, status_code=409)
    return PlainTextResponse("internal server error", status_code=500)


def sse_endpoint(
    flow: PenguiFlow,
    make_message: RequestToMessage,
    *,
    to: Node | Sequence[Node] | None = None,
    idle_timeout: float | None = None,
    send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
    ping_interval: float | None = DEFAULT_PING_INTERVAL,
    retry_ms: int | None = None,
    chunk_format: Callable[[StreamChunk], str] | None = None,
    encode_result: ResultEncoder = to_jsonable,
    headers: Mapping[str, str] | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """Build a Starlette endpoint that answers each request with an SSE stream.

    ``Route("/chat", sse_endpoint(flow, make_message))``. Each request becomes one
    message (``make_message(request)``, sync or async) and one trace. When the flow is
    not running, the endpoint answers ``503``.

    Args:
        flow: The flow; it may be started later (e.g. in the app's lifespan).
        make_message: Builds the flow's input ``Message`` from the request.
        to: Ingress node(s) to emit to.
        idle_timeout: See :class:`EventStreamResponse`.
        send_timeout: See :class:`EventStreamResponse`.
        ping_interval: See :class:`EventStreamResponse`.
        retry_ms: See :class:`EventStreamResponse`.
        chunk_format: See :class:`EventStreamResponse`.
        encode_result: See :class:`EventStreamResponse`.
        headers: Extra response headers.

    Returns:
        An async endpoint taking a ``Request``.

    Raises:
        StreamingPathError: Nothing emitted into ``flow`` could reach Rookery (checked
            now, not per request).
    """
    check_streaming_path(flow, to, "sse_endpoint")

    async def endpoint(request: Request) -> Response:
        if not flow.is_running:
            return _not_running()
        message = await _maybe_await(make_message(request))
        return EventStreamResponse(
            flow,
            message,
            to=to,
            idle_timeout=idle_timeout,
            send_timeout=send_timeout,
            ping_interval=ping_interval,
            retry_ms=retry_ms,
            chunk_format=chunk_format,
            encode_result=encode_result,
            headers=headers,
        )

    return endpoint


# --------------------------------------------------------------------------- WebSocket


def _parse(message: Mapping[str, Any]) -> Any:
    text = message.get("text")
    if text is None:
        raw = message.get("bytes") or b""
        text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _is_cancel(data: Any) -> bool:
    return isinstance(data, dict) and data.get("type") == "cancel"


def _error_frame(error: ErrorEvent) -> str:
    return dumps({"type": "error", **error.to_dict()})


class _StartGate:
    """Lets a WebSocket client's cancel frame end the wait for room at the ingress."""

    __slots__ = ("_scope", "cancelled")

    def __init__(self) -> None:
        self._scope: asyncio.Timeout | None = None
        self.cancelled = False

    def enter(self, scope: asyncio.Timeout) -> None:
        self._scope = scope
        if self.cancelled:
            self.cancel()

    def leave(self) -> None:
        self._scope = None

    def cancel(self) -> None:
        """End the start at once (it then raises ``TimeoutError`` in its task)."""
        self.cancelled = True
        # An expired scope is already ending the start, and refuses a new deadline.
        if self._scope is not None and not self._scope.expired():
            self._scope.reschedule(asyncio.get_running_loop().time())


async def serve_websocket(
    websocket: WebSocket,
    flow: PenguiFlow,
    make_message: DataToMessage,
    *,
    to: Node | Sequence[Node] | None = None,
    idle_timeout: float | None = None,
    send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
    encode_result: ResultEncoder = to_jsonable,
) -> None:
    """Serve stream requests on an accepted WebSocket until the client disconnects.

    Each text (or binary) frame from the client is one request: its JSON (or the raw
    text when it is not JSON) goes to ``make_message``; the reply is the trace's
    ``start``, chunk, result and ``end`` frames (see the module docstring). Requests are
    served one at a time; while one streams, ``{"type": "cancel"}`` cancels it. Other
    frames sent meanwhile are not run: only their number is kept, and after the current
    stream one ``error`` frame (code ``BUSY``) says how many were refused, however many
    there were. A request cancelled while it still waits for room at the flow's ingress
    gets ``{"type": "end", "trace_id", "reason": "cancelled"}`` with no ``start`` frame.
    A request the flow does not take gets one ``error`` frame (``FLOW_NOT_RUNNING``,
    ``FLOW_STOPPED``, ``IDLE_TIMEOUT`` or ``BAD_REQUEST``), and the connection stays
    open for the next one.

    A disconnect cancels the trace being streamed, and the cleanup completes even if
    this coroutine is cancelled. A client that accepts no frame for ``send_timeout``
    seconds has its trace cancelled, and this coroutine returns so the server closes
    the connection.

    Args:
        websocket: An accepted Starlette ``WebSocket``.
        flow: A running flow with a path from its ingress to Rookery.
        make_message: Builds the flow's input ``Message`` from one request; an exception
            it raises is logged and answered with an ``error`` frame (``BAD_REQUEST``).
        to: Ingress node(s) to emit to.
        idle_timeout: Longest wait for the next item of a stream, and for room at the
            flow's ingress (``IDLE_TIMEOUT``).
        send_timeout: Longest time one frame may wait for the client, in seconds.
        encode_result: Turns a result payload into JSON-able data.
    """
    while True:
        received = await websocket.receive()
        if received["type"] == "websocket.disconnect":
            return
        data = _parse(received)
        if _is_cancel(data):
            continue  # nothing is streaming
        try:
            message = require_message(await _maybe_await(make_message(data)), "make_message")
        except Exception as exc:
            logger.warning("WebSocket request could not be read", exc_info=exc)
            error = ErrorEvent(ErrorCode.BAD_REQUEST, "the request could not be read", "request")
            await _bounded(websocket.send_text(_error_frame(error)), send_timeout)
            continue
        source = TraceSource(flow, message, to=to)
        try:
            connected = await _stream_to_websocket(
                websocket, source, idle_timeout, send_timeout, encode_result
            )
        finally:
            await source.aclose()
        if not connected:
            return


async def _stream_to_websocket(
    websocket: WebSocket,
    source: TraceSource,
    idle_timeout: float | None,
    send_timeout: float | None,
    encode_result: ResultEncoder,
) -> bool:
    """Send one stream; return False when the client is gone (or stalled) meanwhile."""
    gate = _StartGate()
    refused = 0  # only a count: a client may send any number of frames meanwhile

    async def watch() -> None:
        nonlocal refused
        while True:
            received = await websocket.receive()
            if received["type"] == "websocket.disconnect":
                return
            if not _is_cancel(_parse(received)):
                refused += 1
            elif source.started:
                await source.cancel()
            else:
                gate.cancel()

    watch_won, pump = await _race(
        _ws_pump(websocket, source, gate, idle_timeout, send_timeout, encode_result),
        watch(),
        f"penguiflow-ws:{source.trace_id}",
    )
    if watch_won:
        return False
    if not pump.cancelled():
        error = pump.exception()
        if isinstance(error, _SendTimedOut):
            logger.warning(
                "WebSocket client of trace %s accepted nothing for %ss; trace cancelled",
                source.trace_id,
                send_timeout,
            )
            return False
        if isinstance(error, WebSocketDisconnect | OSError):
            return False
        if error is not None:
            if _client_gone(websocket):
                return False
            raise error
    if refused:
        # One frame, whatever the count, so what a flooding client costs stays bounded.
        many = "1 request was" if refused == 1 else f"{refused} requests were"
        busy = ErrorEvent(
            ErrorCode.BUSY,
            f"{many} sent while another request was streaming and not run; "
            "send one request at a time, after the end frame",
            "request",
        )
        await _bounded(websocket.send_text(_error_frame(busy)), send_timeout)
    return True


async def _ws_pump(
    websocket: WebSocket,
    source: TraceSource,
    gate: _StartGate,
    idle_timeout: float | None,
    send_timeout: float | None,
    encode_result: ResultEncoder,
) -> None:
    tid = source.trace_id

    async def write(text: str) -> None:
        await _bounded(websocket.send_text(text), send_timeout)

    refusal = await _start(source, "serve_websocket", idle_timeout, gate)
    if gate.cancelled and not source.started:
        # Cancelled by the client before the flow took it: the request never ran.
        await write(dumps({"type": "end", "trace_id": tid, "reason": "cancelled"}))
        return
    if refusal is not None:
        await write(_error_frame(refusal))
        return
    await write(dumps({"type": "start", "trace_id": tid}))
    last: str
    try:
        while True:
            event = await source.next(idle_timeout)
            if isinstance(event, StreamChunk):
                extra = {"type": "chunk", "trace_id": tid, "node": chunk_node(event)}
                await write(chunk_to_ws_json(event, extra=extra))
            else:
                result = encode_result(event.value)
                await write(dumps({"type": "result", "trace_id": tid, "result": result}))
    except StopAsyncIteration:
        last = dumps({"type": "end", "trace_id": tid, "reason": source.ended or "drained"})
    except (FlowError, TraceCancelled, FlowStoppedError, TimeoutError) as exc:
        last = _error_frame(error_event(exc, tid))
    except (_SendTimedOut, WebSocketDisconnect, OSError):
        raise
    except Exception as exc:  # e.g. encode_result failed: logged, reported as INTERNAL
        if _client_gone(websocket):
            raise
        last = _error_frame(error_event(exc, tid))
    await write(last)


def _client_gone(websocket: WebSocket) -> bool:
    """True once the server reported the client's disconnect.

    The watcher may see the disconnect just as the pump sends its next frame; some
    servers (uvicorn's ``websockets`` implementation) then refuse that send with a
    ``RuntimeError`` rather than an ``OSError``, which is a disconnect all the same.
    """
    return websocket.client_state == WebSocketState.DISCONNECTED


def websocket_endpoint(
    flow: PenguiFlow,
    make_message: DataToMessage,
    *,
    to: Node | Sequence[Node] | None = None,
    idle_timeout: float | None = None,
    send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
    encode_result: ResultEncoder = to_jsonable,
) -> Callable[[WebSocket], Awaitable[None]]:
    """Build a Starlette WebSocket endpoint: accept, then :func:`serve_websocket`.

    ``WebSocketRoute("/ws", websocket_endpoint(flow, make_message))``.

    Raises:
        StreamingPathError: Nothing emitted into ``flow`` could reach Rookery (checked
            now, not per connection).
    """
    check_streaming_path(flow, to, "websocket_endpoint")

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await serve_websocket(
            websocket,
            flow,
            make_message,
            to=to,
            idle_timeout=idle_timeout,
            send_timeout=send_timeout,
            encode_result=encode_result,
        )

    return endpoint
