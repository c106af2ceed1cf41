"""FlowTestKit: driving flows, recording events, and clear errors on bad input."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel

from penguiflow.core import Context, PenguiFlow, create
from penguiflow.errors import FlowError, FlowTypeError
from penguiflow.node import Node, NodePolicy
from penguiflow.registry import ModelRegistry
from penguiflow.testing import (
    FlowTestKit,
    FlowTimeoutError,
    KitAssertionError,
    KitUsageError,
    UnknownTraceError,
    VirtualClock,
    simulate_error,
)
from penguiflow.types import Headers, Message, StreamChunk

pytestmark = pytest.mark.penguiflow_quiescent


def make_message(payload: Any = "hello", **fields: Any) -> Message:
    return Message(payload=payload, headers=Headers(tenant="acme"), **fields)


async def upper(message: Message, ctx: Context) -> Message:
    return message.model_copy(update={"payload": str(message.payload).upper()})


async def exclaim(message: Message, ctx: Context) -> Message:
    return message.model_copy(update={"payload": f"{message.payload}!"})


def chain() -> PenguiFlow:
    a, b = Node(upper), Node(exclaim)
    return create(a.to(b), b.to())


async def test_run_one_returns_first_result_and_stops(flow_kit: FlowTestKit) -> None:
    flow = chain()
    message = make_message("hi")
    result = await flow_kit.run_one(flow, message, expect=Message)
    assert result.payload == "HI!"
    assert result.trace_id == message.trace_id
    assert not flow.is_running
    flow_kit.assert_node_sequence(message.trace_id, ["upper", "exclaim"])
    flow_kit.assert_quiescent(require_stopped=True)


async def test_run_one_checks_the_expected_type(flow_kit: FlowTestKit) -> None:
    message = make_message("hi")
    with pytest.raises(FlowTypeError) as info:
        await flow_kit.run_one(chain(), message, expect=StreamChunk)
    assert str(info.value) == (
        f"trace {message.trace_id}: expected a result of type StreamChunk, got Message: the "
        "flow's exit node returned Message; pass expect=Message or fix the node"
    )

    async def double(x: int, ctx: Context) -> int:
        return x * 2

    assert await flow_kit.run_one(create(Node(double).to()), 21, expect=int) == 42
    with pytest.raises(FlowTypeError) as bare:
        await flow_kit.run_one(create(Node(double).to()), 21, expect=str)
    assert str(bare.value) == (
        "run_one: expected a result of type str, got int for the untracked item 21: the "
        "flow's exit node returned int; pass expect=int or fix the node"
    )
    flow_kit.assert_quiescent(require_stopped=True)


async def test_run_one_with_bare_payload(flow_kit: FlowTestKit) -> None:
    async def double(x: int, ctx: Context) -> int:
        return x * 2

    flow = create(Node(double).to())
    assert await flow_kit.run_one(flow, 21) == 42
    assert not flow.is_running


async def test_run_one_cancels_leftover_work_of_the_trace(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    async def fast(message: Message, ctx: Context) -> Message:
        return message

    async def slow(message: Message, ctx: Context) -> Message:
        await asyncio.sleep(100)
        return message

    flow = create(Node(fast).to(), Node(slow).to())  # two ingress nodes: a fan-out
    message = make_message()
    assert await flow_kit.run_one(flow, message, timeout_s=10) is message
    assert virtual_clock.time() == 0.0
    kinds = [e.event_type for e in flow_kit.get_recorded_events(message)]
    assert "trace_cancel_start" in kinds
    flow_kit.assert_quiescent(require_stopped=True)


async def test_run_one_timeout_says_what_was_seen(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    async def stuck(message: Message, ctx: Context) -> None:
        await asyncio.Event().wait()

    stuck_node = Node(stuck)
    flow = create(Node(upper).to(stuck_node), stuck_node.to())
    message = make_message()
    with pytest.raises(FlowTimeoutError) as info:
        await flow_kit.run_one(flow, message, timeout_s=2)
    text = str(info.value)
    assert f"run_one timed out after 2s (loop time) waiting for trace {message.trace_id}" in text
    assert "no item of the trace reached Rookery" in text
    assert "upper.node_start#0" in text
    assert "upper.node_success#0" in text
    assert "stuck.node_start#0" in text
    assert "nodes in flight: stuck" in text
    assert isinstance(info.value, TimeoutError)
    assert not flow.is_running
    flow_kit.assert_quiescent(require_stopped=True)


async def test_run_one_timeout_for_a_bare_payload(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    async def swallow(item: Any, ctx: Context) -> None:
        return None

    flow = create(Node(swallow).to())
    with pytest.raises(FlowTimeoutError) as info:
        await flow_kit.run_one(flow, "lost", timeout_s=1)
    assert "no item reached Rookery for the untracked item 'lost'" in str(info.value)
    assert "swallow.node_success#0" in str(info.value)
    assert virtual_clock.time() == 1.0
    assert not flow.is_running


async def test_run_one_trace_without_result(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    failing = simulate_error("parse", "E_BAD_INPUT", fail_times=5)
    flow = create(Node(failing, policy=NodePolicy(max_retries=1, backoff_base=3)).to())
    message = make_message()
    with pytest.raises(KitAssertionError) as info:
        await flow_kit.run_one(flow, message, timeout_s=60)
    text = str(info.value)
    assert (
        f"trace {message.trace_id} failed: node 'parse' gave up (NODE_EXCEPTION after "
        "2 attempts) without delivering any result"
    ) in text
    assert "parse.node_failed#1" in text
    assert "E_BAD_INPUT" in text
    error = info.value.__cause__
    assert isinstance(error, FlowError)
    assert (error.node_name, error.code, error.attempts) == ("parse", "NODE_EXCEPTION", 2)
    assert isinstance(error.__cause__, RuntimeError)  # the node's own exception
    assert virtual_clock.time() == 3.0
    assert failing.attempts == 2


async def test_run_one_rejects_a_running_flow(flow_kit: FlowTestKit) -> None:
    flow = chain()
    flow.run()
    try:
        with pytest.raises(KitUsageError, match=r"already running.*collect_trace"):
            await flow_kit.run_one(flow, make_message())
        with pytest.raises(KitUsageError, match="already running"):
            await flow_kit.run_trace(flow, make_message())
    finally:
        await flow.stop()


async def test_registry_missing_a_node_is_named(flow_kit: FlowTestKit) -> None:
    class Query(BaseModel):
        text: str

    registry = ModelRegistry()
    registry.register("upper", Query, Query)
    flow = chain()
    with pytest.raises(KitUsageError) as info:
        await flow_kit.run_one(flow, make_message(), registry=registry)
    text = str(info.value)
    assert "'exclaim' (validate='both')" in text
    assert "'upper'" not in text
    assert not flow.is_running
    with pytest.raises(KitUsageError, match="adapters"):
        await flow_kit.run_one(flow, make_message(), registry=object())


async def test_run_one_with_registry_validates(flow_kit: FlowTestKit) -> None:
    class Query(BaseModel):
        text: str

    async def shout(query: Query, ctx: Context) -> Query:
        return Query(text=query.text.upper())

    registry = ModelRegistry()
    registry.register("shout", Query, Query)
    flow = create(Node(shout).to())
    result = await flow_kit.run_one(
        flow, make_message({"text": "hey"}), registry=registry, expect=Message
    )
    assert result.payload == Query(text="HEY")


async def test_run_one_rejects_a_non_flow(flow_kit: FlowTestKit) -> None:
    with pytest.raises(KitUsageError, match="expects a PenguiFlow"):
        await flow_kit.run_one("not a flow", make_message())  # type: ignore[call-overload]


async def test_run_one_rejects_a_zero_timeout(flow_kit: FlowTestKit) -> None:
    with pytest.raises(KitUsageError, match="timeout_s must be > 0"):
        await flow_kit.run_one(chain(), make_message(), timeout_s=0)


async def test_run_one_rejects_a_non_numeric_timeout(flow_kit: FlowTestKit) -> None:
    with pytest.raises(KitUsageError, match="timeout_s must be a number"):
        await flow_kit.run_one(chain(), make_message(), timeout_s="1")  # type: ignore[call-overload]


async def test_run_trace_rejects_a_bare_payload(flow_kit: FlowTestKit) -> None:
    with pytest.raises(KitUsageError, match="needs a Message"):
        await flow_kit.run_trace(chain(), "bare payload")


async def test_collect_trace_rejects_a_flow_that_is_not_running(flow_kit: FlowTestKit) -> None:
    with pytest.raises(KitUsageError, match="not running"):
        await flow_kit.collect_trace(chain(), make_message())


def test_attach_rejects_a_non_flow(flow_kit: FlowTestKit) -> None:
    with pytest.raises(KitUsageError, match="expected a PenguiFlow"):
        flow_kit.attach(42)  # type: ignore[arg-type]


async def test_run_trace_collects_results_and_chunks(flow_kit: FlowTestKit) -> None:
    async def streamer(message: Message, ctx: Context) -> Message:
        for word in ("to", "ken", "s"):
            await ctx.emit_chunk(parent=message, text=word)
        await ctx.emit_chunk(parent=message, text="", done=True)
        return message.model_copy(update={"payload": "final"})

    flow = create(Node(streamer).to())
    message = make_message()
    run = await flow_kit.run_trace(flow, message)
    assert run.done == "drained"
    assert run.trace_id == message.trace_id
    assert [c.seq for c in run.chunks] == [0, 1, 2, 3]
    assert run.chunks[-1].done
    assert run.text == "tokens"
    assert run.payloads == ("final",)
    assert len(run.items) == 5
    assert all(
        isinstance(item, Message) and isinstance(item.payload, StreamChunk)
        for item in run.items[:4]
    )
    assert {e.event_type for e in run.events} >= {"node_start", "node_success"}
    assert not flow.is_running


async def test_collect_trace_on_a_running_flow(flow_kit: FlowTestKit) -> None:
    async def fan(message: Message, ctx: Context) -> None:
        for i in range(3):
            await ctx.emit(message.model_copy(update={"payload": i}))

    flow = create(Node(fan).to())
    flow.run()
    try:
        first, second = make_message(), make_message()
        run1 = await flow_kit.collect_trace(flow, first)
        run2 = await flow_kit.collect_trace(flow, second)
        assert flow.is_running
    finally:
        await flow.stop()
    assert run1.payloads == (0, 1, 2)
    assert run2.payloads == (0, 1, 2)
    items = [item for item in run1.items if isinstance(item, Message)]
    assert len(items) == len(run1.items)
    assert {item.trace_id for item in items} == {first.trace_id}
    assert flow_kit.trace_ids == (first.trace_id, second.trace_id)


async def test_collect_trace_timeout_keeps_the_flow_running(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    async def partial(message: Message, ctx: Context) -> None:
        await ctx.emit(message.model_copy(update={"payload": "part"}))
        await asyncio.Event().wait()

    flow = create(Node(partial).to())
    flow.run()
    message = make_message()
    try:
        with pytest.raises(FlowTimeoutError) as info:
            await flow_kit.collect_trace(flow, message, timeout_s=5)
        assert flow.is_running
        assert "1 item(s) of the trace reached Rookery, but it never finished" in str(info.value)
        assert "no node_success" in str(info.value)
        assert await flow.cancel(message.trace_id)
    finally:
        await flow.stop()


async def test_node_sequence_collapses_retries_and_reports_mismatch(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    flaky = simulate_error("fetch", "E_FLAKY", fail_times=2)
    fetch = Node(flaky, policy=NodePolicy(max_retries=2, backoff_base=0.5))
    parse = Node(upper, name="parse")
    flow = create(parse.to(fetch), fetch.to())
    message = make_message()
    await flow_kit.run_one(flow, message, timeout_s=30)

    starts = [e for e in flow_kit.get_recorded_events(message) if e.event_type == "node_start"]
    assert [(e.node_name, e.attempt) for e in starts] == [
        ("parse", 0),
        ("fetch", 0),
        ("fetch", 1),
        ("fetch", 2),
    ]
    assert flow_kit.node_sequence(message) == ("parse", "fetch")
    flow_kit.assert_node_sequence(message.trace_id, ["parse", "fetch"])
    flow_kit.assert_node_sequence(message.trace_id, ("parse", "fetch"), flow=flow)

    with pytest.raises(KitAssertionError) as info:
        flow_kit.assert_node_sequence(message.trace_id, ["parse", "rank", "fetch"])
    text = str(info.value)
    assert "expected: ['parse', 'rank', 'fetch']" in text
    assert "actual:   ['parse', 'fetch']" in text
    assert "first difference at position 1: expected 'rank', got 'fetch'" in text
    assert "fetch.node_retry#1 (sleep 0.5s" in text

    with pytest.raises(KitAssertionError, match="expected nothing more, got 'fetch'"):
        flow_kit.assert_node_sequence(message.trace_id, ["parse"])
    with pytest.raises(KitUsageError, match="not the string"):
        flow_kit.assert_node_sequence(message.trace_id, "parse")


async def test_unknown_trace_is_a_clear_error(flow_kit: FlowTestKit) -> None:
    with pytest.raises(UnknownTraceError, match="attached to no flow"):
        flow_kit.get_recorded_events("nope")
    await flow_kit.run_one(chain(), make_message())
    with pytest.raises(UnknownTraceError) as info:
        flow_kit.assert_node_sequence("deadbeef", ["upper"])
    assert "never saw trace 'deadbeef'" in str(info.value)
    assert "known traces" in str(info.value)
    assert isinstance(info.value, LookupError)
    with pytest.raises(KitUsageError, match="expected a trace id"):
        flow_kit.get_recorded_events(3.5)


async def test_recorded_events_are_immutable(flow_kit: FlowTestKit) -> None:
    message = make_message()
    await flow_kit.run_one(chain(), message)
    events = flow_kit.get_recorded_events(message.trace_id)
    assert isinstance(events, tuple)
    assert [e.event_type for e in events] == [
        "node_start",
        "node_success",
        "node_start",
        "node_success",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].event_type = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        events[0].extra["k"] = 1  # type: ignore[index]
    assert flow_kit.get_recorded_events(message.trace_id) == events
    # Events without a trace (workers cancelled by stop()) are kept in the global log.
    assert flow_kit.events[:4] == events
    assert {e.event_type for e in flow_kit.events[4:]} == {"node_cancelled"}


async def test_kits_are_isolated() -> None:
    kit_a, kit_b = FlowTestKit(), FlowTestKit()
    flow_a, flow_b = chain(), chain()
    msg_a, msg_b = make_message("a"), make_message("b")
    await asyncio.gather(kit_a.run_one(flow_a, msg_a), kit_b.run_one(flow_b, msg_b))
    assert kit_a.trace_ids == (msg_a.trace_id,)
    assert kit_b.trace_ids == (msg_b.trace_id,)
    assert kit_a.flows == (flow_a,)
    with pytest.raises(UnknownTraceError):
        kit_a.get_recorded_events(msg_b.trace_id)


async def test_attach_is_idempotent_and_close_stops_recording() -> None:
    kit = FlowTestKit()
    flow = chain()
    assert kit.attach(flow) is flow
    kit.attach(flow)
    first = make_message()
    await kit.run_one(flow, first)
    assert len(kit.get_recorded_events(first)) == 4  # one recorder, not two
    recorded = len(kit.events)
    kit.close()
    with pytest.raises(KitUsageError, match="closed"):
        kit.attach(chain())
    flow.run()
    try:
        await flow.emit(make_message())
        await flow.fetch()
    finally:
        await flow.stop()
    assert len(kit.events) == recorded
    assert "FlowTestKit" in repr(kit)


async def test_manual_runs_are_recorded_once_attached(flow_kit: FlowTestKit) -> None:
    flow = flow_kit.attach(chain())
    message = make_message()
    flow.run()
    try:
        await flow.emit(message)
        out = await flow.fetch()
    finally:
        await flow.stop()
    assert out.payload == "HELLO!"
    flow_kit.assert_node_sequence(message, ["upper", "exclaim"])


def test_kit_helpers_are_exposed_on_the_class() -> None:
    assert FlowTestKit.simulate_error is simulate_error
    assert FlowTestKit.__test__ is False


async def test_run_one_returns_the_result_after_the_chunks(flow_kit: FlowTestKit) -> None:
    async def streamer(message: Message, ctx: Context) -> Message:
        await ctx.emit_chunk(parent=message, text="tok")
        await ctx.emit_chunk(parent=message, text="", done=True)
        return message.model_copy(update={"payload": "final"})

    flow = create(Node(streamer).to())
    message = make_message()
    result = await flow_kit.run_one(flow, message, expect=Message)
    assert (result.trace_id, result.payload) == (message.trace_id, "final")
    assert not flow.is_running


async def test_run_one_names_the_node_that_dropped_the_trace(flow_kit: FlowTestKit) -> None:
    async def gate(message: Message, ctx: Context) -> None:
        return None

    parse, drop = Node(upper, name="parse"), Node(gate)
    flow = create(parse.to(drop), drop.to())
    message = make_message()
    with pytest.raises(KitAssertionError) as info:
        await flow_kit.run_one(flow, message)
    assert (
        f"trace {message.trace_id} finished at node 'gate' without delivering any result"
    ) in str(info.value)
    error = info.value.__cause__
    assert isinstance(error, FlowError)
    assert (error.code, error.node_name) == ("NO_RESULT", "gate")


async def test_run_trace_reports_the_node_that_gave_up(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    async def streamer(message: Message, ctx: Context) -> Message:
        await ctx.emit_chunk(parent=message, text="partial")
        raise ValueError("model backend down")

    flow = create(Node(streamer, policy=NodePolicy(max_retries=1)).to())
    message = make_message()
    run = await flow_kit.run_trace(flow, message, timeout_s=60)
    assert run.done == "failed"
    assert run.text == "partialpartial"  # one chunk per attempt
    assert run.results == ()  # the error is not an item
    assert run.error is not None
    assert (run.error.node_name, run.error.code, run.error.attempts) == (
        "streamer", "NODE_EXCEPTION", 2,
    )  # fmt: skip
    assert isinstance(run.error.__cause__, ValueError)


async def test_a_finished_run_has_no_error(flow_kit: FlowTestKit) -> None:
    run = await flow_kit.run_trace(chain(), make_message())
    assert (run.done, run.error, run.payloads) == ("drained", None, ("HELLO!",))


class _Stubborn:
    """A node that swallows cancellation until released; remembers its worker task."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.worker: asyncio.Task[Any] | None = None

    async def node(self, message: Message, ctx: Context) -> None:
        self.worker = asyncio.current_task()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                pass  # the bug under test: cancellation is swallowed

    async def end(self) -> None:
        """Let the node return, and wait until its worker has ended."""
        self.release.set()
        assert self.worker is not None
        await asyncio.wait({self.worker})


