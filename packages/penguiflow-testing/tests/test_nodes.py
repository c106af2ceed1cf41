"""Node-level helpers: simulate_error, StubContext, assert_preserves_message_envelope."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from penguiflow.core import Context
from penguiflow.node import Node, NodePolicy
from penguiflow.registry import ModelRegistry
from penguiflow.testing import (
    EnvelopeCheck,
    FlowTimeoutError,
    KitAssertionError,
    KitUsageError,
    StubContext,
    VirtualClock,
    assert_preserves_message_envelope,
    simulate_error,
)
from penguiflow.types import Headers, Message, StreamChunk


def make_message(payload: Any = "hello", **fields: Any) -> Message:
    return Message(payload=payload, headers=Headers(tenant="acme", priority=2), **fields)


async def test_simulate_error_fails_then_passes_through() -> None:
    fn = simulate_error("fetch", "E_TIMEOUT", fail_times=2)
    message = make_message()
    for n in (1, 2):
        with pytest.raises(RuntimeError, match=rf"fetch: simulated E_TIMEOUT \(failure {n} of 2\)"):
            await fn(message, None)
    assert await fn(message, None) is message
    assert (fn.attempts, fn.failures, fn.fail_times, fn.code) == (3, 2, 2, "E_TIMEOUT")
    node = Node(fn)
    assert node.name == "fetch"
    assert fn.node_name == "fetch"


async def test_simulate_error_results_and_exception_types() -> None:
    fixed = simulate_error("a", "X", fail_times=0, result="ok")
    assert await fixed("in", None) == "ok"
    assert fixed.attempts == 1

    sync_factory = simulate_error("b", "X", fail_times=0, result_factory=lambda m: m * 2)
    assert await sync_factory(4, None) == 8

    async def async_result(m: Any) -> str:
        return f"async {m}"

    async_factory = simulate_error("c", "X", fail_times=0, result_factory=async_result)
    assert await async_factory("m", None) == "async m"

    class UpstreamError(Exception):
        pass

    typed = simulate_error("d", "E_503", exception_type=UpstreamError)
    with pytest.raises(UpstreamError) as info:
        await typed("m", None)
    assert info.value.code == "E_503"  # type: ignore[attr-defined]

    timeout = simulate_error("e", "E_SLOW", exception_type=TimeoutError)
    with pytest.raises(TimeoutError):
        await timeout("m", None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"result": 1, "result_factory": lambda m: m}, "either result or result_factory"),
        ({"fail_times": -1}, "fail_times must be an int >= 0"),
        ({"exception_type": ValueError("not a class")}, "exception class"),
    ],
    ids=["result-and-factory", "negative-fail-times", "exception-instance"],
)
def test_simulate_error_rejects_bad_input(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(KitUsageError, match=match):
        simulate_error("a", "X", **kwargs)


def test_simulated_nodes_work_as_policies_expect() -> None:
    node = Node(simulate_error("x", "Y", fail_times=1), policy=NodePolicy(max_retries=1))
    assert node.policy.max_retries == 1


async def test_stub_context_records_emits_and_chunks() -> None:
    ctx = StubContext()
    parent = make_message(deadline_s=123.0, meta={"k": "v"})
    first = await ctx.emit_chunk(parent=parent, text="a", meta={"i": 0})
    second = await ctx.emit_chunk(parent=parent, text="b", done=True)
    third = await ctx.emit_chunk(parent=parent, text="c", stream_id="other", seq=9)
    again = await ctx.emit_chunk(parent=parent, text="d")
    assert [(c.stream_id, c.seq) for c in (first, second, third, again)] == [
        (parent.trace_id, 0),
        (parent.trace_id, 1),
        ("other", 9),
        (parent.trace_id, 0),  # done=True reset the counter
    ]
    assert first.meta == {"i": 0}
    assert ctx.chunks == [first, second, third, again]
    envelope = ctx.items[0]
    assert isinstance(envelope, Message)
    assert isinstance(envelope.payload, StreamChunk)
    assert envelope.trace_id == parent.trace_id
    assert envelope.headers == parent.headers
    assert envelope.deadline_s == 123.0
    assert envelope.meta == {"k": "v"}
    assert envelope.meta is not parent.meta

    await ctx.emit("x", to="somewhere")
    ctx.emit_nowait("y")
    assert ctx.emitted[-2:] == [("x", "somewhere"), ("y", None)]
    assert (ctx.runtime, ctx.outgoing_count(), ctx.queue_depth_in(), ctx.queue_depth_out()) == (
        None,
        0,
        0,
        0,
    )
    with pytest.raises(RuntimeError, match="no incoming floes"):
        await ctx.fetch()
    with pytest.raises(RuntimeError, match="no incoming floes"):
        await ctx.fetch_any()
    assert "StubContext" in repr(ctx)


async def good_node(message: Message, ctx: Context) -> Message:
    await ctx.emit_chunk(parent=message, text="thinking")
    return message.model_copy(update={"payload": "answer"})


async def test_envelope_check_passes_for_a_well_behaved_node() -> None:
    check = await assert_preserves_message_envelope(Node(good_node))
    assert isinstance(check, EnvelopeCheck)
    assert check.result is not None and check.result.payload == "answer"
    assert [c.text for c in check.chunks] == ["thinking"]
    assert len(check.outputs) == 2
    assert check.message.headers.tenant == "penguiflow-testing"


async def test_envelope_check_with_a_bare_function_and_given_message() -> None:
    message = make_message("in")
    check = await assert_preserves_message_envelope(good_node, message)
    assert check.message is message
    assert check.result is not None and check.result.trace_id == message.trace_id


async def test_envelope_check_names_a_bare_payload() -> None:
    async def unwraps(message: Message, ctx: Context) -> str:
        return "bare"

    with pytest.raises(KitAssertionError) as info:
        await assert_preserves_message_envelope(Node(unwraps))
    text = str(info.value)
    assert "node 'unwraps' does not preserve the message envelope" in text
    assert "returned value is a bare str" in text
    assert "model_copy" in text


async def test_envelope_check_catches_changed_trace_and_headers() -> None:
    async def rewrites(message: Message, ctx: Context) -> Message:
        await ctx.emit(Message(payload="side", headers=message.headers))
        message.headers.tenant = "someone-else"
        return message

    with pytest.raises(KitAssertionError) as info:
        await assert_preserves_message_envelope(rewrites)
    text = str(info.value)
    assert "emitted item #0: trace_id changed" in text
    assert "returned value: headers changed" in text
    assert "'tenant': 'someone-else'" in text


async def test_envelope_check_needs_output() -> None:
    async def silent(message: Message, ctx: Context) -> None:
        return None

    with pytest.raises(KitAssertionError, match="returned None and emitted nothing"):
        await assert_preserves_message_envelope(silent)
    with pytest.raises(KitUsageError, match="needs a Message"):
        await assert_preserves_message_envelope(silent, "bare")  # type: ignore[arg-type]


async def test_envelope_check_with_registry_and_real_context() -> None:
    class Query(BaseModel):
        text: str

    async def shout(query: Query, ctx: Context) -> Query:
        return Query(text=query.text.upper())

    registry = ModelRegistry()
    registry.register("shout", Query, Query)
    node = Node(shout)
    message = make_message({"text": "hi"})
    check = await assert_preserves_message_envelope(node, message, Context(node), registry=registry)
    assert check.result is not None and check.result.payload == Query(text="HI")
    assert check.chunks == ()


async def test_envelope_check_is_bounded(virtual_clock: VirtualClock) -> None:
    async def waits_forever(message: Message, ctx: StubContext) -> Message:
        await ctx.emit(message)
        await asyncio.Event().wait()
        return message

    with pytest.raises(FlowTimeoutError) as info:
        await assert_preserves_message_envelope(waits_forever, make_message(), timeout_s=5)
    assert str(info.value) == (
        "assert_preserves_message_envelope: node 'waits_forever' did not return within 5s "
        "(loop time); it emitted 1 item(s) meanwhile"
    )
    assert virtual_clock.time() == 5.0


async def test_envelope_check_reports_a_node_that_swallowed_its_timeout(
    virtual_clock: VirtualClock,
) -> None:
    async def late(message: Message, ctx: StubContext) -> Message:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # returns anyway, after the limit
        return message

    with pytest.raises(FlowTimeoutError, match=r"node 'late' did not return within 1\.0s"):
        await assert_preserves_message_envelope(late, make_message())


@pytest.mark.parametrize("timeout_s", [0, -1, True, "1"])
async def test_envelope_check_rejects_a_bad_timeout(timeout_s: float) -> None:
    with pytest.raises(KitUsageError, match="timeout_s must be a number > 0"):
        await assert_preserves_message_envelope(good_node, make_message(), timeout_s=timeout_s)
