"""stream_flow and emit_stream_events: what reaches the client, plus their bad-input errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.core import Context, PenguiFlow, create
from penguiflow.errors import FlowNotRunningError, FlowRuntimeError
from penguiflow.node import Node
from penguiflow.streaming import StreamingPathError, emit_stream_events, stream_flow
from penguiflow.types import FinalAnswer, Message, StreamChunk

if TYPE_CHECKING:
    from conftest import Kit, Start


async def agen(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


def token_node(tokens: list[str], *, final: Any = None, done_last: bool = True) -> Node:
    async def llm(msg: Message, ctx: Context) -> Any:
        for i, tok in enumerate(tokens):
            last = done_last and i == len(tokens) - 1
            await ctx.emit_chunk(parent=msg, text=tok, done=last)
        return final

    return Node(llm, name="llm")


async def collect(gen: AsyncIterator[Any]) -> list[Any]:
    async with asyncio.timeout(10):
        return [x async for x in gen]


async def test_stream_flow_yields_chunks_until_done(kit: type[Kit], running: Start) -> None:
    flow = running(create(token_node(["a", "b", "c"]).to()))
    out = await collect(stream_flow(flow, kit.message()))
    assert [c.text for c in out] == ["a", "b", "c"]
    assert [c.seq for c in out] == [0, 1, 2]
    assert all(isinstance(c, StreamChunk) for c in out)
    assert out[-1].done


async def test_stream_flow_include_final_runs_to_the_answer(kit: type[Kit], running: Start) -> None:
    def final(msg: Message) -> Message:
        return msg

    async def llm(msg: Message, ctx: Context) -> Message:
        await ctx.emit_chunk(parent=msg, text="a")
        await ctx.emit_chunk(parent=msg, text="b", done=True)
        return msg.model_copy(update={"payload": FinalAnswer(text="ab")})

    flow = running(create(Node(llm, name="llm").to()))
    out = await collect(stream_flow(flow, kit.message(), include_final=True))
    assert [getattr(x, "text", None) for x in out] == ["a", "b", "ab"]
    assert isinstance(out[-1], FinalAnswer)


async def test_stream_flow_stops_at_a_non_chunk_without_done(
    kit: type[Kit], running: Start
) -> None:
    async def plain(msg: Message, ctx: Context) -> str:
        return "bare"

    flow = running(create(Node(plain, name="plain").to()))
    assert await collect(stream_flow(flow, kit.message())) == ["bare"]


async def test_stream_flow_timeout_propagates(kit: type[Kit], running: Start) -> None:
    async def silent(msg: Message, ctx: Context) -> None:
        return None

    flow = running(create(Node(silent, name="silent").to()))
    gen = stream_flow(flow, kit.message(), timeout=0.01)
    with pytest.raises(TimeoutError):
        await gen.__anext__()
    await gen.aclose()


async def test_stream_flow_on_a_flow_never_run(kit: type[Kit]) -> None:
    flow = create(token_node(["a"]).to())
    with pytest.raises(FlowNotRunningError, match=r"call flow\.run\(\) first"):
        await stream_flow(flow, kit.message()).__anext__()


async def test_stream_flow_on_a_stopped_flow(kit: type[Kit]) -> None:
    flow = create(token_node(["a"]).to())
    flow.run()
    await flow.stop()
    with pytest.raises(FlowNotRunningError):
        await stream_flow(flow, kit.message()).__anext__()


def cyclic_flows() -> dict[str, PenguiFlow]:
    async def f(msg: Any, ctx: Context) -> Any:
        return msg

    a, b, c = Node(f, name="a"), Node(f, name="b"), Node(f, name="c")
    no_exit = create(a.to(b), b.to(c), c.to(b), allow_cycles=True)
    x, y = Node(f, name="x"), Node(f, name="y")
    no_entry = create(x.to(y), y.to(x), allow_cycles=True)
    return {"no_exit": no_exit, "no_entry": no_entry}


@pytest.mark.parametrize(
    ("case", "match"),
    [("no_exit", "no path from a to Rookery"), ("no_entry", "no ingress node")],
)
async def test_stream_flow_without_a_streaming_path(kit: type[Kit], case: str, match: str) -> None:
    flow = cyclic_flows()[case]
    flow.run()
    try:
        with pytest.raises(StreamingPathError, match=match) as info:
            await stream_flow(flow, kit.message()).__anext__()
        assert isinstance(info.value, FlowRuntimeError)
        assert isinstance(info.value, RuntimeError)
        assert flow.inspect().traces == {}  # nothing was emitted
    finally:
        await flow.stop()


async def test_stream_flow_to_a_branch_that_cannot_reach_rookery(kit: type[Kit]) -> None:
    async def f(msg: Any, ctx: Context) -> Any:
        return msg

    good, entry = Node(f, name="good"), Node(f, name="entry")
    b, c = Node(f, name="b"), Node(f, name="c")
    flow = create(good.to(), entry.to(b), b.to(c), c.to(b), allow_cycles=True)
    flow.run()
    try:
        with pytest.raises(StreamingPathError, match="no path from entry to Rookery"):
            await stream_flow(flow, kit.message(), to=entry).__anext__()
        with pytest.raises(KeyError, match="Unknown target b for OpenSea"):
            await stream_flow(flow, kit.message(), to=b).__anext__()
        assert flow.inspect().traces == {}
    finally:
        await flow.stop()


async def test_emit_stream_events_default_adapter_and_terminal_chunk(
    kit: type[Kit], running: Start
) -> None:
    async def node(msg: Message, ctx: Context) -> None:
        await emit_stream_events(agen([1, "two", 3.5]), ctx, msg, final_meta={"end": True})

    flow = running(create(Node(node, name="n").to()))
    out = await collect(stream_flow(flow, kit.message()))
    assert [(c.text, c.seq, c.done, c.meta) for c in out] == [
        ("1", 0, False, {}),
        ("two", 1, False, {}),
        ("3.5", 2, False, {}),
        ("", 3, True, {"end": True}),
    ]


async def test_emit_stream_events_with_adapter_done_means_no_extra_chunk(
    kit: type[Kit], running: Start
) -> None:
    events = [{"t": "x", "end": False}, {"t": "y", "end": True}]

    def adapter(ev: dict[str, Any]) -> tuple[str, bool, dict[str, Any]]:
        return ev["t"], ev["end"], {"src": "test"}

    async def node(msg: Message, ctx: Context) -> str:
        await emit_stream_events(agen(events), ctx, msg, adapter=adapter)
        return "answer"

    flow = running(create(Node(node, name="n").to()))
    out = await collect(stream_flow(flow, kit.message(), include_final=True))
    assert [(c.text, c.seq, c.done, c.meta) for c in out[:-1]] == [
        ("x", 0, False, {"src": "test"}),
        ("y", 1, True, {"src": "test"}),
    ]
    assert out[-1] == "answer"


async def test_emit_stream_events_empty_source_emits_only_the_terminal(
    kit: type[Kit], running: Start
) -> None:
    async def node(msg: Message, ctx: Context) -> None:
        await emit_stream_events(agen([]), ctx, msg)

    flow = running(create(Node(node, name="n").to()))
    (only,) = await collect(stream_flow(flow, kit.message()))
    assert (only.text, only.seq, only.done, only.meta) == ("", 0, True, {})


async def test_emit_stream_events_on_a_detached_context(kit: type[Kit]) -> None:
    async def f(msg: Any, ctx: Context) -> None:
        return None

    ctx = Context(Node(f, name="n"))
    with pytest.raises(FlowNotRunningError, match="not attached"):
        await emit_stream_events(agen(["a"]), ctx, kit.message())
