"""docs/core-public-api.md: ``flow.subscribe(trace_id)``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow import Context
from penguiflow.node import Node, NodePolicy
from penguiflow.types import Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow


def node(fn: Any, name: str) -> Node:
    return Node(fn, name=name, policy=NodePolicy(validate="none"))


def msg(payload: Any = "p") -> Message:
    return Message(payload=payload, headers=Headers(tenant="acme"))


async def split(m: Message, ctx: Context) -> None:
    for part in m.payload:
        await ctx.emit(m.model_copy(update={"payload": part}))


async def test_subscription_receives_its_trace_in_order_and_drains(make_flow: MakeFlow) -> None:
    flow = make_flow(node(split, "s").to())
    flow.run()
    mine, other = msg("abc"), msg("xy")
    got: list[Any] = []
    async with flow.subscribe(mine.trace_id) as results:
        await flow.emit(other)
        await flow.emit(mine)
        got.extend([item.payload async for item in results])
        assert results.done == "drained"
    assert got == ["a", "b", "c"]
    # other traces still go to the shared Rookery edges
    assert [(await asyncio.wait_for(flow.fetch(), 1.0)).payload for _ in range(2)] == ["x", "y"]
    assert flow.inspect().traces == {}


async def test_subscription_ends_on_cancel(make_flow: MakeFlow) -> None:
    started = asyncio.Event()

    async def hang(m: Message, ctx: Context) -> None:
        await ctx.emit(m.model_copy(update={"payload": "partial"}))
        started.set()
        await asyncio.Event().wait()

    flow = make_flow(node(hang, "h").to())
    flow.run()
    m = msg()
    async with flow.subscribe(m.trace_id) as results:
        await flow.emit(m)
        first = await asyncio.wait_for(results.get(), 1.0)
        assert first.payload == "partial"
        await asyncio.wait_for(started.wait(), 1.0)
        await flow.cancel(m.trace_id)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(results.get(), 1.0)
        assert results.done == "cancelled"


@pytest.mark.leaves_state
async def test_subscription_ends_on_stop(make_flow: MakeFlow) -> None:
    async def hang(m: Any, ctx: Context) -> None:
        await asyncio.Event().wait()

    flow = make_flow(node(hang, "h").to())
    flow.run()
    m = msg()
    async with flow.subscribe(m.trace_id) as results:
        await flow.emit(m)
        waiter = asyncio.ensure_future(results.get())
        await flow.stop()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiter, 1.0)
        assert results.done == "stopped"


async def test_get_timeout(make_flow: MakeFlow) -> None:
    async def hang(m: Any, ctx: Context) -> None:
        await asyncio.Event().wait()

    flow = make_flow(node(hang, "h").to())
    flow.run()
    m = msg()
    async with flow.subscribe(m.trace_id) as results:
        await flow.emit(m)
        with pytest.raises(TimeoutError):
            await results.get(timeout=0.01)


async def test_leaving_drops_undelivered_items_and_accounts_them(make_flow: MakeFlow) -> None:
    flow = make_flow(node(split, "s").to())
    flow.run()
    m = msg("abcd")
    async with flow.subscribe(m.trace_id) as results:
        await flow.emit(m)
        assert (await asyncio.wait_for(results.get(), 1.0)).payload == "a"
    assert flow.inspect().traces == {}
    assert flow.inspect().subscriptions == 0
    assert all(e.depth == 0 for e in flow.inspect().edges)


async def test_slow_reader_back_pressures_the_producer(make_flow: MakeFlow) -> None:
    produced: list[int] = []
    released = asyncio.Event()

    async def many(m: Message, ctx: Context) -> None:
        for i in range(10):
            await ctx.emit(m.model_copy(update={"payload": i}))
            produced.append(i)
        released.set()

    flow = make_flow(node(many, "m").to(), queue_maxsize=2)
    flow.run()
    m = msg()
    async with flow.subscribe(m.trace_id) as results:
        await flow.emit(m)
        first = await asyncio.wait_for(results.get(), 1.0)
        # the buffer is bounded by queue_maxsize: the producer could not run ahead
        assert len(produced) <= 2 + 1
        rest = [item.payload async for item in results]
        assert [first.payload, *rest] == list(range(10))
    assert released.is_set()


async def test_one_subscription_per_trace(make_flow: MakeFlow) -> None:
    flow = make_flow(node(split, "s").to())
    flow.run()
    async with flow.subscribe("t1"):
        with pytest.raises(RuntimeError):
            flow.subscribe("t1")
