"""Timeouts, retries and backoff; a failing item never takes the flow down."""

from __future__ import annotations

import asyncio
import types
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

import penguiflow._retries as retries_mod
import penguiflow._runtime as runtime_mod
from penguiflow.core import Context, PenguiFlow
from penguiflow.node import Node, NodePolicy
from penguiflow.registry import ModelRegistry
from penguiflow.types import Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow
    from penguiflow.testing import Recorder

# Timing-dependent: on the test kit's virtual clock when penguiflow-testing is installed.
pytestmark = pytest.mark.usefixtures("virtual_clock")


def node(fn: Any, name: str, **policy: Any) -> Node:
    return Node(fn, name=name, policy=NodePolicy(**{"validate": "none", **policy}))


def msg(payload: Any, **kw: Any) -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"), **kw)


async def fetch(flow: PenguiFlow, **kw: Any) -> Any:
    return await asyncio.wait_for(flow.fetch(**kw), 1.0)


def asyncio_proxy(**overrides: Any) -> types.SimpleNamespace:
    """The ``asyncio`` module as seen by one runtime module, with some names replaced."""
    ns = types.SimpleNamespace(**vars(asyncio))
    for name, value in overrides.items():
        setattr(ns, name, value)
    return ns


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the runtime's backoff sleeps and make them instant."""
    recorded: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float, result: Any = None) -> Any:
        recorded.append(delay)
        await real_sleep(0)
        return result

    monkeypatch.setattr(retries_mod, "asyncio", asyncio_proxy(sleep=fake_sleep))
    return recorded


def flaky(failures: int, exc: type[Exception] = RuntimeError) -> tuple[Any, list[Any]]:
    calls: list[Any] = []

    async def flaky(m: Any, ctx: Context) -> Any:
        calls.append(m)
        if len(calls) <= failures:
            raise exc(f"boom {len(calls)}")
        return m

    return flaky, calls


async def test_one_failure_then_success_event_sequence(
    make_flow: MakeFlow, recorder: Recorder, sleeps: list[float]
) -> None:
    fn, calls = flaky(1)
    flow = make_flow(node(fn, "f", max_retries=2, backoff_base=0.25).to(), middlewares=[recorder])
    flow.run()
    m = msg("x")
    await flow.emit(m)
    assert await fetch(flow) is m
    assert len(calls) == 2
    evs = [(e.event_type, e.attempt) for e in recorder.events if e.trace_id == m.trace_id]
    assert evs == [
        ("node_start", 0),
        ("node_error", 0),
        ("node_retry", 1),
        ("node_start", 1),
        ("node_success", 1),
    ]
    error = recorder.matching("node_error")[0]
    assert error.extra["exception"] == "RuntimeError('boom 1')"
    assert isinstance(error.latency_ms, float) and error.latency_ms >= 0
    retry = recorder.matching("node_retry")[0]
    assert retry.latency_ms is None
    assert dict(retry.extra) == {"sleep_s": 0.25, "exception": "RuntimeError('boom 1')"}
    assert sleeps == [0.25]


async def test_exhausted_retries_drop_the_item_and_keep_serving(
    make_flow: MakeFlow, recorder: Recorder, sleeps: list[float]
) -> None:
    calls: list[Any] = []

    async def picky(m: Message, ctx: Context) -> Any:
        calls.append(m.payload)
        if m.payload == "bad":
            raise ValueError("bad input")
        return m

    flow = make_flow(node(picky, "p", max_retries=2, backoff_base=0).to(), middlewares=[recorder])
    flow.run()
    bad, good = msg("bad"), msg("good")
    await flow.emit(bad)
    await flow.emit(good)
    assert await fetch(flow) is good
    assert calls == ["bad", "bad", "bad", "good"]  # max_retries + 1 invocations
    failed = recorder.matching("node_failed", trace_id=bad.trace_id)
    assert [(e.attempt, e.extra["exception"]) for e in failed] == [(2, "ValueError('bad input')")]
    assert isinstance(failed[0].latency_ms, float)
    assert [e.attempt for e in recorder.matching("node_error", trace_id=bad.trace_id)] == [0, 1, 2]
    assert [e.attempt for e in recorder.matching("node_retry", trace_id=bad.trace_id)] == [1, 2]
    assert flow.inspect().traces == {}  # the dropped item completed its accounting
    assert flow.floes[-1].queue.qsize() == 0


