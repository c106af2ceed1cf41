"""Attaching and detaching: what instrument() adds, and that uninstrument removes it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider

from penguiflow.core import Context, PenguiFlow, create
from penguiflow.node import Node, NodePolicy
from penguiflow.otel import instrument

if TYPE_CHECKING:
    from conftest import Helpers, Otel

pytestmark = pytest.mark.usefixtures("virtual_clock")


async def _hop(msg: Any, ctx: Context) -> Any:
    return msg


def _flow() -> PenguiFlow:
    return create(Node(_hop, name="hop", policy=NodePolicy(validate="none")).to())


async def _round_trip(flow: PenguiFlow, msg: Any) -> Any:
    await flow.emit(msg)
    return await flow.fetch()


async def test_uninstrument_detaches_everything(otel: Otel, helpers: type[Helpers]) -> None:
    flow = _flow()
    uninstrument = instrument(
        flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    assert "emit" in vars(flow) and "emit_nowait" in vars(flow)
    flow.run()
    try:
        await _round_trip(flow, helpers.message(1))
        assert len(otel.spans()) == 2
        assert helpers.points(otel.metrics(), "penguiflow.traces.live")

        uninstrument()
        uninstrument()  # idempotent

        assert "emit" not in vars(flow) and "emit_nowait" not in vars(flow)
        out = await _round_trip(flow, helpers.message(2))
        assert "traceparent" not in out.meta
        assert len(otel.spans()) == 2  # nothing new
        metrics = otel.metrics()
        assert not helpers.points(metrics, "penguiflow.traces.live")
        assert not helpers.points(metrics, "penguiflow.node.inflight")
    finally:
        await flow.stop()
    # Instrumenting again after uninstrument works.
    again = instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=None)
    again()


async def test_uninstrument_ends_open_spans(otel: Otel, helpers: type[Helpers]) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    current: list[trace.SpanContext] = []

    async def stuck(msg: Any, ctx: Context) -> Any:
        current.append(trace.get_current_span().get_span_context())
        started.set()
        await release.wait()
        return msg

    flow = create(Node(stuck, policy=NodePolicy(validate="none")).to())
    uninstrument = instrument(
        flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    flow.run()
    try:
        await flow.emit(helpers.message(1))
        await started.wait()
        uninstrument()
        ended = {s.name: s.attributes["penguiflow.outcome"] for s in otel.spans()}
        assert ended == {
            "penguiflow.request": "uninstrumented",
            "penguiflow.node stuck": "cancelled",
        }
        release.set()
        await flow.fetch()
        # The worker lives on: the next request's node code must not run inside the
        # attempt span that uninstrument ended, and nothing of the instrumentation stays.
        await _round_trip(flow, helpers.message(2))
        assert flow.middlewares == ()
    finally:
        await flow.stop()
    assert len(otel.spans()) == 2
    during, after = current
    assert during == otel.attempts("stuck")[0].context
    assert not after.is_valid


async def test_instrumenting_a_running_flow(otel: Otel, helpers: type[Helpers]) -> None:
    flow = _flow()
    flow.run()
    try:
        uninstrument = instrument(flow, tracer_provider=otel.tracer_provider)
        await _round_trip(flow, helpers.message(1))
        uninstrument()
    finally:
        await flow.stop()
    assert sorted(s.name for s in otel.spans()) == ["penguiflow.node hop", "penguiflow.request"]


def test_a_flow_is_instrumented_once_at_a_time(otel: Otel) -> None:
    flow = _flow()
    uninstrument = instrument(flow, tracer_provider=otel.tracer_provider)
    with pytest.raises(RuntimeError, match="already instrumented"):
        instrument(flow, tracer_provider=otel.tracer_provider)
    uninstrument()


async def test_an_uninstrumented_flow_carries_nothing(otel: Otel, helpers: type[Helpers]) -> None:
    flow = _flow()
    flow.run()
    try:
        out = await _round_trip(flow, helpers.message(1, meta={"k": "v"}))
    finally:
        await flow.stop()
    assert out.meta == {"k": "v"}
    assert otel.spans() == []
    assert "emit" not in vars(flow)


async def test_works_with_the_no_op_providers(helpers: type[Helpers]) -> None:
    # The API alone (no SDK): spans are non-recording, nothing breaks, the envelope
    # carries no context (a non-recording root span has an invalid context).
    flow = _flow()
    uninstrument = instrument(flow, tracer_provider=NoOpTracerProvider())
    flow.run()
    try:
        out = await _round_trip(flow, helpers.message(1))
    finally:
        await flow.stop()
    uninstrument()
    assert not trace.get_current_span().is_recording()
    assert "traceparent" not in out.meta
