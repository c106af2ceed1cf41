"""Cancel storm: thousands of traces cancelled at once while others run.

One flow, four kinds of victim trace, plus survivors running before, during and after the
storm::

    entry (predicate_router) --hang-->  hang (64 slots, blocks)          -> Rookery
                             --split--> split -> left  -> join_k(2) -> play -> Rookery
                                               -> right ->

- ``hang`` victims: 64 invocations blocked in ``hang`` (they must see ``CancelledError``),
  the rest queued behind them (three messages per trace);
- ``partial`` victims: ``right`` blocks on their item, so ``join`` holds a half bucket;
- ``playbook`` victims: ``play`` runs a subflow that blocks; the subflow must be stopped;
- ``parked`` victims: complete normally; their results wait, unfetched, at Rookery;
- survivors: go all the way through (a playbook included) and must all arrive, once,
  with the right payload.

Then every victim is cancelled with one ``gather``. Afterwards: only survivor results at
Rookery, every cancelled trace finished exactly once (``trace_cancel_start`` /
``trace_cancel_finish``), no join bucket, every subflow stopped, the flow quiescent and no
task left after ``stop()``.

A second test checks that cancel cost does not grow with the queue length.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from penguiflow import Context, FlowEvent, Headers, Message, Node, NodePolicy, create
from penguiflow.core import PenguiFlow
from penguiflow.patterns import join_k, predicate_router

if TYPE_CHECKING:
    from conftest import Figure, Sizes, TaskLeaks, TasksNow

H = Headers(tenant="storm")


class Gate:
    """Counts arrivals and opens an event once ``target`` were seen."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.event = asyncio.Event()
        if target <= 0:
            self.event.set()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.event.set()


