"""ASGI delivery for Starlette and FastAPI: an SSE response and a WebSocket handler.

Needs the ``asgi`` extra: ``pip install 'penguiflow-streaming[asgi]'``.

- :class:`EventStreamResponse` streams one request's chunks (and final result) as
  Server-Sent Events; :func:`sse_endpoint` builds a route endpoint from a flow.
- :func:`serve_websocket` / :func:`websocket_endpoint` serve requests over a WebSocket:
  each text frame the client sends is one request; the reply is one JSON frame per chunk,
  one per result, and an ``end`` (or ``error``) frame.

What both guarantee:

- **Disconnect cancels the trace.** A task watches the connection; when the client goes
  away, the send loop is cancelled and ``flow.cancel(trace_id)`` runs, so in-flight node
  invocations see ``CancelledError`` and playbooks under the trace stop. This cleanup is
  shielded: it completes even when the handler itself is being cancelled (server
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
- **A flow that is not running** answers ``503`` (SSE) or an ``error`` frame with code
  ``FLOW_NOT_RUNNING`` (WebSocket).

SSE body (:class:`~penguiflow.streaming.EventSourceEncoder`): ``start``, then ``chunk``
and ``result`` events, then ``end`` or ``error``. Every event's ``data`` is one JSON
object and ids increase per response. While the stream is idle, a ``: ping`` comment goes
out every ``ping_interval`` seconds so proxies keep the connection open. The trace id is
in the ``X-Trace-Id`` header and in the ``start`` event.

WebSocket frames (JSON text): ``{"type": "start", "trace_id"}``, ``{"stream_id", "seq",
"text", "done", "meta", "type": "chunk", "trace_id", "node"}``, ``{"type": "result",
"trace_id", "result"}``, ``{"type": "end", "trace_id", "reason"}``, ``{"type": "error",
"trace_id", "code", "node", "component", "message"}``. While a request streams, the
client may send ``{"type": "cancel"}`` to cancel it.

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
    FlowStoppedError,
    MissingExtraError,
    TraceCancelled,
)
from penguiflow.node import Node
from penguiflow.types import Message, StreamChunk

from ._errors import ErrorCode, ErrorEvent, error_event, logger
from ._format import EventSourceEncoder, chunk_node, chunk_to_ws_json, dumps, to_jsonable
from ._paths import check_streaming_path, require_message
from ._shield import settle
from ._source import StreamEnd, StreamResult, TraceSource

try:
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.types import Receive, Scope, Send
    from starlette.websockets import WebSocket, WebSocketDisconnect
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
    that is not running when the response is sent answers ``503``.

    Args:
        flow: A flow with a path from its ingress to Rookery (running when the response
            is sent).
        message: The request; its ``trace_id`` must not be streamed by anyone else.
        to: Ingress node(s) to emit to (default: every ingress node).
        idle_timeout: Longest wait for the next item, in seconds; on expiry the client
            gets an ``error`` event (``IDLE_TIMEOUT``) and the trace is cancelled.
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
            await source.start("EventStreamResponse")
        except (FlowNotRunningError, FlowStoppedError):
            await _not_running()(scope, receive, send)
            return
        try:
            watch_won, pump = await _race(
                self._pump(send), _wait_disconnect(receive), f"penguiflow-sse:{self.trace_id}"
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
        if self.background is not None and not (self.disconnected or self.stalled):
            await self.background()

    async def _pump(self, send: Send) -> None:
        source = self._source
        frames = EventSourceEncoder(self.trace_id)
        send_timeout = self._send_timeout

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
    served one at a time; while one streams, ``{"type": "cancel"}`` cancels it and any
    other frame is answered, after the current stream, with an ``error`` frame (code
    ``BUSY``).

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
        idle_timeout: Longest wait for the next item of a stream (``IDLE_TIMEOUT``).
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
            await source.start("serve_websocket")
        except (FlowNotRunningError, FlowStoppedError) as exc:
            frame = _error_frame(error_event(exc, message.trace_id))
            await _bounded(websocket.send_text(frame), send_timeout)
            continue
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
    busy: list[Any] = []

    async def watch() -> None:
        while True:
            received = await websocket.receive()
            if received["type"] == "websocket.disconnect":
                return
            data = _parse(received)
            if _is_cancel(data):
                await source.cancel()
            else:
                busy.append(data)

    watch_won, pump = await _race(
        _ws_pump(websocket, source, idle_timeout, send_timeout, encode_result),
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
            raise error
    for _ in busy:
        error_frame = ErrorEvent(
            ErrorCode.BUSY,
            "one request at a time on a connection; send the next one after the end frame",
            "request",
        )
        await _bounded(websocket.send_text(_error_frame(error_frame)), send_timeout)
    return True


async def _ws_pump(
    websocket: WebSocket,
    source: TraceSource,
    idle_timeout: float | None,
    send_timeout: float | None,
    encode_result: ResultEncoder,
) -> None:
    tid = source.trace_id

    async def write(text: str) -> None:
        await _bounded(websocket.send_text(text), send_timeout)

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
        last = _error_frame(error_event(exc, tid))
    await write(last)


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
