"""SSE over a real uvicorn server, read with a real httpx streaming client."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import socket
from collections.abc import AsyncIterator, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from penguiflow.core import Context, PenguiFlow, create
from penguiflow.node import Node
from penguiflow.streaming import StreamingPathError, StreamWriter, format_sse_event
from penguiflow.streaming.asgi import EventStreamResponse, sse_endpoint
from penguiflow.types import Headers, Message

if TYPE_CHECKING:
    from conftest import Kit, Start
    from penguiflow.testing import Recorder


def make_message(request: Request) -> Message:
    return Message(payload=request.query_params.get("q", ""), headers=Headers(tenant="t"))


def app_for(kit: type[Kit], flow: PenguiFlow, **options: Any) -> Any:
    return kit.Tracked(
        Starlette(routes=[Route("/stream", sse_endpoint(flow, make_message, **options))])
    )


def client(addr: str, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://{addr}", timeout=10.0, **kwargs)


async def test_tokens_arrive_in_order_and_incrementally(kit: type[Kit], running: Start) -> None:
    first_read = asyncio.Event()

    async def llm(msg: Message, ctx: Context) -> Message:
        async with StreamWriter(ctx, msg) as out:
            await out.write("t0")
            # Only a client that already *received* t0 can release the rest: if the
            # response were buffered until the end, this would never return.
            await first_read.wait()
            for i in range(1, 5):
                await out.write(f"t{i}")
        return kit.answer(msg, f"answer to {msg.payload}")

    flow = running(create(Node(llm, name="llm").to()))
    app = app_for(kit, flow, retry_ms=1500)
    async with kit.serve(app) as addr, client(addr) as http:
        async with http.stream("GET", "/stream", params={"q": "hello"}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.headers["cache-control"] == "no-cache"
            header_trace = resp.headers["x-trace-id"]
            raw: list[str] = []

            async def lines() -> Any:
                async for line in resp.aiter_lines():
                    raw.append(line)
                    yield line

            events = []
            async for event in kit.sse_events(lines()):
                events.append(event)
                if event.event == "chunk" and not first_read.is_set():
                    assert json.loads(event.data)["text"] == "t0"
                    first_read.set()
        await app.wait_idle()
    assert raw[0] == "retry: 1500"
    start, chunks, result, end = events[0], events[1:-2], events[-2], events[-1]
    assert start.event == "start"
    assert json.loads(start.data) == {"trace_id": header_trace}
    # One JSON object per event, as EventSource hands it over; ids increase per response.
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert all(len(e.data_lines) == 1 for e in events)
    datas = [json.loads(e.data) for e in chunks]
    assert [
        (e.event, d["text"], d["seq"], d["done"]) for e, d in zip(chunks, datas, strict=True)
    ] == [
        ("chunk", "t0", 0, False),
        ("chunk", "t1", 1, False),
        ("chunk", "t2", 2, False),
        ("chunk", "t3", 3, False),
        ("chunk", "t4", 4, False),
        ("chunk", "", 5, True),
    ]
    assert all(d["node"] == "llm" for d in datas)
    assert all(d["trace_id"] == header_trace for d in datas)
    assert all(d["stream_id"] == f"{header_trace}:llm" for d in datas)
    assert all(d["meta"] == {"node": "llm"} for d in datas)
    assert result.event == "result"
    assert json.loads(result.data) == {
        "trace_id": header_trace,
        "result": {"text": "answer to hello", "citations": []},
    }
    assert end.event == "end"
    assert json.loads(end.data) == {"trace_id": header_trace, "reason": "drained"}
    assert flow.inspect().is_quiescent


async def test_text_that_looks_like_meta_stays_text(kit: type[Kit], running: Start) -> None:
    async def llm(msg: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=msg, text='hello\n{"node": "x"}')
        await ctx.emit_chunk(parent=msg, text="hello", meta={"node": "x"}, done=True)

    flow = running(create(Node(llm, name="llm").to()))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr, client(addr) as http:
        async with http.stream("GET", "/stream") as resp:
            events = [e async for e in kit.sse_events(resp.aiter_lines())]
        await app.wait_idle()
    first, second = (json.loads(e.data) for e in events if e.event == "chunk")
    assert (first["text"], first["meta"]) == ('hello\n{"node": "x"}', {})
    assert (second["text"], second["meta"], second["node"]) == ("hello", {"node": "x"}, "x")


async def test_results_use_the_json_encoder(kit: type[Kit], running: Start) -> None:
    when = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)

    async def llm(msg: Message, ctx: Context) -> Message:
        await ctx.emit_chunk(parent=msg, text="t", meta={"at": when}, done=True)
        return msg.model_copy(update={"payload": {"at": when, "tags": {"a"}}})

    flow = running(create(Node(llm, name="llm").to()))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr, client(addr) as http:
        async with http.stream("GET", "/stream") as resp:
            events = [e async for e in kit.sse_events(resp.aiter_lines())]
        await app.wait_idle()
    by_name = {e.event: json.loads(e.data) for e in events}
    assert by_name["chunk"]["meta"] == {"at": "2026-11-30T12:00:00Z"}
    assert by_name["result"]["result"] == {"at": "2026-11-30T12:00:00Z", "tags": ["a"]}


async def test_legacy_chunk_format_keeps_the_documented_frame(
    kit: type[Kit], running: Start
) -> None:
    async def llm(msg: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=msg, text="a", meta={"k": 1}, done=True)

    flow = running(create(Node(llm, name="llm").to()))
    app = app_for(kit, flow, chunk_format=format_sse_event)
    async with kit.serve(app) as addr, client(addr) as http:
        async with http.stream("GET", "/stream") as resp:
            events = [e async for e in kit.sse_events(resp.aiter_lines())]
        await app.wait_idle()
    assert [e.event for e in events] == ["start", "done", "end"]
    assert (events[1].id, events[1].data_lines) == ("0", ["a", '{"k": 1}'])


async def test_client_disconnect_cancels_the_trace(
    kit: type[Kit], running: Start, recorder: Recorder
) -> None:
    cleaned = asyncio.Event()
    trace_ids: list[str] = []

    async def llm(msg: Message, ctx: Context) -> None:
        trace_ids.append(msg.trace_id)
        await ctx.emit_chunk(parent=msg, text="t0")
        try:
            await asyncio.Event().wait()  # an LLM that would talk forever
        except asyncio.CancelledError:
            cleaned.set()
            raise

    flow = create(Node(llm, name="llm").to(), middlewares=[recorder])
    running(flow)
    app = app_for(kit, flow)
    async with kit.serve(app) as addr, client(addr) as http:
        async with http.stream("GET", "/stream") as resp:
            async for event in kit.sse_events(resp.aiter_lines()):
                if event.event == "chunk":
                    assert json.loads(event.data)["text"] == "t0"
                    break
        # Leaving the block closed the connection mid-stream.
        async with asyncio.timeout(5.0):  # the bound on disconnect-to-cancel
            await cleaned.wait()
        await recorder.wait("trace_cancel_finish", trace_id=trace_ids[0])
        await app.wait_idle()
    assert app.finished == [None]  # the handler returned normally
    assert flow.inspect().is_quiescent


async def test_slow_reader_back_pressures_the_producer(kit: type[Kit], running: Start) -> None:
    maxsize, total, size = 4, 512, 32 * 1024
    client_paused, blocked = asyncio.Event(), asyncio.Event()
    state = {"produced": 0, "at_block": -1}
    big = "x" * (size - 8)

    async def producer(msg: Message, ctx: Context) -> Message:
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
        return kit.answer(msg, "end")

    flow = running(create(Node(producer, name="p").to(), queue_maxsize=maxsize))
    small_buffers = httpx.AsyncHTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)]
    )
    app = app_for(kit, flow)
    async with (
        kit.serve(app, sndbuf=32 * 1024) as addr,
        client(addr, transport=small_buffers) as http,
    ):
        async with http.stream("GET", "/stream") as resp:
            events = kit.sse_events(resp.aiter_lines())
            assert (await anext(events)).event == "start"
            first = await anext(events)
            assert json.loads(first.data)["text"] == "start"
            client_paused.set()  # ... and read nothing more for now
            await kit.wait_for(blocked.wait())
            (trace,) = flow.inspect().traces.values()
            assert trace.queued <= maxsize  # the subscription buffer is bounded
            assert trace.pending <= maxsize + 1
            # What the network path holds is bounded too: far below the 16 MiB produced.
            assert state["at_block"] <= 64, state
            assert state["produced"] == state["at_block"]  # parked, not running ahead
            seqs, texts = [], []
            async for event in events:
                if event.event == "chunk":
                    data = json.loads(event.data)
                    seqs.append(data["seq"])
                    texts.append(data["text"][:7])
                else:
                    assert event.event in ("result", "end")
        await app.wait_idle()
    assert seqs == list(range(1, total + 2))
    assert texts == [f"{i:07d}" for i in range(total)] + [""]
    assert state["produced"] == total


async def test_fan_out_provenance(kit: type[Kit], running: Start) -> None:
    async def split(msg: Message, ctx: Context) -> Message:
        return msg

    def branch(name: str) -> Node:
        async def write(msg: Message, ctx: Context) -> None:
            async with StreamWriter(ctx, msg) as out:
                for i in range(3):
                    await out.write(f"{name}{i}")

        return Node(write, name=name)

    s, left, right = Node(split, name="split"), branch("left"), branch("right")
    flow = running(create(s.to(left, right), left.to(), right.to()))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr, client(addr) as http:
        async with http.stream("GET", "/stream") as resp:
            events = [e async for e in kit.sse_events(resp.aiter_lines())]
        await app.wait_idle()
    assert events[-1].event == "end"
    # ids never repeat across the two streams of the trace.
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    frames = [json.loads(e.data) for e in events if e.event == "chunk"]
    streams: dict[str, list[dict[str, Any]]] = {}
    for f in frames:
        streams.setdefault(f["node"], []).append(f)
    assert set(streams) == {"left", "right"}
    for name, frs in streams.items():
        assert [f["seq"] for f in frs] == [0, 1, 2, 3]
        assert [f["text"] for f in frs] == [f"{name}0", f"{name}1", f"{name}2", ""]
        assert len({f["stream_id"] for f in frs}) == 1
        assert frs[0]["stream_id"].endswith(f":{name}")


async def test_idle_timeout_reports_an_error_event_and_cancels(
    kit: type[Kit], running: Start
) -> None:
    cleaned = asyncio.Event()

    async def stalls(msg: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=msg, text="t0")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaned.set()
            raise

    flow = running(create(Node(stalls, name="stalls").to()))
    app = app_for(kit, flow, idle_timeout=0.05)
    async with kit.serve(app) as addr, client(addr) as http:
        async with http.stream("GET", "/stream") as resp:
            events = [e async for e in kit.sse_events(resp.aiter_lines())]
        await app.wait_idle()
    assert [e.event for e in events] == ["start", "chunk", "error"]
    error = json.loads(events[-1].data)
    assert error["code"] == "IDLE_TIMEOUT"
    assert error["component"] == "stream"
    assert error["node"] is None
    await kit.wait_for(cleaned.wait())


@pytest.mark.parametrize("entry", ["sse_endpoint", "EventStreamResponse"])
@pytest.mark.parametrize("state", ["never run", "stopped"])
async def test_flow_not_running_answers_503(kit: type[Kit], entry: str, state: str) -> None:
    async def llm(msg: Message, ctx: Context) -> None:
        return None

    flow = create(Node(llm, name="llm").to())
    if state == "stopped":
        flow.run()
        await flow.stop()
    if entry == "sse_endpoint":
        app = app_for(kit, flow)
    else:

        async def endpoint(request: Request) -> EventStreamResponse:
            return EventStreamResponse(flow, make_message(request))

        app = kit.Tracked(Starlette(routes=[Route("/stream", endpoint)]))
    async with kit.serve(app) as addr, client(addr) as http:
        resp = await http.get("/stream")
        await app.wait_idle()
    assert resp.status_code == 503
    assert "not running" in resp.text
    assert "Traceback" not in resp.text
    assert app.finished == [None]


async def test_endpoint_for_a_flow_without_a_streaming_path() -> None:
    async def f(msg: Any, ctx: Context) -> Any:
        return msg

    a, b = Node(f, name="a"), Node(f, name="b")
    flow = create(a.to(b), b.to(a), allow_cycles=True)
    with pytest.raises(StreamingPathError, match="no ingress node"):
        sse_endpoint(flow, make_message)


def blocking_flow(cleaned: asyncio.Event) -> PenguiFlow:
    async def llm(msg: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=msg, text="t0")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaned.set()
            raise

    return create(Node(llm, name="llm").to())


def http_scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "path": "/stream",
        "raw_path": b"/stream",
        "query_string": b"",
        "headers": [],
        "scheme": "http",
        "server": ("127.0.0.1", 80),
    }


class FakeClient:
    """ASGI receive/send of a client that never disconnects; signals the first chunk."""

    def __init__(self) -> None:
        self.first_chunk = asyncio.Event()
        self.sent: list[MutableMapping[str, Any]] = []
        self._requested = False

    async def receive(self) -> MutableMapping[str, Any]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)
        if b"t0" in message.get("body", b""):
            self.first_chunk.set()


async def test_cleanup_runs_when_the_handler_task_is_cancelled(
    kit: type[Kit], running: Start
) -> None:
    cleaned = asyncio.Event()
    flow = running(blocking_flow(cleaned))
    msg = kit.message()
    response = EventStreamResponse(flow, msg)
    fake = FakeClient()
    task = asyncio.create_task(response(http_scope(), fake.receive, fake.send))
    await kit.wait_for(fake.first_chunk.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    trace = flow.inspect().traces.get(msg.trace_id)
    assert trace is None or trace.cancelled  # cancelled before the handler gave up
    await kit.wait_for(cleaned.wait())
    assert response.trace_id == msg.trace_id
    assert response.ended == "cancelled"  # by the handler's own cleanup


async def test_cleanup_survives_an_anyio_cancel_scope(kit: type[Kit], running: Start) -> None:
    # Starlette/anyio deliver cancellation again at every await of a cancelled scope.
    cleaned = asyncio.Event()
    flow = running(blocking_flow(cleaned))
    msg = kit.message()
    response = EventStreamResponse(flow, msg)
    fake = FakeClient()
    with anyio.CancelScope() as scope:

        async def cancel_after_first_chunk() -> None:
            await fake.first_chunk.wait()
            scope.cancel()

        watcher = asyncio.create_task(cancel_after_first_chunk())
        await response(http_scope(), fake.receive, fake.send)
    await watcher
    assert scope.cancelled_caught
    trace = flow.inspect().traces.get(msg.trace_id)
    assert trace is None or trace.cancelled
    await kit.wait_for(cleaned.wait())


async def test_a_node_that_gives_up_ends_with_an_error_event(
    kit: type[Kit], running: Start
) -> None:
    async def llm(msg: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=msg, text="partial")
        raise ValueError("db password is hunter2")

    node = Node(llm, name="llm")
    flow = running(create(node.to()))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr, client(addr) as http:
        async with http.stream("GET", "/stream") as resp:
            body = [line async for line in resp.aiter_lines()]
        await app.wait_idle()
    events = [e async for e in kit.sse_events(_aiter(body))]
    assert [e.event for e in events] == ["start", "chunk", "error"]
    error = json.loads(events[-1].data)
    assert error == {
        "trace_id": resp.headers["x-trace-id"],
        "code": "NODE_EXCEPTION",
        "node": "llm",
        "component": "llm",
        "message": "node 'llm' failed after 1 attempt",
    }
    text = "\n".join(body)
    assert "hunter2" not in text
    assert "Traceback" not in text
    assert "ValueError" not in text


async def _aiter(items: list[str]) -> Any:
    for item in items:
        yield item


async def test_keep_alive_comments_while_idle(kit: type[Kit], running: Start) -> None:
    release = asyncio.Event()

    async def llm(msg: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=msg, text="thinking")
        await release.wait()  # the model thinks; the client must still see traffic
        await ctx.emit_chunk(parent=msg, text="done", done=True)

    flow = running(create(Node(llm, name="llm").to()))
    app = app_for(kit, flow, ping_interval=0.02)
    pings = 0
    lines: list[str] = []
    async with kit.serve(app) as addr, client(addr) as http:
        async with http.stream("GET", "/stream") as resp:
            async for line in resp.aiter_lines():
                lines.append(line)
                if line.startswith(":"):
                    pings += 1
                    if pings == 3:
                        release.set()
        await app.wait_idle()
    assert pings >= 3
    events = [e async for e in kit.sse_events(_aiter(lines))]
    assert [e.event for e in events] == ["start", "chunk", "chunk", "end"]


async def test_pings_can_be_disabled(kit: type[Kit], running: Start) -> None:
    async def llm(msg: Message, ctx: Context) -> None:
        await asyncio.Event().wait()

    flow = running(create(Node(llm, name="llm").to()))
    # Idle for 0.3 s, which is fifteen ping intervals of the other test: none is sent.
    app = app_for(kit, flow, ping_interval=None, idle_timeout=0.3)
    async with kit.serve(app) as addr, client(addr) as http:
        async with http.stream("GET", "/stream") as resp:
            lines = [line async for line in resp.aiter_lines()]
        await app.wait_idle()
    assert not [line for line in lines if line.startswith(":")]
    assert "event: error" in lines


async def test_a_request_dropped_without_output_ends_with_an_error_event(
    kit: type[Kit], running: Start
) -> None:
    async def gate(msg: Message, ctx: Context) -> None:
        return None  # a filter that drops the request

    flow = running(create(Node(gate, name="gate").to()))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr, client(addr) as http:
        async with http.stream("GET", "/stream") as resp:
            body = [line async for line in resp.aiter_lines()]
        await app.wait_idle()
    events = [e async for e in kit.sse_events(_aiter(body))]
    assert [e.event for e in events] == ["start", "error"]
    assert json.loads(events[-1].data) == {
        "trace_id": resp.headers["x-trace-id"],
        "code": "NO_RESULT",
        "node": "gate",
        "component": "gate",
        "message": "node 'gate' ended the request without a result",
    }


def options_app(kit: type[Kit], flow: PenguiFlow) -> Any:
    """``/stream?q=..&id=..&idle=..``: a chosen trace id and idle timeout per request."""

    async def endpoint(request: Request) -> EventStreamResponse:
        params = request.query_params
        msg = Message(payload=params["q"], headers=Headers(tenant="t"))
        if "id" in params:
            msg = msg.model_copy(update={"trace_id": params["id"]})
        idle = float(params["idle"]) if "idle" in params else None
        return EventStreamResponse(flow, msg, idle_timeout=idle)

    return kit.Tracked(Starlette(routes=[Route("/stream", endpoint)]))


async def read_to_end(http: httpx.AsyncClient, q: str) -> list[str]:
    async with http.stream("GET", "/stream", params={"q": q}) as resp:
        return [line async for line in resp.aiter_lines()]


async def test_a_client_that_leaves_while_waiting_for_room_is_never_served(
    kit: type[Kit], running: Start
) -> None:
    gate, seen = asyncio.Event(), list[str]()
    flow = running(kit.gated_flow(gate, seen))
    app = app_for(kit, flow)
    async with kit.serve(app) as addr, client(addr) as http:
        first = asyncio.create_task(read_to_end(http, "a"))
        await kit.until(lambda: seen == ["a"])
        second = asyncio.create_task(read_to_end(http, "b"))
        await kit.until(lambda: len(flow.inspect().traces) == 2)  # "b" sits on the edge
        third = asyncio.create_task(read_to_end(http, "c"))
        await kit.until(lambda: len(flow.inspect().traces) == 3)  # "c" waits for room
        third.cancel()  # that client goes away
        await kit.until(lambda: len(app.finished) == 1)  # its handler returned ...
        assert app.finished == [None]
        assert len(flow.inspect().traces) == 2  # ... and let go of its trace
        gate.set()
        await kit.wait_for(asyncio.gather(first, second))
        await app.wait_idle(3)
    assert seen == ["a", "b"]  # the request given up while waiting never ran


async def test_the_idle_timeout_bounds_the_wait_for_room(kit: type[Kit], running: Start) -> None:
    gate, seen = asyncio.Event(), list[str]()
    flow = running(kit.gated_flow(gate, seen))
    app = options_app(kit, flow)
    async with kit.serve(app) as addr, client(addr) as http:
        first = asyncio.create_task(read_to_end(http, "a"))
        await kit.until(lambda: seen == ["a"])
        second = asyncio.create_task(read_to_end(http, "b"))
        await kit.until(lambda: len(flow.inspect().traces) == 2)
        loop = asyncio.get_running_loop()
        asked = loop.time()
        busy = await http.get("/stream", params={"q": "c", "idle": "0.3"})
        assert loop.time() - asked < 0.3 + 1.0
        assert (busy.status_code, busy.text) == (503, "the flow is busy; try again later")
        assert busy.headers["retry-after"] == "1"
        assert len(flow.inspect().traces) == 2
        gate.set()
        await kit.wait_for(asyncio.gather(first, second))
        await app.wait_idle(3)
    assert seen == ["a", "b"]


async def test_a_trace_id_already_in_use_answers_409(kit: type[Kit], running: Start) -> None:
    gate, seen = asyncio.Event(), list[str]()
    flow = running(kit.gated_flow(gate, seen))
    app = options_app(kit, flow)
    async with kit.serve(app) as addr, client(addr) as http:
        async with http.stream("GET", "/stream", params={"q": "a", "id": "same"}) as first:
            await kit.until(lambda: seen == ["a"])
            again = await http.get("/stream", params={"q": "b", "id": "same"})
            gate.set()
            lines = [line async for line in first.aiter_lines()]
        await app.wait_idle(2)
    assert again.status_code == 409
    assert "trace id" in again.text
    assert "Traceback" not in again.text
    assert app.finished == [None, None]  # no handler failed
    assert "event: end" in lines  # the first request was not disturbed
    assert seen == ["a"]


async def test_a_graceful_shutdown_timeout_ends_open_streams(kit: type[Kit]) -> None:
    # The documented service setup: the flow stops in the lifespan shutdown, which the
    # server runs only after its connections closed; the timeout breaks that wait.
    cleaned, streaming = asyncio.Event(), asyncio.Event()
    flow = blocking_flow(cleaned)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        flow.run()
        try:
            yield
        finally:
            await flow.stop(timeout=5.0)

    endpoint = sse_endpoint(flow, make_message)
    tracked = kit.Tracked(Starlette(routes=[Route("/stream", endpoint)], lifespan=lifespan))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    addr = f"127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(tracked, log_level="critical", http="h11", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    served = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))

    async def read() -> None:
        async with client(addr) as http, http.stream("GET", "/stream") as resp:
            async for line in resp.aiter_lines():
                if "t0" in line:
                    streaming.set()

    reader = asyncio.create_task(read())
    try:
        await kit.wait_for(streaming.wait())
        loop = asyncio.get_running_loop()
        asked = loop.time()
        server.should_exit = True  # what SIGINT / SIGTERM do
        await kit.wait_for(served)
        assert loop.time() - asked < 1 + 2.0
        assert cleaned.is_set()  # the open stream's trace was cancelled
        assert not flow.is_running
        await tracked.wait_idle()  # the cancelled handler's cleanup ran to its end
        assert flow.inspect().is_quiescent
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        server.force_exit = True
        sock.close()
