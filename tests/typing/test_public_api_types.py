"""Static checks of the public API's types: ``assert_type`` is checked by mypy --strict and
pyright strict in CI (``tests/typing/check.py``); at run time each call is a no-op."""

from __future__ import annotations

from typing import Any, Literal, assert_type

from pydantic import BaseModel

from penguiflow import Context, Headers, Message, ModelRegistry, Node, NodePolicy, create
from penguiflow.core import SHAPE_HOOK, Request, RequestState, Shape, WiringMode, declare_shape
from penguiflow.node import NodeFunc, ValidateMode


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    text: str


async def answer(msg: Question, ctx: Context) -> Answer:
    return Answer(text=msg.text)


async def passthrough(msg: Message, ctx: Context) -> Message | None:
    return msg


def test_node_types_come_from_the_function() -> None:
    node = Node(answer)
    assert_type(node, Node[Question, Answer])
    assert_type(node.func, NodeFunc[Question, Answer])
    assert_type(Node(passthrough), Node[Message, Message | None])
    assert_type(
        node.to(Node(passthrough)), tuple[Node[Question, Answer], tuple[Node[Any, Any], ...]]
    )
    bare: Node = node  # a bare Node is Node[Any, Any]
    assert bare.name == "answer"


def test_modes_are_literals() -> None:
    assert_type(NodePolicy().validate, ValidateMode)
    assert_type(NodePolicy().validate, Literal["both", "in", "out", "none"])
    mode: WiringMode = "strict"
    assert mode == "strict"


def test_registry_from_annotations() -> None:
    registry = ModelRegistry.from_nodes(Node(answer))
    assert_type(registry, ModelRegistry)
    assert registry.models("answer") == (Question, Answer)


def test_flow_and_request_types() -> None:
    node = Node(answer)
    flow = create(node.to())
    request = flow.request(Message(payload=Question(text="q"), headers=Headers(tenant="t")))
    assert_type(request, Request[object])
    assert_type(request.state, RequestState)
    assert_type(request.trace_id, str)
    expecting = flow.request(Message(payload="q", headers=Headers(tenant="t")), expect=Message)
    assert_type(expecting, Request[Message])


async def test_results_are_object_unless_expected() -> None:
    """Never ``Any``: a result is ``object`` until the caller names its class."""
    flow = create(Node(passthrough).to())
    flow.run()
    try:
        message = Message(payload=Question(text="q"), headers=Headers(tenant="t"))
        out = await flow.invoke(message)
        assert_type(out, object)
        typed = await flow.invoke(message, expect=Message)
        assert_type(typed, Message)
        async with flow.request(message) as req:
            assert_type(req, Request[object])
            assert_type(await req.result(), object)
        async with flow.request(message, expect=Message) as typed_req:
            assert_type(typed_req, Request[Message])
            assert_type(await typed_req.result(), Message)
    finally:
        await flow.stop()


async def test_stream_results_are_object_unless_expected() -> None:
    """penguiflow-streaming: a stream's result (a payload) is typed like core's results."""
    from penguiflow.streaming import FlowStream, StreamResult, open_stream
    from penguiflow.types import StreamChunk

    flow = create(Node(passthrough).to())
    flow.run()
    try:
        message = Message(payload=Question(text="q"), headers=Headers(tenant="t"))
        async with open_stream(flow, message) as stream:
            assert_type(stream, FlowStream[object])
            assert_type(stream.results, list[object])
            assert_type(await stream.result(), object | None)
        bare: FlowStream = stream  # a bare FlowStream is FlowStream[object]
        assert bare is stream
        again = Message(payload=Question(text="q"), headers=Headers(tenant="t"))
        async with open_stream(flow, again, expect=Question) as typed:
            assert_type(typed, FlowStream[Question])
            async for event in typed.events():
                assert_type(event, StreamChunk | StreamResult[Question])
                if isinstance(event, StreamResult):
                    assert_type(event.value, Question)
                    assert_type(event.item, object)
                    widened: StreamResult = event  # StreamResult[object]: covariant
                    assert widened.value == Question(text="q")
            assert_type(typed.results, list[Question])
            assert_type(await typed.result(), Question | None)
    finally:
        await flow.stop()


def test_shapes() -> None:
    node = Node(answer)
    declare_shape(node, lambda incoming, successor: incoming, routes=True)
    shape = getattr(node.func, SHAPE_HOOK)
    assert isinstance(shape, Shape)
    assert shape.routes
