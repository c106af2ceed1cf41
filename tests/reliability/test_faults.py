"""Faults: every misbehaving node or middleware ends in a documented state with an event.

Each scenario sends one faulty item and then a healthy item of another trace through the
same worker. The faulty item must end with the documented event, the healthy one must
still arrive, the flow must be quiescent afterwards and ``stop()`` must leave no task.
Timing faults (timeouts, hangs, blocking middlewares) run on the test kit's virtual
clock, so they take no real time and hang guards fire instantly when something hangs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from penguiflow import Context, FlowEvent, Headers, Message, ModelRegistry, Node, NodePolicy, create
from penguiflow.core import PenguiFlow

if TYPE_CHECKING:
    from conftest import Recorder, Rss, TaskLeaks, TasksNow
    from penguiflow.testing import VirtualClock

H = Headers(tenant="faults")


def msg(payload: Any) -> Message:
    return Message(payload=payload, headers=H)


def faulty(
    fault: Callable[[Message], Awaitable[Any]], **policy: Any
) -> Callable[[Message, Any], Awaitable[Any]]:
    """A node body: ``fault`` for payload "bad", echo for anything else."""

    async def body(m: Message, ctx: Context) -> Any:
        if m.payload == "bad":
            return await fault(m)
        return m

    return body


async def bad_then_good(
    flow: PenguiFlow,
    recorder: Recorder,
    tasks_now: TasksNow,
    task_leaks: TaskLeaks,
    *,
    bad_out: bool = False,
) -> tuple[Message, Message]:
    """Run "bad" then "good" through ``flow``; the good one must come out; then stop.

    ``bad_out``: the "bad" item is expected to come out too (before the good one).
    """
    before = tasks_now()
    flow.run()
    bad, good = msg("bad"), msg("good")
    await flow.emit(bad)
    await flow.emit(good)
    if bad_out:
        out = await asyncio.wait_for(flow.fetch(), 30)
        assert out.trace_id == bad.trace_id
    out = await asyncio.wait_for(flow.fetch(), 30)
    assert out.trace_id == good.trace_id
    assert flow.inspect().is_quiescent, flow.inspect()
    await asyncio.wait_for(flow.stop(), 30)
    assert task_leaks(before) == []
    return bad, good


def names(recorder: Recorder, trace_id: str) -> list[str]:
    return recorder.names(trace_id)


async def test_node_raises_is_retried_then_dropped_with_node_failed(
    recorder: Recorder, tasks_now: TasksNow, task_leaks: TaskLeaks
) -> None:
    async def boom(m: Message) -> Any:
        raise ValueError("boom")

    node = Node(faulty(boom), name="n", policy=NodePolicy(max_retries=2, backoff_base=0))
    flow = create(node.to(), middlewares=[recorder])
    bad, _ = await bad_then_good(flow, recorder, tasks_now, task_leaks)
    assert names(recorder, bad.trace_id) == [
        "node_start", "node_error", "node_retry",
        "node_start", "node_error", "node_retry",
        "node_start", "node_error", "node_failed",
    ]  # fmt: skip
    assert "ValueError('boom')" in recorder.of("node_failed")[0].extra["exception"]


async def test_node_timeout_and_hang_end_in_node_failed(
    virtual_clock: VirtualClock, recorder: Recorder, tasks_now: TasksNow, task_leaks: TaskLeaks
) -> None:
    interrupted: list[str] = []

    async def hang(m: Message) -> Any:
        try:
            await asyncio.Event().wait()  # hangs forever: only timeout_s ends it
        except asyncio.CancelledError:
            interrupted.append("cancelled")
            raise

    node = Node(
        faulty(hang), name="n", policy=NodePolicy(timeout_s=5, max_retries=1, backoff_base=1)
    )
    flow = create(node.to(), middlewares=[recorder])
    bad, _ = await bad_then_good(flow, recorder, tasks_now, task_leaks)
    assert names(recorder, bad.trace_id) == [
        "node_start", "node_timeout", "node_retry", "node_start", "node_timeout", "node_failed",
    ]  # fmt: skip
    assert interrupted == ["cancelled", "cancelled"]  # the hung coroutine was interrupted
    assert virtual_clock.time() >= 11  # 5 s + 1 s backoff + 5 s, all virtual


async def test_node_returns_none_finishes_the_trace_without_output(
    recorder: Recorder, tasks_now: TasksNow, task_leaks: TaskLeaks
) -> None:
    async def nothing(m: Message) -> Any:
        return None

    done: list[str] = []
    flow = create(Node(faulty(nothing), name="n").to(), middlewares=[recorder])
    flow.on_trace_done(done.append)
    bad, _ = await bad_then_good(flow, recorder, tasks_now, task_leaks)
    assert names(recorder, bad.trace_id) == ["node_start", "node_success"]
    assert bad.trace_id in done  # the trace ended (pending reached 0), nothing delivered


class In(BaseModel):
    x: int


class Out(BaseModel):
    y: int


async def test_wrong_output_type_fails_validation(
    recorder: Recorder, tasks_now: TasksNow, task_leaks: TaskLeaks
) -> None:
    async def typed(m: In, ctx: Context) -> Any:
        return {"y": "not an int"} if m.x < 0 else Out(y=m.x)

    node = Node(typed, name="typed", policy=NodePolicy(max_retries=1, backoff_base=0))
    registry = ModelRegistry()
    registry.register("typed", In, Out)
    flow = create(node.to(), middlewares=[recorder])
    before = tasks_now()
    flow.run(registry=registry)
    bad, wrong_in, good = msg({"x": -1}), msg({"x": "nope"}), msg({"x": 3})
    for m in (bad, wrong_in, good):
        await flow.emit(m)
    out = await asyncio.wait_for(flow.fetch(), 30)
    assert out.trace_id == good.trace_id and out.payload == Out(y=3)
    for m in (bad, wrong_in):
        assert names(recorder, m.trace_id)[-1] == "node_failed"
        assert "validation error" in recorder.of("node_failed", m.trace_id)[0].extra["exception"]
    assert flow.inspect().is_quiescent
    await asyncio.wait_for(flow.stop(), 30)
    assert task_leaks(before) == []


class Interrupt(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit."""


