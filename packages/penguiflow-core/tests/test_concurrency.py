"""``NodePolicy.max_concurrency``: per-trace order, no per-message task, stop and restart."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from penguiflow.core import Context, PenguiFlow
from penguiflow.node import Node, NodePolicy
from penguiflow.types import WM, FinalAnswer, Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow


def node(fn: Any, name: str, **policy: Any) -> Node:
    return Node(fn, name=name, policy=NodePolicy(**{"validate": "none", **policy}))


def msg(payload: Any, trace_id: str | None = None) -> Message:
    if trace_id is None:
        return Message(payload=payload, headers=Headers(tenant="acme"))
    return Message(payload=payload, headers=Headers(tenant="acme"), trace_id=trace_id)


async def fetch(flow: PenguiFlow) -> Any:
    return await asyncio.wait_for(flow.fetch(), 1.0)


class Tracker:
    """Records start/end of invocations; ``block`` payloads wait for their own event."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, Any]] = []
        self.running: dict[str, int] = {}
        self.max_running = 0
        self.max_per_trace = 0
        self.gates: dict[Any, asyncio.Event] = {}
        self.started: dict[Any, asyncio.Event] = {}

    def gate(self, payload: Any) -> asyncio.Event:
        return self.gates.setdefault(payload, asyncio.Event())

    def start_event(self, payload: Any) -> asyncio.Event:
        return self.started.setdefault(payload, asyncio.Event())

    async def __call__(self, m: Message, ctx: Context) -> Any:
        tid = m.trace_id
        self.running[tid] = self.running.get(tid, 0) + 1
        self.max_per_trace = max(self.max_per_trace, self.running[tid])
        self.max_running = max(self.max_running, sum(self.running.values()))
        self.log.append(("start", tid, m.payload))
        self.start_event(m.payload).set()
        try:
            if m.payload in self.gates:
                await self.gates[m.payload].wait()
        finally:
            self.running[tid] -= 1
            self.log.append(("end", tid, m.payload))
        return m


async def test_invocations_overlap_across_traces(make_flow: MakeFlow) -> None:
    tracker = Tracker()
    gate_a = tracker.gate("a1")
    flow = make_flow(node(tracker.__call__, "llm", max_concurrency=2).to())
    flow.run()
    await flow.emit(msg("a1", "A"))
    await flow.emit(msg("b1", "B"))
    # b1 completes while a1 is still running: a slow call does not block other traces
    first = await fetch(flow)
    assert first.payload == "b1"
    assert ("end", "A", "a1") not in tracker.log
    assert tracker.running["A"] == 1
    gate_a.set()
    assert (await fetch(flow)).payload == "a1"
    assert tracker.max_running == 2


async def test_items_of_one_trace_stay_in_order(make_flow: MakeFlow) -> None:
    tracker = Tracker()
    gate = tracker.gate("a0")
    flow = make_flow(node(tracker.__call__, "llm", max_concurrency=3).to(), queue_maxsize=0)
    flow.run()
    for i in range(4):
        await flow.emit(msg(f"a{i}", "A"))
    await flow.emit(msg("b0", "B"))
    assert (await fetch(flow)).payload == "b0"  # another slot served B meanwhile
    gate.set()
    assert [(await fetch(flow)).payload for _ in range(4)] == ["a0", "a1", "a2", "a3"]
    a_log = [(kind, p) for kind, tid, p in tracker.log if tid == "A"]
    assert a_log == [(k, f"a{i}") for i in range(4) for k in ("start", "end")]
    assert tracker.max_per_trace == 1


async def test_concurrency_never_exceeds_the_limit(make_flow: MakeFlow) -> None:
    tracker = Tracker()
    gates = [tracker.gate(f"t{i}") for i in range(5)]
    flow = make_flow(node(tracker.__call__, "llm", max_concurrency=3).to(), queue_maxsize=0)
    flow.run()
    for i in range(5):
        await flow.emit(msg(f"t{i}", f"T{i}"))
    await asyncio.wait_for(tracker.start_event("t2").wait(), 1.0)
    assert not tracker.start_event("t3").is_set()
    for g in gates:
        g.set()
    assert {(await fetch(flow)).payload for _ in range(5)} == {f"t{i}" for i in range(5)}
    assert tracker.max_running == 3


async def test_default_concurrency_is_sequential(make_flow: MakeFlow) -> None:
    tracker = Tracker()
    gate = tracker.gate("a")
    flow = make_flow(node(tracker.__call__, "llm").to())
    flow.run()
    await flow.emit(msg("a", "A"))
    await flow.emit(msg("b", "B"))
    await asyncio.wait_for(tracker.start_event("a").wait(), 1.0)
    assert flow.inspect().traces["B"].queued == 1
    assert not tracker.start_event("b").is_set()
    gate.set()
    assert [(await fetch(flow)).payload for _ in range(2)] == ["a", "b"]
    assert tracker.max_running == 1


