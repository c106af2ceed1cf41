"""docs/core-public-api.md: topology, ``inspect()``, hooks and probes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.core import OPEN_SEA, ROOKERY, Context, PenguiFlow
from penguiflow.inspect import EdgeSnapshot, FlowSnapshot, NodeSnapshot, TraceSnapshot
from penguiflow.node import Node, NodePolicy
from penguiflow.types import Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow


def node(fn: Any, name: str, **policy: Any) -> Node:
    return Node(fn, name=name, policy=NodePolicy(**{"validate": "none", **policy}))


def msg(payload: Any = "p") -> Message:
    return Message(payload=payload, headers=Headers(tenant="acme"))


async def echo(m: Any, ctx: Context) -> Any:
    return m


async def test_snapshot_of_a_busy_flow(make_flow: MakeFlow) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def hold(m: Any, ctx: Context) -> Any:
        started.set()
        await release.wait()
        return m

    a, b = node(hold, "a", max_concurrency=1), node(echo, "b")
    flow = make_flow(a.to(b), queue_maxsize=5)
    flow.run()
    m1, m2 = msg(1), msg(2)
    await flow.emit(m1)
    await flow.emit(m2)
    await asyncio.wait_for(started.wait(), 1.0)
    snap = flow.inspect()
    assert isinstance(snap, FlowSnapshot)
    assert snap.running and snap.queue_maxsize == 5 and snap.workers == 2
    assert [(n.name, n.queue_depth_in, n.inflight, n.max_concurrency) for n in snap.nodes] == [
        ("a", 1, 1, 1),
        ("b", 0, 0, 1),
    ]
    assert isinstance(snap.nodes[0], NodeSnapshot) and snap.nodes[0].node is a
    assert [(e.source, e.target, e.maxsize, e.depth) for e in snap.edges] == [
        (OPEN_SEA, a, 5, 1),
        (a, b, 5, 0),
        (b, ROOKERY, 5, 0),
    ]
    assert all(isinstance(e, EdgeSnapshot) for e in snap.edges)
    assert snap.traces[m1.trace_id] == TraceSnapshot(m1.trace_id, 1, 0, 1, False)
    assert snap.traces[m2.trace_id] == TraceSnapshot(m2.trace_id, 1, 1, 0, False)
    assert not snap.is_quiescent
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.running = False  # type: ignore[misc]
    release.set()
    for _ in range(2):
        await asyncio.wait_for(flow.fetch(), 1.0)
    done = flow.inspect()
    assert done.traces == {} and done.is_quiescent
    await flow.stop()
    stopped = flow.inspect()
    assert not stopped.running and stopped.workers == 0


async def test_on_trace_done_and_removal(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    flow.run()
    done: list[str] = []
    remove = flow.on_trace_done(done.append)
    m = msg()
    await flow.emit(m)
    await asyncio.wait_for(flow.fetch(), 1.0)
    assert done == [m.trace_id]
    remove()
    await flow.emit(msg())
    await asyncio.wait_for(flow.fetch(), 1.0)
    assert done == [m.trace_id]


async def test_on_stop_called_once_per_stop(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    stops: list[bool] = []
    flow.on_stop(lambda: stops.append(flow.inspect().workers == 0))
    flow.run()
    await flow.stop()
    await flow.stop()  # not running: no-op
    flow.run()
    await flow.stop()
    assert stops == [True, True]


async def test_probe_shows_in_resources_and_breaks_quiescence(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    held = {"t1": 2, "t2": 0}
    remove = flow.register_probe("joins", lambda: held)
    snap = flow.inspect()
    assert snap.resources["joins"] == {"t1": 2}
    assert not snap.is_quiescent
    held["t1"] = 0
    assert flow.inspect().is_quiescent
    remove()
    assert "joins" not in flow.inspect().resources


async def test_raising_hooks_are_logged_and_ignored(
    make_flow: MakeFlow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="penguiflow.core")

    def boom(*args: Any) -> None:
        raise RuntimeError("hook bug")

    flow = make_flow(node(echo, "a").to())
    flow.on_trace_done(boom)
    flow.on_stop(boom)
    flow.run()
    await flow.emit(msg())
    await asyncio.wait_for(flow.fetch(), 1.0)
    await flow.emit(msg())
    await asyncio.wait_for(flow.fetch(), 1.0)
    await flow.stop()
    assert len([r for r in caplog.records if r.name == "penguiflow.core"]) == 3


def test_static_topology_needs_no_run() -> None:
    a, b = node(echo, "a"), node(echo, "b")
    flow = PenguiFlow(a.to(b))
    snap = flow.inspect()
    assert not snap.running and snap.workers == 0 and snap.is_quiescent
    assert [n.name for n in snap.nodes] == ["a", "b"]
