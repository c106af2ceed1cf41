"""Retry hygiene: which failures retry, jittered backoff, a per-request retry budget, and
keys that make side effects idempotent."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.core import Context
from penguiflow.errors import FlowBuildError, FlowError, FlowTypeError
from penguiflow.node import Node, NodePolicy
from penguiflow.types import Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow
    from penguiflow.testing import Recorder

# Timing-dependent: on the test kit's virtual clock when penguiflow-testing is installed.
pytestmark = pytest.mark.usefixtures("virtual_clock")


def msg(payload: Any = "p") -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"))


def node(func: Any, name: str, **policy: Any) -> Node:
    return Node(func, name=name, policy=NodePolicy(validate="none", **policy))


async def test_retry_on_types_retries_only_those(make_flow: MakeFlow) -> None:
    calls: list[str] = []

    async def flaky(m: Message, ctx: Context) -> Message:
        calls.append(m.payload)
        if m.payload == "value":
            raise ValueError("not worth retrying")
        if len(calls) < 3:
            raise ConnectionError("try again")
        return m

    policy: dict[str, Any] = {
        "max_retries": 5,
        "backoff_base": 0.01,
        "retry_on": (ConnectionError,),
    }
    flow = make_flow(node(flaky, "call", **policy).to())
    flow.run()
    assert (await flow.invoke(msg("conn"), timeout=5, expect=Message)).payload == "conn"
    assert calls == ["conn"] * 3
    calls.clear()
    with pytest.raises(FlowError) as info:
        await flow.invoke(msg("value"), timeout=5)
    assert calls == ["value"]  # failed at once
    assert info.value.attempts == 1 and isinstance(info.value.__cause__, ValueError)


async def test_retry_on_predicate(make_flow: MakeFlow) -> None:
    attempts: list[int] = []

    async def status(m: Message, ctx: Context) -> Message:
        attempts.append(ctx.attempt)
        raise RuntimeError("503" if ctx.attempt < 3 else "404")

    flow = make_flow(
        node(
            status, "http", max_retries=9, backoff_base=0.01, retry_on=lambda e: "503" in str(e)
        ).to()
    )
    flow.run()
    with pytest.raises(FlowError, match="404"):
        await flow.invoke(msg(), timeout=5)
    assert attempts == [1, 2, 3]


@pytest.mark.parametrize("jitter", [0.5, 1.0])
async def test_jitter_keeps_each_backoff_within_its_bounds(
    make_flow: MakeFlow, recorder: Recorder, jitter: float
) -> None:
    state = random.getstate()

    async def always(m: Message, ctx: Context) -> Message:
        raise ConnectionError("down")

    policy = NodePolicy(
        validate="none", max_retries=6, backoff_base=1.0, backoff_mult=2.0, jitter=jitter
    )
    flow = make_flow(Node(always, name="n", policy=policy).to(), middlewares=[recorder])
    flow.run()
    with pytest.raises(FlowError):
        await flow.invoke(msg(), timeout=1000)
    sleeps = [e.extra["sleep_s"] for e in recorder.matching("node_retry")]
    assert len(sleeps) == 6
    for attempt, slept in enumerate(sleeps, start=1):
        full = policy.backoff(attempt)
        assert full * (1 - jitter) <= slept <= full
    assert len(set(sleeps)) == 6  # randomised, not the exact schedule
    assert random.getstate() == state  # the global random module was not touched


def test_jitter_outside_zero_to_one_names_the_field() -> None:
    with pytest.raises(FlowBuildError, match="jitter must be a fraction between 0 and 1"):
        NodePolicy(jitter=1.5)


def test_retry_on_needs_exception_types() -> None:
    with pytest.raises(FlowTypeError, match="retry_on must hold exception types"):
        NodePolicy(retry_on=(ValueError, "oops"))  # type: ignore[arg-type]  # wrong on purpose


async def test_the_retry_budget_spans_every_node_of_a_request(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    calls: dict[str, int] = {"a": 0, "b": 0}

    def flaky(name: str, failures: int) -> Any:
        async def run(m: Message, ctx: Context) -> Message:
            calls[name] += 1
            if calls[name] <= failures:
                raise ConnectionError(name)
            return m

        return run

    a = node(flaky("a", 2), "a", max_retries=5, backoff_base=0.01)
    b = node(flaky("b", 5), "b", max_retries=5, backoff_base=0.01)
    flow = make_flow(a.to(b), b.to(), retry_budget=3, middlewares=[recorder])
    flow.run()
    with pytest.raises(FlowError) as info:
        await flow.invoke(msg(), timeout=100)
    assert info.value.code == "RETRY_BUDGET"
    assert info.value.node_name == "b"
    assert calls == {"a": 3, "b": 2}  # a spent 2 retries, b the last one
    [spent] = recorder.matching("budget_exhausted")
    assert spent.extra["budget"] == "retries" and spent.extra["limit"] == 3
    # Another request has its own budget.
    calls.update(a=0, b=0)
    with pytest.raises(FlowError):
        await flow.invoke(msg(), timeout=100)
    assert calls == {"a": 3, "b": 2}


def test_a_negative_retry_budget_is_refused(make_flow: MakeFlow) -> None:
    with pytest.raises(FlowBuildError, match="retry_budget"):
        make_flow(node(asyncio.sleep, "n").to(), retry_budget=-1)


async def test_idempotency_keys_are_stable_per_item_and_node(make_flow: MakeFlow) -> None:
    seen: list[tuple[str, str, int]] = []

    def record(name: str) -> Any:
        async def run(m: Message, ctx: Context) -> Message:
            seen.append((name, ctx.idempotency_key, ctx.attempt))
            if name == "a" and ctx.attempt == 1:
                raise ConnectionError("once")
            return m

        return run

    a = node(record("a"), "a", max_retries=1, backoff_base=0.01)
    b = node(record("b"), "b")
    flow = make_flow(a.to(b), b.to())
    flow.run()
    first, second = msg("x"), msg("x")
    await flow.invoke(first, timeout=5)
    await flow.invoke(second, timeout=5)
    (a1, ka1, n1), (a2, ka2, n2), (b1, kb1, _), (_, ka3, _), (_, ka4, _), (_, kb2, _) = seen
    assert b1 == "b"
    assert (a1, n1, a2, n2) == ("a", 1, "a", 2)
    assert ka1 == ka2  # the same item's retries share the key
    assert kb1 != ka1  # another node
    assert ka3 == ka4 != ka1 and kb2 != kb1  # another request
    assert len(ka1) == 32
    # The key depends only on the trace, the node and the content: recomputed elsewhere
    # (another process redelivering the same request) it comes out the same.
    again: list[str] = []

    async def peek(m: Message, ctx: Context) -> Message:
        again.append(ctx.idempotency_key)
        return m

    other = make_flow(node(peek, "a").to())
    other.run()
    await other.invoke(first, timeout=5)
    assert again == [ka1]


async def test_a_controller_hop_budget_reports_budget_exhausted(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    from penguiflow.types import WM, FinalAnswer

    async def ctrl(m: Message, ctx: Context) -> Message:
        return m  # loops until the runtime ends it on the budget

    c = Node(ctrl, name="ctrl", allow_cycle=True, policy=NodePolicy(validate="none"))
    flow = make_flow(c.to(c), middlewares=[recorder])
    flow.run()
    out = await flow.invoke(msg(WM(query="q", budget_hops=3)), timeout=5, expect=Message)
    assert out.payload == FinalAnswer(text="Hop budget exhausted")
    [spent] = recorder.matching("budget_exhausted")
    assert (spent.node_name, spent.extra["budget"], spent.extra["limit"]) == ("ctrl", "hops", 3)