async def test_no_retries_means_failed_right_away(make_flow: MakeFlow, recorder: Recorder) -> None:
    fn, calls = flaky(5)
    flow = make_flow(node(fn, "f").to(), middlewares=[recorder])
    flow.run()
    m = msg(1)
    await flow.emit(m)
    await recorder.wait("node_failed")
    assert len(calls) == 1
    assert recorder.names(trace_id=m.trace_id) == ["node_start", "node_error", "node_failed"]


async def test_backoff_is_exponential_and_capped(
    make_flow: MakeFlow, recorder: Recorder, sleeps: list[float]
) -> None:
    fn, _ = flaky(4)
    policy = {"max_retries": 4, "backoff_base": 0.5, "backoff_mult": 3.0, "max_backoff": 2.0}
    flow = make_flow(node(fn, "f", **policy).to(), middlewares=[recorder])
    flow.run()
    await flow.emit(1)
    assert await fetch(flow) == 1
    assert sleeps == [0.5, 1.5, 2.0, 2.0]
    assert [e.extra["sleep_s"] for e in recorder.matching("node_retry")] == [0.5, 1.5, 2.0, 2.0]
    assert [e.attempt for e in recorder.matching("node_retry")] == [1, 2, 3, 4]


async def test_backoff_without_cap(make_flow: MakeFlow, sleeps: list[float]) -> None:
    fn, _ = flaky(3)
    flow = make_flow(node(fn, "f", max_retries=3, backoff_base=0.1, backoff_mult=2.0).to())
    flow.run()
    await flow.emit(1)
    await fetch(flow)
    assert sleeps == pytest.approx([0.1, 0.2, 0.4])


async def test_every_attempt_receives_the_same_item_object(make_flow: MakeFlow) -> None:
    seen: list[Any] = []

    async def count(m: Message, ctx: Context) -> Any:
        seen.append(m)
        m.meta["tries"] = m.meta.get("tries", 0) + 1
        if m.meta["tries"] < 3:
            raise RuntimeError("again")
        return m

    flow = make_flow(node(count, "c", max_retries=3, backoff_base=0).to())
    flow.run()
    m = msg(1)
    await flow.emit(m)
    out = await fetch(flow)
    assert out.meta["tries"] == 3
    assert all(s is m for s in seen)


