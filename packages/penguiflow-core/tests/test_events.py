"""``FlowEvent``, the events a flow emits and their logging; built only when someone listens."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pytest

import penguiflow._events as events_mod
import penguiflow.metrics as metrics_mod
from penguiflow import Context
from penguiflow.metrics import FlowEvent
from penguiflow.node import Node, NodePolicy
from penguiflow.types import Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow
    from penguiflow.testing import Recorder


def node(fn: Any, name: str, **policy: Any) -> Node:
    return Node(fn, name=name, policy=NodePolicy(**{"validate": "none", **policy}))


def msg(payload: Any = "p", **kw: Any) -> Message:
    return Message(payload=payload, headers=Headers(tenant="acme"), **kw)


def event(**overrides: Any) -> FlowEvent:
    fields: dict[str, Any] = {
        "event_type": "node_success",
        "ts": 1.5,
        "node_name": "n",
        "node_id": "id",
        "trace_id": "t",
        "attempt": 2,
        "latency_ms": 3.0,
        "queue_depth_in": 4,
        "queue_depth_out": 5,
        "outgoing_edges": 6,
        "queue_maxsize": 7,
        "trace_pending": 8,
        "trace_inflight": 9,
        "trace_cancelled": False,
    }
    fields.update(overrides)
    return FlowEvent(**fields)


async def echo(m: Any, ctx: Context) -> Any:
    return m


# -- FlowEvent ----------------------------------------------------------------------------


def test_flow_event_fields_in_order() -> None:
    assert metrics_mod.__all__ == ["FlowEvent"]
    assert [f.name for f in dataclasses.fields(FlowEvent)] == [
        "event_type",
        "ts",
        "node_name",
        "node_id",
        "trace_id",
        "attempt",
        "latency_ms",
        "queue_depth_in",
        "queue_depth_out",
        "outgoing_edges",
        "queue_maxsize",
        "trace_pending",
        "trace_inflight",
        "trace_cancelled",
        "extra",
    ]
    assert event().extra == {}


def test_flow_event_is_frozen_and_slotted() -> None:
    ev = event()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.attempt = 1  # type: ignore[misc]
    assert not hasattr(ev, "__dict__")


def test_extra_is_a_read_only_copy() -> None:
    source = {"a": 1}
    ev = event(extra=source)
    source["a"] = 2
    source["b"] = 3
    assert dict(ev.extra) == {"a": 1}
    assert isinstance(ev.extra, MappingProxyType)
    with pytest.raises(TypeError):
        ev.extra["a"] = 5  # type: ignore[index]


def test_queue_depth_property() -> None:
    assert event(queue_depth_in=2, queue_depth_out=3).queue_depth == 5


def test_to_payload_key_order_and_values() -> None:
    payload = event().to_payload()
    assert list(payload) == [
        "ts",
        "event",
        "node_name",
        "node_id",
        "trace_id",
        "latency_ms",
        "q_depth_in",
        "q_depth_out",
        "q_depth_total",
        "outgoing",
        "queue_maxsize",
        "attempt",
        "trace_inflight",
        "trace_cancelled",
        "trace_pending",
    ]
    assert payload["event"] == "node_success"
    assert payload["q_depth_total"] == 9
    assert payload["outgoing"] == 6
    assert payload["trace_pending"] == 8


def test_to_payload_omits_missing_trace_pending_and_extra_overrides() -> None:
    payload = event(trace_pending=None, extra={"attempt": "x", "custom": 1}).to_payload()
    assert "trace_pending" not in payload
    assert payload["attempt"] == "x"
    assert list(payload)[-1] == "custom"


def test_metric_samples() -> None:
    samples = event().metric_samples()
    assert samples == {
        "queue_depth_in": 4.0,
        "queue_depth_out": 5.0,
        "queue_depth_total": 9.0,
        "attempt": 2.0,
        "trace_inflight": 9.0,
        "trace_cancelled": 0.0,
        "trace_pending": 8.0,
        "latency_ms": 3.0,
    }
    assert all(isinstance(v, float) for v in samples.values())
    sparse = event(trace_pending=None, latency_ms=None, trace_cancelled=True).metric_samples()
    assert "trace_pending" not in sparse and "latency_ms" not in sparse
    assert sparse["trace_cancelled"] == 1.0


@pytest.mark.parametrize(
    ("extra_latency", "expected"), [("12.5", 12.5), (7, 7.0), ("bad", 3.0), (None, 3.0), ([1], 3.0)]
)
def test_metric_samples_extra_latency_override(extra_latency: Any, expected: float) -> None:
    assert event(extra={"latency_ms": extra_latency}).metric_samples()["latency_ms"] == expected


def test_tag_values() -> None:
    tags = event(
        extra={"s": "x", "i": 1, "f": 1.5, "b": True, "obj": [1], "none": None}
    ).tag_values()
    assert tags == {
        "event_type": "node_success",
        "node_name": "n",
        "node_id": "id",
        "trace_id": "t",
        "s": "x",
        "i": "1",
        "f": "1.5",
        "b": "True",
    }
    bare = event(node_name=None, node_id=None, trace_id=None).tag_values()
    assert bare == {"event_type": "node_success"}


# -- runtime events -----------------------------------------------------------------------


async def test_success_events_carry_the_snapshot(make_flow: MakeFlow, recorder: Recorder) -> None:
    a, b = node(echo, "a"), node(echo, "b")
    flow = make_flow(a.to(b), queue_maxsize=9, middlewares=[recorder])
    flow.run()
    m = msg()
    await flow.emit(m)
    await asyncio.wait_for(flow.fetch(), 1.0)
    evs = [e for e in recorder.events if e.node_name == "a"]
    assert [(e.event_type, e.attempt) for e in evs] == [("node_start", 0), ("node_success", 0)]
    start, success = evs
    assert start.latency_ms == 0.0
    assert isinstance(success.latency_ms, float) and success.latency_ms >= 0.0
    for e in evs:
        assert e.node_id == a.node_id
        assert e.trace_id == m.trace_id
        assert e.queue_maxsize == 9
        assert e.outgoing_edges == 1
        assert e.trace_pending is not None and e.trace_pending >= 1
        assert e.trace_cancelled is False
    assert success.queue_depth_out == 1  # routed to b before node_success


async def test_untracked_items_have_no_trace_pending(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    flow = make_flow(node(echo, "a").to(), middlewares=[recorder])
    flow.run()
    await flow.emit("bare")
    await asyncio.wait_for(flow.fetch(), 1.0)
    assert {e.trace_id for e in recorder.events} == {None}
    assert {e.trace_pending for e in recorder.events} == {None}
    assert {e.trace_inflight for e in recorder.events} == {0}


async def test_events_are_logged_with_levels_and_payload(
    make_flow: MakeFlow, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    async def flaky(m: Any, ctx: Context) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("x")
        return m

    caplog.set_level(logging.DEBUG, logger="penguiflow.core")
    flow = make_flow(node(flaky, "f", max_retries=1, backoff_base=0).to())
    flow.run()
    m = msg()
    await flow.emit(m)
    await asyncio.wait_for(flow.fetch(), 1.0)
    records = [r for r in caplog.records if r.name == "penguiflow.core"]
    assert [(r.getMessage(), r.levelno) for r in records] == [
        ("node_start", logging.DEBUG),
        ("node_error", logging.ERROR),
        ("node_retry", logging.INFO),
        ("node_start", logging.DEBUG),
        ("node_success", logging.INFO),
    ]
    rec = records[-1]
    assert rec.event == "node_success"  # type: ignore[attr-defined]
    assert rec.node_name == "f"  # type: ignore[attr-defined]
    assert rec.trace_id == m.trace_id  # type: ignore[attr-defined]
    assert rec.attempt == 1  # type: ignore[attr-defined]
    assert isinstance(rec.latency_ms, float)  # type: ignore[attr-defined]
    assert records[1].exception == "RuntimeError('x')"  # type: ignore[attr-defined]
    assert records[2].sleep_s == 0  # type: ignore[attr-defined]


async def test_stop_emits_node_cancelled(make_flow: MakeFlow, recorder: Recorder) -> None:
    flow = make_flow(node(echo, "a").to(), middlewares=[recorder])
    flow.run()
    await flow.emit("warm-up")
    await asyncio.wait_for(flow.fetch(), 1.0)  # the worker is now parked on its inbox
    await flow.stop()
    cancelled = recorder.matching("node_cancelled")
    assert [(e.node_name, e.trace_id, e.attempt, e.latency_ms) for e in cancelled] == [
        ("a", None, 0, None)
    ]


async def test_no_flow_event_is_built_when_nobody_listens(
    make_flow: MakeFlow, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[type] = []
    real = events_mod.new_draft

    def counting(cls: type) -> Any:
        built.append(cls)
        return real(cls)

    monkeypatch.setattr(events_mod, "new_draft", counting)
    monkeypatch.setattr(logging.getLogger("penguiflow.core"), "disabled", True)
    calls: list[int] = []

    async def flaky(m: Any, ctx: Context) -> Any:
        calls.append(1)
        if len(calls) % 2:
            raise RuntimeError("odd")
        return m

    flow = make_flow(node(flaky, "f", max_retries=1, backoff_base=0).to())
    flow.run()
    for i in range(5):
        await flow.emit(msg(i))
    for _ in range(5):
        await asyncio.wait_for(flow.fetch(), 1.0)
    victim = msg("v")
    await flow.emit(victim, to=None)
    await flow.cancel(victim.trace_id)
    await flow.stop()
    assert built == []
    # control: the counting constructor is the one the runtime uses
    monkeypatch.setattr(logging.getLogger("penguiflow.core"), "disabled", False)

    seen: list[str] = []

    async def sink(event: FlowEvent) -> None:
        seen.append(event.event_type)

    flow.add_middleware(sink)
    flow.run()
    await flow.emit(msg("x"))
    await asyncio.wait_for(flow.fetch(), 1.0)
    assert "node_success" in seen
    assert len(built) == len(seen)  # one draft per event delivered


async def test_events_the_runtime_builds_are_plain_frozen_flow_events(make_flow: MakeFlow) -> None:
    seen: list[FlowEvent] = []

    async def sink(ev: FlowEvent) -> None:
        seen.append(ev)

    async def same(m: Any, ctx: Context) -> Any:
        return m

    flow = make_flow(node(same, "a").to(), middlewares=[sink])
    flow.run()
    sent = msg("x")
    await flow.emit(sent)
    await asyncio.wait_for(flow.fetch(), 1.0)
    assert [ev.event_type for ev in seen] == ["node_start", "node_success"]
    for ev in seen:
        assert type(ev) is FlowEvent
        assert not hasattr(ev, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            ev.attempt = 9  # type: ignore[misc]
        # every field is set, and equal to what the constructor builds from the same values
        values = {f.name: getattr(ev, f.name) for f in dataclasses.fields(FlowEvent)}
        assert FlowEvent(**values) == ev
        assert (ev.node_name, ev.trace_id, ev.extra) == ("a", sent.trace_id, {})
