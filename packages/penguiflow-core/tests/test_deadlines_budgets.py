"""Deadlines and budgets end a trace with one FinalAnswer. Wall time is faked via the clock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from penguiflow.clock import use_wall_clock
from penguiflow.core import Context, PenguiFlow
from penguiflow.node import Node, NodePolicy
from penguiflow.types import FinalAnswer, Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow
    from penguiflow.testing import Recorder

# Timing-dependent: on the test kit's virtual clock when penguiflow-testing is installed.
pytestmark = pytest.mark.usefixtures("virtual_clock")


def node(fn: Any, name: str, **policy: Any) -> Node:
    return Node(fn, name=name, policy=NodePolicy(**{"validate": "none", **policy}))


def msg(payload: Any, **kw: Any) -> Message:
    return Message(payload=payload, headers=Headers(tenant="t", topic="x"), **kw)


async def fetch(flow: PenguiFlow, **kw: Any) -> Any:
    return await asyncio.wait_for(flow.fetch(**kw), 1.0)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Iterator[Clock]:
    fake = Clock(1000.0)
    with use_wall_clock(fake):
        yield fake


async def test_expired_message_short_circuits_to_rookery(
    make_flow: MakeFlow, recorder: Recorder, clock: Clock
) -> None:
    calls: list[Any] = []

    async def work(m: Any, ctx: Context) -> Any:
        calls.append(m)
        return m

    a, b = node(work, "a"), node(work, "b")
    flow = make_flow(a.to(b), middlewares=[recorder])
    flow.run()
    m = msg("p", deadline_s=999.0, meta={"k": 1}, ts=5.0)
    await flow.emit(m)
    out = await fetch(flow)
    assert calls == []
    assert out.payload == FinalAnswer(text="Deadline exceeded", citations=[])
    assert (out.trace_id, out.headers, out.meta, out.deadline_s, out.ts) == (
        m.trace_id,
        m.headers,
        {"k": 1},
        999.0,
        5.0,
    )
    assert m.payload == "p"  # a copy: the original is untouched
    skip = recorder.matching("deadline_skip")
    assert [(e.node_name, e.attempt, e.latency_ms, dict(e.extra)) for e in skip] == [
        ("a", 0, None, {"deadline_s": 999.0})
    ]
    assert recorder.matching("node_start") == []
    assert flow.inspect().traces == {}


async def test_deadline_check_is_strict(make_flow: MakeFlow, clock: Clock) -> None:
    async def work(m: Any, ctx: Context) -> Any:
        return m

    flow = make_flow(node(work, "a").to())
    flow.run()
    at_deadline = msg("on-time", deadline_s=1000.0)
    await flow.emit(at_deadline)
    assert (await fetch(flow)).payload == "on-time"  # now == deadline: not expired
    clock.now = 1000.001
    late = msg("late", deadline_s=1000.0)
    await flow.emit(late)
    assert (await fetch(flow)).payload.text == "Deadline exceeded"
    await flow.emit(msg("no-limit", deadline_s=None))
    assert (await fetch(flow)).payload == "no-limit"


async def test_deadlines_are_ignored_for_bare_payloads(make_flow: MakeFlow, clock: Clock) -> None:
    class Bare(BaseModel):
        deadline_s: float

    async def work(m: Any, ctx: Context) -> Any:
        return ("done", m)

    flow = make_flow(node(work, "a").to())
    flow.run()
    bare = Bare(deadline_s=1.0)
    await flow.emit(bare)
    assert await fetch(flow) == ("done", bare)


async def test_expired_final_answer_is_forwarded_unchanged(
    make_flow: MakeFlow, recorder: Recorder, clock: Clock
) -> None:
    async def work(m: Any, ctx: Context) -> Any:
        raise AssertionError("must not run")

    flow = make_flow(node(work, "a").to(), middlewares=[recorder])
    flow.run()
    m = msg(FinalAnswer(text="already"), deadline_s=1.0)
    await flow.emit(m)
    assert await fetch(flow) is m
    assert len(recorder.matching("deadline_skip")) == 1


async def test_no_retry_starts_past_the_deadline(
    make_flow: MakeFlow, recorder: Recorder, clock: Clock
) -> None:
    calls: list[int] = []

    async def flaky(m: Any, ctx: Context) -> Any:
        calls.append(1)
        if len(calls) == 1:
            clock.now = 5000.0  # the deadline passes during the first attempt
            raise RuntimeError("once")
        return m

    flow = make_flow(node(flaky, "a", max_retries=1, backoff_base=0).to(), middlewares=[recorder])
    flow.run()
    m = msg("p", deadline_s=2000.0)
    await flow.emit(m)
    answer = await fetch(flow)
    assert answer.trace_id == m.trace_id
    assert answer.payload == FinalAnswer(text="Deadline exceeded")
    assert calls == [1]  # the retry would have started past the deadline
    assert len(recorder.matching("deadline_skip")) == 1


async def test_deadline_never_interrupts_a_running_node(
    make_flow: MakeFlow, recorder: Recorder, clock: Clock
) -> None:
    async def first(m: Message, ctx: Context) -> Any:
        clock.now = 5000.0
        return m.model_copy(update={"payload": "first-done"})

    async def second(m: Any, ctx: Context) -> Any:
        raise AssertionError("expired before the second node")

    a, b = node(first, "a"), node(second, "b")
    flow = make_flow(a.to(b), middlewares=[recorder])
    flow.run()
    await flow.emit(msg("p", deadline_s=2000.0))
    out = await fetch(flow)
    assert out.payload.text == "Deadline exceeded"
    assert [e.node_name for e in recorder.matching("node_success")] == ["a"]
    assert [e.node_name for e in recorder.matching("deadline_skip")] == ["b"]


async def test_one_deadline_answer_per_trace_on_fan_out(
    make_flow: MakeFlow, recorder: Recorder, clock: Clock
) -> None:
    """Once a trace's deadline has passed, its later items are dropped with deadline_skip."""

    async def split(m: Message, ctx: Context) -> Any:
        clock.now = 5000.0
        return m

    async def branch(m: Any, ctx: Context) -> Any:
        raise AssertionError("expired")

    a, b, c = node(split, "a"), node(branch, "b"), node(branch, "c")
    flow = make_flow(a.to(b, c), middlewares=[recorder])
    flow.run()
    m = msg("p", deadline_s=2000.0)
    await flow.emit(m)
    out = await fetch(flow)
    assert out.payload.text == "Deadline exceeded"
    await recorder.wait("deadline_skip", count=2)
    assert sorted(str(e.node_name) for e in recorder.matching("deadline_skip")) == ["b", "c"]
    assert flow.inspect().traces == {}
    assert all(f.queue.qsize() == 0 for f in flow.floes)


async def test_far_future_deadline_lets_everything_through(
    make_flow: MakeFlow, recorder: Recorder, clock: Clock
) -> None:
    async def work(m: Any, ctx: Context) -> Any:
        return m

    flow = make_flow(node(work, "a").to(), middlewares=[recorder])
    flow.run()
    m = msg("p", deadline_s=clock.now + 10**9)
    await flow.emit(m)
    assert await fetch(flow) is m
    assert recorder.matching("deadline_skip") == []