async def test_timeout_cancels_the_attempt_and_counts_as_timeout(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    cancelled: list[int] = []

    async def hang(m: Any, ctx: Context) -> Any:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    flow = make_flow(
        node(hang, "h", timeout_s=0.01, max_retries=1, backoff_base=0).to(), middlewares=[recorder]
    )
    flow.run()
    m = msg(1)
    await flow.emit(m)
    await recorder.wait("node_failed")
    assert cancelled == [1, 1]
    assert recorder.names(trace_id=m.trace_id) == [
        "node_start",
        "node_timeout",
        "node_retry",
        "node_start",
        "node_timeout",
        "node_failed",
    ]
    timeout = recorder.matching("node_timeout")[0]
    assert "TimeoutError" in timeout.extra["exception"]
    assert timeout.latency_ms is not None and timeout.latency_ms >= 5.0
    assert "TimeoutError" in recorder.matching("node_failed")[0].extra["exception"]


async def test_user_raised_timeout_error_counts_as_timeout(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    async def nested(m: Any, ctx: Context) -> Any:
        raise TimeoutError("nested playbook timed out")

    flow = make_flow(node(nested, "n").to(), middlewares=[recorder])
    flow.run()
    await flow.emit(msg(1))
    await recorder.wait("node_failed")
    assert [e.event_type for e in recorder.events] == ["node_start", "node_timeout", "node_failed"]


async def test_validation_error_is_an_error_and_is_retried(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    class In(BaseModel):
        x: int

    calls: list[Any] = []

    async def typed(m: In, ctx: Context) -> In:
        calls.append(m)
        return m

    reg = ModelRegistry()
    reg.register("typed", In, In)
    n = Node(typed, policy=NodePolicy(max_retries=1, backoff_base=0))
    flow = make_flow(n.to(), middlewares=[recorder])
    flow.run(registry=reg)
    bad = msg({"x": "not a number"})
    await flow.emit(bad)
    good = msg({"x": 2})
    await flow.emit(good)
    out = await fetch(flow)
    assert out.payload == In(x=2) and out.trace_id == good.trace_id
    assert calls == [In(x=2)]  # the function never saw the bad payload
    errors = recorder.matching("node_error", trace_id=bad.trace_id)
    assert len(errors) == 2
    # repr() of a pydantic ValidationError is pydantic's own message
    assert "validation error for In" in errors[0].extra["exception"]
    assert "validation error for In" in recorder.matching("node_failed")[0].extra["exception"]


async def test_timeout_does_not_cover_routing(make_flow: MakeFlow, recorder: Recorder) -> None:
    release = asyncio.Event()

    async def fast(m: Any, ctx: Context) -> Any:
        return m

    async def gate(m: Any, ctx: Context) -> Any:
        await release.wait()
        return m

    a, b = node(fast, "a", timeout_s=0.01), node(gate, "b")
    flow = make_flow(a.to(b), queue_maxsize=1, middlewares=[recorder])
    flow.run()
    for i in range(3):
        await flow.emit(i)
    # b holds item 0, the a->b edge holds item 1, a's routing of item 2 is blocked.
    await asyncio.sleep(0.05)  # deliberately longer than a's timeout
    release.set()
    assert [await fetch(flow) for _ in range(3)] == [0, 1, 2]
    assert recorder.matching("node_timeout") == []
    assert len(recorder.matching("node_success")) == 6


async def test_no_timeout_machinery_when_timeout_is_none(
    make_flow: MakeFlow, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("asyncio.timeout entered without a timeout_s")

    monkeypatch.setattr(runtime_mod, "asyncio", asyncio_proxy(timeout=forbidden))
    untimed = node(lambda_echo, "untimed")
    timed = node(lambda_echo, "timed", timeout_s=5.0)
    flow = make_flow(untimed.to(), timed.to(), middlewares=[recorder])
    flow.run()
    await flow.emit("x", to=untimed)
    assert await fetch(flow, from_=untimed) == "x"
    # control: a node with a timeout does go through asyncio.timeout
    await flow.emit("y", to=timed)
    await recorder.wait("node_failed")
    assert "asyncio.timeout entered" in recorder.matching("node_failed")[0].extra["exception"]


async def lambda_echo(m: Any, ctx: Context) -> Any:
    return m


async def test_failures_of_one_trace_never_stop_other_traces(make_flow: MakeFlow) -> None:
    async def sometimes(m: Message, ctx: Context) -> Any:
        if m.payload % 2:
            raise RuntimeError("odd")
        return m

    flow = make_flow(node(sometimes, "s").to())
    flow.run()
    for i in range(10):
        await flow.emit(msg(i))
    assert [(await fetch(flow)).payload for _ in range(5)] == [0, 2, 4, 6, 8]
    assert flow.inspect().traces == {}


async def test_errors_to_rookery_delivers_a_flow_error(make_flow: MakeFlow) -> None:
    """Opt-in: a node that gives up delivers a FlowError to Rookery instead of silence."""
    from penguiflow.errors import FlowError

    async def broken(msg: Any, ctx: Context) -> Any:
        raise ValueError("nope")

    flow = make_flow(
        node(broken, "broken", max_retries=1, backoff_base=0).to(), emit_errors_to_rookery=True
    )
    flow.run()
    message = Message(payload="x", headers=Headers(tenant="t"))
    async with flow.subscribe(message.trace_id) as results:
        await flow.emit(message)
        items = [item async for item in results]
    (error,) = items
    assert isinstance(error, FlowError)
    assert error.trace_id == message.trace_id
    assert error.node_name == "broken"
    assert error.code == "NODE_EXCEPTION"
    assert error.attempts == 2
    assert isinstance(error.original, ValueError)
    assert results.done == "drained"


async def test_errors_to_rookery_reports_timeouts(make_flow: MakeFlow) -> None:
    from penguiflow.errors import FlowError

    async def hang(msg: Any, ctx: Context) -> Any:
        await asyncio.Event().wait()

    flow = make_flow(node(hang, "hang", timeout_s=0.01).to(), emit_errors_to_rookery=True)
    flow.run()
    await flow.emit(Message(payload="x", headers=Headers(tenant="t")))
    error = await fetch(flow)
    assert isinstance(error, FlowError)
    assert error.code == "NODE_TIMEOUT"
    assert error.attempts == 1


async def test_errors_stay_silent_by_default(make_flow: MakeFlow, recorder: Recorder) -> None:
    async def broken(msg: Any, ctx: Context) -> Any:
        raise ValueError("nope")

    flow = make_flow(node(broken, "broken").to(), middlewares=[recorder])
    flow.run()
    await flow.emit(Message(payload="x", headers=Headers(tenant="t")))
    await recorder.wait("node_failed")
    assert flow.inspect().edges[-1].depth == 0  # nothing reached Rookery
