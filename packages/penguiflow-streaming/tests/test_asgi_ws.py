"""WebSocket delivery over a real uvicorn server, read with the ``websockets`` client."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import TYPE_CHECKING, Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from penguiflow.core import Context, PenguiFlow, create
from penguiflow.node import Node
from penguiflow.streaming import StreamWriter
from penguiflow.streaming.asgi import websocket_endpoint
from penguiflow.types import Headers, Message

if TYPE_CHECKING:
    from conftest import Kit, Start
    from penguiflow.testing import Recorder


def make_message(data: Any) -> Message:
    return Message(payload=data["q"], headers=Headers(tenant="t"))


def app_for(kit: type[Kit], flow: PenguiFlow, **options: Any) -> Any:
    endpoint = websocket_endpoint(flow, make_message, **options)
    return kit.Tracked(Starlette(routes=[WebSocketRoute("/ws", endpoint)]))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(10.0):
        frame = await ws.recv()
    data: dict[str, Any] = json.loads(frame)
    return data


async def started(ws: ClientConnection) -> str:
    """Read the start frame of a request; return its trace id."""
    frame = await recv(ws)
    assert frame["type"] == "start"
    trace_id: str = frame["trace_id"]
    return trace_id


async def until_end(ws: ClientConnection) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = await recv(ws)
        frames.append(frame)
        if frame["type"] in ("end", "error"):
            return frames


async def test_tokens_in_order_incrementally_then_result_and_end(
    kit: type[Kit], running: Start
) -> None:
    first_read = asyncio.Event()

    async def llm(msg: Message, ctx: Context) -> Message:
        async with StreamWriter(ctx, msg) as out:
            await out.write(f"{msg.payload}0")
            if msg.payload == "a":
                await first_read.wait()  # released only by a client that got token 0
            for i in range(1, 4):
                await out.write(f"{msg.payload}{i}")
        return kit.answer(msg, msg.payload.upper())

    flow = running(create(Node(llm, name="llm").to()))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr:
        async with connect(f"ws://{addr}/ws") as ws:
            await ws.send(json.dumps({"q": "a"}))
            tid = await started(ws)
            first = await recv(ws)
            assert (first["type"], first["text"], first["seq"]) == ("chunk", "a0", 0)
            first_read.set()
            frames = [first, *await until_end(ws)]
            # The connection serves the next request too.
            await ws.send(json.dumps({"q": "b"}))
            await started(ws)
            second = await until_end(ws)
        await app.wait_idle()
    chunks = [f for f in frames if f["type"] == "chunk"]
    assert [c["text"] for c in chunks] == ["a0", "a1", "a2", "a3", ""]
    assert [c["seq"] for c in chunks] == [0, 1, 2, 3, 4]
    assert chunks[-1]["done"] is True
    assert all(c["trace_id"] == tid for c in chunks)
    assert all(c["node"] == "llm" for c in chunks)
    assert all(c["meta"] == {"node": "llm"} for c in chunks)
    assert all(c["stream_id"] == f"{tid}:llm" for c in chunks)
    assert list(chunks[0]) == [
        "stream_id",
        "seq",
        "text",
        "done",
        "meta",
        "type",
        "trace_id",
        "node",
    ]
    assert frames[-2] == {
        "type": "result",
        "trace_id": tid,
        "result": {"text": "A", "citations": []},
    }
    assert frames[-1] == {"type": "end", "trace_id": tid, "reason": "drained"}
    assert [f["text"] for f in second if f["type"] == "chunk"] == ["b0", "b1", "b2", "b3", ""]
    assert second[-1]["reason"] == "drained"
    assert flow.inspect().is_quiescent


def forever_node(cleaned: asyncio.Event, trace_ids: list[str]) -> Node:
    async def llm(msg: Message, ctx: Context) -> None:
        trace_ids.append(msg.trace_id)
        await ctx.emit_chunk(parent=msg, text="t0")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaned.set()
            raise

    return Node(llm, name="llm")


async def test_disconnect_mid_stream_cancels_the_trace(
    kit: type[Kit], running: Start, recorder: Recorder
) -> None:
    cleaned, trace_ids = asyncio.Event(), list[str]()
    flow = create(forever_node(cleaned, trace_ids).to(), middlewares=[recorder])
    running(flow)
    app = app_for(kit, flow)
    async with kit.serve(app) as addr:
        async with connect(f"ws://{addr}/ws") as ws:
            await ws.send(json.dumps({"q": "x"}))
            await started(ws)
            assert (await recv(ws))["text"] == "t0"
        # The client closed the connection mid-stream.
        async with asyncio.timeout(5.0):
            await cleaned.wait()
        await recorder.wait("trace_cancel_finish", trace_id=trace_ids[0])
        await app.wait_idle()
    assert app.finished == [None]
    assert flow.inspect().is_quiescent


async def test_abrupt_disconnect_cancels_the_trace(kit: type[Kit], running: Start) -> None:
    cleaned, trace_ids = asyncio.Event(), list[str]()
    flow = running(create(forever_node(cleaned, trace_ids).to()))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr:
        ws = await connect(f"ws://{addr}/ws")
        await ws.send(json.dumps({"q": "x"}))
        await started(ws)
        assert (await recv(ws))["text"] == "t0"
        ws.transport.abort()  # no close handshake: the TCP connection just drops
        await ws.wait_closed()
        async with asyncio.timeout(5.0):
            await cleaned.wait()
        await app.wait_idle()
    assert flow.inspect().is_quiescent


async def test_client_cancel_frame_and_busy(kit: type[Kit], running: Start) -> None:
    cleaned, trace_ids = asyncio.Event(), list[str]()
    flow = running(create(forever_node(cleaned, trace_ids).to()))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr:
        async with connect(f"ws://{addr}/ws") as ws:
            await ws.send(json.dumps({"q": "x"}))
            await started(ws)
            assert (await recv(ws))["text"] == "t0"
            await ws.send(json.dumps({"q": "too early"}))
            await ws.send(json.dumps({"type": "cancel"}))
            end = await recv(ws)
            assert end == {"type": "end", "trace_id": trace_ids[0], "reason": "cancelled"}
            busy = await recv(ws)
            assert busy["type"] == "error"
            assert busy["code"] == "BUSY"
            assert busy["component"] == "request"
            await kit.wait_for(cleaned.wait())
        await app.wait_idle()
    assert len(trace_ids) == 1  # the request sent while busy was not run
    assert flow.inspect().is_quiescent


async def test_flow_not_running_sends_an_error_frame(kit: type[Kit]) -> None:
    cleaned, trace_ids = asyncio.Event(), list[str]()
    flow = create(forever_node(cleaned, trace_ids).to())  # never run
    app = app_for(kit, flow)
    async with kit.serve(app) as addr:
        async with connect(f"ws://{addr}/ws") as ws:
            await ws.send(json.dumps({"q": "x"}))
            frame = await recv(ws)
        await app.wait_idle()
    assert frame["type"] == "error"
    assert frame["code"] == "FLOW_NOT_RUNNING"
    assert "not running" in frame["message"]


async def test_slow_reader_back_pressures_the_producer(kit: type[Kit], running: Start) -> None:
    maxsize, total, size = 4, 256, 32 * 1024
    client_paused, blocked = asyncio.Event(), asyncio.Event()
    state = {"produced": 0, "at_block": -1}
    big = "x" * (size - 8)

    async def producer(msg: Message, ctx: Context) -> None:
        out = StreamWriter(ctx, msg)
        await out.write("start")
        await client_paused.wait()
        for i in range(total):
            emit = asyncio.ensure_future(out.write(f"{i:07d}{big}"))
            await asyncio.sleep(0)  # one loop step: an emit with room completes in it
            if not emit.done() and not blocked.is_set():
                state["at_block"] = state["produced"]
                blocked.set()
            await emit
            state["produced"] += 1
        await out.close()

    flow = running(create(Node(producer, name="p").to(), queue_maxsize=maxsize))
    app = app_for(kit, flow)
    async with kit.serve(app, sndbuf=32 * 1024) as addr:
        host, port = addr.split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        # No permessage-deflate: the filler would compress to nothing.
        async with connect(
            f"ws://{addr}/ws", sock=sock, max_queue=1, max_size=None, compression=None
        ) as ws:
            await ws.send(json.dumps({"q": "x"}))
            await started(ws)
            assert (await recv(ws))["text"] == "start"
            client_paused.set()  # ... and read nothing more for now
            await kit.wait_for(blocked.wait())
            (trace,) = flow.inspect().traces.values()
            assert trace.queued <= maxsize
            assert trace.pending <= maxsize + 1
            assert state["at_block"] <= 64, state  # far below the 8 MiB produced
            assert state["produced"] == state["at_block"]
            frames = await until_end(ws)
        await app.wait_idle()
    chunks = [f for f in frames if f["type"] == "chunk"]
    assert [c["seq"] for c in chunks] == list(range(1, total + 2))
    assert [c["text"][:7] for c in chunks] == [f"{i:07d}" for i in range(total)] + [""]
    assert frames[-1]["reason"] == "drained"


async def test_a_node_that_gives_up_sends_an_error_frame(kit: type[Kit], running: Start) -> None:
    async def llm(msg: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=msg, text="partial")
        raise ValueError("secret internals")

    flow = running(create(Node(llm, name="llm").to()))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr:
        async with connect(f"ws://{addr}/ws") as ws:
            await ws.send(json.dumps({"q": "x"}))
            tid = await started(ws)
            frames = await until_end(ws)
        await app.wait_idle()
    assert [f["type"] for f in frames] == ["chunk", "error"]
    assert frames[-1] == {
        "type": "error",
        "trace_id": tid,
        "code": "NODE_EXCEPTION",
        "node": "llm",
        "component": "llm",
        "message": "node 'llm' failed after 1 attempt",
    }


async def test_a_bad_request_gets_an_error_frame(kit: type[Kit], running: Start) -> None:
    cleaned, trace_ids = asyncio.Event(), list[str]()
    flow = running(create(forever_node(cleaned, trace_ids).to()))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr:
        async with connect(f"ws://{addr}/ws") as ws:
            await ws.send("not json, no q")
            frame = await recv(ws)
        await app.wait_idle()
    assert frame["type"] == "error"
    assert frame["code"] == "BAD_REQUEST"
    assert "Traceback" not in json.dumps(frame)
    assert trace_ids == []


async def test_a_client_that_stops_reading_is_cut_off(kit: type[Kit], running: Start) -> None:
    loop = asyncio.get_running_loop()
    cancelled_at: list[float] = []
    flooding = asyncio.Event()
    filler = "x" * (32 * 1024)

    async def llm(msg: Message, ctx: Context) -> None:
        flooding.set()
        try:
            while True:
                await ctx.emit_chunk(parent=msg, text=filler)
        except asyncio.CancelledError:
            cancelled_at.append(loop.time())
            raise

    flow = running(create(Node(llm, name="llm").to()))
    app = app_for(kit, flow, send_timeout=0.3)
    async with kit.serve(app, sndbuf=32 * 1024) as addr:
        host, port = addr.split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, int(port)))
        async with connect(
            f"ws://{addr}/ws", sock=sock, max_queue=1, max_size=None, compression=None
        ) as ws:
            sent = loop.time()
            await ws.send(json.dumps({"q": "x"}))
            await kit.wait_for(flooding.wait())
            await app.wait_idle()  # the handler gave up on the stalled client ...
            assert len(cancelled_at) == 1  # ... and cancelled its trace
            assert cancelled_at[0] - sent <= 0.3 + 1.0
            # Reading again: the frames that were in flight, then the connection ends.
            with pytest.raises(ConnectionClosed):
                while True:
                    frame = json.loads(await recv_raw(ws))
                    assert frame["type"] in ("start", "chunk")
    assert flow.inspect().is_quiescent


async def recv_raw(ws: ClientConnection) -> str | bytes:
    async with asyncio.timeout(10.0):
        return await ws.recv()


async def fill_the_flow(
    kit: type[Kit], flow: PenguiFlow, addr: str, seen: list[str]
) -> tuple[ClientConnection, ClientConnection]:
    """Two connections: "a" runs in the node, "b" sits on the edge."""
    a = await connect(f"ws://{addr}/ws")
    await a.send(json.dumps({"q": "a"}))
    await kit.until(lambda: seen == ["a"])
    b = await connect(f"ws://{addr}/ws")
    await b.send(json.dumps({"q": "b"}))
    await kit.until(lambda: len(flow.inspect().traces) == 2)
    return a, b


async def test_a_client_that_leaves_while_waiting_for_room_is_never_served(
    kit: type[Kit], running: Start
) -> None:
    gate, seen = asyncio.Event(), list[str]()
    flow = running(kit.gated_flow(gate, seen))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr:
        a, b = await fill_the_flow(kit, flow, addr, seen)
        async with connect(f"ws://{addr}/ws") as c:
            await c.send(json.dumps({"q": "c"}))
            await kit.until(lambda: len(flow.inspect().traces) == 3)  # "c" waits for room
        await kit.until(lambda: len(app.finished) == 1)  # its handler returned ...
        assert app.finished == [None]
        assert len(flow.inspect().traces) == 2  # ... and let go of its trace
        gate.set()
        for ws in (a, b):
            assert (await until_end(ws))[-1]["reason"] == "drained"
            await ws.close()
        await app.wait_idle(3)
    assert seen == ["a", "b"]  # the request given up while waiting never ran


async def test_a_cancel_frame_ends_the_wait_for_room(kit: type[Kit], running: Start) -> None:
    gate, seen = asyncio.Event(), list[str]()
    flow = running(kit.gated_flow(gate, seen))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr:
        a, b = await fill_the_flow(kit, flow, addr, seen)
        async with connect(f"ws://{addr}/ws") as c:
            await c.send(json.dumps({"q": "c"}))
            await kit.until(lambda: len(flow.inspect().traces) == 3)
            await c.send(json.dumps({"type": "cancel"}))
            end = await recv(c)
            assert end["type"] == "end"
            assert end["reason"] == "cancelled"
            assert len(flow.inspect().traces) == 2
            gate.set()
            for ws in (a, b):
                assert (await until_end(ws))[-1]["reason"] == "drained"
                await ws.close()
            await c.send(json.dumps({"q": "d"}))  # the connection serves the next request
            await started(c)
            assert (await until_end(c))[-1]["reason"] == "drained"
        await app.wait_idle(3)
    assert seen == ["a", "b", "d"]


async def test_the_idle_timeout_bounds_the_wait_for_room(kit: type[Kit], running: Start) -> None:
    gate, seen = asyncio.Event(), list[str]()
    flow = running(kit.gated_flow(gate, seen))
    app = kit.Tracked(
        Starlette(
            routes=[
                WebSocketRoute("/ws", websocket_endpoint(flow, make_message)),
                WebSocketRoute("/idle", websocket_endpoint(flow, make_message, idle_timeout=0.3)),
            ]
        )
    )
    async with kit.serve(app) as addr:
        a, b = await fill_the_flow(kit, flow, addr, seen)
        async with connect(f"ws://{addr}/idle") as c:
            loop = asyncio.get_running_loop()
            asked = loop.time()
            await c.send(json.dumps({"q": "c"}))
            frame = await recv(c)
            assert loop.time() - asked < 0.3 + 1.0
            assert frame["type"] == "error"
            assert frame["code"] == "IDLE_TIMEOUT"
            assert len(flow.inspect().traces) == 2
        gate.set()
        for ws in (a, b):
            assert (await until_end(ws))[-1]["reason"] == "drained"
            await ws.close()
        await app.wait_idle(3)
    assert seen == ["a", "b"]


async def test_frames_sent_while_streaming_get_one_busy_frame(
    kit: type[Kit], running: Start
) -> None:
    cleaned, trace_ids = asyncio.Event(), list[str]()
    flow = running(create(forever_node(cleaned, trace_ids).to()))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr:
        async with connect(f"ws://{addr}/ws") as ws:
            await ws.send(json.dumps({"q": "x"}))
            await started(ws)
            assert (await recv(ws))["text"] == "t0"
            for _ in range(500):
                await ws.send(json.dumps({"q": "y" * 1000}))
            await ws.send(json.dumps({"type": "cancel"}))
            assert (await recv(ws))["reason"] == "cancelled"
            busy = await recv(ws)
            assert (busy["type"], busy["code"]) == ("error", "BUSY")
            assert busy["message"].startswith("500 requests were sent while another")
            await ws.send(json.dumps({"q": "next"}))
            assert (await recv(ws))["type"] == "start"  # no further BUSY frame came first
            await ws.send(json.dumps({"type": "cancel"}))
            assert (await until_end(ws))[-1]["reason"] == "cancelled"
        await app.wait_idle()
    assert len(trace_ids) == 2  # none of the refused requests ran


async def test_a_start_error_gets_an_error_frame_and_the_connection_stays_usable(
    kit: type[Kit], running: Start
) -> None:
    cleaned, trace_ids = asyncio.Event(), list[str]()
    flow = running(create(forever_node(cleaned, trace_ids).to(), queue_maxsize=4))

    def with_id(data: Any) -> Message:
        return Message(payload=data["q"], headers=Headers(tenant="t"), trace_id=data["id"])

    endpoint = websocket_endpoint(flow, with_id)
    app = kit.Tracked(Starlette(routes=[WebSocketRoute("/ws", endpoint)]))
    async with kit.serve(app) as addr:
        async with connect(f"ws://{addr}/ws") as a, connect(f"ws://{addr}/ws") as b:
            await a.send(json.dumps({"q": "1", "id": "same"}))
            await started(a)
            await b.send(json.dumps({"q": "2", "id": "same"}))
            frame = await recv(b)
            assert frame["type"] == "error"
            assert frame["code"] == "BAD_REQUEST"
            assert frame["trace_id"] == "same"
            assert "trace id" in frame["message"]
            assert "Traceback" not in json.dumps(frame)
            await b.send(json.dumps({"q": "3", "id": "other"}))  # b still works
            assert await started(b) == "other"  # taken by the flow (it queues for the node)
        await app.wait_idle(2)
    assert app.finished == [None, None]
    assert trace_ids[0] == "same"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")
async def test_a_send_refused_after_the_client_left_counts_as_a_disconnect(
    kit: type[Kit], running: Start, caplog: pytest.LogCaptureFixture
) -> None:
    # uvicorn's older ``websockets`` implementation refuses a send after it reported the
    # disconnect with a RuntimeError. That happens when the watcher sees the disconnect
    # as the next frame goes out; the wrapper below makes that ordering certain.
    pytest.importorskip("uvicorn.protocols.websockets.websockets_impl")
    gone, send_tried, cleaned = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def llm(msg: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=msg, text="t0")
        await gone.wait()
        await ctx.emit_chunk(parent=msg, text="t1")  # the frame that cannot go out
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaned.set()
            raise

    flow = running(create(Node(llm, name="llm").to()))
    inner = Starlette(routes=[WebSocketRoute("/ws", websocket_endpoint(flow, make_message))])

    async def ordered(scope: Any, receive: Any, send: Any) -> None:
        async def held_receive() -> Any:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                gone.set()
                await send_tried.wait()  # handed over just before that send is made
            return message

        async def late_send(message: Any) -> None:
            if gone.is_set():
                send_tried.set()
                await asyncio.sleep(0)  # one loop step: the watcher returns first
            await send(message)

        await inner(scope, held_receive, late_send)

    app = kit.Tracked(ordered)
    async with kit.serve(app, ws="websockets") as addr:
        async with connect(f"ws://{addr}/ws") as ws:
            await ws.send(json.dumps({"q": "x"}))
            await started(ws)
            assert (await recv(ws))["text"] == "t0"
        await kit.wait_for(cleaned.wait())
        await app.wait_idle()
    assert send_tried.is_set()
    assert app.finished == [None]  # the handler returned normally
    assert [r.getMessage() for r in caplog.records if r.name == "penguiflow.streaming"] == []
