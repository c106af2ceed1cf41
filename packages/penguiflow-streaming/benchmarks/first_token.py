"""First-token latency of SSE clients served together, with one client that stalls.

Run it (from the repository root)::

    hatch run python packages/penguiflow-streaming/benchmarks/first_token.py

A real uvicorn server on 127.0.0.1 serves ``sse_endpoint`` over a one-node flow: a mock
LLM that "thinks" for ``think_s``, then writes ``tokens`` tokens ``token_s`` apart. One
node invocation therefore lasts about ``think_s + tokens * token_s`` (the node latency).

1. Unloaded: one client at a time; the time from sending the request to receiving the
   first ``chunk`` event, over a few runs (median).
2. Loaded: ``stalled`` raw-socket clients send their request and never read (their node
   writes large tokens, so the socket buffers fill and the sends block), then
   ``clients`` httpx clients stream at once. Their first-token latencies are recorded,
   and so is how long after its node got blocked each stalled trace was cancelled.

The test ``tests/test_isolation.py`` runs :func:`measure` and checks the targets; the
package README quotes a run of this script.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import statistics
import sys
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from penguiflow.core import Context, PenguiFlow, create
from penguiflow.node import Node, NodePolicy
from penguiflow.streaming.asgi import sse_endpoint
from penguiflow.types import FinalAnswer, Headers, Message

FLOOD = "flood"
"""The prompt of a stalled client: its node writes 32 KiB tokens until cancelled."""

_FILLER = "x" * (32 * 1024)


@dataclasses.dataclass
class Figures:
    """What :func:`measure` observed (seconds)."""

    node_latency_s: float
    """One healthy node invocation: think time plus the token gaps."""
    unloaded_s: list[float]
    """First-token latency of a lone client, one value per run."""
    loaded_s: list[float]
    """First-token latency of each healthy client served together."""
    stall_cancel_s: list[float]
    """For each stalled client: from sending its request to its trace's cancellation."""
    stall_blocked_s: list[float]
    """For each stalled client: from its node being blocked to its trace's cancellation."""
    send_timeout_s: float

    @property
    def unloaded_median_s(self) -> float:
        return statistics.median(self.unloaded_s)

    def report(self) -> str:
        loaded = sorted(self.loaded_s)
        p95 = loaded[min(len(loaded) - 1, round(0.95 * (len(loaded) - 1)))]
        return "\n".join(
            [
                f"node latency            {self.node_latency_s * 1000:7.1f} ms",
                f"unloaded first token    {self.unloaded_median_s * 1000:7.1f} ms (median)",
                f"loaded first token      {statistics.median(loaded) * 1000:7.1f} ms median, "
                f"{p95 * 1000:.1f} ms p95, {loaded[-1] * 1000:.1f} ms max "
                f"({len(loaded)} clients)",
                "stalled trace cancelled "
                + ", ".join(f"{s * 1000:.0f} ms" for s in self.stall_cancel_s)
                + " after its request ("
                + ", ".join(f"{s * 1000:.0f} ms" for s in self.stall_blocked_s)
                + f" after its node blocked; send_timeout {self.send_timeout_s * 1000:.0f} ms)",
            ]
        )


def build_flow(
    *, max_concurrency: int, think_s: float, token_s: float, tokens: int, stalls: _Stalls
) -> PenguiFlow:
    """A mock LLM node; the prompt ``FLOOD`` makes it write large tokens until cancelled."""

    async def llm(msg: Message, ctx: Context) -> Message:
        if msg.payload == FLOOD:
            await _flood(msg, ctx, stalls)
        await asyncio.sleep(think_s)
        for i in range(tokens):
            if i:
                await asyncio.sleep(token_s)
            await ctx.emit_chunk(parent=msg, text=f"t{i} ")
        await ctx.emit_chunk(parent=msg, text="", done=True)
        return msg.model_copy(update={"payload": FinalAnswer(text="done")})

    policy = NodePolicy(max_concurrency=max_concurrency)
    return create(Node(llm, name="llm", policy=policy).to())


class _Stalls:
    """Per stalled trace: when its node blocked, when it was cancelled."""

    def __init__(self) -> None:
        self.blocked: dict[str, float] = {}
        self.cancelled: dict[str, float] = {}
        self.changed = asyncio.Event()


