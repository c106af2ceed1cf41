"""Stop semantics: ``stop()`` is bounded, cancels workers, leaves nothing; emit-after-stop fails.

``stop()`` cancels every worker and waits for it (in-flight node
coroutines see ``CancelledError``), releases ``emit_chunk`` waiters and marks the flow not
running; the flow can ``run()`` again. Core adds ``FlowStoppedError`` (a
``RuntimeError``) for emitting into a stopped flow.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow import Context, Headers, Message, Node, NodePolicy, create
from penguiflow.errors import FlowStoppedError

if TYPE_CHECKING:
    from conftest import Figure, Recorder, TaskLeaks, TasksNow

H = Headers(tenant="stop")


def msg(payload: Any) -> Message:
    return Message(payload=payload, headers=H)


async def test_stop_with_queued_and_inflight_work_is_bounded_and_leaves_no_task(
    recorder: Recorder, tasks_now: TasksNow, task_leaks: TaskLeaks, figure: Figure
) -> None:
    started = asyncio.Event()
    interrupted: list[int] = []

    async def slow(m: Message, ctx: Context) -> Message:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            interrupted.append(m.payload)
            raise
        return m

    async def echo(m: Message, ctx: Context) -> Message:
        return m

    a = Node(echo, name="a")
    b = Node(slow, name="b", policy=NodePolicy(max_concurrency=4))
    c = Node(echo, name="c")
    flow = create(a.to(b), b.to(c), c.to(), queue_maxsize=0, middlewares=[recorder])
    before = tasks_now()
    flow.run()
    for i in range(1000):
        await flow.emit(msg(i))
    await asyncio.wait_for(started.wait(), 5)
    await recorder.until("node_start", count=4 + 1000)  # a took all, b has 4 in flight
    queued = sum(e.depth for e in flow.inspect().edges)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(flow.stop(), 5)
    elapsed = loop.time() - t0
    assert sorted(interrupted) == [0, 1, 2, 3]  # in-flight invocations saw CancelledError
    assert not flow.is_running and flow.inspect().workers == 0
    assert len(recorder.of("node_cancelled")) == 1 + 4 + 1  # every worker reported
    assert task_leaks(before) == []
    figure(queued_at_stop=queued, inflight_at_stop=4, stop_ms=round(elapsed * 1000, 2))


async def test_emit_after_stop_raises_flow_stopped_error() -> None:
    async def echo(m: Message, ctx: Context) -> Message:
        return m

    flow = create(Node(echo, name="n").to())
    flow.run()
    await flow.stop()
    parent = msg("x")
    with pytest.raises(FlowStoppedError):
        await flow.emit(msg(1))
    with pytest.raises(FlowStoppedError):
        flow.emit_nowait(msg(1))
    with pytest.raises(FlowStoppedError):
        await flow.emit_chunk(parent=parent, text="t")
    assert issubclass(FlowStoppedError, RuntimeError)
    assert flow.inspect().is_quiescent  # the failed emits counted nothing
    await flow.stop()  # a second stop is a no-op
    flow.run()  # and the flow runs again
    await flow.emit(msg(2))
    assert (await asyncio.wait_for(flow.fetch(), 5)).payload == 2
    await flow.stop()


async def test_restart_after_stop_completes_queued_work(
    tasks_now: TasksNow, task_leaks: TaskLeaks
) -> None:
    gate = asyncio.Event()

    async def gated(m: Message, ctx: Context) -> Message:
        await gate.wait()
        return m

    flow = create(Node(gated, name="n").to(), queue_maxsize=0)
    before = tasks_now()
    flow.run()
    sent = [msg(i) for i in range(50)]
    for m in sent:
        await flow.emit(m)
    await asyncio.wait_for(flow.stop(), 5)  # item 0 was in flight, 1..49 queued
    gate.set()
    flow.run()
    got = [(await asyncio.wait_for(flow.fetch(), 5)).payload for _ in range(49)]
    assert got == list(range(1, 50))  # nothing lost, order kept, accounting consistent
    assert flow.inspect().is_quiescent, flow.inspect()
    await asyncio.wait_for(flow.stop(), 5)
    assert task_leaks(before) == []


async def test_stop_releases_blocked_emit_chunk_and_survives_its_own_cancellation(
    tasks_now: TasksNow, task_leaks: TaskLeaks
) -> None:
    first = asyncio.Event()

    async def streamer(m: Message, ctx: Context) -> None:
        for k in range(1000):  # nobody fetches: per-trace capacity blocks the producer
            await ctx.emit_chunk(parent=m, text=str(k))
            first.set()

    flow = create(Node(streamer, name="s").to(), queue_maxsize=4)
    before = tasks_now()
    flow.run()
    await flow.emit(msg("go"))
    await asyncio.wait_for(first.wait(), 5)
    stopping = asyncio.ensure_future(flow.stop())
    await asyncio.sleep(0)  # stop() has started cancelling the workers
    stopping.cancel()  # cancelling stop() itself must not leave a worker behind
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert not flow.is_running
    assert task_leaks(before) == []
