"""W3C trace context in ``Message.meta``: continued on the way in, carried on the way out."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.trace import format_span_id, format_trace_id

from penguiflow.core import Context, PenguiFlow, create
from penguiflow.errors import FlowStoppedError
from penguiflow.node import Node, NodePolicy
from penguiflow.otel import instrument
from penguiflow.types import Message

if TYPE_CHECKING:
    from conftest import Helpers, Otel

pytestmark = pytest.mark.usefixtures("virtual_clock")

REMOTE_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
REMOTE_SPAN = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{REMOTE_TRACE:032x}-{REMOTE_SPAN:016x}-01"


async def _hop(msg: Any, ctx: Context) -> Any:
    return msg


def _flow() -> Any:
    a = Node(_hop, name="a", policy=NodePolicy(validate="none"))
    b = Node(_hop, name="b", policy=NodePolicy(validate="none"))
    return create(a.to(b), b.to())


async def _run_one(flow: PenguiFlow, msg: Message) -> Any:
    flow.run()
    try:
        await flow.emit(msg)
        return await flow.fetch()
    finally:
        await flow.stop()


async def test_an_incoming_traceparent_is_continued(otel: Otel, helpers: type[Helpers]) -> None:
    flow = _flow()
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    msg = helpers.message("x", meta={"traceparent": TRACEPARENT, "tracestate": "vendor=1"})
    out = await _run_one(flow, msg)

    [request] = otel.requests()
    assert request.context.trace_id == REMOTE_TRACE
    assert request.parent is not None and request.parent.span_id == REMOTE_SPAN
    assert request.parent.is_remote
    assert request.context.trace_state.get("vendor") == "1"
    assert {s.context.trace_id for s in otel.spans()} == {REMOTE_TRACE}
    # The result carries the request's own context onward (same trace, our span)...
    expected = f"00-{format_trace_id(REMOTE_TRACE)}-{format_span_id(request.context.span_id)}-01"
    assert out.meta["traceparent"] == expected
    assert out.meta["tracestate"] == "vendor=1"
    # ... and the caller's message and meta dict are left as they were.
    assert msg.meta == {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}
    assert out.trace_id == msg.trace_id


async def test_without_traceparent_the_emitters_span_is_the_parent(
    otel: Otel, helpers: type[Helpers]
) -> None:
    flow = _flow()
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("http.request") as outer:
        out = await _run_one(flow, helpers.message("x"))

    [request] = otel.requests()
    assert request.parent is not None
    assert request.parent.span_id == outer.get_span_context().span_id
    assert out.meta["traceparent"].split("-")[2] == format_span_id(request.context.span_id)


@pytest.mark.parametrize(
    "value",
    ["garbage", f"00-{0:032x}-{REMOTE_SPAN:016x}-01", 42],
    ids=["malformed", "zero-trace-id", "not-a-string"],
)
async def test_an_invalid_traceparent_starts_a_new_trace(
    otel: Otel, helpers: type[Helpers], value: object
) -> None:
    flow = _flow()
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    out = await _run_one(flow, helpers.message("x", meta={"traceparent": value}))

    [request] = otel.requests()
    assert request.parent is None
    assert request.context.trace_id != REMOTE_TRACE
    assert out.meta["traceparent"].split("-")[1] == format_trace_id(request.context.trace_id)


async def test_emit_nowait_and_a_second_item_of_the_same_trace(
    otel: Otel, helpers: type[Helpers]
) -> None:
    flow = _flow()
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    flow.run()
    try:
        first = helpers.message(1, meta={"traceparent": TRACEPARENT})
        second = helpers.message(2, trace_id=first.trace_id)
        flow.emit_nowait(first)
        flow.emit_nowait(second)
        outs = [await flow.fetch(), await flow.fetch()]
    finally:
        await flow.stop()

    [request] = otel.requests()  # one trace, one request span
    assert request.context.trace_id == REMOTE_TRACE
    assert len(otel.attempts()) == 4
    assert outs[0].meta["traceparent"] == outs[1].meta["traceparent"]


async def test_a_failed_emit_ends_the_span_it_opened(otel: Otel, helpers: type[Helpers]) -> None:
    flow = create(Node(_hop, name="a", policy=NodePolicy(validate="none")).to(), queue_maxsize=1)
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    flow.run()
    try:
        flow.emit_nowait(helpers.message(1))  # fills the edge
        with pytest.raises(asyncio.QueueFull):
            flow.emit_nowait(helpers.message(2))
        await flow.fetch()
    finally:
        await flow.stop()

    requests = otel.requests()
    outcomes = sorted(r.attributes["penguiflow.outcome"] for r in requests)
    assert outcomes == ["not enqueued", "ok"]


async def test_an_emit_into_a_stopped_flow_ends_the_span_it_opened(
    otel: Otel, helpers: type[Helpers]
) -> None:
    # A stopped flow keeps the trace of a queued item for its next run(), so the trace
    # id is still known to core, but this emit failed and nothing runs: its span ends.
    started = asyncio.Event()

    async def stuck(msg: Any, ctx: Context) -> Any:
        started.set()
        await asyncio.Event().wait()

    flow = create(Node(stuck, policy=NodePolicy(validate="none")).to())
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    flow.run()
    running, queued = helpers.message("a"), helpers.message("b")
    await flow.emit(running)
    await flow.emit(queued)
    await started.wait()
    await flow.stop()
    assert queued.trace_id in flow.inspect().traces
    with pytest.raises(FlowStoppedError):
        await flow.emit(helpers.message("c", trace_id=queued.trace_id))

    outcomes = sorted(r.attributes["penguiflow.outcome"] for r in otel.requests())
    assert outcomes == ["flow stopped", "flow stopped", "not enqueued"]
