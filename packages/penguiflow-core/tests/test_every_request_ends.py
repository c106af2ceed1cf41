"""Every request ends: one regression test per way a caller was once left without its outcome.

Each test drives the public API only and ends with an exact outcome for every caller
(a result, a ``FlowError``, ``TraceCancelled``, ``FlowStoppedError``, ``TimeoutError`` or
the deadline answer). Timing tests run on the test kit's virtual clock (real time in the
core-only environment), so the waits below are bounds, never sleeps to let things settle.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import tracemalloc
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from penguiflow.clock import wall_time
from penguiflow.core import DEADLINE_EXCEEDED_TEXT, Context, PenguiFlow, call_playbook, create
from penguiflow.errors import FlowError, FlowRuntimeError, FlowStoppedError, TraceCancelled
from penguiflow.metrics import FlowEvent
from penguiflow.node import Node, NodePolicy
from penguiflow.types import WM, FinalAnswer, Headers, Message, StreamChunk

MakeFlow = Callable[..., PenguiFlow]
HEADERS = Headers(tenant="t")
STREAMS = "penguiflow.streams"


def node(func: Any, name: str, **policy: Any) -> Node:
    policy.setdefault("validate", "none")
    return Node(func, name=name, policy=NodePolicy(**policy))


def msg(payload: Any = "p", **kw: Any) -> Message:
    return Message(payload=payload, headers=HEADERS, **kw)


async def echo(m: Any, ctx: Context) -> Any:
    return m


async def hang_forever(m: Any, ctx: Context) -> Any:
    await asyncio.Event().wait()


def causes(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and its ``__cause__`` chain."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__
    return chain


def worker_tasks(name: str) -> set[asyncio.Task[Any]]:
    return {
        t
        for t in asyncio.all_tasks()
        if t.get_name().split("#")[0] == f"penguiflow:{name}" and not t.done()
    }


# -- stray cancellation never kills a worker ----------------------------------------------


class Stray(BaseException):
    """Neither an Exception nor a cancellation: what a broken library might raise."""


async def raises_cancelled(m: Message, ctx: Context) -> None:
    raise asyncio.CancelledError


async def awaits_a_future_cancelled_elsewhere(m: Message, ctx: Context) -> None:
    # Request coalescing: another caller owns the shared future and cancels it.
    shared: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(shared.cancel)
    await shared


async def gathers_a_cancelled_child(m: Message, ctx: Context) -> None:
    child = asyncio.ensure_future(asyncio.sleep(10))
    asyncio.get_running_loop().call_soon(child.cancel)
    await asyncio.gather(child)


@pytest.mark.usefixtures("virtual_clock")
@pytest.mark.parametrize(
    "stray",
    [raises_cancelled, awaits_a_future_cancelled_elsewhere, gathers_a_cancelled_child],
    ids=["raised", "future-cancelled-elsewhere", "gather-of-cancelled-child"],
)
async def test_a_stray_cancelled_error_is_a_node_failure_not_a_dead_worker(
    make_flow: MakeFlow, stray: Callable[[Message, Context], Any]
) -> None:
    async def work(m: Message, ctx: Context) -> Message:
        if m.payload == "bad":
            await stray(m, ctx)
        return m

    flow = make_flow(node(work, "work", max_concurrency=4).to())
    flow.run()
    bad = [msg("bad") for _ in range(10)]  # more than the 4 slots
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(flow.invoke(m) for m in bad), return_exceptions=True), 5.0
    )
    for outcome in outcomes:
        assert isinstance(outcome, FlowError), outcome
        assert (outcome.node_name, outcome.code) == ("work", "NODE_EXCEPTION")
        assert isinstance(outcome.__cause__, asyncio.CancelledError)
    assert flow.is_running and flow.inspect().workers == 4
    good = [msg(f"good{i}") for i in range(10)]
    results = await asyncio.wait_for(
        asyncio.gather(*(flow.invoke(m, expect=Message) for m in good)), 5.0
    )
    assert [r.payload for r in results] == [f"good{i}" for i in range(10)]


@pytest.mark.usefixtures("virtual_clock")
@pytest.mark.parametrize("raised", [Stray, asyncio.CancelledError], ids=["custom", "cancelled"])
async def test_a_middleware_raising_any_base_exception_is_contained(
    make_flow: MakeFlow, raised: type[BaseException]
) -> None:
    seen: list[str] = []

    async def broken_observer(event: FlowEvent) -> None:
        seen.append(event.event_type)
        raise raised

    flow = make_flow(node(echo, "a", max_concurrency=4).to(), middlewares=[broken_observer])
    flow.run()
    messages = [msg(i) for i in range(10)]
    results = await asyncio.wait_for(
        asyncio.gather(*(flow.invoke(m, expect=Message) for m in messages)), 5.0
    )
    assert [r.payload for r in results] == list(range(10))
    assert seen.count("node_start") == 10 and seen.count("node_success") == 10
    assert flow.is_running and flow.inspect().workers == 4
    assert [
        r.payload for r in [await asyncio.wait_for(flow.invoke(msg("later"), expect=Message), 1.0)]
    ] == ["later"]


# -- controller loops never block on their own edge ---------------------------------------


@pytest.mark.usefixtures("virtual_clock")
@pytest.mark.parametrize(("traces", "maxsize"), [(3, 2), (200, 64)])
async def test_a_controller_loop_with_more_traces_than_its_edge_holds_completes(
    make_flow: MakeFlow, traces: int, maxsize: int
) -> None:
    async def ctl(m: Message, ctx: Context) -> Message:
        wm = m.payload
        if wm.hops >= 4:
            return m.model_copy(update={"payload": FinalAnswer(text=wm.query)})
        return m  # the runtime advances hops

    c = Node(ctl, name="ctl", allow_cycle=True, policy=NodePolicy(validate="none"))
    flow = make_flow(c.to(c), queue_maxsize=maxsize)
    flow.run()
    messages = [msg(WM(query=f"q{i}")) for i in range(traces)]
    outs = await asyncio.wait_for(
        asyncio.gather(*(flow.invoke(m, expect=Message) for m in messages)), 10.0
    )
    assert [o.payload for o in outs] == [FinalAnswer(text=f"q{i}") for i in range(traces)]
    assert [o.trace_id for o in outs] == [m.trace_id for m in messages]


# -- atomic cancel ------------------------------------------------------------------------


async def test_a_cancel_whose_caller_is_cancelled_still_cancels_fully(
    make_flow: MakeFlow,
) -> None:
    started = asyncio.Event()
    interrupted: list[int] = []
    in_middleware = asyncio.Event()
    blocked_once: list[bool] = []

    async def hang(m: Message, ctx: Context) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            interrupted.append(m.payload)
            raise

    async def slow_observer(event: FlowEvent) -> None:
        if event.event_type == "trace_cancel_start" and not blocked_once:
            blocked_once.append(True)
            in_middleware.set()
            await asyncio.Event().wait()  # only its caller's cancellation ends this

    flow = make_flow(node(hang, "slow").to(), middlewares=[slow_observer])
    flow.run()
    m = msg(1)
    waiting = asyncio.ensure_future(flow.invoke(m))
    await asyncio.wait_for(started.wait(), 1.0)
    canceller = asyncio.ensure_future(flow.cancel(m.trace_id))
    await asyncio.wait_for(in_middleware.wait(), 1.0)
    canceller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await canceller
    with pytest.raises(TraceCancelled):
        await asyncio.wait_for(waiting, 1.0)
    assert await flow.wait_ended(m.trace_id, timeout=1.0)
    assert interrupted == [1]
    snap = flow.inspect()
    assert snap.traces == {} and all(n.inflight == 0 for n in snap.nodes)
    # A later cancel of the finished trace has nothing to do; one of a new request works.
    assert await flow.cancel(m.trace_id) is False
    started.clear()
    again = msg(2, trace_id=m.trace_id)
    waiting = asyncio.ensure_future(flow.invoke(again))
    await asyncio.wait_for(started.wait(), 1.0)
    assert await asyncio.wait_for(flow.cancel(again.trace_id), 1.0) is True
    with pytest.raises(TraceCancelled):
        await asyncio.wait_for(waiting, 1.0)
    assert interrupted == [1, 2]


# -- stop() ends every wait ---------------------------------------------------------------


@pytest.mark.leaves_state  # the queued items stay on their edges across stop(), as documented
async def test_stop_wakes_every_blocked_caller_with_flow_stopped(make_flow: MakeFlow) -> None:
    started: dict[str, asyncio.Event] = {n: asyncio.Event() for n in ("a", "cx", "cy", "d")}

    def hanging(name: str) -> Node:
        async def hang(m: Any, ctx: Context) -> None:
            started[name].set()
            await asyncio.Event().wait()

        return node(hang, name)

    a, cx, cy, d = (hanging(n) for n in ("a", "cx", "cy", "d"))
    flow = make_flow(a.to(), cx.to(), cy.to(), d.to(), queue_maxsize=2)
    flow.run()
    # emit: a runs one item, its ingress edge holds two, the fourth emit waits for room.
    await flow.emit(msg("a0"), to=a)
    await asyncio.wait_for(started["a"].wait(), 1.0)
    await flow.emit(msg("a1"), to=a)
    await flow.emit(msg("a2"), to=a)
    emit_blocked = asyncio.ensure_future(flow.emit(msg("a3"), to=a))
    # emit_chunk: one trace runs on cx and cy and has one chunk queued for cx; the next
    # chunk waits for per-trace capacity while cx's edge still has room.
    parent = msg("stream")
    await flow.emit_chunk(parent=parent, text="0", to=cx)
    await flow.emit_chunk(parent=parent, text="1", to=cy)
    await asyncio.wait_for(started["cx"].wait(), 1.0)
    await asyncio.wait_for(started["cy"].wait(), 1.0)
    await flow.emit_chunk(parent=parent, text="2", to=cx)
    chunk_blocked = asyncio.ensure_future(flow.emit_chunk(parent=parent, text="3", to=cx))
    # fetch: nothing will reach Rookery. A request handle: d never answers.
    fetch_blocked = asyncio.ensure_future(flow.fetch())
    request_blocked = asyncio.ensure_future(flow.invoke(msg("d"), to=d))
    await asyncio.wait_for(started["d"].wait(), 1.0)
    blocked = [emit_blocked, chunk_blocked, fetch_blocked, request_blocked]
    assert not any(t.done() for t in blocked)

    await asyncio.wait_for(flow.stop(), 2.0)
    for task in blocked:
        with pytest.raises(FlowStoppedError):
            await asyncio.wait_for(task, 1.0)
    depth = {getattr(e.target, "name", None): e.depth for e in flow.inspect().edges}
    assert depth["a"] == 2  # the woken emit enqueued nothing
    assert depth["cx"] == 1  # the chunk released by stop() was not enqueued


async def stop_from_inside(make_flow: MakeFlow, where: str, busy: bool) -> list[str]:
    """Call ``stop()`` from a node (or a middleware) of a flow; return what the call did.

    With ``busy``, another node is running an invocation that ``stop()`` must interrupt
    and wait for. Runs on the real loop: a ``stop()`` that spins would never let a virtual
    clock advance, and the bounds below would never fire.
    """
    stop_call: list[str] = []
    worker: list[asyncio.Task[Any]] = []
    other_started = asyncio.Event()

    async def stop_flow(flow: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        worker.append(task)
        try:
            await flow.stop()
        except BaseException as exc:
            stop_call.append(f"raised {type(exc).__name__}")
            raise
        stop_call.append(f"returned, running={flow.is_running}")

    async def stopper(m: Message, ctx: Context) -> None:
        if where == "node":
            await stop_flow(ctx.runtime)

    async def observer(event: FlowEvent) -> None:
        if where == "middleware" and event.event_type == "node_start" and event.node_name == "s":
            await stop_flow(flow)

    async def other(m: Any, ctx: Context) -> None:
        other_started.set()
        await asyncio.Event().wait()

    s, o = node(stopper, "s"), node(other, "other")
    flow = make_flow(s.to(), o.to(), middlewares=[observer])
    flow.run()
    pending: list[asyncio.Future[Any]] = []
    if busy:
        pending.append(asyncio.ensure_future(flow.invoke(msg("o"), to=o)))
        await asyncio.wait_for(other_started.wait(), 1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(FlowStoppedError):
        await asyncio.wait_for(flow.invoke(msg("s"), to=s), 2.0)
    for waiting in pending:
        with pytest.raises(FlowStoppedError):
            await asyncio.wait_for(waiting, 1.0)
    done, _ = await asyncio.wait(worker, timeout=1.0)
    assert done == set(worker)  # the stopping worker ended too
    assert loop.time() - started < 0.5
    assert not flow.is_running and flow.inspect().workers == 0
    return stop_call


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
@pytest.mark.parametrize("where", ["node", "middleware"])
async def test_stop_from_inside_the_flow_returns_to_its_caller(
    make_flow: MakeFlow, where: str, busy: bool
) -> None:
    """Busy: the self-cancel stop() schedules must not fire inside its own wait."""
    assert await stop_from_inside(make_flow, where, busy) == ["returned, running=False"]


@pytest.mark.usefixtures("virtual_clock")
async def test_stop_with_a_timeout_gives_up_on_a_node_that_swallows_cancellation(
    make_flow: MakeFlow, caplog: pytest.LogCaptureFixture
) -> None:
    released = asyncio.Event()
    started = asyncio.Event()

    async def stubborn(m: Any, ctx: Context) -> None:
        started.set()
        while not released.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass  # swallowed, every time

    flow = make_flow(node(stubborn, "stubborn").to())
    flow.run()
    await flow.emit(msg())
    await asyncio.wait_for(started.wait(), 1.0)
    stuck = worker_tasks("stubborn")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with caplog.at_level(logging.ERROR, logger="penguiflow"):
        await asyncio.wait_for(flow.stop(timeout=0.2), 2.0)
    assert 0.2 <= loop.time() - t0 < 0.5
    assert not flow.is_running
    assert any("stubborn" in r.getMessage() for r in caplog.records), caplog.text
    assert flow.inspect().workers == 1  # the worker stop() gave up on is still counted
    # Let the node go, so the test leaves no task behind.
    released.set()
    done, _ = await asyncio.wait(stuck, timeout=1.0)
    assert done == stuck
    assert flow.inspect().workers == 0


@pytest.mark.usefixtures("virtual_clock")
async def test_wait_for_bounds_a_stop_blocked_by_a_node_that_swallows_cancellation(
    make_flow: MakeFlow,
) -> None:
    released = asyncio.Event()
    started = asyncio.Event()

    async def stubborn(m: Any, ctx: Context) -> None:
        started.set()
        while not released.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass

    flow = make_flow(node(stubborn, "stubborn").to())
    flow.run()
    await flow.emit(msg())
    await asyncio.wait_for(started.wait(), 1.0)
    stuck = worker_tasks("stubborn")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(flow.stop(), 0.5)
    assert loop.time() - t0 < 2.0  # the wait_for bound plus at most one grace period
    assert not flow.is_running
    released.set()
    done, _ = await asyncio.wait(stuck, timeout=1.0)
    assert done == stuck


# -- playbooks ----------------------------------------------------------------------------


@pytest.mark.usefixtures("virtual_clock")
async def test_a_playbook_whose_node_fails_fails_the_parent_request(make_flow: MakeFlow) -> None:
    subflows: list[PenguiFlow] = []

    async def broken(m: Any, ctx: Context) -> Any:
        raise ValueError("the subflow broke")

    def playbook() -> tuple[PenguiFlow, None]:
        sub = create(node(broken, "sub_step").to())
        subflows.append(sub)
        return sub, None

    async def parent(m: Message, ctx: Context) -> Any:
        return await ctx.call_playbook(playbook, ctx.message)

    flow = make_flow(node(parent, "parent").to())
    flow.run()
    with pytest.raises(FlowError) as info:
        await asyncio.wait_for(flow.invoke(msg()), 2.0)
    chain = causes(info.value)
    assert any(isinstance(e, ValueError) and str(e) == "the subflow broke" for e in chain)
    assert "sub_step" in {e.node_name for e in chain if isinstance(e, FlowError)}
    (sub,) = subflows
    assert not sub.is_running and sub.inspect().workers == 0
    assert worker_tasks("sub_step") == set()


# -- cancel() interrupts a blocked deadline answer ----------------------------------------


@pytest.mark.usefixtures("virtual_clock")
async def test_cancel_interrupts_a_deadline_answer_blocked_on_a_full_rookery(
    make_flow: MakeFlow,
) -> None:
    skipping = asyncio.Event()

    async def observer(event: FlowEvent) -> None:
        if event.event_type == "deadline_skip":
            skipping.set()

    a = node(echo, "a")
    flow = make_flow(a.to(), queue_maxsize=1, middlewares=[observer])
    flow.run()
    first = msg("first")
    await flow.emit(first)  # its result fills the a -> Rookery edge; nobody fetches yet
    late = msg("late", deadline_s=wall_time() - 1.0)
    await flow.emit(late)
    await asyncio.wait_for(skipping.wait(), 1.0)  # the answer's put now waits for room
    assert late.trace_id in flow.inspect().traces
    assert await asyncio.wait_for(flow.cancel(late.trace_id), 1.0) is True
    assert await flow.wait_ended(late.trace_id, timeout=1.0)
    snap = flow.inspect()
    assert set(snap.traces) == {first.trace_id}
    assert all(n.inflight == 0 for n in snap.nodes)
    assert (await asyncio.wait_for(flow.fetch(), 1.0)).payload == "first"
    assert all(e.depth == 0 for e in flow.inspect().edges)  # no late answer came after
    assert (await asyncio.wait_for(flow.invoke(msg("next"), expect=Message), 1.0)).payload == "next"


# -- nothing outlives its trace -----------------------------------------------------------


@pytest.mark.usefixtures("virtual_clock")
async def test_stream_counters_of_a_stream_cut_short_by_a_timeout_are_freed(
    make_flow: MakeFlow,
) -> None:
    open_during: list[int] = []

    async def talk(m: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=m, text="a")
        await ctx.emit_chunk(parent=m, text="b")
        runtime = ctx.runtime
        assert runtime is not None
        open_during.append(runtime.inspect().resources[STREAMS].get(m.trace_id, 0))
        await asyncio.sleep(10)  # no done chunk: the node times out mid-stream

    flow = make_flow(node(talk, "llm", timeout_s=0.5).to())
    flow.run()
    m = msg()
    async with flow.request(m) as req:
        texts = [c.text async for c in req.chunks()]
        with pytest.raises(FlowError) as info:
            await req.result()
    assert info.value.code == "NODE_TIMEOUT"
    assert texts == ["a", "b"]
    assert open_during == [1]
    assert flow.inspect().resources[STREAMS] == {}
    assert flow.inspect().is_quiescent


async def test_emit_to_no_node_leaves_no_trace(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    flow.run()
    for _ in range(1000):
        await flow.emit(msg(), to=[])
    reused = msg("again")
    await flow.emit(reused, to=[])
    snap = flow.inspect()
    assert snap.traces == {} and snap.is_quiescent
    out = await asyncio.wait_for(
        flow.invoke(reused, expect=Message), 1.0
    )  # the trace id is free to reuse
    assert out.payload == "again"


@pytest.mark.parametrize("where", ["inbox", "rookery"])
async def test_purged_entries_are_freed_at_once(make_flow: MakeFlow, where: str) -> None:
    n = 20_000
    gate = asyncio.Event()
    blocker_started = asyncio.Event()
    passed_all = asyncio.Event()
    passed = 0

    async def work(m: Message, ctx: Context) -> Message:
        nonlocal passed
        if m.payload == "blocker":
            blocker_started.set()
            await gate.wait()
            return m
        passed += 1
        if passed == n:
            passed_all.set()
        return m

    flow = make_flow(node(work, "work").to(), queue_maxsize=0)
    flow.run()
    victim = "victim-trace"
    if where == "inbox":  # another trace holds the only worker: the victim's items queue
        await flow.emit(msg("blocker"))
        await asyncio.wait_for(blocker_started.wait(), 1.0)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            flow.emit_nowait(Message(payload=i, headers=HEADERS, trace_id=victim))
        if where == "rookery":  # every result waits at Rookery, unfetched
            await asyncio.wait_for(passed_all.wait(), 10.0)
        loaded = tracemalloc.get_traced_memory()[0] - base
        assert await flow.cancel(victim) is True
        gc.collect()
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert loaded > n * 300  # the queued messages are what we measure
    assert left < loaded * 0.05, f"{left} of {loaded} bytes still held after cancel()"
    assert victim not in flow.inspect().traces
    gate.set()
    if where == "inbox":
        assert (await asyncio.wait_for(flow.fetch(), 1.0)).payload == "blocker"
    assert all(e.depth == 0 for e in flow.inspect().edges)


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_an_idle_worker_holds_no_reference_to_its_last_item(
    make_flow: MakeFlow, concurrency: int
) -> None:
    async def relabel(m: Message, ctx: Context) -> Message:
        return Message(payload="out", headers=m.headers, trace_id=m.trace_id)

    flow = make_flow(node(relabel, "a", max_concurrency=concurrency).to())
    flow.run()
    m = msg("in")
    ref = weakref.ref(m)
    out = await asyncio.wait_for(flow.invoke(m, expect=Message), 1.0)
    assert out.payload == "out"
    del m
    gc.collect()
    assert ref() is None, gc.get_referrers(ref())


# -- fairness -----------------------------------------------------------------------------


@pytest.mark.usefixtures("virtual_clock")
async def test_one_traces_backlog_does_not_throttle_other_traces(make_flow: MakeFlow) -> None:
    release = asyncio.Event()

    async def work(m: Message, ctx: Context) -> Message:
        if m.trace_id == "slow":
            await release.wait()
        else:
            await asyncio.sleep(0.01)
        return m

    flow = make_flow(node(work, "work", max_concurrency=16).to(), queue_maxsize=64)
    flow.run()
    for i in range(100):  # the first runs and blocks; 99 queue behind it
        slow = Message(payload=i, headers=HEADERS, trace_id="slow")
        await asyncio.wait_for(flow.emit(slow), 1.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    fast = [msg(f"fast{i}") for i in range(20)]
    outs = await asyncio.wait_for(
        asyncio.gather(*(flow.invoke(m, expect=Message) for m in fast)), 5.0
    )
    assert [o.payload for o in outs] == [f"fast{i}" for i in range(20)]
    assert loop.time() - t0 < 0.1  # 20 items on 15 idle slots: two rounds of 10 ms
    release.set()
    slow_out = [await asyncio.wait_for(flow.fetch(), 1.0) for _ in range(100)]
    assert [o.payload for o in slow_out] == list(range(100))  # per-trace order kept


# -- deadline propagation -----------------------------------------------------------------


@pytest.mark.usefixtures("virtual_clock")
async def test_an_attempt_cut_by_the_deadline_answers_deadline_exceeded_in_time_left(
    make_flow: MakeFlow,
) -> None:
    async def slow(m: Message, ctx: Context) -> Message:
        await asyncio.sleep(5.0)
        return m

    flow = make_flow(node(slow, "slow", timeout_s=10.0, max_retries=2, backoff_base=0.0).to())
    flow.run()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out = await asyncio.wait_for(
        flow.invoke(msg(deadline_s=wall_time() + 0.3), expect=Message), 20.0
    )
    assert out.payload == FinalAnswer(text=DEADLINE_EXCEEDED_TEXT)
    assert 0.25 <= loop.time() - t0 < 0.5  # the time left, not timeout_s, not a retry


@pytest.mark.usefixtures("virtual_clock")
async def test_no_retry_starts_when_its_backoff_would_pass_the_deadline(
    make_flow: MakeFlow,
) -> None:
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    async def flaky(m: Message, ctx: Context) -> Message:
        attempts.append(loop.time())
        raise ValueError("flaky")

    flow = make_flow(node(flaky, "flaky", max_retries=3, backoff_base=1.0).to())
    flow.run()
    t0 = loop.time()
    try:
        outcome: Any = await asyncio.wait_for(flow.invoke(msg(deadline_s=wall_time() + 0.5)), 9)
    except FlowError as exc:
        outcome = exc
    assert len(attempts) == 1  # a retry 1 s later would start past the deadline
    assert loop.time() - t0 < 0.6
    assert isinstance(outcome, FlowError) or outcome.payload == FinalAnswer(
        text=DEADLINE_EXCEEDED_TEXT
    )


@pytest.mark.usefixtures("virtual_clock")
async def test_a_playbook_inherits_the_time_left() -> None:
    cancelled_at: list[float] = []
    loop = asyncio.get_running_loop()

    async def slow(m: Message, ctx: Context) -> Message:
        try:
            await asyncio.sleep(10.0)
        except asyncio.CancelledError:
            cancelled_at.append(loop.time())
            raise
        return m

    def playbook() -> tuple[PenguiFlow, None]:
        return create(node(slow, "sub_slow").to()), None

    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await call_playbook(playbook, msg(deadline_s=wall_time() + 0.3))
    assert 0.25 <= loop.time() - t0 < 0.5
    assert len(cancelled_at) == 1 and cancelled_at[0] - t0 < 0.5


@pytest.mark.usefixtures("virtual_clock")
async def test_a_request_whose_playbook_runs_out_of_time_gets_the_deadline_answer(
    make_flow: MakeFlow,
) -> None:
    async def slow(m: Message, ctx: Context) -> Message:
        await asyncio.sleep(10.0)
        return m

    def playbook() -> tuple[PenguiFlow, None]:
        return create(node(slow, "sub_slow").to()), None

    async def parent(m: Message, ctx: Context) -> Any:
        return await ctx.call_playbook(playbook, ctx.message)

    flow = make_flow(node(parent, "parent").to())
    flow.run()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    out = await asyncio.wait_for(
        flow.invoke(msg(deadline_s=wall_time() + 0.3), expect=Message), 20.0
    )
    assert out.payload == FinalAnswer(text=DEADLINE_EXCEEDED_TEXT)
    assert 0.25 <= loop.time() - t0 < 0.5


# -- found by the property test (test_property_outcomes.py) -------------------------------


@pytest.mark.usefixtures("virtual_clock")
async def test_a_stream_feeding_a_streaming_node_does_not_deadlock(make_flow: MakeFlow) -> None:
    async def tokens(m: Message, ctx: Context) -> Message:
        for i in range(100):
            await ctx.emit_chunk(parent=m, text=f"t{i}")
        return m.model_copy(update={"payload": "final"})

    async def upper(m: Message, ctx: Context) -> Message | None:
        if isinstance(m.payload, StreamChunk):  # re-chunk each token into a second stream
            await ctx.emit_chunk(parent=m, text=m.payload.text.upper(), stream_id="upper")
            return None
        return m

    a, b = node(tokens, "tokens"), node(upper, "upper")
    flow = make_flow(a.to(b), b.to())
    flow.run()
    async with asyncio.timeout(10.0), flow.request(msg(), expect=Message) as req:
        texts = [c.text async for c in req.chunks()]
        result = await req.result()
    assert texts == [f"T{i}" for i in range(100)]
    assert result.payload == "final"


@pytest.mark.usefixtures("virtual_clock")
async def test_requests_ended_by_stop_leave_nothing_behind(make_flow: MakeFlow) -> None:
    started = asyncio.Event()

    async def hang_once(m: Message, ctx: Context) -> Message:
        if m.payload == "first":
            started.set()
            await asyncio.Event().wait()
        return m

    flow = make_flow(node(hang_once, "a").to())
    flow.run()
    running = asyncio.ensure_future(flow.invoke(msg("first")))
    await asyncio.wait_for(started.wait(), 1.0)
    second = msg("second")
    async with flow.request(second) as req:  # its item waits on the ingress edge
        assert flow.inspect().traces[second.trace_id].queued == 1
        await flow.stop()
        with pytest.raises(FlowStoppedError):
            await asyncio.wait_for(req.result(), 1.0)
    with pytest.raises(FlowStoppedError):
        await asyncio.wait_for(running, 1.0)
    snap = flow.inspect()
    assert snap.traces == {} and all(e.depth == 0 for e in snap.edges), snap
    flow.run()  # nothing of the ended requests runs again or lands at Rookery
    assert (
        await asyncio.wait_for(flow.invoke(msg("third"), expect=Message), 1.0)
    ).payload == "third"
    assert flow.inspect().is_quiescent


# -- found by a review of request lifecycles ----------------------------------------------


async def test_a_request_interrupted_while_its_message_enters_cancels_what_entered(
    make_flow: MakeFlow,
) -> None:
    gate = asyncio.Event()
    a_has_it = asyncio.Event()

    async def a(m: Message, ctx: Context) -> Message:
        if m.payload == "victim":
            a_has_it.set()
        await gate.wait()
        return m

    na, nb = node(a, "a"), node(hang_forever, "b")
    flow = make_flow(na.to(), nb.to(), queue_maxsize=1)
    flow.run()
    blockers = [msg("b0"), msg("b1")]  # b runs one, its edge holds the other: it is full
    for blocker in blockers:
        await flow.emit(blocker, to=nb)
    victim = msg("victim")

    async def request() -> None:
        async with flow.request(victim) as req:
            await req.result()

    task = asyncio.ensure_future(request())
    # a has its copy, so the emit has moved on to b's full edge and waits there.
    await asyncio.wait_for(a_has_it.wait(), 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert await flow.wait_ended(victim.trace_id, timeout=1.0)
    assert victim.trace_id not in flow.inspect().traces
    for blocker in blockers:
        await flow.cancel(blocker.trace_id)
        assert await flow.wait_ended(blocker.trace_id, timeout=1.0)
    assert flow.inspect().traces == {}


async def test_a_stream_fed_by_a_long_chain_of_its_own_trace_does_not_wait_on_itself(
    make_flow: MakeFlow,
) -> None:
    """The streaming node's trace has many items before it, on full edges: only it can
    move them on, so they must not count against its chunk capacity."""
    items = 40

    async def fan(m: Message, ctx: Context) -> None:
        for i in range(items):
            await ctx.emit(m.model_copy(update={"payload": i}))

    async def speak(m: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=m, text=f"{m.payload}-x")
        await ctx.emit_chunk(parent=m, text=f"{m.payload}-y")

    a, b, s = node(fan, "fan"), node(echo, "pass"), node(speak, "speak")
    flow = make_flow(a.to(b), b.to(s), s.to(), queue_maxsize=4)
    flow.run()
    request = msg("go")
    async with asyncio.timeout(5.0), flow.request(request) as req:
        texts = [chunk.text async for chunk in req.chunks()]
        with pytest.raises(FlowError) as info:
            await req.result()
    assert len(texts) == 2 * items
    assert sorted(texts) == sorted(f"{i}-{end}" for i in range(items) for end in "xy")
    assert (info.value.code, info.value.node_name) == ("NO_RESULT", "speak")
    assert flow.inspect().traces == {}


async def test_a_put_parked_on_a_closed_subscription_goes_on_to_rookery(
    make_flow: MakeFlow,
) -> None:
    sent = [asyncio.Event() for _ in range(4)]
    ended: list[str] = []

    async def split(m: Message, ctx: Context) -> None:
        for i in range(4):
            await ctx.emit(m.model_copy(update={"payload": i}))
            sent[i].set()

    flow = make_flow(node(split, "split").to(), queue_maxsize=1)
    flow.on_trace_done(ended.append)
    flow.run()
    request = msg("x")
    async with flow.subscribe(request.trace_id) as sub:
        await flow.emit(request)
        first = await asyncio.wait_for(sub.get(), 1.0)
        # Item 1 fills the subscription's buffer, so split now waits to put item 2.
        await asyncio.wait_for(sent[1].wait(), 1.0)
        assert not sent[2].is_set()
    # Closing drops what the buffer held (item 1); what comes later goes to Rookery.
    rest = [await asyncio.wait_for(flow.fetch(), 1.0) for _ in range(2)]
    assert [first.payload, *(r.payload for r in rest)] == [0, 2, 3]
    assert await flow.wait_ended(request.trace_id, timeout=1.0)
    assert ended == [request.trace_id]
    assert flow.inspect().traces == {}


async def test_another_traces_cancel_raised_in_a_node_is_a_failure_of_the_node(
    make_flow: MakeFlow,
) -> None:
    attempts = 0

    async def asks_elsewhere(m: Message, ctx: Context) -> Message:
        nonlocal attempts
        attempts += 1
        raise TraceCancelled("a-request-this-node-made-elsewhere")

    flow = make_flow(node(asks_elsewhere, "asks", max_retries=2, backoff_base=0.0).to())
    flow.run()
    with pytest.raises(FlowError) as info:
        await asyncio.wait_for(flow.invoke(msg()), 1.0)
    assert (info.value.code, info.value.node_name) == ("NODE_EXCEPTION", "asks")
    assert any(isinstance(c, TraceCancelled) for c in causes(info.value))
    assert attempts == 3
    assert flow.inspect().traces == {}


async def test_two_requests_number_a_shared_stream_id_each_from_zero(
    make_flow: MakeFlow,
) -> None:
    paused, resume = asyncio.Event(), asyncio.Event()

    async def answer(m: Message, ctx: Context) -> Message:
        for i in range(3):
            await ctx.emit_chunk(parent=m, text=str(i), stream_id="answer", done=i == 2)
            if m.payload == "A" and i == 0:
                paused.set()
                await resume.wait()
        return m

    flow = make_flow(node(answer, "answer", max_concurrency=2).to())
    flow.run()

    async def seqs(request: Message) -> list[tuple[str, int]]:
        async with flow.request(request) as req:
            found = [(c.stream_id, c.seq) async for c in req.chunks()]
            await req.result()
        return found

    first = asyncio.ensure_future(seqs(msg("A")))
    await asyncio.wait_for(paused.wait(), 1.0)
    # B runs its whole stream, "done" included, while A's is open.
    assert await asyncio.wait_for(seqs(msg("B")), 1.0) == [("answer", i) for i in range(3)]
    resume.set()
    assert await asyncio.wait_for(first, 1.0) == [("answer", i) for i in range(3)]


async def test_stop_sends_nothing_a_request_was_still_waiting_to_send(
    make_flow: MakeFlow,
) -> None:
    """stop() drops the queued items of request traces, which makes room at the ingress:
    the request still waiting for that room must not slip its message in."""
    ran: list[Any] = []
    a_started = asyncio.Event()

    async def work(m: Message, ctx: Context) -> Message:
        ran.append(m.payload)
        a_started.set()
        await asyncio.Event().wait()
        return m

    flow = make_flow(node(work, "work").to(), queue_maxsize=1)
    flow.run()

    async def request(payload: str) -> Any:
        async with flow.request(msg(payload)) as req:
            return await req.result()

    a = asyncio.ensure_future(request("A"))
    await asyncio.wait_for(a_started.wait(), 1.0)
    b = asyncio.ensure_future(request("B"))  # queued on the full edge
    c = asyncio.ensure_future(request("C"))  # waits for room behind it

    async def all_entered() -> None:
        while len(flow.inspect().traces) < 3:
            await asyncio.sleep(0)

    await asyncio.wait_for(all_entered(), 1.0)
    await asyncio.wait_for(flow.stop(), 2.0)
    for task in (a, b, c):
        with pytest.raises(FlowStoppedError):
            await asyncio.wait_for(task, 1.0)
    assert flow.inspect().traces == {}
    ran.clear()
    flow.run()  # nothing of the three requests is left to run
    assert flow.inspect().traces == {} and ran == []
    assert all(e.depth == 0 for e in flow.inspect().edges)


# -- found by a second review: late items, sibling streams, overlapping stops --------------


@pytest.mark.parametrize("how", ["request", "invoke"])
async def test_a_chunk_sent_in_cleanup_after_a_cancel_leaves_nothing_behind(
    make_flow: MakeFlow, how: str
) -> None:
    """A node's ``finally`` sends a last chunk after its request was cancelled: with no
    reader left, the chunk must not wait on the shared Rookery and keep the trace alive."""
    streaming = asyncio.Event()

    async def llm(m: Message, ctx: Context) -> Message:
        try:
            await ctx.emit_chunk(parent=m, text="hi")
            streaming.set()
            await asyncio.Event().wait()
        finally:
            await ctx.emit_chunk(parent=m, text="", done=True)
        return m

    flow = make_flow(node(llm, "llm").to(), queue_maxsize=1)
    flow.run()
    request = msg()
    if how == "request":
        async with flow.request(request) as req:
            assert (await asyncio.wait_for(req.next_chunk(), 1.0)) is not None
            await req.cancel()
            with pytest.raises(TraceCancelled):
                await asyncio.wait_for(req.result(), 1.0)
    else:
        call = asyncio.ensure_future(flow.invoke(request))
        await asyncio.wait_for(streaming.wait(), 1.0)
        await flow.cancel(request.trace_id)
        with pytest.raises(TraceCancelled):
            await asyncio.wait_for(call, 1.0)
    assert await flow.wait_ended(request.trace_id, timeout=1.0)
    snap = flow.inspect()
    assert snap.traces == {} and all(e.depth == 0 for e in snap.edges), snap
    # The worker is free: the next request is served.
    again = asyncio.ensure_future(flow.invoke(msg()))
    await asyncio.wait_for(streaming.wait(), 1.0)
    again.cancel()
    with pytest.raises(asyncio.CancelledError):
        await again


@pytest.mark.parametrize("branches", [2, 3])
async def test_parallel_streaming_branches_of_one_request_do_not_wait_on_each_other(
    make_flow: MakeFlow, branches: int
) -> None:
    async def fan(m: Message, ctx: Context) -> Message:
        return m

    def streamer(name: str) -> Node:
        async def speak(m: Message, ctx: Context) -> Message:
            for i in range(3):
                await ctx.emit_chunk(parent=m, text=f"{name}{i}", stream_id=name)
            return m.model_copy(update={"payload": name})

        return node(speak, name)

    a = node(fan, "fan")
    speakers = [streamer(f"s{i}") for i in range(branches)]
    flow = make_flow(a.to(*speakers), *(s.to() for s in speakers), queue_maxsize=branches - 1)
    flow.run()
    request = msg()
    names = {f"s{b}" for b in range(branches)}
    async with asyncio.timeout(2.0), flow.request(request) as req:
        # The chunks up to the first result (the first result settles the handle).
        texts = [c.text async for c in req.chunks()]
        first = await req.result()
    assert texts and set(texts) <= {f"{n}{i}" for n in names for i in range(3)}
    assert isinstance(first, Message) and first.payload in names
    assert await flow.wait_ended(request.trace_id, timeout=1.0)
    out = await asyncio.wait_for(flow.invoke(msg(), expect=Message), 2.0)
    assert out.payload in names


async def test_a_second_stop_waits_for_the_first_so_a_new_run_is_not_undone(
    make_flow: MakeFlow,
) -> None:
    cleaning, finish_cleanup = asyncio.Event(), asyncio.Event()
    started = asyncio.Event()
    interrupted: list[str] = []

    async def work(m: Message, ctx: Context) -> None:
        if m.payload == "slow cleanup":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cleaning.set()
                await finish_cleanup.wait()  # stop() is winding down meanwhile
                raise
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            interrupted.append(m.payload)
            raise

    flow = make_flow(node(work, "work").to())
    flow.run()
    await flow.emit(msg("slow cleanup"))
    first = asyncio.ensure_future(flow.stop())
    await asyncio.wait_for(cleaning.wait(), 1.0)
    second = asyncio.ensure_future(flow.stop())
    with pytest.raises(FlowRuntimeError, match="stop"):
        flow.run()  # the first stop() has not returned yet
    finish_cleanup.set()
    await asyncio.wait_for(second, 2.0)  # returns only once the flow is wound down
    assert first.done()
    await first
    flow.run()
    # The new run is intact: a timed-out request's invocation is interrupted.
    with pytest.raises(TimeoutError):
        await flow.invoke(msg("new run"), timeout=0.2)
    assert interrupted == ["new run"]
    assert flow.inspect().traces == {}


async def test_a_result_returned_after_stop_is_not_delivered_to_the_stopped_flow(
    make_flow: MakeFlow,
) -> None:
    """A node stops its own flow and then returns: the request ends with the stop, and its
    result does not wait on Rookery for whoever fetches after the next run()."""

    async def work(m: Message, ctx: Context) -> Message:
        runtime = ctx.runtime
        assert runtime is not None
        await runtime.stop()
        return m

    flow = make_flow(node(work, "work").to())
    flow.run()
    with pytest.raises(FlowStoppedError):
        await asyncio.wait_for(flow.invoke(msg()), 2.0)
    snap = flow.inspect()
    assert snap.traces == {} and all(e.depth == 0 for e in snap.edges), snap


@pytest.mark.usefixtures("virtual_clock")
async def test_a_deadline_skip_says_how_long_the_attempt_it_cut_short_ran(
    make_flow: MakeFlow,
) -> None:
    """Observers can tell an attempt the deadline ended from an item never run."""
    skips: list[FlowEvent] = []

    async def watch(event: FlowEvent) -> None:
        if event.event_type == "deadline_skip":
            skips.append(event)

    async def slow(m: Message, ctx: Context) -> Message:
        await asyncio.sleep(10.0)
        return m

    flow = make_flow(node(slow, "slow").to(), middlewares=[watch])
    flow.run()
    cut = await flow.invoke(msg(deadline_s=wall_time() + 0.5), expect=Message, timeout=5.0)
    late = await flow.invoke(msg(deadline_s=wall_time() - 1.0), expect=Message, timeout=5.0)
    assert cut.payload == late.payload == FinalAnswer(text=DEADLINE_EXCEEDED_TEXT)
    assert len(skips) == 2
    assert skips[0].latency_ms is not None and 450.0 <= skips[0].latency_ms <= 600.0
    assert skips[1].latency_ms is None  # answered without running
