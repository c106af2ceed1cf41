"""Per-trace cancellation: what it interrupts, and a cost independent of queue length."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

import penguiflow._runtime as runtime_mod
from penguiflow._edges import Entry
from penguiflow.core import Context, PenguiFlow, TraceCancelled
from penguiflow.node import Node, NodePolicy
from penguiflow.types import Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow
    from penguiflow.testing import Recorder


def node(fn: Any, name: str, **policy: Any) -> Node:
    return Node(fn, name=name, policy=NodePolicy(**{"validate": "none", **policy}))


def msg(payload: Any, **kw: Any) -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"), **kw)


async def fetch(flow: PenguiFlow, **kw: Any) -> Any:
    return await asyncio.wait_for(flow.fetch(**kw), 1.0)


class Gate:
    """A node body that blocks items whose payload is ``"block"`` until released."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled: list[Any] = []
        self.calls: list[Any] = []

    async def __call__(self, m: Any, ctx: Context) -> Any:
        payload = m.payload if isinstance(m, Message) else m
        self.calls.append(payload)
        if payload == "block":
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(payload)
                raise
        return m


def gate_node(gate: Gate, name: str = "gate", **policy: Any) -> Node:
    return Node(gate.__call__, name=name, policy=NodePolicy(**{"validate": "none", **policy}))


async def test_cancel_requires_a_running_flow(make_flow: MakeFlow) -> None:
    flow = make_flow(node(Gate().__call__, "g").to())
    with pytest.raises(RuntimeError, match="PenguiFlow is not running"):
        await flow.cancel("whatever")


