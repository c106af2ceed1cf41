"""predicate_router: payload and header routing, True/False decisions, mappings, errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.core import Context, PenguiFlow, create
from penguiflow.errors import FlowBuildError, FlowError
from penguiflow.node import Node
from penguiflow.patterns import predicate_router

if TYPE_CHECKING:
    from conftest import Kit, LogCatcher
    from penguiflow.testing import Recorder


def sink(name: str) -> Node:
    async def record(item: Any, ctx: Context) -> tuple[str, Any]:
        return (name, item)

    return Node(record, name=name)


def start(
    flow: PenguiFlow, running: list[PenguiFlow], recorder: Recorder | None = None
) -> PenguiFlow:
    if recorder is not None:
        flow.add_middleware(recorder)
    flow.run()
    running.append(flow)
    return flow


async def drain(flow: PenguiFlow, n: int, kit: type[Kit]) -> list[tuple[str, Any]]:
    return [await kit.fetch(flow) for _ in range(n)]


async def test_routes_on_payload_by_name(running: list[PenguiFlow], kit: type[Kit]) -> None:
    small, big = sink("small"), sink("big")
    router = predicate_router("size", lambda m: "big" if m.payload > 10 else "small")
    flow = start(create(router.to(small, big)), running)
    a, b = kit.message(3), kit.message(30)
    await flow.emit(a)
    await flow.emit(b)
    got = dict(await drain(flow, 2, kit))
    assert got["small"] is a  # forwarded unchanged: the very same object
    assert got["big"] is b
    kit.assert_clean(flow)


async def test_routes_on_headers(running: list[PenguiFlow], kit: type[Kit]) -> None:
    billing, support = sink("billing"), sink("support")
    router = predicate_router("topic", lambda m: m.headers.topic)
    flow = start(create(router.to(billing, support)), running)
    await flow.emit(kit.message("x", headers={"topic": "support"}))
    name, item = await kit.fetch(flow)
    assert name == "support"
    assert item.headers.topic == "support"


async def test_routes_bare_payloads(running: list[PenguiFlow], kit: type[Kit]) -> None:
    even, odd = sink("even"), sink("odd")
    router = predicate_router("parity", lambda n: "even" if n % 2 == 0 else "odd")
    flow = start(create(router.to(even, odd)), running)
    for n in range(4):
        await flow.emit(n)
    got = sorted(await drain(flow, 4, kit))
    assert got == [("even", 0), ("even", 2), ("odd", 1), ("odd", 3)]


async def test_node_targets_and_order_and_repeats(
    running: list[PenguiFlow], kit: type[Kit]
) -> None:
    a, b = sink("a"), sink("b")
    router = predicate_router("multi", lambda m: [b, "a", "b"])
    flow = start(create(router.to(a, b)), running)
    await flow.emit(kit.message(1))
    got = sorted(name for name, _ in await drain(flow, 3, kit))
    assert got == ["a", "b", "b"]
    kit.assert_clean(flow)


async def test_generator_decision(running: list[PenguiFlow], kit: type[Kit]) -> None:
    a, b = sink("a"), sink("b")
    router = predicate_router("gen", lambda m: (n for n in ("a", "b") if n in m.payload))
    flow = start(create(router.to(a, b)), running)
    await flow.emit(kit.message("ab"))
    assert sorted(n for n, _ in await drain(flow, 2, kit)) == ["a", "b"]


@pytest.mark.parametrize("decision", [None, False, [], ()])
async def test_drop_decisions(
    decision: Any, running: list[PenguiFlow], kit: type[Kit], recorder: Recorder, logs: LogCatcher
) -> None:
    a = sink("a")
    router = predicate_router("gate", lambda m: decision)
    flow = start(create(router.to(a)), running, recorder)
    msg = kit.message(1)
    await flow.emit(msg)
    await recorder.wait("node_success", "gate", msg.trace_id)
    assert recorder.matching("node_error") == []
    assert kit.rookery_depth(flow) == 0
    record = await logs.wait("router_drop")
    assert record.node_name == "gate"
    assert record.trace_id == msg.trace_id
    assert record.reason == f"predicate returned {decision!r}"
    kit.assert_clean(flow)


async def test_true_goes_to_every_successor(running: list[PenguiFlow], kit: type[Kit]) -> None:
    a, b, c = sink("a"), sink("b"), sink("c")
    router = predicate_router("all", lambda m: True)
    flow = start(create(router.to(a, b, c)), running)
    await flow.emit(kit.message(1))
    assert sorted(n for n, _ in await drain(flow, 3, kit)) == ["a", "b", "c"]


async def test_true_on_an_egress_router_reaches_rookery(
    running: list[PenguiFlow], kit: type[Kit]
) -> None:
    router = predicate_router("pass", lambda m: True)
    flow = start(create(router.to()), running)
    msg = kit.message(1)
    await flow.emit(msg)
    assert await kit.fetch(flow) is msg


async def test_unknown_name_is_a_node_error_naming_the_router(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder
) -> None:
    a = sink("a")
    router = predicate_router("picky", lambda m: "nope")
    flow = start(create(router.to(a)), running, recorder)
    msg = kit.message(1)
    await flow.emit(msg)
    failed = await recorder.wait("node_failed", "picky", msg.trace_id)
    text = failed.extra["exception"]
    assert "No successor named 'nope'" in text
    assert "predicate_router 'picky'" in text
    assert "'a'" in text
    assert recorder.matching("node_error", "picky")
    kit.assert_clean(flow)


async def test_node_not_a_successor_is_an_error(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder
) -> None:
    a, stranger = sink("a"), sink("stranger")
    router = predicate_router("r", lambda m: stranger)
    flow = start(create(router.to(a)), running, recorder)
    await flow.emit(kit.message(1))
    failed = await recorder.wait("node_failed", "r")
    assert "Unknown target stranger for r" in failed.extra["exception"]


@pytest.mark.parametrize("decision", [42, 1.5, [1], ["a", object()]])
async def test_bad_decision_type_is_a_type_error(
    decision: Any, running: list[PenguiFlow], kit: type[Kit], recorder: Recorder
) -> None:
    a = sink("a")
    router = predicate_router("typed", lambda m: decision)
    flow = start(create(router.to(a)), running, recorder)
    await flow.emit(kit.message(1))
    failed = await recorder.wait("node_failed", "typed")
    assert "TypeError" in failed.extra["exception"]
    assert "Targets must be Node or str" in failed.extra["exception"]
    assert kit.rookery_depth(flow) == 0  # nothing half-routed


async def test_partial_bad_list_routes_nothing(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder
) -> None:
    a = sink("a")
    router = predicate_router("half", lambda m: ["a", "missing"])
    flow = start(create(router.to(a)), running, recorder)
    await flow.emit(kit.message(1))
    await recorder.wait("node_failed", "half")
    assert kit.rookery_depth(flow) == 0


async def test_predicate_exception_is_a_node_error(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder
) -> None:
    def boom(m: Any) -> str:
        raise ZeroDivisionError("predicate broke")

    router = predicate_router("err", boom)
    flow = start(create(router.to(sink("a"))), running, recorder)
    await flow.emit(kit.message(1))
    failed = await recorder.wait("node_failed", "err")
    assert "predicate broke" in failed.extra["exception"]


@pytest.mark.parametrize(
    ("name", "predicate", "match"),
    [
        ("r", 42, "predicate_router 'r'"),
        ("r", {"a": 1}, "not callable"),
        ("r", {3: bool}, "Targets must be Node or str"),
        ("", bool, "name"),
    ],
    ids=["not-a-predicate", "mapping-to-a-non-callable", "non-str-target", "empty-name"],
)
def test_bad_predicate_type_is_rejected_at_creation(name: str, predicate: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        predicate_router(name, predicate)


async def test_one_router_in_two_flows_resolves_per_flow(
    running: list[PenguiFlow], kit: type[Kit]
) -> None:
    router = predicate_router("shared", lambda m: "out")
    first, second = sink("out"), sink("out")
    flow1 = start(create(router.to(first)), running)
    flow2 = start(create(router.to(second)), running)
    m1, m2 = kit.message(1), kit.message(2)
    await flow1.emit(m1)
    await flow2.emit(m2)
    assert await kit.fetch(flow1) == ("out", m1)
    assert await kit.fetch(flow2) == ("out", m2)


async def test_restart_after_stop(running: list[PenguiFlow], kit: type[Kit]) -> None:
    router = predicate_router("again", lambda m: "a")
    flow = start(create(router.to(sink("a"))), running)
    await flow.emit(kit.message(1))
    await kit.fetch(flow)
    await flow.stop()
    flow.run()
    await flow.emit(kit.message(2))
    name, item = await kit.fetch(flow)
    assert (name, item.payload) == ("a", 2)


# --------------------------------------------------------------------------- mapping form


async def test_mapping_routes_to_every_passing_test_in_order(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder
) -> None:
    pos, big, neg = sink("pos"), sink("big"), sink("neg")
    router = predicate_router(
        "signs",
        {
            "pos": lambda m: m.payload > 0,
            big: lambda m: m.payload > 100,
            "neg": lambda m: m.payload < 0,
        },
    )
    flow = start(create(router.to(pos, big, neg)), running, recorder)
    await flow.emit(kit.message(500))
    assert sorted(n for n, _ in await drain(flow, 2, kit)) == ["big", "pos"]
    await flow.emit(kit.message(-1))
    assert (await kit.fetch(flow))[0] == "neg"
    zero = kit.message(0)
    await flow.emit(zero)
    await recorder.wait("node_success", "signs", zero.trace_id)
    assert kit.rookery_depth(flow) == 0
    kit.assert_clean(flow)


def test_mapping_unknown_name_fails_the_build() -> None:
    router = predicate_router("m", {"a": bool, "ghost": bool})
    with pytest.raises(
        KeyError, match="No successor named 'ghost' for predicate_router 'm'"
    ) as info:
        create(router.to(sink("a")))  # core runs the router's build check
    assert isinstance(info.value, FlowBuildError)
    assert isinstance(info.value, ValueError)
    create(router.to(sink("a"), sink("ghost")))


async def test_detached_context_needs_a_flow(kit: type[Kit]) -> None:
    from penguiflow.errors import FlowNotRunningError

    router = predicate_router("r", lambda m: "a")
    with pytest.raises(FlowNotRunningError, match="predicate_router 'r'"):
        await router.invoke(kit.message(1), Context(router), registry=None)


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    "predicate",
    [
        lambda m: None,
        lambda m: False,
        lambda m: [],
        {"yes": lambda m: False},  # a mapping whose tests all fail
    ],
    ids=["None", "False", "empty", "no-test-matched"],
)
async def test_a_dropped_request_ends_with_no_result_naming_the_router(
    running: list[PenguiFlow], kit: type[Kit], predicate: Any
) -> None:
    yes = sink("yes")
    upstream = sink("upstream")
    router = predicate_router("gate", predicate)
    flow = start(create(upstream.to(router), router.to(yes)), running)
    msg = kit.message("x")
    with pytest.raises(FlowError) as info:
        await flow.invoke(msg, timeout=5)
    error = info.value
    assert (error.code, error.node_name, error.trace_id) == ("NO_RESULT", "gate", msg.trace_id)
    assert "'gate'" in str(error)
    kit.assert_clean(flow)


async def test_a_routed_request_still_gets_its_result(
    running: list[PenguiFlow], kit: type[Kit]
) -> None:
    yes = sink("yes")
    router = predicate_router("gate", lambda m: "yes")
    flow = start(create(router.to(yes)), running)
    msg = kit.message("x")
    assert await flow.invoke(msg, timeout=5) == ("yes", msg)
    kit.assert_clean(flow)