async def test_other_base_exception_fails_the_item_and_keeps_the_worker(
    recorder: Recorder, tasks_now: TasksNow, task_leaks: TaskLeaks
) -> None:
    async def base(m: Message) -> Any:
        raise Interrupt("not an Exception")

    node = Node(faulty(base), name="n", policy=NodePolicy(max_retries=3, backoff_base=0))
    flow = create(node.to(), middlewares=[recorder])
    bad, _ = await bad_then_good(flow, recorder, tasks_now, task_leaks)
    # Never retried: one attempt, one node_failed; the worker survives.
    assert names(recorder, bad.trace_id) == ["node_start", "node_failed"]


class Ctrl(KeyboardInterrupt):
    pass


class Exit(SystemExit):
    pass


@pytest.mark.parametrize("exc_type", [Ctrl, Exit])
def test_keyboard_interrupt_and_system_exit_escape_the_loop_and_stop_still_completes(
    exc_type: type[BaseException],
) -> None:
    """Documented: KeyboardInterrupt/SystemExit are process-level; asyncio re-raises them.

    A node raising one ends its worker task and the exception leaves
    ``loop.run_until_complete`` (as for any asyncio task). The item's accounting is
    released, and a later ``stop()`` completes at once and leaves no task.
    """
    loop = asyncio.new_event_loop()
    try:

        async def body(m: Message, ctx: Context) -> Any:
            raise exc_type("interrupt")

        flow = create(Node(body, name="n").to())
        bad = msg("bad")

        async def start() -> None:
            flow.run()
            await flow.emit(bad)
            await asyncio.Event().wait()  # only the interrupt ends this

        with pytest.raises(exc_type):
            loop.run_until_complete(start())
        assert bad.trace_id not in flow.inspect().traces  # released, not lost

        async def finish() -> list[str]:
            current = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not current and not task.get_name().startswith("penguiflow:"):
                    task.cancel()  # our own start() task
            await asyncio.wait_for(flow.stop(), 5)
            return [t.get_name() for t in asyncio.all_tasks() if t is not current]

        assert loop.run_until_complete(finish()) == []
        assert not flow.is_running and flow.inspect().workers == 0
    finally:
        loop.close()


async def _raise_during_trace_cancel(where: str, recorder: Recorder) -> None:
    """A node that raises while being cancelled must not hurt the next trace."""
    started = asyncio.Event()

    async def body(m: Message, ctx: Context) -> Any:
        if m.payload != "victim":
            return m
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if where == "except":
                raise ValueError("cleanup failed") from None
            raise
        finally:
            if where == "finally":
                raise RuntimeError("cleanup failed")
        return m

    flow = create(Node(body, name="n").to(), middlewares=[recorder])
    flow.run()
    try:
        victim, survivor = msg("victim"), msg("survivor")
        await flow.emit(victim)
        await asyncio.wait_for(started.wait(), 5)
        assert await flow.cancel(victim.trace_id)
        await flow.emit(survivor)
        out = await asyncio.wait_for(flow.fetch(), 5)
        assert out.trace_id == survivor.trace_id
        assert names(recorder, survivor.trace_id) == ["node_start", "node_success"]
        assert recorder.of("trace_cancel_finish", victim.trace_id)
    finally:
        await asyncio.wait_for(flow.stop(), 5)


