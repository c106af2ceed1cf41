"""Shared helpers: a real uvicorn server on 127.0.0.1, an SSE parser, awaitable events.

Nothing here sleeps to let things settle: tests await events (flow events, node
signals, handler exits), each bounded by ``WAIT_S`` so a bug fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import uvicorn

from penguiflow.core import Context, PenguiFlow, create
from penguiflow.node import Node
from penguiflow.testing import Recorder
from penguiflow.types import FinalAnswer, Headers, Message

WAIT_S = 10.0


def message(payload: Any = "hi", **kwargs: Any) -> Message:
    """A Message for tenant "t"."""
    return Message(payload=payload, headers=Headers(tenant="t"), **kwargs)


@dataclass
class Tracked:
    """An ASGI app wrapper that signals when each handler call has returned."""

    app: Any
    active: int = 0
    finished: list[BaseException | None] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        self.active += 1
        error: BaseException | None = None
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.active -= 1
            self.finished.append(error)
            self._changed.set()

    async def wait_idle(self, calls: int = 1) -> None:
        """Wait until ``calls`` handler calls have returned and none is running."""
        async with asyncio.timeout(WAIT_S):
            while self.active or len(self.finished) < calls:
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def serve(
    app: Any,
    *,
    lifespan: Literal["auto", "on", "off"] = "off",
    sndbuf: int | None = None,
    ws: Literal["websockets", "websockets-sansio"] = "websockets-sansio",
) -> AsyncIterator[str]:
    """Run ``app`` on uvicorn at 127.0.0.1:<ephemeral port> inside this event loop.

    The listening socket is bound and listening before the server task starts, so a
    client may connect at once (the kernel queues it): no waiting for "started".
    ``ws`` picks uvicorn's WebSocket implementation. ``sndbuf`` fixes the kernel send
    buffer of accepted connections (Linux copies it from the listening socket), which
    keeps what the network path can absorb small.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        log_level="warning",
        http="h11",
        ws=ws,
        timeout_graceful_shutdown=int(WAIT_S),
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(WAIT_S):
                await task
        finally:
            sock.close()


@dataclass
class SSEEvent:
    """One dispatched Server-Sent Event, parsed as a browser would (WHATWG)."""

    event: str = "message"
    id: str | None = None
    data_lines: list[str] = field(default_factory=list)

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    """Parse SSE lines (from ``response.aiter_lines()``) into events."""
    current = SSEEvent()
    async for line in lines:
        if line == "":
            if current.data_lines:
                yield current
            current = SSEEvent()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            current.event = value
        elif name == "id":
            current.id = value
        elif name == "data":
            current.data_lines.append(value)


async def wait_for(fut: Any, what: str = "") -> Any:
    """Await with the WAIT_S bound."""
    async with asyncio.timeout(WAIT_S):
        return await fut


async def until(condition: Callable[[], bool], what: str = "") -> None:
    """Wait, bounded by WAIT_S, until ``condition()`` holds (checked every few ms).

    For state that no event announces, such as a request waiting for room at the ingress.
    """
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.005)


def answer(msg: Message, text: str) -> Message:
    """``msg`` with a ``FinalAnswer`` of ``text`` as its payload."""
    return msg.model_copy(update={"payload": FinalAnswer(text=text)})


def gated_flow(gate: asyncio.Event, seen: list[str]) -> PenguiFlow:
    """One node slot and room for one queued request: a third request waits for room."""

    async def llm(msg: Message, ctx: Context) -> Message:
        seen.append(msg.payload)
        await ctx.emit_chunk(parent=msg, text="t0")
        await gate.wait()
        return answer(msg, msg.payload)

    return create(Node(llm, name="llm").to(), queue_maxsize=1)


class Kit:
    """The helpers above, as one fixture (test modules cannot import conftest)."""

    WAIT_S = WAIT_S
    message = staticmethod(message)
    serve = staticmethod(serve)
    sse_events = staticmethod(sse_events)
    wait_for = staticmethod(wait_for)
    until = staticmethod(until)
    answer = staticmethod(answer)
    gated_flow = staticmethod(gated_flow)
    Tracked = Tracked
    SSEEvent = SSEEvent


Start = Callable[[PenguiFlow], PenguiFlow]
"""The ``running`` fixture's type (test modules import it under ``TYPE_CHECKING``)."""


@pytest.fixture
def kit() -> type[Kit]:
    return Kit


@pytest.fixture
def recorder() -> Recorder:
    return Recorder(timeout_s=WAIT_S)


@pytest.fixture
async def running(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Start]:
    """``start(flow)`` runs a flow and stops it after the test (even on failure).

    With the test kit installed, its quiescence check runs afterwards, unless the test is
    marked ``leaves_state``.
    """
    flows: list[PenguiFlow] = []

    def start(flow: PenguiFlow) -> PenguiFlow:
        flow.run()
        flows.append(flow)
        return flow

    yield start
    for flow in flows:
        await flow.stop()
        assert flow.inspect().workers == 0
    if _assert_quiescent is not None and request.node.get_closest_marker("leaves_state") is None:
        _assert_quiescent(flows)


_assert_quiescent: Callable[[Iterable[PenguiFlow]], None] | None = None
if importlib.util.find_spec("penguiflow.testing") is not None:
    from penguiflow.testing import assert_flows_quiescent as _assert_quiescent