async def test_workers_per_node(make_flow: MakeFlow) -> None:
    tracker = Tracker()
    flow = make_flow(node(tracker.__call__, "llm", max_concurrency=4).to())
    before = set(asyncio.all_tasks())
    flow.run()
    new = set(asyncio.all_tasks()) - before
    assert len(new) == 4
    assert all(t.get_name().startswith("penguiflow:llm") for t in new)
    assert flow.inspect().workers == 4


async def test_no_task_per_message(make_flow: MakeFlow) -> None:
    counts: list[int] = []

    async def count(m: Any, ctx: Context) -> Any:
        counts.append(len(asyncio.all_tasks()))
        return m

    a, b = node(count, "a"), node(count, "b", max_concurrency=2)
    flow = make_flow(a.to(b), queue_maxsize=4)
    flow.run()
    baseline = len(asyncio.all_tasks())  # this test task + 3 workers

    async def produce() -> None:
        for i in range(300):
            await flow.emit(msg(i))

    producer = asyncio.ensure_future(produce())
    for _ in range(300):
        await fetch(flow)
    await producer
    assert len(counts) == 600
    # + the producer task and wait_for's fetch task; nothing per message
    assert max(counts) <= baseline + 2


async def test_stop_restart_keeps_backlogged_items_of_a_trace(make_flow: MakeFlow) -> None:
    """With max_concurrency > 1, items waiting behind their trace survive a restart."""
    tracker = Tracker()
    tracker.gate("a0")
    flow = make_flow(node(tracker.__call__, "llm", max_concurrency=2).to(), queue_maxsize=0)
    flow.run()
    for i in range(3):
        await flow.emit(msg(f"a{i}", "A"))
    await asyncio.wait_for(tracker.start_event("a0").wait(), 1.0)
    await flow.emit(msg("b0", "B"))
    assert (await fetch(flow)).payload == "b0"  # the other slot is live
    await flow.stop()  # a0 is cancelled in flight; a1, a2 are still queued
    assert flow.inspect().traces["A"].pending == 2
    flow.run()
    assert [(await fetch(flow)).payload for _ in range(2)] == ["a1", "a2"]
    assert flow.inspect().traces == {}


async def test_stop_restart_keeps_queued_items_and_counts(make_flow: MakeFlow) -> None:
    """After a restart the trace accounting matches what is still queued."""
    tracker = Tracker()
    tracker.gate("x")
    flow = make_flow(node(tracker.__call__, "n").to())
    flow.run()
    await flow.emit(msg("x", "X"))
    await asyncio.wait_for(tracker.start_event("x").wait(), 1.0)
    await flow.emit(msg("y1", "Y"))
    await flow.emit(msg("y2", "Y"))
    await flow.stop()
    snap = flow.inspect()
    assert "X" not in snap.traces  # the cancelled in-flight item completed its accounting
    assert (snap.traces["Y"].pending, snap.traces["Y"].queued) == (2, 2)
    flow.run()
    assert [(await fetch(flow)).payload for _ in range(2)] == ["y1", "y2"]
    assert flow.inspect().traces == {}


async def test_stop_clears_the_wm_hop_memory(make_flow: MakeFlow) -> None:
    """After stop and run, a re-emitted progress mirror is delivered, not suppressed."""
    calls: list[int] = []
    second = asyncio.Event()

    async def loop(m: Message, ctx: Context) -> Any:
        calls.append(m.payload.hops)
        if len(calls) == 2:
            second.set()
            await asyncio.Event().wait()
        if len(calls) >= 3:
            return m.model_copy(update={"payload": FinalAnswer(text="fin")})
        return m

    c = Node(loop, name="c", policy=NodePolicy(validate="none"), allow_cycle=True)
    flow = make_flow(c.to(c))
    flow.run()
    m = Message(payload=WM(query="q", budget_hops=None), headers=Headers(tenant="a"))
    await flow.emit(m)
    await asyncio.wait_for(second.wait(), 1.0)
    await flow.stop()  # the mirror (hops=1) still waits at Rookery: the trace is active
    assert flow.inspect().traces[m.trace_id].pending == 1
    flow.run()
    again = m.model_copy(update={"payload": WM(query="q", hops=1, budget_hops=None)})
    await flow.emit(again)
    assert flow.context(c).queue_depth_in() + len(calls) >= 3
    mirror = await fetch(flow)
    assert mirror.payload.hops == 1
    assert (await fetch(flow)).payload.text == "fin"
    assert calls == [0, 1, 1]