@pytest.mark.parametrize("where", ["except", "finally"])
async def test_raise_during_trace_cancel_does_not_drop_the_next_trace(
    where: str, recorder: Recorder, virtual_clock: VirtualClock
) -> None:
    await _raise_during_trace_cancel(where, recorder)


async def test_stop_completes_when_node_raises_during_cancellation(
    virtual_clock: VirtualClock,
) -> None:
    started = asyncio.Event()

    async def body(m: Message, ctx: Context) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ValueError("cleanup failed") from None

    flow = create(Node(body, name="n").to())
    flow.run()
    await flow.emit(msg("x"))
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.ensure_future(flow.stop())
    try:
        await asyncio.wait_for(asyncio.shield(stopping), 60)  # virtual seconds
    finally:
        if not stopping.done():  # unblock the leaked worker so the test leaves nothing
            for task in asyncio.all_tasks():
                if task.get_name() == "penguiflow:n":
                    task.cancel()
            await asyncio.wait_for(stopping, 5)


async def test_middleware_that_raises_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture, recorder: Recorder, tasks_now: TasksNow, task_leaks: TaskLeaks
) -> None:
    calls = 0

    async def broken(event: FlowEvent) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("middleware bug")

    async def echo(m: Message, ctx: Context) -> Message:
        return m

    flow = create(Node(echo, name="n").to(), middlewares=[broken, recorder])
    with caplog.at_level(logging.ERROR, logger="penguiflow.core"):
        bad, _ = await bad_then_good(flow, recorder, tasks_now, task_leaks, bad_out=True)
    # Both items went through, later middlewares still saw every event, errors logged.
    assert names(recorder, bad.trace_id) == ["node_start", "node_success"]
    assert calls == len(recorder.events)
    assert [r.message for r in caplog.records].count("middleware_error") == calls


async def test_slow_middleware_slows_only_its_node(
    virtual_clock: VirtualClock, recorder: Recorder, tasks_now: TasksNow, task_leaks: TaskLeaks
) -> None:
    async def slow(event: FlowEvent) -> None:
        if event.event_type == "node_start":
            await asyncio.sleep(10)  # virtual: a middleware is awaited inline

    async def echo(m: Message, ctx: Context) -> Message:
        return m

    flow = create(Node(echo, name="n").to(), middlewares=[slow, recorder])
    await bad_then_good(flow, recorder, tasks_now, task_leaks, bad_out=True)
    assert virtual_clock.time() >= 20


async def test_stop_completes_when_a_middleware_blocks(virtual_clock: VirtualClock) -> None:
    release = asyncio.Event()

    async def blocking(event: FlowEvent) -> None:
        if event.event_type == "node_cancelled":
            await release.wait()

    async def echo(m: Message, ctx: Context) -> Message:
        return m

    flow = create(Node(echo, name="n").to(), middlewares=[blocking])
    flow.run()
    stopping = asyncio.ensure_future(flow.stop())
    try:
        await asyncio.wait_for(asyncio.shield(stopping), 60)  # virtual seconds
    finally:
        release.set()
        await asyncio.wait_for(stopping, 5)


async def test_consumer_that_never_fetches_blocks_the_producer(
    virtual_clock: VirtualClock, rss: Rss, tasks_now: TasksNow, task_leaks: TaskLeaks
) -> None:
    """Backpressure holds: a full chain blocks ``emit``; nothing buffers without bound."""
    maxsize = 8

    async def echo(m: Message, ctx: Context) -> Message:
        return m

    a, b = Node(echo, name="a"), Node(echo, name="b")
    flow = create(a.to(b), b.to(), queue_maxsize=maxsize)
    before = tasks_now()
    flow.run()
    emitted = 0
    saturated = asyncio.Event()

    async def produce() -> None:
        nonlocal emitted
        for i in range(1_000_000):
            await flow.emit(msg(i))
            emitted += 1
            if all(e.depth >= e.maxsize for e in flow.inspect().edges):
                saturated.set()

    producer = asyncio.ensure_future(produce())
    await asyncio.wait_for(saturated.wait(), 30)
    # Let the loop go idle (virtual time only advances when nothing else can run).
    await asyncio.sleep(60)
    held = emitted
    # 3 edges of 8, plus one item held by each of the 2 workers (blocked on a full edge).
    assert held <= 3 * maxsize + 2
    assert not producer.done()
    total = sum(t.pending for t in flow.inspect().traces.values())
    # Blocked puts (the producer's and each worker's) already count as pending.
    assert total <= held + 3
    # Now drain: every item arrives, in order, and the producer finishes.
    producer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await producer
    outs = [(await flow.fetch()).payload for _ in range(held)]
    assert outs == list(range(held))
    assert flow.inspect().is_quiescent, flow.inspect()
    await asyncio.wait_for(flow.stop(), 5)
    assert task_leaks(before) == []
