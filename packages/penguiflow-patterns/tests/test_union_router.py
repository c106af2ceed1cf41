"""union_router: variant routing, Message envelopes kept across it, wiring checks, errors."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import pytest
from pydantic import BaseModel, Field, ValidationError

from penguiflow.core import Context, PenguiFlow, create
from penguiflow.errors import FlowBuildError, FlowError
from penguiflow.node import Node
from penguiflow.patterns import union_router

if TYPE_CHECKING:
    from conftest import Kit
    from penguiflow.testing import Recorder


class Search(BaseModel):
    kind: Literal["search"] = "search"
    query: str


class Calc(BaseModel):
    kind: Literal["calc"] = "calc"
    expr: str


class Ping(BaseModel):  # no kind: routed by class name
    n: int


class Color(enum.StrEnum):
    RED = "red"


class Paint(BaseModel):
    kind: Color = Color.RED
    shade: int


class Free(BaseModel):  # kind is a free str: not checkable up front
    kind: str
    data: int


Tool = Annotated[Search | Calc, Field(discriminator="kind")]


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


async def test_bare_dicts_are_validated_and_routed_by_kind(
    running: list[PenguiFlow], kit: type[Kit]
) -> None:
    router = union_router("tools", Tool)
    flow = start(create(router.to(sink("search"), sink("calc"))), running)
    await flow.emit({"kind": "calc", "expr": "1+1"})
    name, item = await kit.fetch(flow)
    assert name == "calc"
    assert item == Calc(expr="1+1")  # the validated variant, as a bare model
    kit.assert_clean(flow)


async def test_variant_instance_passes_through(running: list[PenguiFlow], kit: type[Kit]) -> None:
    router = union_router("tools", Search | Calc)
    flow = start(create(router.to(sink("search"), sink("calc"))), running)
    query = Search(query="penguins")
    await flow.emit(query)
    assert await kit.fetch(flow) == ("search", query)


async def test_class_name_routing_without_kind(running: list[PenguiFlow], kit: type[Kit]) -> None:
    router = union_router("u", Union[Ping, Search])  # noqa: UP007
    flow = start(create(router.to(sink("Ping"), sink("search"))), running)
    await flow.emit({"n": 3})
    assert await kit.fetch(flow) == ("Ping", Ping(n=3))


async def test_str_enum_kind_routes_by_value(running: list[PenguiFlow], kit: type[Kit]) -> None:
    router = union_router("u", Paint | Ping)
    flow = start(create(router.to(sink("red"), sink("Ping"))), running)
    await flow.emit({"shade": 2})
    assert (await kit.fetch(flow))[0] == "red"


async def test_message_routed_on_payload_keeps_envelope(
    running: list[PenguiFlow], kit: type[Kit]
) -> None:
    router = union_router("tools", Tool)
    flow = start(create(router.to(sink("search"), sink("calc"))), running)
    msg = kit.message({"kind": "search", "query": "q"}, deadline_s=None, meta={"k": 1})
    await flow.emit(msg)
    name, out = await kit.fetch(flow)
    assert name == "search"
    assert out.payload == Search(query="q")
    assert out.trace_id == msg.trace_id
    assert out.headers == msg.headers
    assert out.meta == {"k": 1}
    assert out.ts == msg.ts
    kit.assert_clean(flow)


async def test_message_with_variant_payload_is_forwarded_as_is(
    running: list[PenguiFlow], kit: type[Kit]
) -> None:
    router = union_router("tools", Tool)
    flow = start(create(router.to(sink("search"), sink("calc"))), running)
    msg = kit.message(Calc(expr="2*3"))
    await flow.emit(msg)
    name, out = await kit.fetch(flow)
    assert name == "calc"
    assert out is msg  # no copy when the payload already is the variant


async def test_invalid_item_is_a_validation_node_error(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder
) -> None:
    router = union_router("tools", Tool)
    flow = start(create(router.to(sink("search"), sink("calc"))), running, recorder)
    msg = kit.message({"kind": "draw"})
    await flow.emit(msg)
    failed = await recorder.wait("node_failed", "tools", msg.trace_id)
    assert "validation error for tagged-union" in failed.extra["exception"]
    kit.assert_clean(flow)


@pytest.mark.parametrize("model", [Search, int, dict[str, int], list[Search], "Search", None])
def test_non_union_model_is_rejected_naming_the_router(model: Any) -> None:
    with pytest.raises(TypeError, match="union_router 'bad': union_model must be a union"):
        union_router("bad", model)


def test_missing_variant_fails_the_build_naming_it() -> None:
    router = union_router("tools", Tool)
    with pytest.raises(KeyError) as info:
        create(router.to(sink("search")))  # core runs the router's build check
    text = str(info.value)
    assert "No successor named 'calc'" in text
    assert "union_router 'tools'" in text
    assert "'Calc' (kind 'calc')" in text
    assert isinstance(info.value, FlowBuildError)
    create(router.to(sink("search"), sink("calc")))  # complete wiring builds


def test_missing_variant_check_is_side_effect_free() -> None:
    router = union_router("u", Ping | Search)
    flow = create(router.to(sink("search"), sink("Ping")))
    check = router.func.__penguiflow_check__  # type: ignore[attr-defined]
    check(flow, router)
    check(flow, router)  # repeatable, raises nothing on good wiring


async def test_unroutable_free_kind_is_a_runtime_error(
    running: list[PenguiFlow], kit: type[Kit], recorder: Recorder
) -> None:
    router = union_router("u", Free | Ping)
    flow = start(create(router.to(sink("known"), sink("Ping"))), running, recorder)
    await flow.emit({"kind": "known", "data": 1})
    assert (await kit.fetch(flow))[0] == "known"
    msg = kit.message({"kind": "unknown", "data": 2})
    await flow.emit(msg)
    failed = await recorder.wait("node_failed", "u", msg.trace_id)
    assert "No successor named 'unknown' for union_router 'u'" in failed.extra["exception"]


async def test_one_router_in_two_flows(running: list[PenguiFlow], kit: type[Kit]) -> None:
    router = union_router("shared", Search | Calc)
    flow1 = start(create(router.to(sink("search"), sink("calc"))), running)
    flow2 = start(create(router.to(sink("search"), sink("calc"))), running)
    await flow1.emit(Search(query="a"))
    await flow2.emit(Calc(expr="b"))
    assert (await kit.fetch(flow1))[0] == "search"
    assert (await kit.fetch(flow2))[0] == "calc"


async def test_a_request_that_fits_no_variant_fails_naming_the_router(
    running: list[PenguiFlow], kit: type[Kit]
) -> None:
    router = union_router("tools", Tool)
    flow = start(create(router.to(sink("search"), sink("calc"))), running)
    msg = kit.message({"kind": "draw", "shape": "circle"})
    with pytest.raises(FlowError) as info:
        await flow.invoke(msg, timeout=5)
    error = info.value
    assert (error.code, error.node_name, error.trace_id) == (
        "NODE_EXCEPTION", "tools", msg.trace_id,
    )  # fmt: skip
    assert isinstance(error.__cause__, ValidationError)
    kit.assert_clean(flow)
