"""Names, ``Floe``/``Endpoint`` and building the graph, all without an event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any

import pytest

import penguiflow.core as core
from penguiflow.core import (
    BUDGET_EXCEEDED_TEXT,
    DEADLINE_EXCEEDED_TEXT,
    DEFAULT_QUEUE_MAXSIZE,
    OPEN_SEA,
    ROOKERY,
    TOKEN_BUDGET_EXCEEDED_TEXT,
    Context,
    CycleError,
    Endpoint,
    Floe,
    PenguiFlow,
    TraceCancelled,
    create,
)
from penguiflow.metrics import FlowEvent
from penguiflow.node import Node, NodePolicy

CYCLE_MSG = "Flow contains a cycle; enable allow_cycles to bypass"


async def _fn(msg: Any, ctx: Context) -> Any:
    return msg


def node(name: str, *, allow_cycle: bool = False) -> Node:
    return Node(_fn, name=name, policy=NodePolicy(validate="none"), allow_cycle=allow_cycle)


def edges(flow: PenguiFlow) -> set[tuple[str, str]]:
    return {(f.source.name, f.target.name) for f in flow.floes}


# -- names --------------------------------------------------------------------------------


def test_core_constants_and_all() -> None:
    assert DEFAULT_QUEUE_MAXSIZE == 64
    assert DEADLINE_EXCEEDED_TEXT == "Deadline exceeded"
    assert BUDGET_EXCEEDED_TEXT == "Hop budget exhausted"
    assert TOKEN_BUDGET_EXCEEDED_TEXT == "Token budget exhausted"
    assert set(core.__all__) == {
        "Context",
        "Floe",
        "PenguiFlow",
        "CycleError",
        "call_playbook",
        "create",
        "DEFAULT_QUEUE_MAXSIZE",
    }
    for name in ("PlaybookFactory", "Endpoint", "OPEN_SEA", "ROOKERY", "TraceCancelled"):
        assert hasattr(core, name)


def test_cycle_error_and_trace_cancelled_types() -> None:
    assert issubclass(CycleError, RuntimeError)
    exc = TraceCancelled("abc")
    assert isinstance(exc, Exception)
    assert not isinstance(exc, asyncio.CancelledError)  # an error, never a cancellation
    assert exc.trace_id == "abc"
    assert str(exc) == "trace cancelled: abc"
    assert str(TraceCancelled(None)) == "trace cancelled: None"


def test_endpoints_are_frozen_hashable_value_objects() -> None:
    assert Endpoint("OpenSea") == OPEN_SEA
    assert Endpoint("Rookery") == ROOKERY
    assert OPEN_SEA != ROOKERY
    assert hash(Endpoint("OpenSea")) == hash(OPEN_SEA)
    assert {OPEN_SEA: 1}[Endpoint("OpenSea")] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        OPEN_SEA.name = "x"  # type: ignore[misc]


def test_floe_attributes() -> None:
    a, b = node("a"), node("b")
    floe = Floe(a, b, maxsize=3)
    assert floe.source is a and floe.target is b
    assert floe.queue.maxsize == 3
    assert floe.queue.qsize() == 0
    assert floe.queue.empty()


# -- create -------------------------------------------------------------------------------


def test_create_is_penguiflow_and_needs_no_event_loop() -> None:
    a, b = node("a"), node("b")
    flow = create(a.to(b), queue_maxsize=5)
    assert isinstance(flow, PenguiFlow)
    assert flow.queue_maxsize == 5
    assert not flow.is_running
    assert flow.registry is None
    same = PenguiFlow(a.to(b), queue_maxsize=5)
    assert edges(same) == edges(flow)


def test_a_flow_reports_the_settings_it_was_built_with() -> None:
    async def mw(event: FlowEvent) -> None:
        pass

    a = node("a")
    plain = create(a.to())
    assert (plain.middlewares, plain.retry_budget, plain.emit_errors_to_rookery) == (
        (),
        None,
        False,
    )
    flow = create(a.to(), middlewares=[mw], retry_budget=3, emit_errors_to_rookery=True)
    assert (flow.middlewares, flow.retry_budget, flow.emit_errors_to_rookery) == (
        (mw,),
        3,
        True,
    )
    flow.remove_middleware(mw)
    assert flow.middlewares == ()


def test_create_rejects_unknown_keyword() -> None:
    with pytest.raises(TypeError):
        create(node("a").to(), bogus=True)  # type: ignore[call-arg]  # on purpose
    with pytest.raises(TypeError):
        PenguiFlow(node("a").to(), bogus=True)  # type: ignore[call-arg]


def test_linear_graph_edges_ingress_and_egress() -> None:
    a, b, c = node("a"), node("b"), node("c")
    flow = create(a.to(b), b.to(c))
    assert flow.nodes == (a, b, c)
    assert [(f.source.name, f.target.name) for f in flow.floes] == [
        ("OpenSea", "a"),
        ("a", "b"),
        ("b", "c"),
        ("c", "Rookery"),
    ]
    assert all(f.queue.maxsize == DEFAULT_QUEUE_MAXSIZE for f in flow.floes)
    assert flow.successors(a) == (b,)
    assert flow.successors(c) == (ROOKERY,)
    assert flow.predecessors(a) == (OPEN_SEA,)
    assert flow.predecessors(c) == (b,)


def test_nodes_appear_as_start_or_successor_and_duplicate_edges_collapse() -> None:
    a, b, c = node("a"), node("b"), node("c")
    flow = create(a.to(b, b, c), a.to(b), c.to())
    assert set(flow.nodes) == {a, b, c}
    assert edges(flow) == {
        ("OpenSea", "a"),
        ("a", "b"),
        ("a", "c"),
        ("b", "Rookery"),
        ("c", "Rookery"),
    }
    assert len(flow.floes) == 5


def test_isolated_node_is_both_ingress_and_egress() -> None:
    a = node("a")
    flow = create(a.to())
    assert edges(flow) == {("OpenSea", "a"), ("a", "Rookery")}


def test_diamond_has_single_ingress_and_egress() -> None:
    a, b, c, d = node("a"), node("b"), node("c"), node("d")
    flow = create(a.to(b, c), b.to(d), c.to(d))
    assert [f.target.name for f in flow.floes if f.source == OPEN_SEA] == ["a"]
    assert [f.source.name for f in flow.floes if f.target == ROOKERY] == ["d"]


def test_floes_order_is_ingress_internal_egress() -> None:
    a, b, c, d = node("a"), node("b"), node("c"), node("d")
    flow = create(c.to(d), a.to(b), b.to(d))
    names = [(f.source.name, f.target.name) for f in flow.floes]
    assert names == [
        ("OpenSea", "c"),
        ("OpenSea", "a"),
        ("c", "d"),
        ("a", "b"),
        ("b", "d"),
        ("d", "Rookery"),
    ]


def test_contexts_exist_for_nodes_and_endpoints() -> None:
    a, b = node("a"), node("b")
    flow = create(a.to(b))
    for owner in (a, b, OPEN_SEA, ROOKERY):
        ctx = flow.context(owner)
        assert isinstance(ctx, Context)
        assert ctx.owner == owner
        assert ctx.runtime is flow
    assert flow.context(OPEN_SEA).outgoing_count() == 1
    assert flow.context(ROOKERY).outgoing_count() == 0
    assert flow.context(a).outgoing_count() == 1
    with pytest.raises(KeyError):
        flow.context(node("stranger"))


# -- cycles -------------------------------------------------------------------------------


def test_two_node_cycle_raises_cycle_error() -> None:
    a, b = node("a"), node("b")
    with pytest.raises(CycleError, match=re.escape(CYCLE_MSG)):
        create(a.to(b), b.to(a))


def test_allow_cycle_never_allows_a_multi_node_cycle() -> None:
    a, b = node("a", allow_cycle=True), node("b", allow_cycle=True)
    with pytest.raises(CycleError, match=re.escape(CYCLE_MSG)):
        create(a.to(b), b.to(a))


def test_self_loop_without_allow_cycle_is_a_cycle() -> None:
    a = node("a")
    with pytest.raises(CycleError, match=re.escape(CYCLE_MSG)):
        create(a.to(a))


def test_self_loop_with_allow_cycle_is_a_controller() -> None:
    c = node("c", allow_cycle=True)
    flow = create(c.to(c))
    # the self-edge does not count as incoming (ingress) and {itself} means egress
    assert edges(flow) == {("OpenSea", "c"), ("c", "c"), ("c", "Rookery")}


def test_self_edge_plus_other_successors_has_no_rookery_edge() -> None:
    c, s = node("c", allow_cycle=True), node("s")
    flow = create(c.to(c, s))
    assert edges(flow) == {("OpenSea", "c"), ("c", "c"), ("c", "s"), ("s", "Rookery")}


def test_allow_cycles_skips_the_check_entirely() -> None:
    a, b = node("a"), node("b")
    flow = create(a.to(b), b.to(a), allow_cycles=True)
    # a pure cycle: no ingress and no egress
    assert edges(flow) == {("a", "b"), ("b", "a")}


def test_self_edge_without_allow_cycle_counts_as_incoming_under_allow_cycles() -> None:
    a = node("a")
    flow = create(a.to(a), allow_cycles=True)
    assert edges(flow) == {("a", "a"), ("a", "Rookery")}


def test_cycle_check_finds_deep_cycles() -> None:
    ns = [node(f"n{i}") for i in range(6)]
    adj = [ns[i].to(ns[i + 1]) for i in range(5)]
    create(*adj)  # a chain is fine
    with pytest.raises(CycleError):
        create(*adj, ns[5].to(ns[2]))


# -- queue sizes --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, -1])
def test_non_positive_queue_maxsize_means_unbounded(size: int) -> None:
    a = node("a")
    flow = create(a.to(), queue_maxsize=size)
    assert all(not f.queue.full() for f in flow.floes)
    assert flow.queue_maxsize == size
