"""The quiescence check reports leaks per flow and per trace, via flow.inspect()."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from penguiflow.core import Context, create
from penguiflow.node import Node, NodePolicy
from penguiflow.testing import (
    FlowTestKit,
    KitAssertionError,
    QuiescenceError,
    VirtualClock,
    assert_flows_quiescent,
    describe_leaks,
)
from penguiflow.types import Headers, Message


def make_message(payload: Any = "hello") -> Message:
    return Message(payload=payload, headers=Headers(tenant="acme"))


async def block(message: Any, ctx: Context) -> None:
    await asyncio.Event().wait()


async def echo(message: Any, ctx: Context) -> Any:
    return message


def test_a_fresh_flow_is_quiescent() -> None:
    flow = create(Node(echo).to())
    assert describe_leaks(flow) == []
    assert describe_leaks(flow, require_stopped=True) == []
    assert_flows_quiescent([flow])
    FlowTestKit().assert_quiescent(flow)
    FlowTestKit().assert_quiescent()  # no flow attached: nothing to check


async def test_stopped_flow_with_queued_items_is_reported_per_trace() -> None:
    flow = create(Node(block).to())
    busy, waiting = make_message("busy"), make_message("waiting")
    flow.run()
    await flow.emit(busy)
    await flow.emit(waiting)
    await flow.emit("untracked")
    await asyncio.sleep(0)  # let the worker take the first item
    running = describe_leaks(flow)
    assert f"trace {busy.trace_id}: pending=1 queued=0 inflight=1" in running
    assert f"trace {waiting.trace_id}: pending=1 queued=1 inflight=0" in running
    assert "invocations in flight: block: 1" in running
    await flow.stop()

    kit = FlowTestKit()
    kit.attach(flow)
    with pytest.raises(QuiescenceError) as info:
        kit.assert_quiescent(require_stopped=True)
    text = str(info.value)
    assert isinstance(info.value, KitAssertionError)
    assert "flows are not quiescent" in text
    assert f"trace {waiting.trace_id}: pending=1 queued=1 inflight=0" in text
    assert busy.trace_id not in text  # stop() finished the in-flight item's accounting
    assert "items queued on edges: OpenSea->block: 2 (1 without a trace id)" in text
    assert "never stopped" not in text


async def test_running_flow_probes_and_subscriptions() -> None:
    flow = create(Node(echo).to())
    remove = flow.register_probe("join_buckets", lambda: {"t-1": 2, "t-2": 0})
    flow.run()
    sub = flow.subscribe("t-9")
    try:
        leaks = describe_leaks(flow, require_stopped=True)
        assert "trace t-1: finished in core; held by probes: join_buckets=2" in leaks
        assert not any("t-2" in line for line in leaks)
        assert "subscribe() views still open: 1" in leaks
        assert any(line.startswith("flow never stopped (worker tasks alive: 1)") for line in leaks)
        assert not any("never stopped" in line for line in describe_leaks(flow))
    finally:
        await sub.aclose()
        remove()
        await flow.stop()
    assert describe_leaks(flow, require_stopped=True) == []


async def test_cancelled_trace_is_marked() -> None:
    flow = create(Node(block).to())
    message = make_message()
    flow.run()
    try:
        await flow.emit(message)
        await asyncio.sleep(0)
        stays = flow.register_probe("cache", lambda: {message.trace_id: 1})
        await flow.cancel(message.trace_id)
        leaks = describe_leaks(flow)  # the aborted invocation has not unwound yet
        assert leaks[0] == (
            f"trace {message.trace_id}: pending=1 queued=0 inflight=1; cancelled; "
            "held by probes: cache=1"
        )
        stays()
    finally:
        await flow.stop()


async def test_a_worker_that_outlived_stop_is_reported(virtual_clock: VirtualClock) -> None:
    # stop(timeout=...) gives up on a worker whose node swallows cancellation; the item
    # is untracked (a bare payload), so only the worker itself shows the leak.
    release = asyncio.Event()
    started = asyncio.Event()
    workers: list[asyncio.Task[Any]] = []

    async def stubborn(message: Any, ctx: Context) -> None:
        workers.append(asyncio.current_task())  # type: ignore[arg-type]
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass  # the bug under test: cancellation is swallowed

    flow = create(Node(stubborn, policy=NodePolicy(validate="none")).to())
    flow.run()
    await flow.emit("bare payload")
    await started.wait()
    await flow.stop(timeout=2.0)

    assert not flow.is_running
    assert describe_leaks(flow, require_stopped=True) == ["worker tasks alive after stop(): 1"]
    with pytest.raises(QuiescenceError, match="worker tasks alive after stop\\(\\): 1"):
        assert_flows_quiescent([flow], require_stopped=True)

    release.set()
    await asyncio.wait(workers)
    assert describe_leaks(flow, require_stopped=True) == []