async def test_cancel_unknown_or_finished_trace_returns_false(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    gate = Gate()
    flow = make_flow(gate_node(gate).to(), middlewares=[recorder])
    flow.run()
    assert await flow.cancel("unknown") is False
    m = msg("x")
    await flow.emit(m)
    await fetch(flow)
    recorder.events.clear()
    assert await flow.cancel(m.trace_id) is False
    assert recorder.events == []


async def test_cancel_in_flight_invocation(make_flow: MakeFlow, recorder: Recorder) -> None:
    gate = Gate()
    flow = make_flow(gate_node(gate).to(), middlewares=[recorder])
    flow.run()
    m = msg("block")
    await flow.emit(m)
    await asyncio.wait_for(gate.started.wait(), 1.0)
    assert await flow.cancel(m.trace_id) is True
    await recorder.wait("trace_cancel_finish")
    assert gate.cancelled == ["block"]
    names = [n for n in recorder.names(trace_id=m.trace_id) if n != "node_start"]
    assert names == ["trace_cancel_start", "node_trace_cancelled", "trace_cancel_finish"]
    start = recorder.matching("trace_cancel_start")[0]
    assert (start.node_name, start.node_id) == ("OpenSea", "OpenSea")
    assert start.trace_cancelled is True
    assert start.trace_inflight == 1
    assert start.trace_pending == 1
    assert dict(start.extra) == {"pending": 1}
    finish = recorder.matching("trace_cancel_finish")[0]
    assert (finish.node_name, finish.node_id) == ("Rookery", "Rookery")
    assert (finish.trace_pending, finish.trace_inflight, finish.trace_cancelled) == (0, 0, False)
    cancelled = recorder.matching("node_trace_cancelled")[0]
    assert (cancelled.node_name, cancelled.attempt, cancelled.latency_ms) == ("gate", 0, None)
    assert (
        recorder.matching("node_error") == []
        and recorder.matching("node_success", trace_id=m.trace_id) == []
    )
    assert flow.inspect().traces == {}
    # the worker survived: the flow keeps serving
    await flow.emit("after")
    assert await fetch(flow) == "after"


async def test_cancel_is_idempotent(make_flow: MakeFlow, recorder: Recorder) -> None:
    gate = Gate()

    async def stubborn(m: Any, ctx: Context) -> Any:
        # keeps the trace alive while cancelled: cleanup waits for the test
        try:
            await gate(m, ctx)
        finally:
            await gate.release.wait()
        return m

    flow = make_flow(node(stubborn, "s").to(), middlewares=[recorder])
    flow.run()
    m = msg("block")
    await flow.emit(m)
    await asyncio.wait_for(gate.started.wait(), 1.0)
    assert await flow.cancel(m.trace_id) is True
    assert await flow.cancel(m.trace_id) is True  # still active: True, no second start
    assert len(recorder.matching("trace_cancel_start")) == 1
    gate.release.set()
    await recorder.wait("trace_cancel_finish")
    assert await flow.cancel(m.trace_id) is False
    assert len(recorder.matching("trace_cancel_start")) == 1
    assert len(recorder.matching("trace_cancel_finish")) == 1


async def test_cancel_purges_queued_items_and_spares_other_traces(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    gate = Gate()
    flow = make_flow(gate_node(gate).to(), middlewares=[recorder])
    flow.run()
    blocker = msg("block")
    await flow.emit(blocker)
    await asyncio.wait_for(gate.started.wait(), 1.0)
    victim = msg("v")
    others = [msg(f"o{i}") for i in range(3)]
    for i, other in enumerate(others):
        await flow.emit(victim.model_copy(update={"payload": f"v{i}"}))
        await flow.emit(other)
    assert flow.inspect().traces[victim.trace_id].queued == 3
    assert await flow.cancel(victim.trace_id) is True
    await recorder.wait("trace_cancel_finish")
    assert flow.context(gate_node_of(flow)).queue_depth_in() == 3
    start = recorder.matching("trace_cancel_start")[0]
    assert start.extra["pending"] == 3 and start.trace_inflight == 0
    assert recorder.matching("trace_cancel_drop") == []  # purged items leave no per-item event
    gate.release.set()
    got = [await fetch(flow) for _ in range(4)]
    assert [g.payload for g in got] == ["block", "o0", "o1", "o2"]
    assert not any(c.startswith("v") for c in gate.calls)


def gate_node_of(flow: PenguiFlow) -> Node:
    return flow.nodes[0]


async def test_cancel_discards_unfetched_results_at_rookery(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    async def echo(m: Any, ctx: Context) -> Any:
        return m

    flow = make_flow(node(echo, "e").to(), middlewares=[recorder])
    flow.run()
    victim, other = msg("v"), msg("o")
    await flow.emit(victim)
    await flow.emit(other)
    await recorder.wait("node_success", count=2)
    assert await flow.cancel(victim.trace_id) is True
    await recorder.wait("trace_cancel_finish")
    assert await fetch(flow) is other
    assert flow.floes[-1].queue.qsize() == 0
    assert flow.inspect().traces == {}


async def test_items_reaching_a_node_after_cancel_are_dropped(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    started = asyncio.Event()
    seen_by_b: list[Any] = []

    async def a_fn(m: Message, ctx: Context) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await ctx.emit(m)  # cleanup that still sends something downstream
            raise

    async def b_fn(m: Any, ctx: Context) -> Any:
        seen_by_b.append(m)
        return m

    a, b = node(a_fn, "a"), node(b_fn, "b")
    flow = make_flow(a.to(b), middlewares=[recorder])
    flow.run()
    m = msg("x")
    await flow.emit(m)
    await asyncio.wait_for(started.wait(), 1.0)
    await flow.cancel(m.trace_id)
    await recorder.wait("trace_cancel_finish")
    drops = recorder.matching("trace_cancel_drop", trace_id=m.trace_id)
    assert [(d.node_name, d.attempt, d.latency_ms) for d in drops] == [("b", 0, None)]
    assert seen_by_b == []
    assert len(recorder.matching("trace_cancel_finish")) == 1


async def test_trace_id_can_be_reused_after_cancel(make_flow: MakeFlow, recorder: Recorder) -> None:
    gate = Gate()
    flow = make_flow(gate_node(gate).to(), middlewares=[recorder])
    flow.run()
    m = msg("block")
    await flow.emit(m)
    await asyncio.wait_for(gate.started.wait(), 1.0)
    await flow.cancel(m.trace_id)
    await recorder.wait("trace_cancel_finish")
    again = m.model_copy(update={"payload": "again"})
    await flow.emit(again)
    assert await fetch(flow) is again


async def test_cancel_interrupts_retry_backoff_sleep(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    """A cancel interrupts a retry's backoff sleep at once."""
    calls: list[Any] = []

    async def failing(m: Any, ctx: Context) -> Any:
        calls.append(m)
        raise RuntimeError("nope")

    n = node(failing, "f", max_retries=3, backoff_base=3600.0)
    flow = make_flow(n.to(), middlewares=[recorder])
    flow.run()
    m = msg(1)
    await flow.emit(m)
    await recorder.wait("node_retry")
    assert await flow.cancel(m.trace_id) is True
    await recorder.wait("trace_cancel_finish")
    assert len(calls) == 1
    assert [e.event_type for e in recorder.events][-2:] == [
        "node_trace_cancelled",
        "trace_cancel_finish",
    ]
    await flow.emit("next")
    await recorder.wait("node_start", count=2)


async def test_cancel_interrupts_a_put_blocked_on_a_full_edge(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    """A cancel interrupts a result put that waits for room on a full edge at once."""
    gate = Gate()
    returned = asyncio.Event()

    async def producer(m: Message, ctx: Context) -> Any:
        if m.payload == "victim":
            returned.set()
        return m

    a, b = node(producer, "a"), gate_node(gate, "b")
    flow = make_flow(a.to(b), queue_maxsize=1, middlewares=[recorder])
    flow.run()
    await flow.emit(msg("block"))  # b blocks on it
    await asyncio.wait_for(gate.started.wait(), 1.0)
    await flow.emit(msg("filler"))  # fills the a->b edge
    victim = msg("victim")
    await flow.emit(victim)
    await asyncio.wait_for(returned.wait(), 1.0)
    # a is now parked on the full a->b edge with the victim's result
    assert flow.inspect().traces[victim.trace_id].inflight == 1
    assert await flow.cancel(victim.trace_id) is True
    await recorder.wait("trace_cancel_finish")
    assert recorder.matching("node_trace_cancelled", trace_id=victim.trace_id)[0].node_name == "a"
    assert victim.trace_id not in flow.inspect().traces
    await flow.emit(msg("later"))  # a is free again
    gate.release.set()
    got = [(await fetch(flow)).payload for _ in range(3)]
    assert got == ["block", "filler", "later"]
    assert "victim" not in gate.calls


async def test_cancel_purge_releases_a_blocked_emit_of_another_trace(make_flow: MakeFlow) -> None:
    gate = Gate()
    flow = make_flow(gate_node(gate).to(), queue_maxsize=1)
    flow.run()
    await flow.emit(msg("block"))
    await asyncio.wait_for(gate.started.wait(), 1.0)
    victim = msg("v")
    await flow.emit(victim)  # fills the ingress edge
    other = msg("o")
    blocked = asyncio.ensure_future(flow.emit(other))
    await asyncio.sleep(0)
    assert not blocked.done()
    await flow.cancel(victim.trace_id)
    await asyncio.wait_for(blocked, 1.0)
    gate.release.set()
    assert [(await fetch(flow)).payload for _ in range(2)] == ["block", "o"]


async def test_on_trace_cancel_hook_runs_before_the_purge(make_flow: MakeFlow) -> None:
    gate = Gate()
    flow = make_flow(gate_node(gate).to())
    flow.run()
    await flow.emit(msg("block"))
    await asyncio.wait_for(gate.started.wait(), 1.0)
    victim = msg("v")
    await flow.emit(victim)
    seen: list[tuple[str, int]] = []
    flow.on_trace_cancel(lambda tid: seen.append((tid, flow.inspect().traces[tid].queued)))
    await flow.cancel(victim.trace_id)
    assert seen == [(victim.trace_id, 1)]


async def test_trace_cancelled_is_not_a_cancelled_error() -> None:
    """Nodes see CancelledError; TraceCancelled is an ordinary Exception, not a cancellation."""
    assert issubclass(TraceCancelled, Exception)
    assert not issubclass(TraceCancelled, asyncio.CancelledError)


# -- cost ---------------------------------------------------------------------------------


class SpyEntry(Entry):
    """Counts attribute reads of queued entries while ``watching`` is on."""

    __slots__ = ()
    watching = False
    touched: dict[str, int] = {}  # noqa: RUF012

    def __getattribute__(self, name: str) -> Any:
        if SpyEntry.watching:
            trace = object.__getattribute__(self, "trace")
            key = trace.trace_id if trace is not None else "<untracked>"
            SpyEntry.touched[key] = SpyEntry.touched.get(key, 0) + 1
        return object.__getattribute__(self, name)


@pytest.mark.leaves_state
@pytest.mark.parametrize("others", [10, 10_000])
async def test_cancel_touches_only_the_cancelled_traces_items(
    make_flow: MakeFlow, monkeypatch: pytest.MonkeyPatch, others: int
) -> None:
    monkeypatch.setattr(runtime_mod, "Entry", SpyEntry)
    monkeypatch.setattr(SpyEntry, "touched", {})
    gate = Gate()
    flow = make_flow(gate_node(gate).to(), queue_maxsize=0)
    flow.run()
    await flow.emit(msg("block"))
    await asyncio.wait_for(gate.started.wait(), 1.0)
    victim = msg("v")
    for i in range(others):
        flow.emit_nowait(msg(i, trace_id=f"other-{i % 100}"))
        if i % (others // 5) == 0:
            flow.emit_nowait(victim)
    assert flow.inspect().traces[victim.trace_id].queued == 5
    SpyEntry.watching = True
    try:
        # the node is blocked: the other items cannot move, and cancel does not wait on them
        assert await asyncio.wait_for(flow.cancel(victim.trace_id), 1.0) is True
    finally:
        SpyEntry.watching = False
    assert set(SpyEntry.touched) <= {victim.trace_id}
    assert 0 < SpyEntry.touched.get(victim.trace_id, 0) <= 20 * 5  # the spy does see work
    snap = flow.inspect()
    assert victim.trace_id not in snap.traces
    assert sum(t.queued for t in snap.traces.values()) == others
    assert flow.context(flow.nodes[0]).queue_depth_in() == others
