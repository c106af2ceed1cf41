"""Spans: one per request, one child per node attempt, decisions as events.

Timing-dependent tests (retry backoff, node timeouts, deadlines) run on the test kit's
virtual clock, so backoffs and timeouts elapse instantly and deterministically.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from penguiflow.clock import wall_time
from penguiflow.core import Context, PenguiFlow, create
from penguiflow.node import Node, NodePolicy
from penguiflow.otel import instrument, instrument_playbook
from penguiflow.registry import ModelRegistry
from penguiflow.testing import simulate_error

if TYPE_CHECKING:
    from conftest import Helpers, Otel

pytestmark = pytest.mark.usefixtures("virtual_clock")

NONE = NodePolicy(validate="none")


async def _echo(msg: Any, ctx: Context) -> Any:
    return msg


def _chain(*funcs: Any, policy: NodePolicy = NONE) -> tuple[PenguiFlow, list[Node]]:
    nodes = [f if isinstance(f, Node) else Node(f, policy=policy) for f in funcs]
    adj = [a.to(b) for a, b in itertools.pairwise(nodes)]
    adj.append(nodes[-1].to())
    return create(*adj), nodes


async def test_one_request_span_with_one_child_per_attempt(
    otel: Otel, helpers: type[Helpers]
) -> None:
    async def first(msg: Any, ctx: Context) -> Any:
        return msg

    async def second(msg: Any, ctx: Context) -> Any:
        return msg

    flow, _ = _chain(first, second)
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    flow.run()
    try:
        msg = helpers.message("hi")
        await flow.emit(msg)
        out = await flow.fetch()
    finally:
        await flow.stop()

    assert out.payload == "hi"
    [request] = otel.requests()
    attempts = otel.attempts()
    assert [s.name for s in attempts] == ["penguiflow.node first", "penguiflow.node second"]
    # Span count equals attempt count: one span per node invocation.
    assert len(otel.spans()) == 1 + 2
    assert request.attributes["penguiflow.trace_id"] == msg.trace_id
    assert request.attributes["penguiflow.outcome"] == "ok"
    assert request.status.status_code is StatusCode.UNSET
    assert request.parent is None
    for span in attempts:
        assert span.parent is not None and span.parent.span_id == request.context.span_id
        assert span.context.trace_id == request.context.trace_id
        assert span.kind is SpanKind.INTERNAL
        assert span.attributes["penguiflow.attempt"] == 1
        assert span.attributes["penguiflow.outcome"] == "ok"
        assert span.attributes["penguiflow.trace_id"] == msg.trace_id
        assert span.attributes["penguiflow.queue.maxsize"] == flow.queue_maxsize
        assert "penguiflow.queue.depth_in" in span.attributes
        assert "penguiflow.queue.depth_out" in span.attributes
        assert span.attributes["penguiflow.latency_ms"] >= 0
        assert span.status.status_code is StatusCode.UNSET
        # The request span covers every attempt (it ends when the result is fetched).
        assert request.start_time <= span.start_time
        assert span.end_time <= request.end_time


async def test_a_retried_node_shows_one_errored_span_and_one_ok_span(
    otel: Otel, helpers: type[Helpers]
) -> None:
    flaky = Node(
        simulate_error("flaky", "E_UPSTREAM", fail_times=1, exception_type=ValueError),
        policy=NodePolicy(validate="none", max_retries=2, backoff_base=5.0),
    )
    flow, _ = _chain(flaky)
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    flow.run()
    try:
        await flow.emit(helpers.message("x"))
        await flow.fetch()
    finally:
        await flow.stop()

    failed, ok = otel.attempts("flaky")
    [request] = otel.requests()
    assert [failed.attributes["penguiflow.attempt"], ok.attributes["penguiflow.attempt"]] == [1, 2]
    assert failed.attributes["penguiflow.outcome"] == "error"
    assert failed.attributes["error.type"] == "ValueError"
    assert failed.status.status_code is StatusCode.ERROR
    assert "simulated E_UPSTREAM" in (failed.status.description or "")
    [exc] = failed.events
    assert exc.name == "exception"
    assert exc.attributes["exception.type"] == "ValueError"
    assert "simulated E_UPSTREAM" in exc.attributes["exception.message"]
    assert ok.attributes["penguiflow.outcome"] == "ok"
    assert ok.status.status_code is StatusCode.UNSET
    # The retry decision is an event on the request span, with the backoff it chose.
    [retry] = [e for e in request.events if e.name == "node_retry"]
    assert retry.attributes["penguiflow.node.name"] == "flaky"
    assert retry.attributes["penguiflow.attempt"] == 2
    assert retry.attributes["penguiflow.sleep_s"] == 5.0
    assert "simulated E_UPSTREAM" in retry.attributes["exception.message"]
    assert request.attributes["penguiflow.outcome"] == "ok"


async def test_timeout_and_giving_up_mark_the_spans(otel: Otel, helpers: type[Helpers]) -> None:
    async def slow(msg: Any, ctx: Context) -> Any:
        await asyncio.sleep(10)
        return msg

    node = Node(slow, policy=NodePolicy(validate="none", timeout_s=1.0, max_retries=1))
    flow, _ = _chain(node)
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    done = asyncio.Event()
    flow.on_trace_done(lambda tid: done.set())
    flow.run()
    try:
        await flow.emit(helpers.message("x"))
        await done.wait()  # both attempts time out; the item is dropped
    finally:
        await flow.stop()

    attempts = otel.attempts("slow")
    assert [s.attributes["penguiflow.outcome"] for s in attempts] == ["timeout", "timeout"]
    assert all(s.attributes["error.type"] == "TimeoutError" for s in attempts)
    [request] = otel.requests()
    assert helpers.event_names(request) == ["node_retry", "node_failed"]
    assert request.status.status_code is StatusCode.ERROR
    assert request.status.description == "node 'slow' gave up after 2 attempt(s)"
    assert request.attributes["penguiflow.outcome"] == "error"


async def test_a_cancelled_trace_ends_its_spans_cancelled(
    otel: Otel, helpers: type[Helpers]
) -> None:
    started = asyncio.Event()

    async def stuck(msg: Any, ctx: Context) -> Any:
        started.set()
        await asyncio.Event().wait()
        return msg

    flow, _ = _chain(stuck)
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    done = asyncio.Event()
    flow.on_trace_done(lambda tid: done.set())
    flow.run()
    try:
        msg = helpers.message("x")
        await flow.emit(msg)
        await started.wait()
        assert otel.spans() == []  # both spans are open while the trace is live
        assert await flow.cancel(msg.trace_id)
        await done.wait()
    finally:
        await flow.stop()

    [attempt] = otel.attempts("stuck")
    [request] = otel.requests()
    for span in (attempt, request):
        assert span.attributes["penguiflow.outcome"] == "cancelled"
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "cancelled"
    assert attempt.attributes["error.type"] == "cancelled"
    assert "trace_cancel_start" in helpers.event_names(request)
    assert attempt.end_time <= request.end_time


async def test_deadline_skip_is_an_event(otel: Otel, helpers: type[Helpers]) -> None:
    flow, _ = _chain(_echo)
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    flow.run()
    try:
        await flow.emit(helpers.message("x", deadline_s=0.0))
        out = await flow.fetch()
    finally:
        await flow.stop()

    assert out.payload.text == "Deadline exceeded"
    assert otel.attempts() == []
    [request] = otel.requests()
    assert request.attributes["penguiflow.outcome"] == "deadline"
    assert request.status.status_code is StatusCode.ERROR
    assert request.status.description == "deadline exceeded"
    [skip] = request.events
    assert skip.name == "deadline_skip"
    assert skip.attributes["penguiflow.node.name"] == "_echo"
    assert skip.attributes["penguiflow.deadline_s"] == 0.0


async def test_a_deadline_that_passes_mid_attempt_ends_the_attempt(
    otel: Otel, helpers: type[Helpers]
) -> None:
    # Core cuts the attempt short and reports only deadline_skip for it: that event ends
    # the attempt span, measured from its start, while the flow keeps running.
    async def slow(msg: Any, ctx: Context) -> Any:
        await asyncio.sleep(10.0)
        return msg

    flow, _ = _chain(slow)
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    done = asyncio.Event()
    flow.on_trace_done(lambda tid: done.set())
    flow.run()
    try:
        await flow.emit(helpers.message("x", deadline_s=wall_time() + 2.0))
        out = await flow.fetch()
        await done.wait()
        spans = otel.spans()
        metrics = otel.metrics()
    finally:
        await flow.stop()

    assert out.payload.text == "Deadline exceeded"
    assert sorted(s.name for s in spans) == ["penguiflow.node slow", "penguiflow.request"]
    [attempt] = otel.attempts("slow")
    assert attempt.attributes["penguiflow.outcome"] == "deadline"
    assert attempt.attributes["error.type"] == "deadline"
    assert attempt.status.status_code is StatusCode.ERROR
    assert attempt.status.description == "deadline exceeded"
    assert attempt.attributes["penguiflow.latency_ms"] == pytest.approx(2000.0)
    [request] = otel.requests()
    assert request.attributes["penguiflow.outcome"] == "deadline"
    assert helpers.event_names(request) == ["deadline_skip"]
    assert attempt.end_time <= request.end_time
    [point] = helpers.points(metrics, "penguiflow.node.duration", penguiflow__outcome="deadline")
    assert (point.count, point.sum) == (1, pytest.approx(2.0))


async def test_a_node_asking_for_the_deadline_answer_keeps_its_attempt(
    otel: Otel, helpers: type[Helpers]
) -> None:
    # The same deadline_skip, from inside a running attempt: that attempt goes on.
    async def expiring(msg: Any, ctx: Context) -> Any:
        await ctx.deadline_exceeded(msg)
        return msg

    flow, _ = _chain(expiring)
    instrument(flow, tracer_provider=otel.tracer_provider)
    flow.run()
    try:
        msg = helpers.message("x")
        await flow.emit(msg)
        first, second = await flow.fetch(), await flow.fetch()
    finally:
        await flow.stop()

    assert (first.payload.text, second.payload) == ("Deadline exceeded", "x")
    [attempt] = otel.attempts("expiring")
    assert attempt.attributes["penguiflow.outcome"] == "ok"
    assert attempt.status.status_code is StatusCode.UNSET
    [request] = otel.requests()
    assert request.attributes["penguiflow.outcome"] == "deadline"


async def test_custom_reports_with_a_trace_id_are_events(
    otel: Otel, helpers: type[Helpers]
) -> None:
    async def reporting(msg: Any, ctx: Context) -> Any:
        await ctx.report("cache_miss", trace_id=msg.trace_id, extra={"key": "k1", "obj": []})
        return msg

    flow, _ = _chain(reporting)
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    flow.run()
    try:
        await flow.emit(helpers.message("x"))
        await flow.fetch()
    finally:
        await flow.stop()

    [request] = otel.requests()
    [event] = request.events
    assert event.name == "cache_miss"
    assert dict(event.attributes) == {"penguiflow.node.name": "reporting", "penguiflow.key": "k1"}


async def test_node_code_runs_inside_its_attempt_span(otel: Otel, helpers: type[Helpers]) -> None:
    seen: list[int] = []
    tracer = otel.tracer_provider.get_tracer("product")

    async def work(msg: Any, ctx: Context) -> Any:
        seen.append(trace.get_current_span().get_span_context().span_id)
        with tracer.start_as_current_span("product.step"):
            await asyncio.sleep(0)
        return msg

    flow, _ = _chain(work)
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    flow.run()
    try:
        await flow.emit(helpers.message("x"))
        await flow.fetch()
    finally:
        await flow.stop()

    [attempt] = otel.attempts("work")
    [step] = [s for s in otel.spans() if s.name == "product.step"]
    assert seen == [attempt.context.span_id]
    assert step.parent is not None and step.parent.span_id == attempt.context.span_id


async def test_concurrent_attempts_keep_their_own_spans(otel: Otel, helpers: type[Helpers]) -> None:
    gate = asyncio.Event()
    running = 0

    async def wide(msg: Any, ctx: Context) -> Any:
        nonlocal running
        running += 1
        if running == 3:
            gate.set()
        await gate.wait()
        return msg

    node = Node(wide, policy=NodePolicy(validate="none", max_concurrency=3))
    flow, _ = _chain(node)
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    flow.run()
    try:
        msgs = [helpers.message(i) for i in range(3)]
        for m in msgs:
            await flow.emit(m)
        for _ in msgs:
            await flow.fetch()
    finally:
        await flow.stop()

    requests = {s.attributes["penguiflow.trace_id"]: s for s in otel.requests()}
    assert set(requests) == {m.trace_id for m in msgs}
    attempts = otel.attempts("wide")
    assert len(attempts) == 3
    for span in attempts:
        parent = requests[span.attributes["penguiflow.trace_id"]]
        assert span.parent is not None and span.parent.span_id == parent.context.span_id


async def test_playbook_spans_nest_under_the_calling_node(
    otel: Otel, helpers: type[Helpers]
) -> None:
    async def retrieve(msg: Any, ctx: Context) -> Any:
        return f"docs for {msg.payload}"

    def playbook() -> tuple[PenguiFlow, ModelRegistry | None]:
        node = Node(retrieve, policy=NONE)
        return create(node.to()), None

    traced = instrument_playbook(playbook, tracer_provider=otel.tracer_provider)

    async def caller(msg: Any, ctx: Context) -> Any:
        return await ctx.call_playbook(traced, msg)

    flow, _ = _chain(caller)
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    flow.run()
    try:
        msg = helpers.message("q")
        await flow.emit(msg)
        out = await flow.fetch()
    finally:
        await flow.stop()

    assert out == "docs for q"
    outer, inner = sorted(otel.requests(), key=lambda s: s.start_time or 0)
    [calling] = otel.attempts("caller")
    [sub] = otel.attempts("retrieve")
    assert outer.parent is None
    assert calling.parent is not None and calling.parent.span_id == outer.context.span_id
    assert inner.parent is not None and inner.parent.span_id == calling.context.span_id
    assert sub.parent is not None and sub.parent.span_id == inner.context.span_id
    assert inner.attributes["penguiflow.flow"] == "penguiflow.playbook"
    assert {s.context.trace_id for s in otel.spans()} == {outer.context.trace_id}
    # The subflow's trace ended (its result was taken) before the calling attempt did.
    assert inner.end_time <= calling.end_time <= outer.end_time
    # The caller's message was not touched by the subflow's propagation.
    assert "traceparent" not in msg.meta


async def test_stop_ends_what_is_still_open(otel: Otel, helpers: type[Helpers]) -> None:
    started = asyncio.Event()

    async def stuck(msg: Any, ctx: Context) -> Any:
        started.set()
        await asyncio.Event().wait()

    flow, _ = _chain(stuck)
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    flow.run()
    await flow.emit(helpers.message("x"))
    await started.wait()
    await flow.stop()

    [attempt] = otel.attempts("stuck")
    [request] = otel.requests()
    assert attempt.attributes["penguiflow.outcome"] == "cancelled"
    assert attempt.status.description == "flow stopped"
    assert request.attributes["penguiflow.outcome"] == "flow stopped"
    assert request.status.status_code is StatusCode.ERROR
