"""``expect=``: a request's result typed as the class the caller names, and checked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from penguiflow.core import Context
from penguiflow.errors import FlowBuildError, FlowError, FlowTypeError
from penguiflow.node import Node, NodePolicy
from penguiflow.types import Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow


class Answer(BaseModel):
    text: str


def node(func: Any, name: str) -> Node:
    return Node(func, name=name, policy=NodePolicy(validate="none"))


def msg(payload: Any = "p") -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"))


async def answer(m: Message, ctx: Context) -> Message:
    if m.payload == "fail":
        raise ConnectionError("backend down")
    return m.model_copy(update={"payload": Answer(text=str(m.payload))})


async def bare(m: Message, ctx: Context) -> str:
    return f"bare {m.payload}"


async def test_invoke_with_expect_returns_the_result(make_flow: MakeFlow) -> None:
    flow = make_flow(node(answer, "answer").to())
    flow.run()
    m = msg("hi")
    out = await flow.invoke(m, timeout=1.0, expect=Message)
    assert type(out) is Message
    assert (out.payload, out.trace_id) == (Answer(text="hi"), m.trace_id)
    untyped = await flow.invoke(msg("ho"), timeout=1.0)
    assert isinstance(untyped, Message) and untyped.payload == Answer(text="ho")


async def test_invoke_raises_flow_type_error_naming_both_types_and_the_trace(
    make_flow: MakeFlow,
) -> None:
    flow = make_flow(node(bare, "bare").to())
    flow.run()
    m = msg("hi")
    with pytest.raises(FlowTypeError) as info:
        await flow.invoke(m, timeout=1.0, expect=Message)
    text = str(info.value)
    assert text == (
        f"trace {m.trace_id}: expected a result of type Message, got str: the flow's exit "
        "node returned str; pass expect=str or fix the node"
    )
    # A TypeError (and a PenguiFlowError), never a FlowError: the request did end with a
    # result, just not the one the caller was written for.
    assert isinstance(info.value, TypeError) and isinstance(info.value, FlowBuildError)
    assert not isinstance(info.value, FlowError)
    assert flow.inspect().is_quiescent  # nothing of the request is left behind
    assert await flow.invoke(msg("again"), timeout=1.0) == "bare again"  # still serving


async def test_a_payload_of_the_expected_type_points_at_the_envelope(
    make_flow: MakeFlow,
) -> None:
    flow = make_flow(node(answer, "answer").to())
    flow.run()
    m = msg("hi")
    with pytest.raises(
        FlowTypeError, match="expected a result of type Answer, got Message"
    ) as info:
        await flow.invoke(m, timeout=1.0, expect=Answer)
    assert m.trace_id in str(info.value)
    assert str(info.value).endswith(
        "returned Message whose payload is Answer; pass expect=Message and read .payload"
    )


async def test_errors_are_raised_as_before_with_expect(make_flow: MakeFlow) -> None:
    flow = make_flow(node(answer, "answer").to())
    flow.run()
    with pytest.raises(FlowError) as info:
        await flow.invoke(msg("fail"), timeout=1.0, expect=Message)
    assert (info.value.code, info.value.node_name) == ("NODE_EXCEPTION", "answer")


async def test_request_with_expect_types_and_checks_its_result(make_flow: MakeFlow) -> None:
    flow = make_flow(node(answer, "answer").to())
    flow.run()
    async with flow.request(msg("hi"), expect=Message) as req:
        out = await req.result()
    assert out.payload == Answer(text="hi")
    assert req.state == "result"

    m = msg("ho")
    async with flow.request(m, expect=Answer) as wrong:
        with pytest.raises(FlowTypeError) as info:
            await wrong.result()
        with pytest.raises(FlowTypeError):  # asked again: the same answer
            await wrong.result()
    assert str(info.value).startswith(
        f"trace {m.trace_id}: expected a result of type Answer, got Message"
    )
    assert wrong.state == "result"  # the request did end with a result
    assert flow.inspect().is_quiescent


async def test_request_without_expect_returns_the_result_unchecked(make_flow: MakeFlow) -> None:
    flow = make_flow(node(bare, "bare").to())
    flow.run()
    async with flow.request(msg("hi")) as req:
        assert await req.result() == "bare hi"
