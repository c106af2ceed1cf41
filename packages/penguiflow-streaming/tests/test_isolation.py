"""Client isolation: many clients at once, and a client that stops reading.

The figures come from ``benchmarks/first_token.py`` (real uvicorn, httpx clients, raw
sockets that never read); the package README quotes the same script.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from penguiflow.core import Context, create
from penguiflow.node import Node
from penguiflow.streaming.asgi import EventStreamResponse
from penguiflow.types import Headers, Message

if TYPE_CHECKING:
    from conftest import Kit, Start

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "first_token.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("penguiflow_streaming_first_token", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_twenty_clients_and_a_stalled_one(kit: type[Kit]) -> None:
    bench = load_bench()
    send_timeout = 1.0
    # A node of about 0.3 s (a fast model); serving 20 connections at once costs a few
    # milliseconds each on one event loop, which must stay within that latency.
    figures = await bench.measure(
        clients=20, stalled=1, send_timeout=send_timeout, think_s=0.1, token_s=0.02
    )
    assert len(figures.loaded_s) == 20
    # Every healthy client's first token within one node latency of an unloaded run.
    bound = figures.unloaded_median_s + figures.node_latency_s
    assert max(figures.loaded_s) <= bound, figures.report()
    # The stalled client's trace is cancelled within send_timeout plus a margin, counted
    # from its request (that includes filling the socket buffers), and not before the
    # send timeout could have passed since its node was blocked.
    (cancel_s,) = figures.stall_cancel_s
    assert cancel_s <= send_timeout + 1.0, figures.report()
    (blocked_s,) = figures.stall_blocked_s
    assert blocked_s <= send_timeout + 0.5, figures.report()


async def test_a_stalled_client_frees_the_only_node_slot(kit: type[Kit], running: Start) -> None:
    """max_concurrency=1: the stalled trace is cancelled, then the next client is served."""
    loop = asyncio.get_running_loop()
    cancelled_at: list[float] = []
    flooding = asyncio.Event()
    filler = "x" * (32 * 1024)

    async def llm(msg: Message, ctx: Context) -> None:
        if msg.payload == "flood":
            flooding.set()
            try:
                while True:
                    await ctx.emit_chunk(parent=msg, text=filler)
            except asyncio.CancelledError:
                cancelled_at.append(loop.time())
                raise
        await ctx.emit_chunk(parent=msg, text="hello", done=True)

    flow = running(create(Node(llm, name="llm").to()))

    async def endpoint(request: Request) -> EventStreamResponse:
        q = request.query_params["q"]
        return EventStreamResponse(
            flow, Message(payload=q, headers=Headers(tenant="t")), send_timeout=0.3
        )

    app = kit.Tracked(Starlette(routes=[Route("/s", endpoint)]))
    async with kit.serve(app, sndbuf=32 * 1024) as addr:
        host, port = addr.split(":")
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024)
        raw.setblocking(False)
        await loop.sock_connect(raw, (host, int(port)))
        sent = loop.time()
        await loop.sock_sendall(raw, f"GET /s?q=flood HTTP/1.1\r\nHost: {addr}\r\n\r\n".encode())
        await kit.wait_for(flooding.wait())  # the stalled trace holds the only slot
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10.0) as http:
            resp = await http.get("/s", params={"q": "next"})
        assert resp.status_code == 200
        assert '"text": "hello"' in resp.text
        assert "event: end" in resp.text
        assert len(cancelled_at) == 1
        assert cancelled_at[0] - sent <= 0.3 + 1.0
        # The server closed the stalled connection: reading it now ends in EOF, without
        # an end event (the response was cut off, not completed).
        received = b""
        async with asyncio.timeout(kit.WAIT_S):
            while chunk := await loop.sock_recv(raw, 1 << 20):
                received += chunk
        raw.close()
        await app.wait_idle(2)
    assert b"event: start" in received
    assert b"event: end" not in received
    assert flow.inspect().is_quiescent