async def test_a_node_ignoring_cancellation_cannot_hang_run_trace(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    stubborn = _Stubborn()
    flow = create(Node(stubborn.node, name="stubborn", policy=NodePolicy(validate="none")).to())
    with pytest.raises(FlowTimeoutError) as info:
        await flow_kit.run_trace(flow, make_message(), timeout_s=3)
    # The wait and the stop are each bounded by timeout_s (loop seconds).
    assert virtual_clock.time() <= 3 + 3 + 1
    assert str(info.value).startswith("run_trace timed out after 3s")
    [note] = info.value.__notes__
    assert "flow.stop() gave up after 3s (loop time) on 1 worker task(s)" in note
    assert "Nodes in flight when the flow was stopped: 'stubborn'" in note
    assert not flow.is_running
    await stubborn.end()
    flow_kit.assert_quiescent(require_stopped=True)


async def test_run_one_reports_a_leftover_node_ignoring_cancellation(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    # The result arrives; cancelling the rest of the fan-out does not end the stubborn
    # branch, and stopping the flow gives up on it after timeout_s.
    async def fast(message: Message, ctx: Context) -> Message:
        return message

    stubborn = _Stubborn()
    flow = create(
        Node(fast).to(),
        Node(stubborn.node, name="stubborn", policy=NodePolicy(validate="none")).to(),
    )
    with pytest.raises(
        FlowTimeoutError, match=r"^run_one: flow\.stop\(\) gave up after 2s"
    ) as info:
        await flow_kit.run_one(flow, make_message(), timeout_s=2)
    assert "'stubborn'" in str(info.value)
    assert virtual_clock.time() <= 2 + 1
    await stubborn.end()
    flow_kit.assert_quiescent(require_stopped=True)
