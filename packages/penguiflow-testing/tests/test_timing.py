"""Retries, timeouts, deadlines and budgets run on virtual time: instant and exact."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from penguiflow.clock import wall_time
from penguiflow.core import BUDGET_EXCEEDED_TEXT, DEADLINE_EXCEEDED_TEXT, Context, create
from penguiflow.node import Node, NodePolicy
from penguiflow.testing import FlowTestKit, VirtualClock, VirtualEventLoop, simulate_error
from penguiflow.types import WM, FinalAnswer, Headers, Message

pytestmark = pytest.mark.penguiflow_quiescent

REAL_BUDGET_S = 0.25  # generous for slow CI; a real run would take seconds


def make_message(payload: Any = "hello", **fields: Any) -> Message:
    return Message(payload=payload, headers=Headers(tenant="acme"), **fields)


async def test_retry_with_multi_second_backoff_is_instant(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    flaky = simulate_error("fetch", "E_UPSTREAM", fail_times=3)
    node = Node(flaky, policy=NodePolicy(max_retries=3, backoff_base=2.0, backoff_mult=2.0))
    flow = create(node.to())
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualEventLoop)
    message = make_message("q")

    real_start, virtual_start = time.perf_counter(), virtual_clock.time()
    result = await flow_kit.run_one(flow, message, timeout_s=60)
    real_elapsed = time.perf_counter() - real_start

    assert result is message
    assert flaky.attempts == 4
    assert virtual_clock.time() - virtual_start == pytest.approx(2 + 4 + 8)
    assert real_elapsed < REAL_BUDGET_S
    retries = [e for e in flow_kit.get_recorded_events(message) if e.event_type == "node_retry"]
    assert [e.extra["sleep_s"] for e in retries] == [2.0, 4.0, 8.0]
    flow_kit.assert_node_sequence(message.trace_id, ["fetch"])


async def test_node_timeouts_are_instant(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    calls: list[float] = []

    async def slow(message: Message, ctx: Context) -> Message:
        calls.append(virtual_clock.time())
        await asyncio.sleep(30 if len(calls) < 3 else 1)
        return message

    node = Node(slow, policy=NodePolicy(timeout_s=5, max_retries=2, backoff_base=1.0))
    flow = create(node.to())
    message = make_message()
    real_start = time.perf_counter()
    result = await flow_kit.run_one(flow, message, timeout_s=60)

    assert result is message
    assert time.perf_counter() - real_start < REAL_BUDGET_S
    # attempt 0 at t=0, times out at 5, backoff 1 -> attempt 1 at 6, times out at 11,
    # backoff 2 -> attempt 2 at 13, succeeds at 14.
    assert calls == [0.0, 6.0, 13.0]
    assert virtual_clock.time() == 14.0
    kinds = [e.event_type for e in flow_kit.get_recorded_events(message)]
    assert kinds.count("node_timeout") == 2


async def test_deadline_follows_virtual_wall_clock(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    async def think(message: Message, ctx: Context) -> Message:
        await asyncio.sleep(20)
        return message

    async def answer(message: Message, ctx: Context) -> Message:  # pragma: no cover - skipped
        return message.model_copy(update={"payload": FinalAnswer(text="late")})

    think_node, answer_node = Node(think), Node(answer)
    flow = create(think_node.to(answer_node), answer_node.to())
    message = make_message(deadline_s=wall_time() + 10)
    assert message.ts == virtual_clock.wall_time()

    real_start = time.perf_counter()
    result = await flow_kit.run_one(flow, message, timeout_s=60, expect=Message)

    assert time.perf_counter() - real_start < REAL_BUDGET_S
    assert isinstance(result.payload, FinalAnswer)
    assert result.payload.text == DEADLINE_EXCEEDED_TEXT
    assert result.trace_id == message.trace_id
    assert virtual_clock.time() == 10.0  # the attempt is cut short at the deadline
    kinds = [e.event_type for e in flow_kit.get_recorded_events(message)]
    assert "deadline_skip" in kinds
    flow_kit.assert_node_sequence(message, ["think"])


async def test_hop_budget_of_a_slow_controller(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    async def controller(message: Message, ctx: Context) -> Message:
        await asyncio.sleep(3)  # an LLM call
        wm = message.payload
        return message.model_copy(update={"payload": wm.model_copy(update={"facts": [1]})})

    node = Node(controller, allow_cycle=True)
    flow = create(node.to(node))
    message = make_message(WM(query="q", budget_hops=4))
    real_start = time.perf_counter()
    run = await flow_kit.run_trace(flow, message, timeout_s=600)

    assert time.perf_counter() - real_start < REAL_BUDGET_S
    assert run.done == "drained"
    [answer] = run.payloads
    assert isinstance(answer, FinalAnswer) and answer.text == BUDGET_EXCEEDED_TEXT
    assert virtual_clock.time() == 12.0
    assert flow_kit.node_sequence(message) == ("controller",) * 4


async def test_kit_timeout_under_virtual_time_is_instant(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    async def stuck(message: Message, ctx: Context) -> None:
        await asyncio.Event().wait()

    flow = create(Node(stuck).to())
    real_start = time.perf_counter()
    with pytest.raises(TimeoutError, match="timed out after 3600"):
        await flow_kit.run_one(flow, make_message(), timeout_s=3600)
    assert time.perf_counter() - real_start < REAL_BUDGET_S
    assert virtual_clock.time() == 3600.0


async def test_join_timeout_and_bucket_probe(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    patterns = pytest.importorskip("penguiflow.patterns")
    from penguiflow.testing import describe_leaks

    join = patterns.join_k("join", 2, timeout_s=30.0)

    async def collect(message: Message, ctx: Context) -> Message:
        return message

    sink = Node(collect)
    flow = flow_kit.attach(create(join.to(sink), sink.to()))
    message = make_message("only part")
    flow.run()
    try:
        await flow.emit(message)
        await asyncio.sleep(1)
        # One of two parts arrived: the bucket holds its trace, and shows in the probe.
        assert (
            f"trace {message.trace_id}: pending=1 queued=0 inflight=0; "
            "held by probes: join_k:join=1"
        ) in describe_leaks(flow)
        real_start = time.perf_counter()
        # A lone part of another trace: its trace lasts until the 30 s timeout releases it.
        run = await flow_kit.collect_trace(flow, make_message("other"), timeout_s=60)
        partial = await flow.fetch()  # the first trace's, released at 30 s
        assert time.perf_counter() - real_start < REAL_BUDGET_S
    finally:
        await flow.stop()
    assert (run.done, run.payloads) == ("drained", (["other"],))
    assert partial.payload == ["only part"]  # released by the 30 s timeout, partial
    assert virtual_clock.time() == pytest.approx(31.0)
