"""``call_playbook`` / ``Context.call_playbook``: subflows that follow their parent trace."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from penguiflow.core import Context, PenguiFlow, TraceCancelled, call_playbook, create
from penguiflow.node import Node, NodePolicy
from penguiflow.registry import ModelRegistry
from penguiflow.types import Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow
    from penguiflow.testing import Recorder

# Timing-dependent: on the test kit's virtual clock when penguiflow-testing is installed.
pytestmark = pytest.mark.usefixtures("virtual_clock")


def node(fn: Any, name: str, **policy: Any) -> Node:
    return Node(fn, name=name, policy=NodePolicy(**{"validate": "none", **policy}))


def msg(payload: Any = "p", **kw: Any) -> Message:
    return Message(payload=payload, headers=Headers(tenant="acme"), **kw)


class Playbook:
    """A factory that records every subflow it builds and what the subflow saw."""

    def __init__(self, body: Any, registry: Any = None) -> None:
        self.body = body
        self.registry = registry
        self.flows: list[PenguiFlow] = []
        self.seen: list[Any] = []

    def __call__(self) -> tuple[PenguiFlow, Any]:
        async def step(m: Any, ctx: Context) -> Any:
            self.seen.append(m)
            return await self.body(m, ctx)

        flow = create(Node(step, name="step", policy=NodePolicy(validate="none")).to())
        self.flows.append(flow)
        return flow, self.registry


async def test_returns_first_payload_and_stops_the_subflow() -> None:
    async def body(m: Message, ctx: Context) -> Any:
        return m.model_copy(update={"payload": f"result:{m.payload}"})

    pb = Playbook(body)
    parent = msg("q", meta={"k": 1}, deadline_s=9e9)
    assert await call_playbook(pb, parent) == "result:q"
    assert pb.seen == [parent] and pb.seen[0] is parent  # the very same object
    sub = pb.flows[0]
    assert not sub.is_running
    assert sub.inspect().workers == 0


async def test_bare_result_is_returned_as_is() -> None:
    async def body(m: Any, ctx: Context) -> Any:
        return {"bare": m}

    assert await call_playbook(Playbook(body), "x") == {"bare": "x"}


async def test_each_call_builds_a_fresh_subflow() -> None:
    async def body(m: Any, ctx: Context) -> Any:
        return m

    pb = Playbook(body)
    await call_playbook(pb, 1)
    await call_playbook(pb, 2)
    assert len(pb.flows) == 2 and pb.flows[0] is not pb.flows[1]


async def test_the_factory_registry_is_used() -> None:
    class In(BaseModel):
        x: int

    async def body(m: Any, ctx: Context) -> Any:
        return m

    reg = ModelRegistry()
    reg.register("step", In, In)

    def factory() -> tuple[PenguiFlow, Any]:
        async def step(m: In, ctx: Context) -> In:
            return In(x=m.x + 1)

        return create(Node(step, name="step").to()), reg

    assert await call_playbook(factory, {"x": "1"}) == In(x=2)


async def test_timeout_raises_and_still_stops_the_subflow() -> None:
    cancelled = asyncio.Event()

    async def body(m: Any, ctx: Context) -> Any:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    pb = Playbook(body)
    with pytest.raises(TimeoutError):
        await call_playbook(pb, msg(), timeout=0.01)
    assert cancelled.is_set()
    assert not pb.flows[0].is_running
    assert pb.flows[0].inspect().workers == 0


async def test_caller_cancellation_stops_the_subflow() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def body(m: Any, ctx: Context) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    pb = Playbook(body)
    task = asyncio.ensure_future(call_playbook(pb, msg()))
    await asyncio.wait_for(started.wait(), 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()
    assert not pb.flows[0].is_running


async def test_context_call_playbook_from_a_node(make_flow: MakeFlow) -> None:
    async def body(m: Message, ctx: Context) -> Any:
        return m.model_copy(update={"payload": ("sub", m.headers.tenant, m.trace_id)})

    pb = Playbook(body)

    async def controller(m: Message, ctx: Context) -> Message:
        result = await ctx.call_playbook(pb, m, timeout=1.0)
        return m.model_copy(update={"payload": result})

    flow = make_flow(node(controller, "controller").to())
    flow.run()
    parent = msg("q")
    await flow.emit(parent)
    out = await asyncio.wait_for(flow.fetch(), 1.0)
    assert out.payload == ("sub", "acme", parent.trace_id)
    assert not pb.flows[0].is_running


async def test_parent_cancel_is_mirrored_into_the_subflow(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    started, sub_cancelled = asyncio.Event(), asyncio.Event()

    async def body(m: Any, ctx: Context) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            sub_cancelled.set()
            raise

    pb = Playbook(body)

    async def controller(m: Message, ctx: Context) -> Any:
        return await ctx.call_playbook(pb, m)

    flow = make_flow(node(controller, "controller").to(), middlewares=[recorder])
    flow.run()
    parent = msg()
    await flow.emit(parent)
    await asyncio.wait_for(started.wait(), 1.0)
    assert await flow.cancel(parent.trace_id) is True
    await recorder.wait("trace_cancel_finish")
    assert sub_cancelled.is_set()
    assert not pb.flows[0].is_running
    assert pb.flows[0].inspect().workers == 0
    assert len(recorder.matching("node_trace_cancelled")) == 1


async def test_already_cancelled_parent_raises_without_running_the_subflow(
    make_flow: MakeFlow,
) -> None:
    """A playbook called under a trace already cancelled raises; the subflow never runs."""
    started, in_cleanup, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def lingering(m: Any, ctx: Context) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            in_cleanup.set()
            await release.wait()  # keeps the cancelled trace active
            raise

    flow = make_flow(node(lingering, "l").to())
    flow.run()
    parent = msg()
    await flow.emit(parent)
    await asyncio.wait_for(started.wait(), 1.0)
    await flow.cancel(parent.trace_id)
    await asyncio.wait_for(in_cleanup.wait(), 1.0)

    async def body(m: Any, ctx: Context) -> Any:
        return m

    pb = Playbook(body)
    with pytest.raises(TraceCancelled) as info:
        await call_playbook(pb, parent, runtime=flow)
    assert info.value.trace_id == parent.trace_id
    assert pb.flows == [] and pb.seen == []
    release.set()


async def test_without_runtime_there_is_no_mirroring(make_flow: MakeFlow) -> None:
    async def body(m: Any, ctx: Context) -> Any:
        return m

    flow = make_flow(node(body, "b").to())
    flow.run()
    parent = msg()
    # the parent's trace is unknown to ``flow`` here; the call just runs
    assert await call_playbook(Playbook(body), parent, runtime=flow) == "p"
