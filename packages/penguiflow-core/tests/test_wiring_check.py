"""Build-time wiring checks (``run(wiring=...)``) and registries built from annotations."""

from __future__ import annotations

import logging

import pytest
from pydantic import BaseModel, RootModel

from penguiflow import Headers, Message, ModelRegistry, Node, NodePolicy, create
from penguiflow.core import Context, declare_shape
from penguiflow.errors import FlowBuildError, FlowTypeError, PenguiFlowError


class A(BaseModel):
    x: int


class B(BaseModel):
    y: int


class SubB(B):
    extra: str = ""


class C(BaseModel):
    z: int


class Batch(RootModel[list[B]]):
    pass


async def a_to_b(msg: A, ctx: Context) -> B:
    return B(y=msg.x)


async def a_to_sub(msg: A, ctx: Context) -> SubB:
    return SubB(y=msg.x)


async def b_to_c(msg: B, ctx: Context) -> C:
    return C(z=msg.y)


async def c_to_c(msg: C, ctx: Context) -> C | None:
    return msg


async def batch_to_c(msg: Batch, ctx: Context) -> C:
    return C(z=len(msg.root))


async def envelope(msg: Message, ctx: Context) -> Message:
    return msg


def test_from_nodes_registers_the_annotated_models() -> None:
    first, last = Node(a_to_b), Node(c_to_c)
    registry = ModelRegistry.from_nodes(first, last)
    assert registry.models("a_to_b") == (A, B)
    assert registry.models("c_to_c") == (C, C)  # ``C | None`` registers C


def test_from_nodes_names_the_node_and_the_annotation_it_cannot_use() -> None:
    async def untyped(msg, ctx):  # type: ignore[no-untyped-def]
        return msg

    with pytest.raises(FlowTypeError, match=r"node 'untyped': the message parameter .* missing"):
        ModelRegistry.from_nodes(Node(untyped))


def test_from_nodes_rejects_a_name_registered_twice() -> None:
    with pytest.raises(ValueError, match="already registered"):
        ModelRegistry.from_nodes(Node(a_to_b), Node(a_to_b, name="a_to_b"))


async def test_strict_names_both_nodes_and_both_models() -> None:
    first, second = Node(a_to_b), Node(c_to_c)
    flow = create(first.to(second))
    registry = ModelRegistry.from_nodes(first, second)
    with pytest.raises(FlowBuildError) as info:
        flow.run(registry=registry, wiring="strict")
    assert isinstance(info.value, PenguiFlowError)
    assert "node 'a_to_b' returns B, but its successor 'c_to_c' takes C" in str(info.value)
    assert not flow.is_running


async def test_a_subclass_fits_and_the_flow_runs() -> None:
    first, second = Node(a_to_sub), Node(b_to_c)
    flow = create(first.to(second))
    flow.run(registry=ModelRegistry.from_nodes(first, second), wiring="strict")
    try:
        out = await flow.invoke(
            Message(payload=A(x=3), headers=Headers(tenant="t")), expect=Message
        )
        assert out.payload == C(z=3)
    finally:
        await flow.stop()


async def test_warn_logs_once_per_edge_and_runs(caplog: pytest.LogCaptureFixture) -> None:
    first, second = Node(a_to_b, name="warn_a"), Node(c_to_c, name="warn_c")
    registry = ModelRegistry()
    registry.register("warn_a", A, B)
    registry.register("warn_c", C, C)
    flow = create(first.to(second))
    with caplog.at_level(logging.WARNING, logger="penguiflow.wiring"):
        for _ in range(2):
            flow.run(registry=registry)  # the default is "warn"
            assert flow.is_running
            await flow.stop()
    texts = [r.getMessage() for r in caplog.records if r.name == "penguiflow.wiring"]
    assert texts == [
        "wiring: node 'warn_a' returns B, but its successor 'warn_c' takes C: B is not a C"
    ]


async def test_off_skips_the_check() -> None:
    first, second = Node(a_to_b), Node(c_to_c)
    flow = create(first.to(second))
    flow.run(registry=ModelRegistry.from_nodes(first, second), wiring="off")
    await flow.stop()


async def test_an_unknown_mode_is_rejected() -> None:
    node = Node(a_to_b)
    flow = create(node.to())
    with pytest.raises(FlowBuildError, match="wiring must be 'strict', 'warn' or 'off'"):
        flow.run(registry=ModelRegistry.from_nodes(node), wiring="sideways")  # type: ignore[arg-type]


async def test_message_typed_nodes_take_anything_and_return_unknown() -> None:
    first, env, last = Node(a_to_b), Node(envelope), Node(c_to_c)
    flow = create(first.to(env), env.to(last))
    flow.run(registry=ModelRegistry.from_nodes(first, env, last), wiring="strict")
    await flow.stop()


async def test_non_validating_nodes_are_not_checked() -> None:
    first = Node(a_to_b)
    second = Node(c_to_c, policy=NodePolicy(validate="out"))
    flow = create(first.to(second))
    flow.run(registry=ModelRegistry.from_nodes(first, second), wiring="strict")
    await flow.stop()


async def _gather(items: object, ctx: Context) -> object:
    return [items]


def _declared_join() -> Node:
    node = Node(_gather, name="gather", policy=NodePolicy(validate="none"))
    declare_shape(node, lambda incoming, successor: list[incoming])  # type: ignore[valid-type]
    return node


async def test_a_list_of_t_does_not_fit_t() -> None:
    first, join, last = Node(a_to_b), _declared_join(), Node(b_to_c)
    flow = create(first.to(join), join.to(last))
    with pytest.raises(
        FlowBuildError,
        match=r"node 'gather' passes on list\[B\], but its "
        r"successor 'b_to_c' takes B",
    ):
        flow.run(registry=ModelRegistry.from_nodes(first, last), wiring="strict")


async def test_a_list_of_t_fits_a_root_model_of_that_list() -> None:
    first, join, last = Node(a_to_b), _declared_join(), Node(batch_to_c)
    flow = create(first.to(join), join.to(last))
    flow.run(registry=ModelRegistry.from_nodes(first, last), wiring="strict")
    await flow.stop()


async def _route(item: object, ctx: Context) -> None:
    await ctx.emit(item)


async def test_a_union_member_with_no_consumer_is_a_mismatch() -> None:
    left = Node(a_to_b)
    router = Node(_route, name="router", policy=NodePolicy(validate="none"))
    declare_shape(router, lambda incoming, successor: incoming, routes=True)

    async def other(msg: A, ctx: Context) -> C:
        return C(z=msg.x)

    third = Node(other)
    sink = Node(b_to_c)
    flow = create(left.to(router), third.to(router), router.to(sink))
    registry = ModelRegistry.from_nodes(left, third, sink)
    with pytest.raises(
        FlowBuildError,
        match=r"router 'router' receives B \| C, but none of its "
        r"successors takes C \('b_to_c' takes B\)",
    ):
        flow.run(registry=registry, wiring="strict")
