"""join_k: batching, per-flow buckets, and buckets that never outlive their trace."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.clock import use_wall_clock, wall_time
from penguiflow.core import DEADLINE_EXCEEDED_TEXT, Context, PenguiFlow, create
from penguiflow.errors import FlowBuildError, FlowError
from penguiflow.node import Node
from penguiflow.patterns import join_k
from penguiflow.types import FinalAnswer, Message

if TYPE_CHECKING:
    from conftest import Kit, LogCatcher
    from penguiflow.testing import Recorder

# join timeouts and deadlines: on the test kit's virtual clock when it is installed.
pytestmark = pytest.mark.usefixtures("virtual_clock")

PROBE = "join_k:j"
WAIT_S = 30.0  # bounds every request below, so a bug fails instead of hanging


def passthrough(name: str) -> Node:
    async def forward(item: Any, ctx: Context) -> Any:
        return item

    return Node(forward, name=name)


def start(
    flow: PenguiFlow, running: list[PenguiFlow], recorder: Recorder | None = None
) -> PenguiFlow:
    if recorder is not None:
        flow.add_middleware(recorder)
    flow.run()
    running.append(flow)
    return flow


def held(flow: PenguiFlow) -> dict[str, int]:
    return dict(flow.inspect().resources.get(PROBE, {}))


def part(kit: type[Kit], payload: Any, of: Message | None = None, **kwargs: Any) -> Message:
    if of is not None:
        kwargs["trace_id"] = of.trace_id
    msg: Message = kit.message(payload, **kwargs)
    return msg


def pattern_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("penguiflow.patterns:")}


# --------------------------------------------------------------------------- creation


@pytest.mark.parametrize("k", [0, -3])
def test_k_must_be_positive(k: int) -> None:
    with pytest.raises(ValueError, match=r"^join_k 'j': k must be positive") as info:
        join_k("j", k)
    assert isinstance(info.value, FlowBuildError)


@pytest.mark.parametrize("k", [1.0, True, "2"])
def test_k_must_be_an_int(k: Any) -> None:
    with pytest.raises(TypeError, match="join_k 'j': k must be an int"):
        join_k("j", k)


def test_a_zero_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        join_k("j", 2, timeout_s=0)


def test_an_unknown_on_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match="on_timeout must be 'emit' or 'drop'"):
        join_k("j", 2, timeout_s=1, on_timeout="keep")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- batching


async def test_fan_out_fan_in(running: list[PenguiFlow], kit: type[Kit]) -> None:
    fan, left, right = passthrough("fan"), passthrough("left"), passthrough("right")
    j = join_k("j", 2)
    flow = start(create(fan.to(left, right), left.to(j), right.to(j), j.to()), running)
    msg = kit.message("doc", meta={"m": 1}, deadline_s=wall_time() + 60)
    await flow.emit(msg)
    batch = await kit.fetch(flow)
    assert isinstance(batch, Message)
    assert batch is not msg
    assert batch.payload == ["doc", "doc"]
    assert (batch.trace_id, batch.headers, batch.meta, batch.deadline_s) == (
        msg.trace_id, msg.headers, msg.meta, msg.deadline_s,
    )  # fmt: skip
    kit.assert_clean(flow)


async def test_payloads_in_arrival_order_and_new_bucket_after(
    running: list[PenguiFlow], kit: type[Kit]
) -> None:
    j = join_k("j", 3)
    flow = start(create(j.to()), running)
    first = kit.message(1)
    for payload in (1, 2, 3, 4):
        await flow.emit(part(kit, payload, of=first))
    assert (await kit.fetch(flow)).payload == [1, 2, 3]
    assert held(flow) == {first.trace_id: 1}  # the 4th item started a new bucket
    await flow.stop()
    assert held(flow) == {}


async def test_bare_items_with_trace_id_join_as_a_list(
    running: list[PenguiFlow], kit: type[Kit]
) -> None:
    @dataclass
    class Part:
        trace_id: str
        value: int

    j = join_k("j", 2)
    flow = start(create(j.to()), running)
    a, b = Part("t1", 1), Part("t1", 2)
    await flow.emit(a)
    await flow.emit(b)
    assert await kit.fetch(flow) == [a, b]
    kit.assert_clean(flow)


async def test_k_one_batches_each_item(running: list[PenguiFlow], kit: type[Kit]) -> None:
    j = join_k("j", 1)
    flow = start(create(j.to()), running)
    await flow.emit(kit.message("x"))
    assert (await kit.fetch(flow)).payload == ["x"]
    kit.assert_clean(flow)


async def test_item_without_trace_id_is_a_node_error(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder
) -> None:
    j = join_k("j", 2)
    flow = start(create(j.to()), running, recorder)
    await flow.emit({"no": "trace"})
    failed = await recorder.wait("node_failed", "j")
    assert "join_k requires messages with trace_id" in failed.extra["exception"]
    kit.assert_clean(flow)


async def test_buckets_are_per_flow(running: list[PenguiFlow], kit: type[Kit]) -> None:
    j = join_k("j", 2)
    flow1 = start(create(j.to()), running)
    flow2 = start(create(j.to()), running)
    a1 = kit.message("a1")
    b1 = part(kit, "b1", of=a1)  # the same trace id in both flows
    await flow1.emit(a1)
    await flow2.emit(b1)
    await flow1.emit(part(kit, "a2", of=a1))
    assert (await kit.fetch(flow1)).payload == ["a1", "a2"]
    assert held(flow1) == {}
    assert held(flow2) == {a1.trace_id: 1}
    await flow2.emit(part(kit, "b2", of=a1))
    assert (await kit.fetch(flow2)).payload == ["b1", "b2"]
    kit.assert_clean(flow1)
    kit.assert_clean(flow2)


# --------------------------------------------------------------------------- cleanup


async def test_cancel_frees_a_half_filled_bucket(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder, logs: LogCatcher
) -> None:
    gate = asyncio.Event()  # never set: the slow branch is still working when we cancel
    slow_cancelled = asyncio.Event()

    async def slow_work(item: Any, ctx: Context) -> Any:
        try:
            await gate.wait()
        except asyncio.CancelledError:
            slow_cancelled.set()
            raise
        return item

    fan, fast = passthrough("fan"), passthrough("fast")
    slow = Node(slow_work, name="slow")
    j = join_k("j", 2)
    flow = start(create(fan.to(fast, slow), fast.to(j), slow.to(j), j.to()), running, recorder)
    other = kit.message("other")
    await flow.emit(other)  # a second trace, unaffected
    msg = kit.message("doc")
    await flow.emit(msg)
    await recorder.wait("node_success", "j", msg.trace_id)
    assert held(flow) == {other.trace_id: 1, msg.trace_id: 1}

    assert await flow.cancel(msg.trace_id) is True
    assert held(flow) == {other.trace_id: 1}  # freed at once, synchronously
    await recorder.wait("trace_cancel_finish", trace_id=msg.trace_id)
    assert not slow_cancelled.is_set()  # msg's slow item was still queued: purged
    record = await logs.wait("join_k_cancel_drop")
    assert (record.trace_id, record.held, record.k) == (msg.trace_id, 1, 2)

    assert await flow.cancel(other.trace_id) is True  # in flight in "slow": aborted
    assert held(flow) == {}
    await recorder.wait("trace_cancel_finish", trace_id=other.trace_id)
    assert slow_cancelled.is_set()
    kit.assert_clean(flow)


async def test_cancel_frees_the_bucket_of_an_idle_trace(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder, logs: LogCatcher
) -> None:
    j = join_k("j", 2)
    flow = start(create(j.to()), running, recorder)
    msg = kit.message("first part")  # the second part is never sent
    await flow.emit(msg)
    await recorder.wait("node_success", "j", msg.trace_id)
    (trace,) = flow.inspect().traces.values()  # the bucket keeps its trace live
    assert (trace.trace_id, trace.pending, trace.queued, trace.inflight) == (msg.trace_id, 1, 0, 0)
    assert held(flow) == {msg.trace_id: 1}
    assert await flow.cancel(msg.trace_id) is True  # True: the held part is its work
    assert held(flow) == {}  # the cancel hook freed the bucket
    await recorder.wait("trace_cancel_finish", trace_id=msg.trace_id)
    assert (await logs.wait("join_k_cancel_drop")).trace_id == msg.trace_id
    kit.assert_clean(flow)


async def test_stop_frees_every_bucket_and_restart_is_fresh(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder, logs: LogCatcher
) -> None:
    j = join_k("j", 3)
    flow = start(create(j.to()), running, recorder)
    t1, t2 = kit.message(1), kit.message(2)
    for msg in (t1, part(kit, 11, of=t1), t2):
        await flow.emit(msg)
    await recorder.wait("node_success", "j", count=3)
    assert held(flow) == {t1.trace_id: 2, t2.trace_id: 1}

    await flow.stop()
    snap = flow.inspect()
    assert PROBE not in snap.resources
    assert snap.workers == 0
    assert sorted(r.trace_id for r in logs.records if r.getMessage() == "join_k_stop_drop") == (
        sorted([t1.trace_id, t2.trace_id])
    )

    flow.run()
    for payload in (21, 22):
        await flow.emit(part(kit, payload, of=t1))
    await recorder.wait("node_success", "j", count=5)
    assert held(flow) == {t1.trace_id: 2}  # the pre-stop parts are gone
    await flow.emit(part(kit, 23, of=t1))
    assert (await kit.fetch(flow)).payload == [21, 22, 23]
    kit.assert_clean(flow)


async def test_deadline_drops_the_bucket(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder, logs: LogCatcher
) -> None:
    base = wall_time()
    with use_wall_clock(lambda: base):  # wall time stands still: never expired at a worker
        j = join_k("j", 3)
        flow = start(create(j.to()), running, recorder)
    first = kit.message(1)  # no deadline
    soon = part(kit, 2, of=first, deadline_s=base + 0.005)
    later = kit.message(9, deadline_s=base + 3600)
    for msg in (first, soon, later):
        await flow.emit(msg)
    await recorder.wait("node_success", "j", count=3)
    record = await logs.wait("join_k_deadline_drop")
    assert (record.trace_id, record.held) == (first.trace_id, 2)
    answer = await kit.fetch(flow)  # the dropped bucket answers its trace
    assert (answer.trace_id, answer.payload) == (
        first.trace_id, FinalAnswer(text=DEADLINE_EXCEEDED_TEXT),
    )  # fmt: skip
    assert answer.headers == soon.headers
    (skip,) = recorder.matching("deadline_skip")
    assert (skip.node_name, skip.trace_id) == ("j", first.trace_id)
    assert held(flow) == {later.trace_id: 1}  # its deadline is an hour away
    assert await flow.wait_ended(first.trace_id, timeout=WAIT_S)
    assert set(flow.inspect().traces) == {later.trace_id}
    await flow.stop()
    assert PROBE not in flow.inspect().resources


async def test_timeout_emits_the_partial_batch(
    running: list[PenguiFlow], kit: type[Kit], logs: LogCatcher
) -> None:
    j = join_k("j", 3, timeout_s=0.005)
    tail = passthrough("tail")
    flow = start(create(j.to(tail)), running)
    first = kit.message("a", meta={"x": 1})
    await flow.emit(first)
    await flow.emit(part(kit, "b", of=first))
    batch = await kit.fetch(flow)
    assert batch.payload == ["a", "b"]
    assert (batch.trace_id, batch.meta) == (first.trace_id, {"x": 1})
    record = await logs.wait("join_k_timeout_emit")
    assert (record.node_name, record.held, record.k) == ("j", 2, 3)
    kit.assert_clean(flow)


async def test_timeout_drop_policy(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder, logs: LogCatcher
) -> None:
    j = join_k("j", 2, timeout_s=0.005, on_timeout="drop")
    flow = start(create(j.to()), running, recorder)
    done = kit.message("done")
    await flow.emit(done)
    await flow.emit(part(kit, "done too", of=done))  # completes: its timer is disarmed
    lonely = kit.message("lonely")
    await flow.emit(lonely)
    record = await logs.wait("join_k_timeout_drop")
    assert (record.trace_id, record.held) == (lonely.trace_id, 1)
    assert (await kit.fetch(flow)).payload == ["done", "done too"]
    # The completed bucket's timer was armed first and would have fired first.
    timeouts = [r for r in logs.records if r.getMessage().startswith("join_k_timeout")]
    assert [r.trace_id for r in timeouts] == [lonely.trace_id]
    kit.assert_clean(flow)


async def _blocked_partial(
    kit: type[Kit], running: list[PenguiFlow], recorder: Recorder, logs: LogCatcher
) -> tuple[PenguiFlow, Message, Message, asyncio.Task[Any]]:
    """A full Rookery edge, so a timed-out partial batch must wait in a task."""
    j = join_k("j", 2, timeout_s=0.005)
    flow = start(create(j.to(), queue_maxsize=1), running, recorder)
    full = kit.message("full")
    await flow.emit(full)
    await flow.emit(part(kit, "full 2", of=full))
    await recorder.wait("node_success", "j", full.trace_id, count=2)  # Rookery edge full
    partial = kit.message("partial")
    await flow.emit(partial)
    await logs.wait("join_k_timeout_emit")
    (task,) = pattern_tasks()
    assert not task.done()
    return flow, full, partial, task


async def test_timed_out_partial_waits_for_capacity(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder, logs: LogCatcher
) -> None:
    flow, full, partial, task = await _blocked_partial(kit, running, recorder, logs)
    assert (await kit.fetch(flow)).trace_id == full.trace_id
    out = await kit.fetch(flow)
    assert (out.trace_id, out.payload) == (partial.trace_id, ["partial"])
    await asyncio.wait({task})
    assert pattern_tasks() == set()
    kit.assert_clean(flow)


async def test_cancel_aborts_a_waiting_partial(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder, logs: LogCatcher
) -> None:
    flow, full, partial, task = await _blocked_partial(kit, running, recorder, logs)
    assert await flow.cancel(partial.trace_id) is True
    await asyncio.wait({task})
    assert task.cancelled()
    assert (await kit.fetch(flow)).trace_id == full.trace_id
    kit.assert_clean(flow)


@pytest.mark.leaves_state  # the full batch stays unfetched at Rookery across stop()
async def test_stop_aborts_a_waiting_partial(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder, logs: LogCatcher
) -> None:
    flow, _full, _partial, task = await _blocked_partial(kit, running, recorder, logs)
    await flow.stop()
    await asyncio.wait({task})
    assert task.cancelled()
    assert pattern_tasks() == set()
    assert PROBE not in flow.inspect().resources


async def test_detached_join_works_with_node_invoke(kit: type[Kit]) -> None:
    j = join_k("j", 2)
    ctx = Context(j)
    first = kit.message(1)
    assert await j.invoke(first, ctx, registry=None) is None
    batch = await j.invoke(part(kit, 2, of=first), ctx, registry=None)
    assert batch.payload == [1, 2]


async def test_timeout_drop_is_reported_as_a_flow_event() -> None:
    from penguiflow import FlowEvent, Headers, Message, create

    seen: list[FlowEvent] = []
    reported = asyncio.Event()

    async def mw(event: FlowEvent) -> None:
        if event.event_type == "join_k_timeout_drop":
            seen.append(event)
            reported.set()

    join = join_k("join", 2, timeout_s=0.01, on_timeout="drop")
    flow = create(join.to(), middlewares=[mw])
    flow.run()
    try:
        msg = Message(payload="half", headers=Headers(tenant="t"))
        await flow.emit(msg)
        await asyncio.wait_for(reported.wait(), 1.0)
    finally:
        await flow.stop()
    (event,) = seen
    assert event.trace_id == msg.trace_id
    assert event.node_name == "join"
    assert event.extra["held"] == 1
    assert event.extra["k"] == 2
    assert flow.inspect().resources.get("join_k:join") in (None, {})


# --------------------------------------------------------------------------- requests


def fan_in(
    running: list[PenguiFlow], slow_work: Any, recorder: Recorder | None = None, **join: Any
) -> PenguiFlow:
    """``fan -> (fast, slow) -> j -> Rookery``."""
    fan, fast = passthrough("fan"), passthrough("fast")
    slow = Node(slow_work, name="slow")
    j = join_k("j", 2, **join)
    flow = create(fan.to(fast, slow), fast.to(j), slow.to(j), j.to())
    return start(flow, running, recorder)


async def test_a_request_waits_for_a_half_full_bucket(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder
) -> None:
    j = join_k("j", 2)
    flow = start(create(j.to()), running, recorder)
    first = kit.message("a")
    async with flow.request(first, expect=Message) as req:
        # The first part sits in the bucket: the request is not over...
        await recorder.wait("node_success", "j", first.trace_id)
        assert held(flow) == {first.trace_id: 1}
        assert not await flow.wait_ended(first.trace_id, timeout=0.5)
        assert req.state == "pending"
        # ...and the second part completes it.
        await flow.emit(part(kit, "b", of=first))
        batch = await req.result()
    assert (batch.trace_id, batch.payload, req.state) == (first.trace_id, ["a", "b"], "result")
    kit.assert_clean(flow)


async def test_a_branch_slow_past_the_deadline_answers_the_request(
    running: list[PenguiFlow], kit: type[Kit]
) -> None:
    async def slow_work(item: Any, ctx: Context) -> Any:
        await asyncio.sleep(60)  # virtual time: instant, but past the deadline
        return item

    flow = fan_in(running, slow_work)
    msg = kit.message("doc", deadline_s=wall_time() + 1)
    result = await flow.invoke(msg, timeout=WAIT_S, expect=Message)
    assert (result.trace_id, result.payload) == (
        msg.trace_id, FinalAnswer(text=DEADLINE_EXCEEDED_TEXT),
    )  # fmt: skip
    assert held(flow) == {}
    kit.assert_clean(flow)


async def test_a_bucket_dropped_at_its_deadline_answers_the_request(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder, logs: LogCatcher
) -> None:
    async def filtered(item: Any, ctx: Context) -> Any:
        return None  # this branch drops its item: only the join's deadline ends the trace

    flow = fan_in(running, filtered, recorder)
    msg = kit.message("doc", deadline_s=wall_time() + 1)
    result = await flow.invoke(msg, timeout=WAIT_S, expect=Message)
    assert (result.trace_id, result.payload) == (
        msg.trace_id, FinalAnswer(text=DEADLINE_EXCEEDED_TEXT),
    )  # fmt: skip
    assert (await logs.wait("join_k_deadline_drop")).trace_id == msg.trace_id
    (skip,) = recorder.matching("deadline_skip")
    assert (skip.node_name, skip.trace_id) == ("j", msg.trace_id)
    kit.assert_clean(flow)


async def test_a_bucket_dropped_on_timeout_ends_the_request_without_a_result(
    running: list[PenguiFlow], kit: type[Kit]
) -> None:
    async def filtered(item: Any, ctx: Context) -> Any:
        return None

    flow = fan_in(running, filtered, timeout_s=5, on_timeout="drop")
    msg = kit.message("doc")
    with pytest.raises(FlowError) as info:
        await flow.invoke(msg, timeout=WAIT_S)
    assert (info.value.code, info.value.trace_id) == ("NO_RESULT", msg.trace_id)
    kit.assert_clean(flow)


async def test_a_timed_out_partial_batch_is_the_request_result(
    running: list[PenguiFlow], kit: type[Kit]
) -> None:
    async def filtered(item: Any, ctx: Context) -> Any:
        return None

    flow = fan_in(running, filtered, timeout_s=5)
    msg = kit.message("doc")
    batch = await flow.invoke(msg, timeout=WAIT_S, expect=Message)
    assert (batch.trace_id, batch.payload) == (msg.trace_id, ["doc"])
    kit.assert_clean(flow)


async def test_leaving_a_request_frees_its_bucket(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder
) -> None:
    j = join_k("j", 2)
    flow = start(create(j.to()), running, recorder)
    msg = kit.message("a")
    async with flow.request(msg) as req:
        await recorder.wait("node_success", "j", msg.trace_id)
        assert held(flow) == {msg.trace_id: 1}
    assert req.state == "cancelled"
    assert held(flow) == {}
    kit.assert_clean(flow)


async def test_a_stopped_join_flow_nobody_holds_is_freed_without_the_garbage_collector() -> None:
    import gc
    import weakref

    from penguiflow.types import Headers

    fan, join = passthrough("fan"), join_k("j", 2)
    a, b = passthrough("a"), passthrough("b")
    flow = create(fan.to(a, b), a.to(join), b.to(join), join.to())
    flow.run()
    request = Message(payload="x", headers=Headers(tenant="t"))
    batch = await asyncio.wait_for(flow.invoke(request), WAIT_S)
    assert isinstance(batch, Message) and batch.payload == ["x", "x"]
    await flow.stop()
    ref = weakref.ref(flow)
    gc.disable()
    try:
        del flow
        assert ref() is None, "the join's per-flow state must not keep a stopped flow alive"
    finally:
        gc.enable()
