"""Lifecycle, talking to a flow, contexts and scheduling."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from penguiflow.core import OPEN_SEA, ROOKERY, Context, PenguiFlow
from penguiflow.node import Node, NodePolicy
from penguiflow.registry import ModelRegistry
from penguiflow.types import FinalAnswer, Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow


def node(fn: Any, name: str, **policy: Any) -> Node:
    return Node(fn, name=name, policy=NodePolicy(**{"validate": "none", **policy}))


def msg(payload: Any, **kw: Any) -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"), **kw)


async def fetch(flow: PenguiFlow, **kw: Any) -> Any:
    return await asyncio.wait_for(flow.fetch(**kw), 1.0)


async def echo(m: Any, ctx: Context) -> Any:
    return m


async def plus_one(m: Any, ctx: Context) -> Any:
    return m + 1


# -- lifecycle ----------------------------------------------------------------------------


async def test_run_starts_one_named_worker_per_node(make_flow: MakeFlow) -> None:
    a, b = node(echo, "a"), node(echo, "b")
    flow = make_flow(a.to(b))
    before = set(asyncio.all_tasks())
    flow.run()
    assert flow.is_running
    new = set(asyncio.all_tasks()) - before
    assert sorted(t.get_name() for t in new) == ["penguiflow:a", "penguiflow:b"]
    await flow.stop()
    assert all(t.done() for t in new)
    assert not flow.is_running


async def test_second_run_raises(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    flow.run()
    with pytest.raises(RuntimeError, match="PenguiFlow already running"):
        flow.run()


def test_run_without_running_loop_raises() -> None:
    flow = PenguiFlow(node(echo, "a").to())
    with pytest.raises(RuntimeError):
        flow.run()
    assert not flow.is_running


async def test_stop_is_a_noop_when_not_running(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    await flow.stop()
    assert not flow.is_running


async def test_stop_cancels_in_flight_nodes_and_flow_can_run_again(make_flow: MakeFlow) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(m: Any, ctx: Context) -> Any:
        if m == "block":
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return m

    flow = make_flow(node(slow, "slow").to())
    flow.run()
    await flow.emit("block")
    await asyncio.wait_for(started.wait(), 1.0)
    await asyncio.wait_for(flow.stop(), 1.0)
    assert cancelled.is_set()
    assert flow.inspect().workers == 0
    flow.run()
    await flow.emit("again")
    assert await fetch(flow) == "again"


async def test_registry_property_tracks_last_run(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    reg = ModelRegistry()
    flow.run(registry=reg)
    assert flow.registry is reg
    await flow.stop()
    flow.run()
    assert flow.registry is None


async def test_run_with_registry_missing_entries(make_flow: MakeFlow) -> None:
    class M(BaseModel):
        v: int

    zeta = Node(echo, name="zeta")
    alpha = Node(echo, name="alpha")
    free = node(echo, "free")  # validate="none": never needs an entry
    flow = make_flow(zeta.to(alpha), alpha.to(free))
    with pytest.raises(
        RuntimeError,
        match=r"ModelRegistry is missing entries for nodes requiring validation: alpha, zeta$",
    ):
        flow.run(registry=ModelRegistry())
    # A failed run leaves the flow not running, so it can be fixed and run
    running_after_failure = flow.is_running
    assert not running_after_failure
    reg = ModelRegistry()
    reg.register("zeta", M, M)
    reg.register("alpha", M, M)
    flow.run(registry=reg)
    assert flow.is_running
    await flow.emit({"v": "3"})
    assert await fetch(flow) == M(v=3)


async def test_without_registry_no_validation_happens(make_flow: MakeFlow) -> None:
    strict = Node(echo, name="strict", policy=NodePolicy(validate="both"))
    flow = make_flow(strict.to())
    flow.run()
    await flow.emit(object)
    assert await fetch(flow) is object


async def test_registry_validation_in_a_flow(make_flow: MakeFlow) -> None:
    class In(BaseModel):
        x: int

    class Out(BaseModel):
        y: int

    async def f(m: In, ctx: Context) -> Out:
        return Out(y=m.x + 1)

    reg = ModelRegistry()
    reg.register("f", In, Out)
    flow = make_flow(Node(f).to())
    flow.run(registry=reg)
    await flow.emit({"x": "41"})
    assert await fetch(flow) == Out(y=42)


async def test_run_accepts_a_duck_typed_registry(make_flow: MakeFlow) -> None:
    from pydantic import TypeAdapter

    class Duck:
        def adapters(self, name: str) -> Any:
            return TypeAdapter(int), TypeAdapter(int)

    flow = make_flow(Node(plus_one, name="p").to())
    flow.run(registry=Duck())
    await flow.emit("41")
    assert await fetch(flow) == 42


# -- emit / fetch -------------------------------------------------------------------------


async def test_emit_before_run_waits_in_the_edges(make_flow: MakeFlow) -> None:
    flow = make_flow(node(plus_one, "p").to())
    await flow.emit(1)
    flow.emit_nowait(2)
    assert flow.floes[0].queue.qsize() == 2
    flow.run()
    assert [await fetch(flow), await fetch(flow)] == [2, 3]


async def test_emit_fans_out_to_every_ingress_node(make_flow: MakeFlow) -> None:
    async def tag_a(m: Any, ctx: Context) -> Any:
        return ("a", m)

    async def tag_b(m: Any, ctx: Context) -> Any:
        return ("b", m)

    a, b = node(tag_a, "a"), node(tag_b, "b")
    flow = make_flow(a.to(), b.to())
    flow.run()
    await flow.emit(1)
    assert {await fetch(flow), await fetch(flow)} == {("a", 1), ("b", 1)}


async def test_emit_to_selected_ingress_nodes(make_flow: MakeFlow) -> None:
    async def tag_a(m: Any, ctx: Context) -> Any:
        return ("a", m)

    async def tag_b(m: Any, ctx: Context) -> Any:
        return ("b", m)

    a, b = node(tag_a, "a"), node(tag_b, "b")
    flow = make_flow(a.to(), b.to())
    flow.run()
    await flow.emit(1, to=b)
    await flow.emit(2, to=[a])
    assert await fetch(flow, from_=b) == ("b", 1)
    assert await fetch(flow, from_=a) == ("a", 2)


async def test_emit_to_a_non_ingress_node_raises_before_enqueuing(make_flow: MakeFlow) -> None:
    a, b = node(echo, "a"), node(echo, "b")
    flow = make_flow(a.to(b))
    with pytest.raises(KeyError, match="Unknown target b for OpenSea"):
        await flow.emit(1, to=[a, b])
    with pytest.raises(KeyError, match="Unknown target b for OpenSea"):
        flow.emit_nowait(1, to=[a, b])
    assert flow.floes[0].queue.qsize() == 0
    assert flow.inspect().traces == {}


async def test_emit_waits_while_an_edge_is_full(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to(), queue_maxsize=1)
    await flow.emit(1)  # not running: stays queued
    blocked = asyncio.ensure_future(flow.emit(2))
    await asyncio.sleep(0)
    assert not blocked.done()
    flow.run()
    assert await fetch(flow) == 1
    await asyncio.wait_for(blocked, 1.0)
    assert await fetch(flow) == 2


@pytest.mark.leaves_state
async def test_emit_nowait_raises_queue_full(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to(), queue_maxsize=1)
    flow.emit_nowait(msg(1))
    with pytest.raises(asyncio.QueueFull):
        flow.emit_nowait(msg(2))


async def test_emit_nowait_does_not_leak_counts_on_queue_full(make_flow: MakeFlow) -> None:
    """Only successful enqueues count, and no target is enqueued if one is full."""
    a, b = node(echo, "a"), node(echo, "b")
    flow = make_flow(a.to(), b.to(), queue_maxsize=1)
    flow.emit_nowait(msg("fill"), to=b)
    m = msg("x")
    with pytest.raises(asyncio.QueueFull):
        flow.emit_nowait(m, to=[a, b])
    assert flow.context(a).queue_depth_in() == 0
    assert m.trace_id not in flow.inspect().traces
    flow.run()
    assert (await fetch(flow)).payload == "fill"
    assert flow.inspect().traces == {}
    # the failed trace id is not stuck: it can be used and drains
    flow.emit_nowait(m, to=a)
    assert await fetch(flow) is m
    assert flow.inspect().traces == {}


async def test_fetch_returns_items_exactly_as_delivered(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    flow.run()
    m = msg({"k": 1})
    await flow.emit(m)
    assert await fetch(flow) is m
    payload = object()
    await flow.emit(payload)
    assert await fetch(flow) is payload


async def test_fetch_unknown_source_raises(make_flow: MakeFlow) -> None:
    a, b = node(echo, "a"), node(echo, "b")
    flow = make_flow(a.to(b))
    flow.run()
    with pytest.raises(KeyError, match="Unknown target a for Rookery"):
        await flow.fetch(from_=a)
    with pytest.raises(KeyError, match="Unknown target a for Rookery"):
        await flow.fetch_any(from_=[a])


async def test_fetch_without_rookery_edges_raises(make_flow: MakeFlow) -> None:
    a, b = node(echo, "a"), node(echo, "b")
    flow = make_flow(a.to(b), b.to(a), allow_cycles=True)
    flow.run()
    with pytest.raises(RuntimeError, match="context has no incoming floes to fetch from"):
        await flow.fetch()


async def test_fetch_any_races_egress_edges(make_flow: MakeFlow) -> None:
    a, b = node(echo, "a"), node(echo, "b")
    flow = make_flow(a.to(), b.to())
    flow.run()
    waiter = asyncio.ensure_future(flow.fetch_any())
    await flow.emit("only-b", to=b)
    assert await asyncio.wait_for(waiter, 1.0) == "only-b"


async def test_fetch_completes_the_trace_accounting(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    flow.run()
    m = msg(1)
    await flow.emit(m)
    done: list[str] = []
    flow.on_trace_done(done.append)
    await fetch(flow)
    assert done == [m.trace_id]
    assert flow.inspect().traces == {}


async def test_none_result_delivers_nothing(make_flow: MakeFlow) -> None:
    async def drop(m: Any, ctx: Context) -> Any:
        return None if m == "drop" else m

    flow = make_flow(node(drop, "d").to())
    flow.run()
    await flow.emit("drop")
    await flow.emit("keep")
    assert await fetch(flow) == "keep"
    assert flow.floes[-1].queue.qsize() == 0


async def test_linear_chain_preserves_emission_order(make_flow: MakeFlow) -> None:
    a, b, c = node(plus_one, "a"), node(plus_one, "b"), node(plus_one, "c")
    flow = make_flow(a.to(b), b.to(c), queue_maxsize=2)
    flow.run()

    async def produce() -> None:
        for i in range(50):
            await flow.emit(i)

    producer = asyncio.ensure_future(produce())
    got = [await fetch(flow) for _ in range(50)]
    await producer
    assert got == [i + 3 for i in range(50)]


async def test_meta_mutations_travel_and_are_never_replaced(make_flow: MakeFlow) -> None:
    async def first(m: Message, ctx: Context) -> Any:
        m.meta["first"] = True
        return m

    async def second(m: Message, ctx: Context) -> Any:
        m.meta["second"] = True
        return m.model_copy(update={"payload": "new"})

    a, b = node(first, "a"), node(second, "b")
    flow = make_flow(a.to(b))
    flow.run()
    m = msg("p", meta={"origin": 1})
    await flow.emit(m)
    out = await fetch(flow)
    assert out.meta == {"origin": 1, "first": True, "second": True}
    assert out.trace_id == m.trace_id and out.payload == "new"


# -- context ------------------------------------------------------------------------------


async def test_context_emit_sends_to_all_or_selected_targets(make_flow: MakeFlow) -> None:
    got: dict[str, list[Any]] = {"b": [], "c": []}
    both = asyncio.Event()

    async def src(m: Any, ctx: Context) -> None:
        await ctx.emit(("all", m))
        await ctx.emit(("only-c", m), to=c)
        await ctx.emit(("c-twice", m), to=[c, c])
        ctx.emit_nowait(("b-nowait", m), to=b)

    async def sink_b(m: Any, ctx: Context) -> None:
        got["b"].append(m)

    async def sink_c(m: Any, ctx: Context) -> None:
        got["c"].append(m)
        if len(got["c"]) == 4:
            both.set()

    a, b, c = node(src, "a"), node(sink_b, "b"), node(sink_c, "c")
    flow = make_flow(a.to(b, c))
    flow.run()
    await flow.emit(1)
    await asyncio.wait_for(both.wait(), 1.0)
    assert got["c"] == [("all", 1), ("only-c", 1), ("c-twice", 1), ("c-twice", 1)]
    assert got["b"][:2] == [("all", 1), ("b-nowait", 1)]


async def test_context_emit_to_unknown_target_raises_before_enqueue(make_flow: MakeFlow) -> None:
    errors: list[BaseException] = []
    done = asyncio.Event()

    async def src(m: Any, ctx: Context) -> None:
        try:
            await ctx.emit("x", to=[b, stranger])
        except KeyError as exc:
            errors.append(exc)
        done.set()

    async def sink(m: Any, ctx: Context) -> Any:
        return m

    a, b, stranger = node(src, "a"), node(sink, "b"), node(sink, "stranger")
    flow = make_flow(a.to(b))
    flow.run()
    await flow.emit(1)
    await asyncio.wait_for(done.wait(), 1.0)
    assert "Unknown target stranger for a" in str(errors[0])
    assert flow.context(b).queue_depth_in() == 0


async def test_rookery_context_with_no_outgoing_edges_rejects_unknown_target(
    make_flow: MakeFlow,
) -> None:
    """A context without outgoing edges raises on an explicit ``to`` instead of ignoring it."""
    a = node(echo, "a")
    flow = make_flow(a.to())
    flow.run()
    with pytest.raises(KeyError, match="Unknown target a for Rookery"):
        await flow.context(ROOKERY).emit("x", to=a)


async def test_detached_context_emit_raises() -> None:
    ctx = Context(node(echo, "a"))
    assert ctx.runtime is None
    with pytest.raises(RuntimeError, match="Context is not attached to a running flow"):
        await ctx.emit(1)
    with pytest.raises(RuntimeError, match="Context is not attached to a running flow"):
        ctx.emit_nowait(1)


async def test_context_emit_to_rookery_from_an_egress_node(make_flow: MakeFlow) -> None:
    async def src(m: Any, ctx: Context) -> None:
        await ctx.emit("direct", to=ROOKERY)

    flow = make_flow(node(src, "a").to())
    flow.run()
    await flow.emit(1)
    assert await fetch(flow) == "direct"


async def test_context_emit_nowait_queue_full(make_flow: MakeFlow) -> None:
    outcome: list[Any] = []
    done = asyncio.Event()

    async def src(m: Any, ctx: Context) -> None:
        ctx.emit_nowait("one")
        try:
            ctx.emit_nowait("two")
        except asyncio.QueueFull:
            outcome.append("full")
        done.set()

    flow = make_flow(node(src, "a").to(), queue_maxsize=1)
    flow.run()
    await flow.emit(1)
    await asyncio.wait_for(done.wait(), 1.0)
    assert outcome == ["full"]
    assert await fetch(flow) == "one"


async def test_context_queue_depths_and_fetch(make_flow: MakeFlow) -> None:
    a, b = node(echo, "a"), node(echo, "b")
    flow = make_flow(a.to(b))
    await flow.emit(1)
    await flow.emit(2)
    ctx_a = flow.context(a)
    assert ctx_a.queue_depth_in() == 2
    assert ctx_a.queue_depth_out() == 0
    assert flow.context(OPEN_SEA).queue_depth_out() == 2
    assert flow.context(OPEN_SEA).outgoing_count() == 1
    # a context can fetch from its own inbox (it competes with its worker: not running)
    assert ctx_a.fetch_nowait() == 1
    assert await asyncio.wait_for(ctx_a.fetch(from_=OPEN_SEA), 1.0) == 2
    with pytest.raises(asyncio.QueueEmpty, match="no messages available"):
        ctx_a.fetch_nowait()
    with pytest.raises(KeyError, match="Unknown target b for a"):
        await ctx_a.fetch(from_=b)
    with pytest.raises(RuntimeError, match="context has no incoming floes to fetch from"):
        await flow.context(OPEN_SEA).fetch()


# -- scheduling ----------------------------------------------------------------------------


@pytest.mark.leaves_state
async def test_enqueue_with_capacity_does_not_suspend(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to(), queue_maxsize=4)
    coro = flow.emit(1)
    with pytest.raises(StopIteration):
        coro.send(None)  # completed at the first step: no suspension
    assert flow.floes[0].queue.qsize() == 1


async def test_busy_node_lets_producers_fill_exactly_its_capacity(make_flow: MakeFlow) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def busy(m: Any, ctx: Context) -> Any:
        started.set()
        await release.wait()
        return m

    flow = make_flow(node(busy, "busy").to(), queue_maxsize=3)
    flow.run()
    await flow.emit(0)
    await asyncio.wait_for(started.wait(), 1.0)
    for i in range(3):
        coro = flow.emit(i + 1)
        with pytest.raises(StopIteration):
            coro.send(None)
    blocked = asyncio.ensure_future(flow.emit(4))
    await asyncio.sleep(0)
    assert not blocked.done()
    release.set()
    await asyncio.wait_for(blocked, 1.0)
    assert [await fetch(flow) for _ in range(5)] == [0, 1, 2, 3, 4]


async def test_worker_takes_work_at_its_first_scheduling_step(make_flow: MakeFlow) -> None:
    seen: list[Any] = []

    async def record(m: Any, ctx: Context) -> None:
        seen.append(m)

    flow = make_flow(node(record, "r").to())
    await flow.emit("early")
    flow.run()
    await asyncio.sleep(0)  # exactly one loop step: the worker's first
    assert seen == ["early"]
    await flow.emit("late")
    await asyncio.sleep(0)  # one step: the waiting worker was woken by the enqueue
    assert seen == ["early", "late"]


async def test_final_answer_message_skips_successors(make_flow: MakeFlow) -> None:
    called: list[Any] = []

    async def decide(m: Message, ctx: Context) -> Any:
        if m.payload == "final":
            return m.model_copy(update={"payload": FinalAnswer(text="done")})
        return m

    async def after(m: Any, ctx: Context) -> Any:
        called.append(m)
        return m

    a, b = node(decide, "a"), node(after, "b")
    flow = make_flow(a.to(b))
    flow.run()
    m = msg("final")
    await flow.emit(m)
    out = await fetch(flow)
    assert out.payload == FinalAnswer(text="done")
    assert out.trace_id == m.trace_id
    assert called == []


# -- freeing a stopped flow -----------------------------------------------------------------


async def test_a_stopped_flow_nobody_holds_is_freed_without_the_garbage_collector() -> None:
    """Flows built per request (playbooks) must not pile up as reference cycles."""
    import gc
    import weakref

    async def forward(m: Any, ctx: Context) -> None:
        await ctx.emit(m)  # binds the context's kernel operations to the flow

    first, second = node(forward, "forward"), node(echo, "echo")
    flow = PenguiFlow(first.to(second), second.to())
    flow.run()
    await flow.emit(msg(1))
    assert (await fetch(flow)).payload == 1
    assert await flow.invoke(msg(2), timeout=1.0) is not None
    await flow.stop()
    ref = weakref.ref(flow)
    gc.disable()
    try:
        del flow
        assert ref() is None, "a stopped flow must not be kept alive by a reference cycle"
    finally:
        gc.enable()


async def test_a_flow_run_again_after_stop_binds_its_context_operations_again() -> None:
    async def forward(m: Any, ctx: Context) -> None:
        await ctx.emit(m)  # a context operation, forgotten at stop and bound again on use

    async def upper(m: Any, ctx: Context) -> Any:
        return m.with_payload(m.payload.upper())

    first, second = node(forward, "forward"), node(upper, "upper")
    flow = PenguiFlow(first.to(second), second.to())
    for word in ("one", "two"):
        flow.run()
        try:
            result = await flow.invoke(msg(word), timeout=1.0, expect=Message)
            assert result.payload == word.upper()
        finally:
            await flow.stop()
