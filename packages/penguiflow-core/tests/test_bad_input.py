"""Bad input: every misuse fails early, one misuse per test, with the culprit named."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from penguiflow.core import Context, CycleError, PenguiFlow, TraceCancelled, create
from penguiflow.errors import (
    FlowBuildError,
    FlowNotRunningError,
    FlowRuntimeError,
    FlowStoppedError,
    MissingExtraError,
    PenguiFlowError,
)
from penguiflow.node import Node, NodePolicy
from penguiflow.registry import ModelRegistry
from penguiflow.types import Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow
    from penguiflow.testing import Recorder


def node(fn: Any, name: str, **policy: Any) -> Node:
    return Node(fn, name=name, policy=NodePolicy(**{"validate": "none", **policy}))


def msg(payload: Any = "p") -> Message:
    return Message(payload=payload, headers=Headers(tenant="acme"))


async def echo(m: Any, ctx: Context) -> Any:
    return m


def test_exception_tree() -> None:
    assert issubclass(FlowBuildError, PenguiFlowError) and issubclass(FlowBuildError, ValueError)
    assert issubclass(CycleError, FlowBuildError) and issubclass(CycleError, RuntimeError)
    assert issubclass(FlowRuntimeError, PenguiFlowError)
    assert issubclass(FlowRuntimeError, RuntimeError)
    assert issubclass(FlowNotRunningError, FlowRuntimeError)
    assert issubclass(FlowStoppedError, FlowRuntimeError)
    assert issubclass(TraceCancelled, PenguiFlowError)
    assert not issubclass(TraceCancelled, asyncio.CancelledError)
    assert issubclass(MissingExtraError, ImportError)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"timeout_s": -1.0}, "timeout_s"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": -2}, "max_concurrency"),
        ({"backoff_base": -0.1}, "backoff"),
        ({"backoff_mult": -2.0}, "backoff"),
        ({"max_backoff": -1.0}, "max_backoff"),
        ({"validate": "sometimes"}, "validate must be one of"),
    ],
)
def test_bad_policies_fail_at_construction(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        NodePolicy(**kwargs)


def test_sync_function_fails_at_construction() -> None:
    def sync(m: Any, ctx: Context) -> Any:
        return m

    with pytest.raises(TypeError, match="async def"):
        Node(sync)


def test_wrong_arity_fails_at_construction_naming_the_node() -> None:
    async def one(m: Any) -> Any:
        return m

    with pytest.raises(ValueError, match="Node 'one'"):
        Node(one)  # type: ignore[arg-type]  # one parameter, on purpose


def test_duplicate_node_names_are_rejected_naming_the_node() -> None:
    a1, a2 = node(echo, "dup"), node(echo, "dup")
    with pytest.raises(FlowBuildError, match="dup"):
        create(a1.to(a2))


def test_cycle_error_names_the_nodes_at_fault() -> None:
    a, b, c = node(echo, "alpha"), node(echo, "beta"), node(echo, "gamma")
    with pytest.raises(CycleError) as info:
        create(a.to(b), b.to(c), c.to(b))
    text = str(info.value)
    assert "Flow contains a cycle; enable allow_cycles to bypass" in text
    assert "beta" in text and "gamma" in text


@pytest.mark.parametrize(
    "adjacency",
    [
        "not-an-adjacency",
        ("only-one",),
        ("a", ()),
    ],
)
def test_malformed_adjacencies_fail_at_construction(adjacency: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        create(adjacency)


def test_non_node_successor_is_named() -> None:
    a = node(echo, "a")
    with pytest.raises((TypeError, ValueError), match="a"):
        create((a, ["oops"]))  # type: ignore[list-item]  # a str successor, on purpose


def test_bad_queue_maxsize() -> None:
    with pytest.raises((TypeError, ValueError)):
        create(node(echo, "a").to(), queue_maxsize="big")  # type: ignore[arg-type]  # on purpose


def test_non_callable_middleware() -> None:
    with pytest.raises((TypeError, ValueError)):
        create(node(echo, "a").to(), middlewares=[42])  # type: ignore[list-item]  # on purpose


async def test_registry_missing_a_validating_node_fails_at_run(make_flow: MakeFlow) -> None:
    class M(BaseModel):
        v: int

    typed = Node(echo, name="typed")
    flow = make_flow(typed.to())
    with pytest.raises(RuntimeError, match="typed"):
        flow.run(registry=ModelRegistry())
    assert not flow.is_running


async def _emit(flow: PenguiFlow) -> None:
    await flow.emit(msg())


async def _emit_nowait(flow: PenguiFlow) -> None:
    flow.emit_nowait(msg())


async def _emit_chunk(flow: PenguiFlow) -> None:
    await flow.emit_chunk(parent=msg(), text="x")


@pytest.mark.parametrize("send", [_emit, _emit_nowait, _emit_chunk])
async def test_sending_after_stop_fails(
    make_flow: MakeFlow, send: Callable[[PenguiFlow], Awaitable[None]]
) -> None:
    flow = make_flow(node(echo, "a").to())
    flow.run()
    await flow.stop()
    with pytest.raises(FlowStoppedError):
        await send(flow)


async def test_a_stopped_flow_accepts_items_once_run_again(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    flow.run()
    await flow.stop()
    flow.run()  # a stopped flow may run again
    m = msg()
    await flow.emit(m)
    assert await asyncio.wait_for(flow.fetch(), 1.0) is m


async def test_cancel_on_a_stopped_flow(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    with pytest.raises(FlowNotRunningError, match="PenguiFlow is not running"):
        await flow.cancel("t")


async def test_invalid_payload_becomes_events_and_other_traces_are_served(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    class In(BaseModel):
        x: int

    async def typed(m: In, ctx: Context) -> In:
        return m

    reg = ModelRegistry()
    reg.register("typed", In, In)
    flow = make_flow(Node(typed).to(), middlewares=[recorder])
    flow.run(registry=reg)
    bad, good = msg({"x": "nope"}), msg({"x": 1})
    await flow.emit(bad)
    await flow.emit(good)
    out = await asyncio.wait_for(flow.fetch(), 1.0)
    assert out.trace_id == good.trace_id
    errors = recorder.matching("node_error", trace_id=bad.trace_id)
    failed = recorder.matching("node_failed", trace_id=bad.trace_id)
    assert len(errors) == 1 and len(failed) == 1
    assert "validation error" in failed[0].extra["exception"]
    assert "x" in failed[0].extra["exception"]


async def test_nothing_is_dropped_without_an_event(make_flow: MakeFlow, recorder: Recorder) -> None:
    async def boom(m: Any, ctx: Context) -> Any:
        raise KeyError("lost")

    flow = make_flow(node(boom, "b").to(), middlewares=[recorder])
    flow.run()
    m = msg()
    await flow.emit(m)
    failed = await recorder.wait("node_failed", trace_id=m.trace_id)
    assert "KeyError" in failed.extra["exception"]


async def test_emit_to_a_node_of_another_flow(make_flow: MakeFlow) -> None:
    other = node(echo, "a2")
    flow = make_flow(node(echo, "a").to())
    with pytest.raises(KeyError, match="Unknown target a2 for OpenSea"):
        await flow.emit(msg(), to=other)


async def test_emit_to_a_node_name_instead_of_a_node(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    with pytest.raises(KeyError, match="Unknown target"):
        await flow.emit(msg(), to=["a"])  # type: ignore[list-item]  # a name, on purpose
