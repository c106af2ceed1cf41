"""Routing between nodes, controllers and cycles, and how trace ids are read from items."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel, ConfigDict

from penguiflow.core import Context, PenguiFlow
from penguiflow.node import Node, NodePolicy
from penguiflow.types import WM, FinalAnswer, Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow
    from penguiflow.testing import Recorder


def node(fn: Any, name: str, **kw: Any) -> Node:
    allow_cycle = kw.pop("allow_cycle", False)
    policy = NodePolicy(**{"validate": "none", **kw})
    return Node(fn, name=name, policy=policy, allow_cycle=allow_cycle)


def msg(payload: Any, **kw: Any) -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"), **kw)


async def fetch(flow: PenguiFlow, **kw: Any) -> Any:
    return await asyncio.wait_for(flow.fetch(**kw), 1.0)


async def echo(m: Any, ctx: Context) -> Any:
    return m


async def test_result_goes_once_to_every_successor(make_flow: MakeFlow) -> None:
    async def tag_b(m: Any, ctx: Context) -> Any:
        return ("b", m)

    async def tag_c(m: Any, ctx: Context) -> Any:
        return ("c", m)

    a, b, c = node(echo, "a"), node(tag_b, "b"), node(tag_c, "c")
    flow = make_flow(a.to(b, c))
    flow.run()
    await flow.emit(1)
    got = {await fetch(flow), await fetch(flow)}
    assert got == {("b", 1), ("c", 1)}
    assert all(f.queue.qsize() == 0 for f in flow.floes)


async def test_final_answer_message_from_a_middle_node_reaches_rookery_once(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    called: list[Any] = []

    async def finish(m: Message, ctx: Context) -> Any:
        return m.model_copy(update={"payload": FinalAnswer(text="ok")})

    async def never(m: Any, ctx: Context) -> Any:
        called.append(m)
        return m

    a, x, y = node(finish, "a"), node(never, "x"), node(echo, "y")
    flow = make_flow(a.to(x), y.to(), middlewares=[recorder])
    flow.run()
    m = msg("q")
    await flow.emit(m, to=a)
    out = await fetch(flow)
    assert out.payload.text == "ok"
    assert called == []
    assert flow.inspect().traces == {}
    assert recorder.names(trace_id=m.trace_id, node="a") == ["node_start", "node_success"]


async def test_bare_final_answer_is_routed_normally(make_flow: MakeFlow) -> None:
    seen: list[Any] = []

    async def finish(m: Any, ctx: Context) -> Any:
        return FinalAnswer(text="bare")

    async def after(m: Any, ctx: Context) -> Any:
        seen.append(m)
        return m

    a, b = node(finish, "a"), node(after, "b")
    flow = make_flow(a.to(b))
    flow.run()
    await flow.emit(1)
    assert await fetch(flow) == FinalAnswer(text="bare")
    assert seen == [FinalAnswer(text="bare")]


async def test_wm_message_from_a_node_without_self_edge_routes_normally(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    """Only a node with an edge to itself is a controller."""
    seen: list[Any] = []

    async def plan(m: Message, ctx: Context) -> Any:
        return m.model_copy(update={"payload": WM(query="q", hops=0)})

    async def act(m: Message, ctx: Context) -> Any:
        seen.append(m.payload)
        return m

    a, b = node(plan, "a"), node(act, "b")
    flow = make_flow(a.to(b), middlewares=[recorder])
    flow.run()
    m = msg("start")
    await flow.emit(m)
    out = await fetch(flow)
    assert out.payload == WM(query="q", hops=0)  # hops untouched: no controller step
    assert seen == [WM(query="q")]
    assert recorder.matching("node_error") == []
    assert [e.event_type for e in recorder.events if e.node_name == "a"] == [
        "node_start",
        "node_success",
    ]


async def test_wm_message_from_an_egress_node_without_self_edge(make_flow: MakeFlow) -> None:
    async def plan(m: Message, ctx: Context) -> Any:
        return m.model_copy(update={"payload": WM(query="q", budget_hops=None)})

    flow = make_flow(node(plan, "a").to())
    flow.run()
    await flow.emit(msg(1))
    out = await fetch(flow)
    assert out.payload == WM(query="q", budget_hops=None)
    assert flow.inspect().traces == {}


async def test_flow_without_ingress_rejects_emit(make_flow: MakeFlow) -> None:
    """A pure cycle has no ingress node, so emit raises instead of dropping the item."""
    a, b = node(echo, "a"), node(echo, "b")
    flow = make_flow(a.to(b), b.to(a), allow_cycles=True)
    flow.run()
    with pytest.raises(RuntimeError, match="ingress"):
        await flow.emit(1)
    with pytest.raises(RuntimeError, match="ingress"):
        flow.emit_nowait(1)
    assert flow.inspect().traces == {}


async def test_node_emits_several_items_and_returns_none(make_flow: MakeFlow) -> None:
    async def split(m: Any, ctx: Context) -> None:
        for part in m:
            await ctx.emit(part)

    flow = make_flow(node(split, "s").to())
    flow.run()
    await flow.emit("abc")
    assert [await fetch(flow) for _ in range(3)] == ["a", "b", "c"]


# -- trace ids ----------------------------------------------------------------------------


class WithField(BaseModel):
    trace_id: str
    v: int = 0


class Extra(BaseModel):
    model_config = ConfigDict(extra="allow")


class Plain:
    def __init__(self, trace_id: str | None = None) -> None:
        if trace_id is not None:
            self.trace_id = trace_id


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (WithField(trace_id="f1"), "f1"),
        (Extra.model_validate({"trace_id": "e1"}), "e1"),
        (Plain("p1"), "p1"),
        (Plain(), None),
        ({"trace_id": "dict"}, None),
        ("text", None),
    ],
)
async def test_trace_id_of_an_item_is_its_trace_id_attribute(
    make_flow: MakeFlow, item: Any, expected: str | None
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def hold(m: Any, ctx: Context) -> Any:
        started.set()
        await release.wait()
        return m

    flow = make_flow(node(hold, "h").to())
    flow.run()
    await flow.emit(item)
    await asyncio.wait_for(started.wait(), 1.0)
    traces = flow.inspect().traces
    if expected is None:
        assert traces == {}
    else:
        assert set(traces) == {expected}
        assert traces[expected].inflight == 1
    release.set()
    assert await fetch(flow) is item
    assert flow.inspect().traces == {}


async def test_untracked_items_are_not_affected_by_trace_state(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    flow.run()
    await flow.emit("bare")
    assert flow.inspect().traces == {}
    assert await fetch(flow) == "bare"
