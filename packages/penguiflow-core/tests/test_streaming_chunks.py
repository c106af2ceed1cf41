"""``emit_chunk``: per-trace backpressure and per-stream sequence counters."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.core import Context, PenguiFlow
from penguiflow.errors import FlowStoppedError
from penguiflow.node import Node, NodePolicy
from penguiflow.types import Headers, Message, StreamChunk

if TYPE_CHECKING:
    from conftest import MakeFlow


# Streams opened from OpenSea here are left open on purpose (their counters persist).
pytestmark = pytest.mark.leaves_state


def node(fn: Any, name: str, **policy: Any) -> Node:
    return Node(fn, name=name, policy=NodePolicy(**{"validate": "none", **policy}))


def msg(payload: Any = "p", **kw: Any) -> Message:
    return Message(payload=payload, headers=Headers(tenant="acme"), **kw)


async def fetch(flow: PenguiFlow, **kw: Any) -> Any:
    return await asyncio.wait_for(flow.fetch(**kw), 1.0)


async def echo(m: Any, ctx: Context) -> Any:
    return m


async def test_envelope_and_chunk_fields(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "sink").to())
    flow.run()
    parent = msg(deadline_s=9e9, meta={"req": [1]}, ts=1.0)
    chunk = await flow.emit_chunk(parent=parent, text="hi", meta={"k": "v"})
    out = await fetch(flow)
    assert isinstance(out, Message)
    assert out.payload == chunk
    assert chunk == StreamChunk(stream_id=parent.trace_id, seq=0, text="hi", meta={"k": "v"})
    assert out.trace_id == parent.trace_id
    assert out.headers == parent.headers
    assert out.deadline_s == parent.deadline_s
    assert out.meta == parent.meta and out.meta is not parent.meta  # shallow copy
    assert out.meta["req"] is parent.meta["req"]
    assert out.ts != 1.0  # a fresh ts


async def test_chunk_meta_is_copied(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "sink").to())
    flow.run()
    meta = {"a": 1}
    chunk = await flow.emit_chunk(parent=msg(), text="x", meta=meta)
    meta["a"] = 2
    assert chunk.meta == {"a": 1}
    assert (await flow.emit_chunk(parent=msg(), text="y")).meta == {}


async def test_seq_increments_per_stream_and_resets_after_done(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "sink").to(), queue_maxsize=0)
    flow.run()
    parent = msg()
    seqs = [(await flow.emit_chunk(parent=parent, text=t)).seq for t in "abc"]
    done = await flow.emit_chunk(parent=parent, text="d", done=True)
    assert seqs == [0, 1, 2] and (done.seq, done.done) == (3, True)
    assert (await flow.emit_chunk(parent=parent, text="again")).seq == 0
    other = await flow.emit_chunk(parent=parent, text="o", stream_id="other")
    assert (other.stream_id, other.seq) == ("other", 0)
    empty = await flow.emit_chunk(parent=parent, text="e", stream_id="")
    assert (empty.stream_id, empty.seq) == (parent.trace_id, 1)


async def test_explicit_seq_becomes_the_counter(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "sink").to(), queue_maxsize=0)
    flow.run()
    parent = msg()
    assert (await flow.emit_chunk(parent=parent, text="a", seq=10)).seq == 10
    assert (await flow.emit_chunk(parent=parent, text="b")).seq == 11
    assert (await flow.emit_chunk(parent=parent, text="c", seq=3)).seq == 3
    assert (await flow.emit_chunk(parent=parent, text="d")).seq == 4


async def test_node_context_counters_are_separate_from_opensea(make_flow: MakeFlow) -> None:
    done = asyncio.Event()
    node_seqs: list[int] = []

    async def producer(m: Message, ctx: Context) -> None:
        for t in "xy":
            chunk = await ctx.emit_chunk(parent=m, text=t)
            node_seqs.append(chunk.seq)
        done.set()

    p, x = node(producer, "p"), node(echo, "x")
    flow = make_flow(p.to(), x.to(), queue_maxsize=0)
    flow.run()
    parent = msg()
    assert (await flow.emit_chunk(parent=parent, text="outside", to=x)).seq == 0
    await flow.emit(parent, to=p)
    await asyncio.wait_for(done.wait(), 1.0)
    assert node_seqs == [0, 1]
    assert (await flow.emit_chunk(parent=parent, text="outside", to=[x])).seq == 1


async def test_chunks_keep_seq_order_through_a_chain(make_flow: MakeFlow) -> None:
    async def producer(m: Message, ctx: Context) -> None:
        for i in range(20):
            await ctx.emit_chunk(parent=m, text=str(i), done=i == 19)

    a, b, c = node(producer, "a"), node(echo, "b"), node(echo, "c")
    flow = make_flow(a.to(b), b.to(c), queue_maxsize=2)
    flow.run()
    await flow.emit(msg())
    got = [await fetch(flow) for _ in range(20)]
    assert [g.payload.seq for g in got] == list(range(20))
    assert got[-1].payload.done


async def _per_trace_capacity_case(make_flow: MakeFlow, stream_id: str | None) -> None:
    after_first, after_second = asyncio.Event(), asyncio.Event()

    async def producer(m: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=m, text="1", stream_id=stream_id)
        after_first.set()
        await ctx.emit_chunk(parent=m, text="2", stream_id=stream_id)
        after_second.set()

    x, p = node(echo, "x"), node(producer, "p")
    flow = make_flow(x.to(), p.to(), queue_maxsize=4)
    flow.run()
    parent = msg()
    for i in range(3):  # three unfetched results of the trace wait on x's Rookery edge
        await flow.emit(parent.model_copy(update={"payload": i}), to=x)
    await flow.emit(parent, to=p)
    await asyncio.wait_for(after_first.wait(), 1.0)
    # pending = 3 (x) + 1 (p in flight) + 1 (first chunk): 5 - 1 >= 4, the producer waits,
    # although p's own Rookery edge has room for three more.
    assert not after_second.is_set()
    assert flow.context(p).queue_depth_out() == 1
    await fetch(flow, from_=x)  # frees one unit of the trace's capacity
    await asyncio.wait_for(after_second.wait(), 1.0)


async def test_follow_up_chunks_wait_for_per_trace_capacity(make_flow: MakeFlow) -> None:
    await _per_trace_capacity_case(make_flow, None)


async def test_per_trace_capacity_is_keyed_by_trace_not_stream_id(make_flow: MakeFlow) -> None:
    """A custom stream_id does not bypass the per-trace backpressure."""
    await _per_trace_capacity_case(make_flow, "custom-stream")


async def test_first_chunk_and_unbounded_flows_never_wait(make_flow: MakeFlow) -> None:
    x = node(echo, "x")
    flow = make_flow(x.to(), queue_maxsize=0)
    flow.run()
    parent = msg()
    for i in range(50):
        await flow.emit(parent.model_copy(update={"payload": i}))
    for i in range(50):
        coro = flow.emit_chunk(parent=parent, text=str(i))
        try:
            coro.send(None)
        except StopIteration:
            continue
        raise AssertionError(f"chunk {i} suspended in an unbounded flow")


async def test_stop_releases_a_blocked_emit_chunk(make_flow: MakeFlow) -> None:
    x = node(echo, "x")
    flow = make_flow(x.to(), queue_maxsize=1)
    flow.run()
    parent = msg()
    await flow.emit_chunk(parent=parent, text="0")
    await flow.emit_chunk(parent=parent, text="1")  # pending 1: 0 < 1, goes through
    blocked = asyncio.ensure_future(flow.emit_chunk(parent=parent, text="2"))
    await asyncio.sleep(0)
    assert not blocked.done()
    await flow.stop()
    with pytest.raises(FlowStoppedError):  # released, and the chunk is not sent
        await asyncio.wait_for(blocked, 1.0)


async def test_cancel_frees_the_stream_counters(make_flow: MakeFlow) -> None:
    """Cancelling a trace drops its stream counters."""
    flow = make_flow(node(echo, "sink").to(), queue_maxsize=0)
    flow.run()
    parent = msg()
    await flow.emit_chunk(parent=parent, text="a")
    await flow.emit_chunk(parent=parent, text="b", stream_id="side")
    assert await flow.cancel(parent.trace_id) is True
    assert (await flow.emit_chunk(parent=parent, text="c")).seq == 0
    assert (await flow.emit_chunk(parent=parent, text="d", stream_id="side")).seq == 0


async def test_idle_trace_keeps_its_stream_counters(make_flow: MakeFlow) -> None:
    """seq continues between calls, which external producers rely on."""
    flow = make_flow(node(echo, "sink").to())
    flow.run()
    parent = msg()
    await flow.emit_chunk(parent=parent, text="a")
    await fetch(flow)
    assert flow.inspect().traces == {}  # the trace is idle
    assert (await flow.emit_chunk(parent=parent, text="b")).seq == 1


async def test_emit_chunk_to_unknown_target_raises(make_flow: MakeFlow) -> None:
    a, b = node(echo, "a"), node(echo, "b")
    flow = make_flow(a.to(b))
    flow.run()
    try:
        await flow.emit_chunk(parent=msg(), text="x", to=b)
    except KeyError as exc:
        assert "Unknown target b for OpenSea" in str(exc)
    else:
        raise AssertionError("KeyError expected")
