"""ASGI delivery for Starlette and FastAPI: an SSE response and a WebSocket handler.

Needs the ``asgi`` extra: ``pip install 'penguiflow-streaming[asgi]'``.

- :class:`EventStreamResponse` streams one request's chunks (and final result) as
  Server-Sent Events; :func:`sse_endpoint` builds a route endpoint from a flow.
- :func:`serve_websocket` / :func:`websocket_endpoint` serve requests over a WebSocket:
  each text frame the client sends is one request; the reply is one JSON frame per chunk,
  one per result, and an ``end`` frame.

Both are built on :func:`penguiflow.streaming.open_stream`, so they share its guarantees:

- **Disconnect cancels the trace.** A task watches the connection; when the client goes
  away, the send loop is cancelled and ``flow.cancel(trace_id)`` runs, so in-flight node
  invocations see ``CancelledError`` and playbooks under the trace stop. This cleanup is
  shielded: it completes even when the handler itself is being cancelled (server
  shutdown, an outer timeout).
- **Backpressure, no unbounded buffers.** A chunk is read from the trace's subscription
  only after the previous one was handed to the server, and the server's ``send`` waits
  while the socket is full. The subscription holds at most ``queue_maxsize`` items and
  ``emit_chunk`` waits for per-trace capacity, so a slow client slows the producing node.

SSE frames: each chunk is ``format_sse_event(chunk)`` (``event: chunk``/``done``, ``id``
= seq, ``data`` = text, ``data`` = meta JSON); a non-chunk result is ``event: result``
with its JSON; the stream ends with ``event: end`` (``{"trace_id", "reason"}``) or, when
the trace was cancelled elsewhere, the flow stopped or ``idle_timeout`` passed,
``event: error`` (``{"trace_id", "error"}``).

WebSocket frames (JSON text): ``{"stream_id", "seq", "text", "done", "meta", "type":
"chunk", "trace_id"}``, ``{"type": "result", "trace_id", "result"}``, ``{"type": "end",
"trace_id", "reason"}``, ``{"type": "error", "error", ...}``. While a request streams,
the client may send ``{"type": "cancel"}`` to cancel it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

from penguiflow.core import PenguiFlow
from penguiflow.errors import (
    FlowNotRunningError,
    FlowStoppedError,
    MissingExtraError,
    TraceCancelled,
)
from penguiflow.node import Node
from penguiflow.types import Message, StreamChunk

from ._format import chunk_to_ws_json, format_sse_event, format_sse_message, to_jsonable
from ._paths import check_running, check_streaming_path, require_message
from ._request import FlowStream, StreamResult, open_stream
from ._shield import settle

try:
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.types import Receive, Scope, Send
    from starlette.websockets import WebSocket, WebSocketDisconnect
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess test
    if exc.name is None or exc.name.partition(".")[0] != "starlette":
        raise
    raise MissingExtraError(
        "penguiflow.streaming.asgi needs Starlette: pip install 'penguiflow-streaming[asgi]'",
        name=exc.name,
    ) from None

__all__ = [
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

_T = TypeVar("_T")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def _maybe_await(value: _T | Awaitable[_T]) -> _T:
    if inspect.isawaitable(value):
        return await value
    return value


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


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


class EventStreamResponse(Response):
    """A Starlette response that streams one request's output as Server-Sent Events.

    Return it from a Starlette or FastAPI endpoint. When the response is sent, the
    message is emitted into the flow and the trace's chunks are written as they arrive,
    then the final result, then an ``end`` event (see the module docstring for the
    frames). A client disconnect cancels the trace; a slow client back-pressures the
    producing node.

    Args:
        flow: A running flow with a path from its ingress to Rookery.
        message: The request; its ``trace_id`` must not be streamed by anyone else.
        to: Ingress node(s) to emit to (default: every ingress node).
        idle_timeout: Longest wait for the next item, in seconds; on expiry the client
            gets an ``error`` event (``"timeout"``) and the trace is cancelled.
        retry_ms: Reconnection delay announced to the client first (``retry:``).
        chunk_format: Renders one chunk (default :func:`format_sse_event`).
        encode_result: Turns a result payload into JSON-able data (default
            :func:`~penguiflow.streaming.to_jsonable`).
        status_code: HTTP status.
        headers: Extra response headers.
        background: Starlette background task run after the response.

    Raises:
        TypeError: ``message`` is not a ``Message``.
        FlowNotRunningError: The flow is not running.
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
        retry_ms: int | None = None,
        chunk_format: Callable[[StreamChunk], str] = format_sse_event,
        encode_result: ResultEncoder = to_jsonable,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        message = require_message(message, "EventStreamResponse")
        check_running(flow, "EventStreamResponse")
        check_streaming_path(flow, to, "EventStreamResponse")
        self.stream: FlowStream = open_stream(flow, message, to=to, idle_timeout=idle_timeout)
        """The request's stream (started when the response is sent)."""
        self.disconnected = False
        """True once the client went away before the stream ended."""
        self._retry_ms = retry_ms
        self._chunk_format = chunk_format
        self._encode_result = encode_result
        self.status_code = status_code
        self.background = background
        self.init_headers({**_SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream the response; returns once the trace ended or the client left."""
        stream = self.stream
        await stream.start()
        try:
            watch_won, pump = await _race(
                self._pump(send), _wait_disconnect(receive), f"penguiflow-sse:{stream.trace_id}"
            )
            if watch_won:
                self.disconnected = True
            elif not pump.cancelled():
                error = pump.exception()
                if isinstance(error, OSError):  # ASGI >= 2.4 servers: send to a closed client
                    self.disconnected = True
                elif error is not None:
                    raise error
        finally:
            await stream.aclose()
        if self.background is not None and not self.disconnected:
            await self.background()

    async def _pump(self, send: Send) -> None:
        stream = self.stream
        tid = stream.trace_id

        async def write(frame: str) -> None:
            await send({"type": "http.response.body", "body": frame.encode(), "more_body": True})

        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if self._retry_ms is not None:
            await write(f"retry: {self._retry_ms}\n\n")
        error: str | None = None
        try:
            async for event in stream.events():
                if isinstance(event, StreamChunk):
                    await write(self._chunk_format(event))
                else:
                    await write(_sse_result(event, self._encode_result))
        except TraceCancelled:
            error = "cancelled"
        except FlowStoppedError:
            error = "stopped"
        except TimeoutError:
            error = "timeout"
        if error is None:
            data = _dumps({"trace_id": tid, "reason": stream.ended})
            await write(format_sse_message(data, event="end"))
        else:
            await write(
                format_sse_message(_dumps({"trace_id": tid, "error": error}), event="error")
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _sse_result(result: StreamResult, encode: ResultEncoder) -> str:
    return format_sse_message(_dumps(encode(result.value)), event="result")


def sse_endpoint(
    flow: PenguiFlow,
    make_message: RequestToMessage,
    *,
    to: Node | Sequence[Node] | None = None,
    idle_timeout: float | None = None,
    retry_ms: int | None = None,
    chunk_format: Callable[[StreamChunk], str] = format_sse_event,
    encode_result: ResultEncoder = to_jsonable,
    headers: Mapping[str, str] | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """Build a Starlette endpoint that answers each request with an SSE stream.

    ``Route("/chat", sse_endpoint(flow, make_message))``. Each request becomes one
    message (``make_message(request)``, sync or async) and one trace. When the flow is
    not running, the endpoint answers ``503`` with the reason.

    Args:
        flow: The flow; it may be started later (e.g. in the app's lifespan).
        make_message: Builds the flow's input ``Message`` from the request.
        to: Ingress node(s) to emit to.
        idle_timeout: See :class:`EventStreamResponse`.
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
        message = await _maybe_await(make_message(request))
        try:
            return EventStreamResponse(
                flow,
                message,
                to=to,
                idle_timeout=idle_timeout,
                retry_ms=retry_ms,
                chunk_format=chunk_format,
                encode_result=encode_result,
                headers=headers,
            )
        except FlowNotRunningError as exc:
            return PlainTextResponse(str(exc), status_code=503)

    return endpoint


# --------------------------------------------------------------------------- WebSocket

_DISCONNECT = object()


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


async def serve_websocket(
    websocket: WebSocket,
    flow: PenguiFlow,
    make_message: DataToMessage,
    *,
    to: Node | Sequence[Node] | None = None,
    idle_timeout: float | None = None,
    encode_result: ResultEncoder = to_jsonable,
) -> None:
    """Serve stream requests on an accepted WebSocket until the client disconnects.

    Each text (or binary) frame from the client is one request: its JSON (or the raw
    text when it is not JSON) goes to ``make_message``; the reply is the trace's chunk,
    result and ``end`` frames (see the module docstring). Requests are served one at a
    time; while one streams, ``{"type": "cancel"}`` cancels it and any other frame is
    answered, after the current stream, with an ``error`` frame (``"busy"``).

    A disconnect cancels the trace being streamed, and the cleanup completes even if
    this coroutine is cancelled.

    Args:
        websocket: An accepted Starlette ``WebSocket``.
        flow: A running flow with a path from its ingress to Rookery.
        make_message: Builds the flow's input ``Message`` from one request.
        to: Ingress node(s) to emit to.
        idle_timeout: Longest wait for the next item of a stream (``error: "timeout"``).
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
            stream = open_stream(flow, message, to=to, idle_timeout=idle_timeout)
            await stream.start()
        except (FlowNotRunningError, FlowStoppedError) as exc:
            await websocket.send_text(_dumps({"type": "error", "error": str(exc)}))
            continue
        try:
            connected = await _stream_to_websocket(websocket, stream, encode_result)
        finally:
            await stream.aclose()
        if not connected:
            return


async def _stream_to_websocket(
    websocket: WebSocket, stream: FlowStream, encode_result: ResultEncoder
) -> bool:
    """Send one stream; return False when the client disconnected meanwhile."""
    busy: list[Any] = []

    async def watch() -> None:
        while True:
            received = await websocket.receive()
            if received["type"] == "websocket.disconnect":
                return
            data = _parse(received)
            if _is_cancel(data):
                await stream.cancel()
            else:
                busy.append(data)

    watch_won, pump = await _race(
        _ws_pump(websocket, stream, encode_result), watch(), f"penguiflow-ws:{stream.trace_id}"
    )
    if watch_won:
        return False
    if not pump.cancelled():
        error = pump.exception()
        if isinstance(error, WebSocketDisconnect | OSError):
            return False
        if error is not None:
            raise error
    for _ in busy:
        await websocket.send_text(
            _dumps({"type": "error", "error": "busy", "detail": "one request at a time"})
        )
    return True


async def _ws_pump(websocket: WebSocket, stream: FlowStream, encode_result: ResultEncoder) -> None:
    tid = stream.trace_id
    extra = {"type": "chunk", "trace_id": tid}
    error: str | None = None
    try:
        async for event in stream.events():
            if isinstance(event, StreamChunk):
                await websocket.send_text(chunk_to_ws_json(event, extra=extra))
            else:
                frame = {"type": "result", "trace_id": tid, "result": encode_result(event.value)}
                await websocket.send_text(_dumps(frame))
    except TraceCancelled:
        error = "cancelled"
    except FlowStoppedError:
        error = "stopped"
    except TimeoutError:
        error = "timeout"
    if error is None:
        await websocket.send_text(_dumps({"type": "end", "trace_id": tid, "reason": stream.ended}))
    else:
        await websocket.send_text(_dumps({"type": "error", "trace_id": tid, "error": error}))


def websocket_endpoint(
    flow: PenguiFlow,
    make_message: DataToMessage,
    *,
    to: Node | Sequence[Node] | None = None,
    idle_timeout: float | None = None,
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
            encode_result=encode_result,
        )

    return endpoint