async def _flood(msg: Message, ctx: Context, stalls: _Stalls) -> None:
    loop = asyncio.get_running_loop()
    try:
        while True:
            emit = asyncio.ensure_future(ctx.emit_chunk(parent=msg, text=_FILLER))
            await asyncio.sleep(0)  # one loop step: an emit with room completes in it
            if not emit.done() and msg.trace_id not in stalls.blocked:
                stalls.blocked[msg.trace_id] = loop.time()
            await emit
    except asyncio.CancelledError:
        stalls.cancelled[msg.trace_id] = loop.time()
        stalls.changed.set()
        raise


def _to_message(request: Request) -> Message:
    return Message(payload=request.query_params.get("q", ""), headers=Headers(tenant="bench"))


@contextlib.asynccontextmanager
async def _serve(app: Starlette) -> AsyncIterator[str]:
    """uvicorn on 127.0.0.1 (ephemeral port), small send buffers so a stall shows fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="critical", http="h11")
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(10.0):
                await task
        finally:
            sock.close()


async def _first_token(http: httpx.AsyncClient, prompt: str) -> float:
    """Seconds from sending the request to receiving the first ``chunk`` event."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    first: float | None = None
    async with http.stream("GET", "/chat", params={"q": prompt}) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if first is None and line == "event: chunk":
                first = loop.time() - start
    if first is None:
        raise AssertionError("the stream ended without a chunk")
    return first


async def _stalled_client(addr: str) -> socket.socket:
    """Connect, send a FLOOD request, and never read (tiny receive buffer)."""
    host, port = addr.split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    request = f"GET /chat?q={FLOOD} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    await loop.sock_sendall(sock, request.encode())
    return sock


async def measure(
    *,
    clients: int = 20,
    stalled: int = 1,
    max_concurrency: int = 32,
    send_timeout: float = 1.0,
    think_s: float = 0.05,
    token_s: float = 0.01,
    tokens: int = 10,
    unloaded_runs: int = 5,
) -> Figures:
    """Serve the mock flow and measure first-token latencies (see the module docstring)."""
    stalls = _Stalls()
    flow = build_flow(
        max_concurrency=max_concurrency,
        think_s=think_s,
        token_s=token_s,
        tokens=tokens,
        stalls=stalls,
    )
    endpoint = sse_endpoint(flow, _to_message, send_timeout=send_timeout)
    app = Starlette(routes=[Route("/chat", endpoint)])
    flow.run()
    socks: list[socket.socket] = []
    sent = 0.0
    try:
        async with (
            _serve(app) as addr,
            httpx.AsyncClient(
                base_url=f"http://{addr}",
                timeout=30.0,
                limits=httpx.Limits(max_connections=clients + 8),
            ) as http,
        ):
            unloaded = [await _first_token(http, "warm-up")]
            unloaded = [await _first_token(http, "hi") for _ in range(unloaded_runs)]
            sent = asyncio.get_running_loop().time()
            socks = [await _stalled_client(addr) for _ in range(stalled)]
            loaded = list(
                await asyncio.gather(*(_first_token(http, f"q{i}") for i in range(clients)))
            )
            async with asyncio.timeout(send_timeout + 10.0):
                while len(stalls.cancelled) < stalled:
                    stalls.changed.clear()
                    await stalls.changed.wait()
            for sock in socks:
                sock.close()
    finally:
        for sock in socks:
            sock.close()
        await flow.stop()
    cancelled = list(stalls.cancelled.items())
    return Figures(
        node_latency_s=think_s + (tokens - 1) * token_s,
        unloaded_s=unloaded,
        loaded_s=loaded,
        stall_cancel_s=[at - sent for _, at in cancelled],
        stall_blocked_s=[at - stalls.blocked[t] for t, at in cancelled if t in stalls.blocked],
        send_timeout_s=send_timeout,
    )


async def _main() -> None:
    print(f"python {sys.version.split()[0]}, uvicorn {uvicorn.__version__}")
    print("\n20 clients + 1 stalled, max_concurrency=32, send_timeout=1 s")
    print((await measure()).report())
    print("\nthe same, send_timeout=5 s (the default)")
    print((await measure(send_timeout=5.0)).report())
    print("\n20 clients + 1 stalled, max_concurrency=1 (the default), send_timeout=1 s")
    print((await measure(max_concurrency=1, unloaded_runs=3)).report())


if __name__ == "__main__":
    asyncio.run(_main())
