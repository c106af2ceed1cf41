"""Recorder: the shared event-recording middleware."""

from __future__ import annotations

import asyncio
import time

import pytest

from penguiflow.core import Context, create
from penguiflow.node import Node, NodePolicy
from penguiflow.testing import FlowTimeoutError, KitUsageError, Recorder, VirtualClock
from penguiflow.types import Headers, Message


def message(payload: object) -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"))


async def test_records_filters_and_waits_for_the_nth_event(virtual_clock: VirtualClock) -> None:
    async def echo(msg: Message, ctx: Context) -> Message:
        if msg.payload == "bad":
            raise RuntimeError("boom")
        return msg

    recorder = Recorder()
    node = Node(echo, name="echo", policy=NodePolicy(max_retries=1, backoff_base=1.0))
    flow = create(node.to(), middlewares=[recorder])
    flow.run()
    good, bad = message("ok"), message("bad")
    try:
        await flow.emit(good)
        await flow.emit(bad)
        failed = await recorder.wait("node_failed", node="echo")
        assert failed.trace_id == bad.trace_id
        second_error = await recorder.wait("node_error", trace_id=bad.trace_id, count=2)
        assert second_error.attempt == 1
        assert await flow.fetch() is not None
    finally:
        await flow.stop()
    assert recorder.names(trace_id=good.trace_id) == ["node_start", "node_success"]
    assert [e.attempt for e in recorder.matching("node_error", "echo", bad.trace_id)] == [0, 1]
    assert recorder.matching("node_success", trace_id=bad.trace_id) == []
    assert virtual_clock.time() == 1.0  # one backoff, on virtual time


async def test_wait_returns_at_once_for_events_already_seen() -> None:
    recorder = Recorder()
    flow = create(Node(echo, name="n").to(), middlewares=[recorder])
    flow.run()
    try:
        await flow.emit(message("x"))
        await flow.fetch()
    finally:
        await flow.stop()
    event = await recorder.wait("node_success", timeout_s=0.001)
    assert event.node_name == "n"
    recorder.clear()
    assert recorder.events == []


async def echo(msg: Message, ctx: Context) -> Message:
    return msg


async def test_a_missing_event_fails_with_what_was_seen(virtual_clock: VirtualClock) -> None:
    recorder = Recorder(timeout_s=30)
    flow = create(Node(echo, name="n").to(), middlewares=[recorder])
    flow.run()
    started = time.perf_counter()
    try:
        await flow.emit(message("x"))
        await flow.fetch()
        with pytest.raises(FlowTimeoutError, match=r"wanted 1 'node_failed'.*saw 0") as info:
            await recorder.wait("node_failed")
    finally:
        await flow.stop()
    assert "n.node_success" in str(info.value)
    assert virtual_clock.time() == 30.0
    assert time.perf_counter() - started < 5  # virtual seconds, not real ones
    assert recorder._waiters == []


def test_a_zero_timeout_is_a_usage_error() -> None:
    with pytest.raises(KitUsageError, match="positive"):
        Recorder(timeout_s=0)


def test_waiting_for_count_zero_is_a_usage_error() -> None:
    with pytest.raises(KitUsageError, match="count starts at 1"):
        asyncio.run(Recorder().wait("node_start", count=0))
