"""Metrics: gauges read from ``flow.inspect()``, counters and a histogram from the events."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.clock import wall_time
from penguiflow.core import Context, create
from penguiflow.node import Node, NodePolicy
from penguiflow.otel import instrument
from penguiflow.testing import simulate_error

if TYPE_CHECKING:
    from conftest import Helpers, Otel

pytestmark = pytest.mark.usefixtures("virtual_clock")


async def test_latency_retries_and_failures(otel: Otel, helpers: type[Helpers]) -> None:
    flaky = Node(
        simulate_error("flaky", "E1", fail_times=1),
        policy=NodePolicy(validate="none", max_retries=1),
    )
    broken = Node(
        simulate_error("broken", "E2", fail_times=99),
        policy=NodePolicy(validate="none", max_retries=1),
    )
    flow = create(flaky.to(broken), broken.to())
    instrument(
        flow,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
        flow_name="orders",
    )
    done = asyncio.Event()
    flow.on_trace_done(lambda tid: done.set())
    flow.run()
    try:
        await flow.emit(helpers.message("x"))
        await done.wait()
        metrics = otel.metrics()
    finally:
        await flow.stop()

    points = helpers.points
    duration = "penguiflow.node.duration"
    [flaky_ok] = points(metrics, duration, penguiflow__node__name="flaky", penguiflow__outcome="ok")
    [flaky_err] = points(
        metrics, duration, penguiflow__node__name="flaky", penguiflow__outcome="error"
    )
    [broken_err] = points(
        metrics, duration, penguiflow__node__name="broken", penguiflow__outcome="error"
    )
    assert (flaky_ok.count, flaky_err.count, broken_err.count) == (1, 1, 2)
    assert flaky_ok.attributes["penguiflow.flow"] == "orders"
    assert flaky_ok.sum >= 0
    retries = {
        p.attributes["penguiflow.node.name"]: p.value
        for p in points(metrics, "penguiflow.node.retries")
    }
    assert retries == {"flaky": 1, "broken": 1}
    [failures] = points(metrics, "penguiflow.node.failures")
    assert (failures.attributes["penguiflow.node.name"], failures.value) == ("broken", 1)


async def test_every_attempt_has_one_duration_point(otel: Otel, helpers: type[Helpers]) -> None:
    # Core measures latency only for attempts that return or raise; cancelled ones, and
    # ones cut short by their deadline, are measured from their span's start.
    started = asyncio.Event()

    async def node(msg: Any, ctx: Context) -> Any:
        if msg.payload != "ok":
            started.set()
            await asyncio.sleep(10.0)
        return msg

    flow = create(Node(node, policy=NodePolicy(validate="none", max_concurrency=4)).to())
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    flow.run()
    try:
        await flow.emit(helpers.message("ok"))
        await flow.fetch()
        cancelled = helpers.message("cancel me")
        await flow.emit(cancelled)
        await started.wait()
        await asyncio.sleep(1.0)  # virtual: gives the cancelled attempt a known duration
        await flow.cancel(cancelled.trace_id)
        await flow.emit(helpers.message("late", deadline_s=wall_time() + 2.0))
        await flow.fetch()
        started.clear()
        await flow.emit(helpers.message("stopped"))
        await started.wait()
    finally:
        await flow.stop()

    outcomes = sorted(a.attributes["penguiflow.outcome"] for a in otel.attempts())
    assert outcomes == ["cancelled", "cancelled", "deadline", "ok"]
    counts = {
        p.attributes["penguiflow.outcome"]: p.count
        for p in helpers.points(otel.metrics(), "penguiflow.node.duration")
    }
    assert counts == {"ok": 1, "cancelled": 2, "deadline": 1}
    [cancel_span] = [a for a in otel.attempts() if a.status.description == "cancelled"]
    assert cancel_span.attributes["penguiflow.latency_ms"] == pytest.approx(1000.0)


async def test_gauges_show_live_state(otel: Otel, helpers: type[Helpers]) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def stuck(msg: Any, ctx: Context) -> Any:
        started.set()
        await release.wait()
        return msg

    node = Node(stuck, policy=NodePolicy(validate="none"))
    flow = create(node.to())
    flow.register_probe("demo.buckets", lambda: {"t1": 2, "t2": 1})
    instrument(flow, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider)
    flow.run()
    try:
        for i in range(3):
            await flow.emit(helpers.message(i))
        await started.wait()
        live = otel.metrics()
        # A collection on another thread (as the SDK's periodic reader does) gets the
        # same numbers: the snapshot is taken on the flow's loop.
        threaded = await asyncio.to_thread(otel.metrics)
        release.set()
        for _ in range(3):
            await flow.fetch()
        idle = otel.metrics()
    finally:
        await flow.stop()

    points = helpers.points
    for metrics in (live, threaded):
        [traces] = points(metrics, "penguiflow.traces.live")
        assert traces.value == 3
        [inflight] = points(metrics, "penguiflow.node.inflight", penguiflow__node__name="stuck")
        assert inflight.value == 1
        queued = {
            (p.attributes["penguiflow.edge.source"], p.attributes["penguiflow.edge.target"]): (
                p.value
            )
            for p in points(metrics, "penguiflow.edge.queued")
        }
        assert queued == {("OpenSea", "stuck"): 2, ("stuck", "Rookery"): 0}
        [probe] = points(metrics, "penguiflow.probe.resources", penguiflow__probe="demo.buckets")
        assert probe.value == 3
    [traces] = points(idle, "penguiflow.traces.live")
    assert traces.value == 0
    [inflight] = points(idle, "penguiflow.node.inflight")
    assert inflight.value == 0


async def test_several_flows_share_one_set_of_instruments(
    otel: Otel, helpers: type[Helpers], caplog: pytest.LogCaptureFixture
) -> None:
    # Observable callbacks cannot be removed in OpenTelemetry, and a second gauge of the
    # same name would be ignored (with a warning): flows register with shared gauges.
    caplog.set_level(logging.WARNING)

    async def hop(msg: Any, ctx: Context) -> Any:
        return msg

    flows = [create(Node(hop, policy=NodePolicy(validate="none")).to()) for _ in range(2)]
    counter = itertools.count()
    undo = [
        instrument(
            f,
            tracer_provider=otel.tracer_provider,
            meter_provider=otel.meter_provider,
            flow_name=f"flow{next(counter)}",
        )
        for f in flows
    ]
    for f in flows:
        f.run()
    try:
        for f in flows:
            await f.emit(helpers.message("x"))
            await f.fetch()
        both = otel.metrics()
        undo[0]()
        one = otel.metrics()
    finally:
        for f in flows:
            await f.stop()

    def flows_in(metrics: dict[str, list[Any]], name: str) -> set[str]:
        return {p.attributes["penguiflow.flow"] for p in metrics.get(name, [])}

    assert flows_in(both, "penguiflow.traces.live") == {"flow0", "flow1"}
    assert flows_in(both, "penguiflow.node.duration") == {"flow0", "flow1"}
    assert flows_in(one, "penguiflow.traces.live") == {"flow1"}
    assert len(otel.requests()) == 2
    assert not [r for r in caplog.records if "created already" in r.getMessage()]


async def test_collections_off_the_loop_never_read_the_flow_there(
    otel: Otel, helpers: type[Helpers]
) -> None:
    # A probe runs inside flow.inspect(), so it shows on which thread the flow was read.
    readers: set[int] = set()

    def probe() -> dict[str, int]:
        readers.add(threading.get_ident())
        return {}

    async def hop(msg: Any, ctx: Context) -> Any:
        return msg

    flow = create(Node(hop, policy=NodePolicy(validate="none")).to())
    flow.register_probe("demo.thread", probe)
    # Instrumented from another thread: the flow's loop is not known yet.
    await asyncio.to_thread(
        instrument,
        flow,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    loop_thread = threading.get_ident()
    flow.run()
    try:
        unknown = await asyncio.to_thread(otel.metrics)
        await flow.emit(helpers.message(1))
        await flow.fetch()
        await flow.stop()
        flow.run()  # again, on the same loop, before any event
        rerun = await asyncio.to_thread(otel.metrics)
    finally:
        await flow.stop()

    assert not helpers.points(unknown, "penguiflow.traces.live")  # skipped, not read here
    [live] = helpers.points(rerun, "penguiflow.traces.live")
    assert live.value == 0
    assert readers == {loop_thread}