async def test_cancel_storm(
    sizes: Sizes, tasks_now: TasksNow, task_leaks: TaskLeaks, figure: Figure
) -> None:
    n = sizes.storm_traces
    n_hang, n_partial, n_play = n // 3, n // 4, min(200, n // 10)
    n_parked = n - n_hang - n_partial - n_play
    n_survivors = max(500, n // 3)
    hang_slots, per_hang_trace = 64, 3
    kinds: dict[str, str] = {}  # trace id -> kind

    hang_started = Gate(min(hang_slots, n_hang))
    hang_cancelled: list[str] = []
    partial_held = Gate(n_partial)
    right_cancelled: list[str] = []
    play_blocked = Gate(n_play)
    parked_done = Gate(n_parked)
    subflows: list[PenguiFlow] = []
    sub_cancelled: list[str] = []

    def pick(msg: Message) -> str:
        return "hang" if kinds[msg.trace_id] == "hang" else "split"

    async def hang(msg: Message, ctx: Context) -> None:
        hang_started.hit()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            hang_cancelled.append(msg.trace_id)
            raise

    async def split(msg: Message, ctx: Context) -> Message:
        return msg

    async def left(msg: Message, ctx: Context) -> Message:
        return msg.model_copy(update={"payload": ("L", msg.payload)})

    async def right(msg: Message, ctx: Context) -> Message:
        if kinds[msg.trace_id] == "partial":
            partial_held.hit()
            try:  # the join keeps a half bucket while this half hangs
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                right_cancelled.append(msg.trace_id)
                raise
        return msg.model_copy(update={"payload": ("R", msg.payload)})

    def playbook(block: bool) -> Any:
        async def sub(msg: Message, ctx: Context) -> Any:
            if block:
                play_blocked.hit()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    sub_cancelled.append(msg.trace_id)
                    raise
            return sorted(msg.payload)

        def factory() -> tuple[PenguiFlow, None]:
            flow = create(Node(sub, name="sub").to())
            subflows.append(flow)
            return flow, None

        return factory

    async def play(msg: Message, ctx: Context) -> Message:
        kind = kinds[msg.trace_id]
        result = await ctx.call_playbook(playbook(kind == "playbook"), msg)
        if kind == "parked":
            parked_done.hit()
        return msg.model_copy(update={"payload": result})

    cancel_events: Counter[tuple[str, str]] = Counter()

    async def count_cancel_events(event: FlowEvent) -> None:
        if event.event_type.startswith("trace_cancel_") and event.trace_id is not None:
            cancel_events[(event.event_type, event.trace_id)] += 1

    entry = predicate_router("entry", pick)
    n_hang_node = Node(hang, name="hang", policy=NodePolicy(max_concurrency=hang_slots))
    n_split, n_left = Node(split, name="split"), Node(left, name="left")
    n_right = Node(right, name="right", policy=NodePolicy(max_concurrency=n_partial + 16))
    join = join_k("join", 2)
    n_play_node = Node(play, name="play", policy=NodePolicy(max_concurrency=n_play + 16))
    flow = create(
        entry.to(n_hang_node, n_split),
        n_hang_node.to(),
        n_split.to(n_left, n_right),
        n_left.to(join),
        n_right.to(join),
        join.to(n_play_node),
        n_play_node.to(),
        queue_maxsize=0,  # unbounded: thousands of items really sit on the edges
        middlewares=[count_cancel_events],
    )

    def new(kind: str, payload: int) -> Message:
        msg = Message(payload=payload, headers=H)
        kinds[msg.trace_id] = kind
        return msg

    victims: list[Message] = []
    for kind, count in (
        ("hang", n_hang),
        ("partial", n_partial),
        ("playbook", n_play),
        ("parked", n_parked),
    ):
        victims += [new(kind, i) for i in range(count)]
    survivors = [new("survivor", i) for i in range(n_survivors)]
    early, late = survivors[: n_survivors // 2], survivors[n_survivors // 2 :]

    before = tasks_now()
    flow.run()
    async with asyncio.timeout(120):  # hang guard only
        for i, msg in enumerate(victims):
            await flow.emit(msg)
            if kinds[msg.trace_id] == "hang":
                for extra in range(1, per_hang_trace):  # more queued items of the trace
                    await flow.emit(msg.model_copy(update={"payload": -extra}))
            if i % 3 == 0 and early:
                await flow.emit(early.pop())
        for msg in early:
            await flow.emit(msg)
        for gate in (hang_started, partial_held, play_blocked, parked_done):
            await gate.event.wait()
        assert sum(flow.inspect().resources["join_k:join"].values()) >= n_partial
        queued_before = sum(t.queued for t in flow.inspect().traces.values())
        held_before = sum(len(v) for v in flow.inspect().resources.values())

        async def late_survivors() -> None:
            for msg in late:
                await flow.emit(msg)

        async def cancel_all() -> tuple[list[bool], float]:
            started = time.perf_counter()
            done = await asyncio.gather(*(flow.cancel(m.trace_id) for m in victims))
            return done, time.perf_counter() - started

        async with asyncio.TaskGroup() as tg:
            tg.create_task(late_survivors())  # survivors keep arriving during the storm
            storm = tg.create_task(cancel_all())
        cancelled, storm_s = storm.result()
        assert all(cancelled), Counter(
            kinds[m.trace_id] for m, ok in zip(victims, cancelled, strict=True) if not ok
        )

        results = [await flow.fetch() for _ in range(n_survivors)]

    # Survivors: all of them, once each, with the right payload.
    survivor_ids = {m.trace_id: m.payload for m in survivors}
    got = Counter(r.trace_id for r in results)
    assert set(got) == set(survivor_ids) and set(got.values()) == {1}
    for r in results:
        i = survivor_ids[r.trace_id]
        assert r.payload == [("L", i), ("R", i)]
    # Victims: queued items dropped, in-flight interrupted, buckets freed, subflows stopped.
    snap = flow.inspect()
    assert snap.is_quiescent, snap
    assert flow.context(flow.nodes[0]).queue_depth_in() == 0
    assert sorted(hang_cancelled) == sorted(set(hang_cancelled))
    assert len(hang_cancelled) == min(hang_slots, n_hang)
    assert hang_started.count == len(hang_cancelled)  # queued hang items never started
    partial_ids = {m.trace_id for m in victims if kinds[m.trace_id] == "partial"}
    assert set(right_cancelled) == partial_ids
    play_ids = {m.trace_id for m in victims if kinds[m.trace_id] == "playbook"}
    assert set(sub_cancelled) == play_ids
    assert all(not f.is_running and f.inspect().workers == 0 for f in subflows)
    for m in victims:
        assert cancel_events[("trace_cancel_start", m.trace_id)] == 1
        assert cancel_events[("trace_cancel_finish", m.trace_id)] == 1
    assert not any(k[1] in survivor_ids for k in cancel_events)
    await asyncio.wait_for(flow.stop(), 10)
    assert task_leaks(before) == []
    figure(
        cancelled_traces=len(victims),
        queued_items_dropped=queued_before,
        join_items_freed=held_before,
        subflows_stopped=n_play,
        survivors=n_survivors,
        storm_seconds=round(storm_s, 3),
    )


async def test_cancel_cost_independent_of_queue_length(figure: Figure) -> None:
    """Cancelling a 1-item trace costs the same behind 100 or 20,000 queued items."""

    async def measure(background: int) -> float:
        release = asyncio.Event()

        async def blocked(msg: Message, ctx: Context) -> None:
            await release.wait()

        flow = create(Node(blocked, name="blocked").to(), queue_maxsize=0)
        flow.run()
        try:
            for i in range(background):
                await flow.emit(Message(payload=i, headers=H))
            samples = []
            for i in range(300):
                target = Message(payload=-i, headers=H)
                await flow.emit(target)
                t0 = time.perf_counter_ns()
                assert await flow.cancel(target.trace_id)
                samples.append(time.perf_counter_ns() - t0)
                # the queue keeps its length: the purged entry is skipped, not searched for
            assert flow.inspect().edges[0].depth == background
            return statistics.median(samples)
        finally:
            release.set()
            await asyncio.wait_for(flow.stop(), 10)

    small = await measure(100)
    big = await measure(20_000)
    figure(
        cancel_median_us_q100=round(small / 1000, 1),
        cancel_median_us_q20000=round(big / 1000, 1),
    )
    # O(items of the trace): a generous factor absorbs noise on a loaded machine, an
    # O(queue length) cancel would be ~200x slower here.
    assert big < 5 * small + 50_000, (small, big)


async def test_cancel_frees_join_bucket_of_idle_trace() -> None:
    """A half-joined trace with nothing queued or in flight: cancel must free its bucket."""
    j = join_k("join", 2)
    handled = asyncio.Event()

    async def on_event(event: FlowEvent) -> None:
        if event.event_type == "node_success" and event.node_name == "join":
            handled.set()

    flow = create(j.to(), middlewares=[on_event])
    flow.run()
    try:
        msg = Message(payload=1, headers=H)
        await flow.emit(msg)
        await asyncio.wait_for(handled.wait(), 5)  # the join took the item and holds it
        assert flow.inspect().resources["join_k:join"] == {msg.trace_id: 1}
        # The bucket holds the trace live, so the cancel has work to do.
        assert await flow.cancel(msg.trace_id) is True
        assert flow.inspect().resources.get("join_k:join", {}) == {}
        assert flow.inspect().traces == {}
    finally:
        await asyncio.wait_for(flow.stop(), 10)
