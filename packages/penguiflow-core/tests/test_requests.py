"""Request handles: every request that enters a flow ends with exactly one outcome."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from penguiflow.core import ROOKERY, Context, no_result_error
from penguiflow.errors import FlowError, FlowRuntimeError, FlowStoppedError, TraceCancelled
from penguiflow.node import Node, NodePolicy
from penguiflow.registry import ModelRegistry
from penguiflow.types import FinalAnswer, Headers, Message, StreamChunk

if TYPE_CHECKING:
    from conftest import MakeFlow


def node(func: Any, name: str, **policy: Any) -> Node:
    policy.setdefault("validate", "none")
    return Node(func, name=name, policy=NodePolicy(**policy))


def msg(payload: Any = "p", **kw: Any) -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"), **kw)


async def echo(m: Any, ctx: Context) -> Any:
    return m


async def test_invoke_returns_what_fetch_would_have(make_flow: MakeFlow) -> None:
    async def shout(m: Message, ctx: Context) -> Message:
        return m.model_copy(update={"payload": str(m.payload).upper()})

    b = node(echo, "b")
    flow = make_flow(node(shout, "a").to(b), b.to())
    flow.run()
    m = msg("hi")
    out = await flow.invoke(m, timeout=1.0)
    assert isinstance(out, Message)
    assert (out.payload, out.trace_id) == ("HI", m.trace_id)


async def test_concurrent_invokes_each_get_their_own_result(make_flow: MakeFlow) -> None:
    async def slow_echo(m: Message, ctx: Context) -> Message:
        await asyncio.sleep(0)
        return m

    flow = make_flow(node(slow_echo, "a", max_concurrency=8).to())
    flow.run()
    messages = [msg(i) for i in range(200)]
    results = await asyncio.wait_for(
        asyncio.gather(*(flow.invoke(m, expect=Message) for m in messages)), 5.0
    )
    assert [r.payload for r in results] == list(range(200))
    assert [r.trace_id for r in results] == [m.trace_id for m in messages]


async def test_invoke_skips_chunks_keeps_the_first_result_and_leaves_nothing_behind(
    make_flow: MakeFlow,
) -> None:
    """``invoke`` reads no chunks: they, and results after the first, are dropped as
    they arrive, so nothing of the trace waits at Rookery or in the flow afterwards."""

    async def chatty(m: Message, ctx: Context) -> None:
        for i in range(3 * 64):  # more chunks than an edge holds: none may block
            await ctx.emit_chunk(parent=m, text=f"t{i}", done=i == 3 * 64 - 1)
        await ctx.emit(m.model_copy(update={"payload": "first"}))
        await ctx.emit(m.model_copy(update={"payload": "second"}))

    flow = make_flow(node(chatty, "chatty").to())
    flow.run()
    for _ in range(3):
        out = await flow.invoke(msg(), timeout=2.0, expect=Message)
        assert out.payload == "first"
    snap = flow.inspect()
    assert snap.traces == {} and snap.subscriptions == 0
    assert all(f.queue.qsize() == 0 for f in flow.floes)
    with pytest.raises(asyncio.QueueEmpty):  # Rookery holds nothing for a plain fetch
        flow.context(ROOKERY).fetch_nowait()


async def test_invoke_and_subscribe_cannot_share_a_trace(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    flow.run()
    m = msg()
    async with flow.subscribe(m.trace_id):
        with pytest.raises(FlowRuntimeError, match="already has a subscription"):
            await flow.invoke(m, timeout=1.0)


async def test_request_streams_chunks_then_the_result(make_flow: MakeFlow) -> None:
    async def talk(m: Message, ctx: Context) -> Message:
        for i, word in enumerate(["a", "b", "c"]):
            await ctx.emit_chunk(parent=m, text=word, done=i == 2)
        return m.model_copy(update={"payload": "final"})

    flow = make_flow(node(talk, "llm").to())
    flow.run()
    async with flow.request(msg(), expect=Message) as req:
        chunks = [chunk async for chunk in req.chunks()]
        result = await req.result()
    assert [(c.text, c.seq, c.node) for c in chunks] == [
        ("a", 0, "llm"),
        ("b", 1, "llm"),
        ("c", 2, "llm"),
    ]
    assert result.payload == "final"
    assert req.state == "result"


async def test_a_node_that_gives_up_raises_flow_error_with_its_cause(make_flow: MakeFlow) -> None:
    async def broken(m: Any, ctx: Context) -> Any:
        raise ValueError("bad input")

    flow = make_flow(node(broken, "parse", max_retries=2, backoff_base=0).to())
    flow.run()
    with pytest.raises(FlowError) as info:
        await flow.invoke(msg(), timeout=1.0)
    error = info.value
    assert (error.node_name, error.code, error.attempts) == ("parse", "NODE_EXCEPTION", 3)
    assert isinstance(error.__cause__, ValueError)
    assert flow.inspect().is_quiescent


async def test_a_node_timeout_is_a_typed_error(make_flow: MakeFlow) -> None:
    async def hang(m: Any, ctx: Context) -> Any:
        await asyncio.Event().wait()

    flow = make_flow(node(hang, "slow", timeout_s=0.01).to())
    flow.run()
    with pytest.raises(FlowError) as info:
        await flow.invoke(msg(), timeout=1.0)
    assert info.value.code == "NODE_TIMEOUT"


async def test_a_trace_dropped_on_the_way_names_the_node(make_flow: MakeFlow) -> None:
    async def drop(m: Any, ctx: Context) -> None:
        return None

    router = node(drop, "router")
    flow = make_flow(node(echo, "a").to(router), router.to())
    flow.run()
    with pytest.raises(FlowError, match="at node 'router'") as info:
        await flow.invoke(msg(), timeout=1.0)
    assert (info.value.code, info.value.node_name) == ("NO_RESULT", "router")


async def test_a_request_sent_nowhere_ends_at_once(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    flow.run()
    with pytest.raises(FlowError) as info:
        await flow.invoke(msg(), to=[], timeout=1.0)
    assert info.value.code == "NO_RESULT"
    assert str(info.value).endswith("without a result: nothing of it entered the flow")
    assert flow.inspect().traces == {}


def test_no_result_error_is_the_error_a_dropped_request_ends_with() -> None:
    """Add-ons that deliver outcomes of their own build the same error the runtime raises."""
    dropped = no_result_error("t1", "router")
    assert (dropped.code, dropped.trace_id, dropped.node_name) == ("NO_RESULT", "t1", "router")
    assert "trace t1 ended at node 'router' without a result" in str(dropped)
    elsewhere = no_result_error("t2", None, why="its worker lost it")
    assert (elsewhere.code, elsewhere.node_name) == ("NO_RESULT", "")
    assert str(elsewhere).endswith("trace t2 ended without a result: its worker lost it")
    assert str(no_result_error("t3", None)).endswith("trace t3 ended without a result")


async def test_a_message_without_trace_id_is_refused_with_a_fix(make_flow: MakeFlow) -> None:
    flow = make_flow(node(echo, "a").to())
    flow.run()
    with pytest.raises(FlowRuntimeError, match=r"Message\(payload="):
        await flow.invoke("bare")


async def test_timeout_cancels_the_trace_before_raising(make_flow: MakeFlow) -> None:
    started = asyncio.Event()

    async def hang(m: Any, ctx: Context) -> Any:
        started.set()
        await asyncio.Event().wait()

    flow = make_flow(node(hang, "slow").to())
    flow.run()
    with pytest.raises(TimeoutError):
        await flow.invoke(msg(), timeout=0.05)
    assert started.is_set()
    snap = flow.inspect()
    assert snap.traces == {} and all(n.inflight == 0 for n in snap.nodes)


async def test_leaving_the_block_early_cancels_the_trace(make_flow: MakeFlow) -> None:
    cancelled = asyncio.Event()

    async def talk(m: Message, ctx: Context) -> None:
        try:
            for i in range(1000):
                await ctx.emit_chunk(parent=m, text=str(i))
        except asyncio.CancelledError:
            cancelled.set()
            raise

    flow = make_flow(node(talk, "llm").to(), queue_maxsize=2)
    flow.run()
    async with flow.request(msg()) as req:
        async for chunk in req.chunks():
            if chunk.seq == 3:
                break
    await asyncio.wait_for(cancelled.wait(), 1.0)
    assert req.state == "cancelled"
    assert flow.inspect().traces == {}


async def test_req_cancel_raises_trace_cancelled(make_flow: MakeFlow) -> None:
    started = asyncio.Event()

    async def hang(m: Any, ctx: Context) -> Any:
        started.set()
        await asyncio.Event().wait()

    flow = make_flow(node(hang, "slow").to())
    flow.run()
    async with flow.request(msg()) as req:
        await asyncio.wait_for(started.wait(), 1.0)
        assert await req.cancel() is True
        with pytest.raises(TraceCancelled):
            await asyncio.wait_for(req.result(), 1.0)


async def test_stop_ends_a_waiting_request_with_flow_stopped(make_flow: MakeFlow) -> None:
    started = asyncio.Event()

    async def hang(m: Any, ctx: Context) -> Any:
        started.set()
        await asyncio.Event().wait()

    flow = make_flow(node(hang, "slow").to())
    flow.run()
    waiting = asyncio.ensure_future(flow.invoke(msg()))
    await asyncio.wait_for(started.wait(), 1.0)
    await flow.stop()
    with pytest.raises(FlowStoppedError):
        await asyncio.wait_for(waiting, 1.0)


async def test_the_result_releases_everything_the_trace_still_holds(make_flow: MakeFlow) -> None:
    """A fan-out whose first branch answers: the slower branch is cancelled with it."""
    slow_started = asyncio.Event()

    async def fast(m: Message, ctx: Context) -> Message:
        await slow_started.wait()
        return m.model_copy(update={"payload": "fast"})

    async def slow(m: Any, ctx: Context) -> Any:
        slow_started.set()
        await asyncio.Event().wait()

    src = node(echo, "src")
    f, s = node(fast, "fast"), node(slow, "slow")
    flow = make_flow(src.to(f, s), f.to(), s.to())
    flow.run()
    out = await flow.invoke(msg(), timeout=1.0, expect=Message)
    assert out.payload == "fast"
    snap = flow.inspect()
    assert snap.traces == {} and all(n.inflight == 0 for n in snap.nodes)


# -- typed nodes reach their envelope -----------------------------------------------------


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    text: str


async def test_ctx_message_is_the_envelope_of_a_payload_typed_node(make_flow: MakeFlow) -> None:
    seen: list[Any] = []

    async def answer(q: Question, ctx: Context) -> Answer:
        envelope = ctx.message
        seen.append((envelope.headers.tenant, envelope.meta))
        await ctx.emit_chunk(parent=envelope, text=q.text, done=True)
        return Answer(text=q.text.upper())

    registry = ModelRegistry()
    registry.register("answer", Question, Answer)
    n = Node(answer, name="answer", policy=NodePolicy(validate="both"))
    flow = make_flow(n.to())
    flow.run(registry=registry)
    m = Message(payload=Question(text="hi"), headers=Headers(tenant="acme"), meta={"k": 1})
    async with flow.request(m, expect=Message) as req:
        chunks = [c async for c in req.chunks()]
        result = await req.result()
    assert seen == [("acme", {"k": 1})]
    assert [c.text for c in chunks] == ["hi"]
    assert result.payload == Answer(text="HI")
    assert flow.context(n).message is None  # nothing held between invocations


async def test_a_bare_final_answer_keeps_its_trace_without_a_registry(
    make_flow: MakeFlow,
) -> None:
    calls: list[Any] = []

    async def ctrl(m: Any, ctx: Context) -> FinalAnswer:
        calls.append(m)
        return FinalAnswer(text="done")

    c = Node(ctrl, name="ctrl", allow_cycle=True, policy=NodePolicy(validate="none"))
    flow = make_flow(c.to(c))
    flow.run()
    m = msg("q")
    out = await flow.invoke(m, timeout=1.0)
    assert isinstance(out, Message) and out.trace_id == m.trace_id
    assert out.payload == FinalAnswer(text="done")
    assert len(calls) == 1  # not re-invoked with its own answer


async def test_chunks_from_two_branches_never_repeat_a_seq(make_flow: MakeFlow) -> None:
    async def branch(m: Message, ctx: Context) -> None:
        for i in range(3):
            await ctx.emit_chunk(parent=m, text=str(i))

    async def join_done(m: Any, ctx: Context) -> None:
        return None

    a, b = node(branch, "a"), node(branch, "b")
    flow = make_flow(node(echo, "src").to(a, b), a.to(), b.to(), queue_maxsize=0)
    flow.run()
    m = msg()
    async with flow.subscribe(m.trace_id) as results:
        await flow.emit(m)
        items = [item async for item in results]
    chunks = [i.payload for i in items if isinstance(i.payload, StreamChunk)]
    assert sorted(c.seq for c in chunks) == list(range(6))
    assert {c.node for c in chunks} == {"a", "b"}
