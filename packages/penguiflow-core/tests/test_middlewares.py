"""Middlewares: async observers of every FlowEvent; a failing one never stops the flow."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import pytest

import penguiflow.middlewares as mw_mod
from penguiflow.core import Context, PenguiFlow
from penguiflow.metrics import FlowEvent
from penguiflow.middlewares import Middleware
from penguiflow.node import Node, NodePolicy
from penguiflow.types import Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow
    from penguiflow.testing import Recorder


def node(fn: Any, name: str) -> Node:
    return Node(fn, name=name, policy=NodePolicy(validate="none"))


def msg(payload: Any = "p") -> Message:
    return Message(payload=payload, headers=Headers(tenant="acme"))


async def echo(m: Any, ctx: Context) -> Any:
    return m


async def fetch(flow: PenguiFlow) -> Any:
    return await asyncio.wait_for(flow.fetch(), 1.0)


def test_module_exports() -> None:
    assert set(mw_mod.__all__) == {"Middleware", "FlowEvent"}
    assert mw_mod.FlowEvent is FlowEvent


def test_middleware_protocol_is_not_runtime_checkable() -> None:
    async def mw(event: FlowEvent) -> None:
        return None

    with pytest.raises(TypeError):
        isinstance(mw, Middleware)  # type: ignore[misc]  # the TypeError is the point


async def test_middlewares_in_order_same_event_object(make_flow: MakeFlow) -> None:
    calls: list[tuple[str, int]] = []

    async def first(event: FlowEvent) -> None:
        calls.append(("first", id(event)))

    class Second:
        async def __call__(self, event: FlowEvent) -> None:
            calls.append(("second", id(event)))

    flow = make_flow(node(echo, "a").to(), middlewares=[first, Second()])
    flow.run()
    await flow.emit(msg())
    await fetch(flow)
    assert [c[0] for c in calls] == ["first", "second"] * 2
    assert calls[0][1] == calls[1][1] and calls[2][1] == calls[3][1]


async def test_add_middleware_while_running(make_flow: MakeFlow, recorder: Recorder) -> None:
    flow = make_flow(node(echo, "a").to())
    flow.run()
    await flow.emit(msg("before"))
    await fetch(flow)
    flow.add_middleware(recorder)
    m = msg("after")
    await flow.emit(m)
    await fetch(flow)
    assert recorder.names() == ["node_start", "node_success"]
    assert {e.trace_id for e in recorder.events} == {m.trace_id}


async def test_a_raising_middleware_never_breaks_the_flow(
    make_flow: MakeFlow, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    raised: list[str] = []

    async def broken(event: FlowEvent) -> None:
        raised.append(event.event_type)
        raise RuntimeError("middleware bug")

    async def wrong_arity(event: FlowEvent, payload: Any) -> None:  # two parameters: a TypeError
        raise AssertionError("never called successfully")

    caplog.set_level(logging.ERROR, logger="penguiflow.core")
    flow = make_flow(
        node(echo, "a").to(),
        middlewares=[broken, wrong_arity, recorder],
    )
    flow.run()
    for i in range(3):
        await flow.emit(msg(i))
    got = [(await fetch(flow)).payload for _ in range(3)]
    assert got == [0, 1, 2]
    assert raised == ["node_start", "node_success"] * 3  # keeps receiving events
    assert recorder.names() == ["node_start", "node_success"] * 3  # later ones still run
    errors = [r for r in caplog.records if r.getMessage() == "middleware_error"]
    assert len(errors) == 12
    assert errors[0].exc_info is not None
    assert errors[0].name == "penguiflow.core"


async def test_middlewares_are_awaited_inline(make_flow: MakeFlow) -> None:
    gate = asyncio.Event()
    in_middleware = asyncio.Event()
    node_ran: list[int] = []

    async def slow(event: FlowEvent) -> None:
        if event.event_type == "node_start":
            in_middleware.set()
            await gate.wait()

    async def work(m: Any, ctx: Context) -> Any:
        node_ran.append(1)
        return m

    flow = make_flow(node(work, "w").to(), middlewares=[slow])
    flow.run()
    await flow.emit(msg())
    await asyncio.wait_for(in_middleware.wait(), 1.0)
    assert node_ran == []  # the node waits for its node_start middleware
    gate.set()
    await fetch(flow)
    assert node_ran == [1]
