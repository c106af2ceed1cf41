"""open_stream: one request's chunks in order, isolation, fan-out, cancel, backpressure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.core import Context, create
from penguiflow.errors import (
    FlowError,
    FlowNotRunningError,
    FlowRuntimeError,
    FlowStoppedError,
    FlowTypeError,
    TraceCancelled,
)
from penguiflow.node import Node, NodePolicy
from penguiflow.streaming import (
    NODE_META_KEY,
    Provenance,
    StreamingArgumentError,
    StreamingPathError,
    StreamingUsageError,
    StreamResult,
    StreamWriter,
    emit_node_chunk,
    open_stream,
    provenance,
)
from penguiflow.types import FinalAnswer, Message, StreamChunk

if TYPE_CHECKING:
    from conftest import Kit, Start
    from penguiflow.testing import Recorder


def answer(msg: Message, text: str) -> Message:
    return msg.model_copy(update={"payload": FinalAnswer(text=text)})


def llm_node(tokens: list[str], name: str = "llm") -> Node:
    async def llm(msg: Message, ctx: Context) -> Message:
        async with StreamWriter(ctx, msg) as out:
            for tok in tokens:
                await out.write(tok)
        return answer(msg, "".join(tokens))

    return Node(llm, name=name)


async def test_chunks_in_order_then_the_result(kit: type[Kit], running: Start) -> None:
    flow = running(create(llm_node(["a", "b", "c"]).to()))
    msg = kit.message()
    async with open_stream(flow, msg, expect=FinalAnswer) as stream:
        chunks = [c async for c in stream]
        result = await stream.result()
    assert [c.text for c in chunks] == ["a", "b", "c", ""]
    assert [c.seq for c in chunks] == [0, 1, 2, 3]
    assert [c.done for c in chunks] == [False, False, False, True]
    assert result == FinalAnswer(text="abc")
    assert stream.results == [result]
    assert stream.ended == "drained"
    assert stream.trace_id == msg.trace_id
    assert flow.inspect().is_quiescent


async def test_provenance_node_stream_and_seq(kit: type[Kit], running: Start) -> None:
    flow = running(create(llm_node(["x"]).to()))
    msg = kit.message()
    async with open_stream(flow, msg) as stream:
        first = await anext(stream)
        await stream.result()
    assert first.meta == {NODE_META_KEY: "llm"}
    assert provenance(first) == Provenance("llm", f"{msg.trace_id}:llm", 0)
    assert provenance(StreamChunk(stream_id="s", seq=3, text="")) == Provenance(None, "s", 3)


async def test_events_end_with_the_result_in_arrival_order(kit: type[Kit], running: Start) -> None:
    finish = asyncio.Event()  # never set: the node is still busy after its result
    cancelled = asyncio.Event()

    async def node(msg: Message, ctx: Context) -> None:
        await emit_node_chunk(ctx, parent=msg, text="one", meta={"k": 1, NODE_META_KEY: "x"})
        await emit_node_chunk(ctx, parent=msg, text="two", done=True)
        await ctx.emit(answer(msg, "mid"))
        try:
            await finish.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    flow = running(create(Node(node, name="n").to()))
    async with open_stream(flow, kit.message()) as stream:
        events = [e async for e in stream.events()]
        assert stream.ended == "drained"
    assert [type(e).__name__ for e in events] == ["StreamChunk", "StreamChunk", "StreamResult"]
    first, second, result = events
    assert isinstance(first, StreamChunk)
    assert first.meta == {"k": 1, NODE_META_KEY: "n"}  # the stamp wins
    assert isinstance(second, StreamChunk)
    assert (second.text, second.seq, second.done) == ("two", 1, True)
    assert isinstance(result, StreamResult)
    assert result.value == FinalAnswer(text="mid")
    assert isinstance(result.item, Message)
    # The result is the request's outcome: what the trace still does is cancelled.
    await kit.wait_for(cancelled.wait())


async def test_only_this_trace_while_others_run(kit: type[Kit], running: Start) -> None:
    gates = {"A": asyncio.Event(), "B": asyncio.Event()}

    async def llm(msg: Message, ctx: Context) -> Message:
        name = msg.payload
        other = "B" if name == "A" else "A"
        async with StreamWriter(ctx, msg) as out:
            for i in range(3):
                await out.write(f"{name}{i}")
                gates[name].set()
                await gates[other].wait()  # keep both traces in flight together
        return answer(msg, name)

    node = Node(llm, name="llm", policy=NodePolicy(max_concurrency=2))
    flow = running(create(node.to()))

    async def consume(name: str) -> tuple[list[str], FinalAnswer | None]:
        async with open_stream(flow, kit.message(name), expect=FinalAnswer) as stream:
            texts = [c.text async for c in stream]
            return texts, await stream.result()

    a, b = await kit.wait_for(asyncio.gather(consume("A"), consume("B")))
    assert a == (["A0", "A1", "A2", ""], FinalAnswer(text="A"))
    assert b == (["B0", "B1", "B2", ""], FinalAnswer(text="B"))


async def test_fan_out_streams_interleave_each_in_order(kit: type[Kit], running: Start) -> None:
    turn = {name: asyncio.Event() for name in ("L0", "R0", "L1", "R1")}

    async def split(msg: Message, ctx: Context) -> Message:
        return msg

    async def left(msg: Message, ctx: Context) -> None:
        async with StreamWriter(ctx, msg) as out:
            await out.write("L0")
            turn["L0"].set()
            await turn["R0"].wait()
            await out.write("L1")
            turn["L1"].set()
            await turn["R1"].wait()

    async def right(msg: Message, ctx: Context) -> None:
        async with StreamWriter(ctx, msg) as out:
            await turn["L0"].wait()
            await out.write("R0")
            turn["R0"].set()
            await turn["L1"].wait()
            await out.write("R1")
            turn["R1"].set()

    s, lnode, rnode = Node(split, name="split"), Node(left, name="left"), Node(right, name="right")
    flow = running(create(s.to(lnode, rnode), lnode.to(), rnode.to()))
    msg = kit.message()
    async with open_stream(flow, msg) as stream:
        chunks = await kit.wait_for(_all(stream))
    assert [c.text for c in chunks[:4]] == ["L0", "R0", "L1", "R1"]  # interleaved
    by_node: dict[str, list[StreamChunk]] = {}
    for c in chunks:
        by_node.setdefault(provenance(c).node or "?", []).append(c)
    assert set(by_node) == {"left", "right"}
    for name, seq in by_node.items():
        assert [c.seq for c in seq] == [0, 1, 2]  # each stream in order
        assert {c.stream_id for c in seq} == {f"{msg.trace_id}:{name}"}
        assert [c.done for c in seq] == [False, False, True]


async def _all(stream: AsyncIterable[StreamChunk]) -> list[StreamChunk]:
    return [c async for c in stream]


def blocking_node(
    started: asyncio.Event, cleaned: asyncio.Event, release: asyncio.Event | None = None
) -> Node:
    async def llm(msg: Message, ctx: Context) -> Message:
        await ctx.emit_chunk(parent=msg, text="t0")
        started.set()
        try:
            await (release or asyncio.Event()).wait()
        except asyncio.CancelledError:
            cleaned.set()
            raise
        return answer(msg, "late")

    return Node(llm, name="llm")


async def test_leaving_early_cancels_the_trace(
    kit: type[Kit], running: Start, recorder: Recorder
) -> None:
    started, cleaned = asyncio.Event(), asyncio.Event()
    flow = create(blocking_node(started, cleaned).to(), middlewares=[recorder])
    running(flow)
    msg = kit.message()
    async with open_stream(flow, msg) as stream:
        async for chunk in stream:
            assert chunk.text == "t0"
            break
    await kit.wait_for(cleaned.wait())
    await recorder.wait("trace_cancel_finish", trace_id=msg.trace_id)
    assert stream.ended == "cancelled"
    assert flow.inspect().is_quiescent


async def test_cancel_on_exit_false_leaves_the_trace_running(
    kit: type[Kit], running: Start
) -> None:
    started, cleaned, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    flow = running(create(blocking_node(started, cleaned, release).to()))
    msg = kit.message()
    async with open_stream(flow, msg, cancel_on_exit=False) as stream:
        await anext(stream)
    assert stream.ended == "closed"
    assert msg.trace_id in flow.inspect().traces  # still running
    release.set()
    assert await flow.wait_ended(msg.trace_id, timeout=kit.WAIT_S)  # ran to its end
    assert not cleaned.is_set()  # never cancelled
    # The stream's helper lets go of the finished trace (it may be done already).
    await kit.wait_for(
        asyncio.gather(*(t for t in asyncio.all_tasks() if msg.trace_id in t.get_name()))
    )
    assert flow.inspect().is_quiescent  # its late result was discarded, not left at Rookery


async def test_cleanup_runs_when_the_consumer_task_is_cancelled(
    kit: type[Kit], running: Start, recorder: Recorder
) -> None:
    started, cleaned = asyncio.Event(), asyncio.Event()
    flow = create(blocking_node(started, cleaned).to(), middlewares=[recorder])
    running(flow)
    msg = kit.message()
    got_first = asyncio.Event()

    async def consumer() -> None:
        async with open_stream(flow, msg) as stream:
            async for _ in stream:
                got_first.set()

    task = asyncio.create_task(consumer())
    await kit.wait_for(got_first.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The shielded cleanup finished before the cancellation surfaced: already cancelled.
    trace = flow.inspect().traces.get(msg.trace_id)
    assert trace is None or trace.cancelled
    await kit.wait_for(cleaned.wait())
    await recorder.wait("trace_cancel_finish", trace_id=msg.trace_id)
    assert flow.inspect().is_quiescent


async def test_an_outer_timeout_still_cancels_the_trace(kit: type[Kit], running: Start) -> None:
    started, cleaned = asyncio.Event(), asyncio.Event()
    flow = running(create(blocking_node(started, cleaned).to()))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05), open_stream(flow, kit.message()) as stream:
            async for _ in stream:
                pass
    await kit.wait_for(cleaned.wait())


async def test_cancelled_elsewhere_raises_trace_cancelled(kit: type[Kit], running: Start) -> None:
    started, cleaned = asyncio.Event(), asyncio.Event()
    flow = running(create(blocking_node(started, cleaned).to()))
    msg = kit.message()
    async with open_stream(flow, msg) as stream:
        await anext(stream)
        await kit.wait_for(started.wait())
        assert await flow.cancel(msg.trace_id)
        with pytest.raises(TraceCancelled) as info:
            await anext(stream)
        assert info.value.trace_id == msg.trace_id
        assert stream.ended == "cancelled"
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
    assert cleaned.is_set()


async def test_own_cancel_ends_iteration_quietly(kit: type[Kit], running: Start) -> None:
    started, cleaned = asyncio.Event(), asyncio.Event()
    flow = running(create(blocking_node(started, cleaned).to()))
    async with open_stream(flow, kit.message()) as stream:
        await anext(stream)
        assert await stream.cancel()
        assert [c async for c in stream] == []
        assert await stream.result() is None
    await kit.wait_for(cleaned.wait())


async def test_flow_stopped_mid_stream_raises(kit: type[Kit]) -> None:
    started, cleaned = asyncio.Event(), asyncio.Event()
    flow = create(blocking_node(started, cleaned).to())
    flow.run()
    async with open_stream(flow, kit.message()) as stream:
        await anext(stream)
        await kit.wait_for(started.wait())
        await flow.stop()
        with pytest.raises(FlowStoppedError, match="stopped while streaming"):
            await anext(stream)
        assert stream.ended == "stopped"
    assert cleaned.is_set()


async def test_idle_timeout(kit: type[Kit], running: Start) -> None:
    started, cleaned = asyncio.Event(), asyncio.Event()
    flow = running(create(blocking_node(started, cleaned).to()))
    async with open_stream(flow, kit.message(), idle_timeout=0.01) as stream:
        assert (await anext(stream)).text == "t0"
        with pytest.raises(TimeoutError):
            await anext(stream)
    await kit.wait_for(cleaned.wait())  # leaving cancelled the trace


def test_a_non_message_is_rejected() -> None:
    node = llm_node(["a"])
    with pytest.raises(StreamingArgumentError, match=r"needs a penguiflow\.types\.Message"):
        open_stream(create(node.to()), "not a message")  # type: ignore[arg-type]  # on purpose


async def test_a_flow_that_never_ran_is_rejected(kit: type[Kit]) -> None:
    never_run = create(llm_node(["a"]).to())
    with pytest.raises(FlowNotRunningError, match="not running"):
        await open_stream(never_run, kit.message()).start()


async def test_a_second_stream_of_one_trace_is_rejected(kit: type[Kit], running: Start) -> None:
    flow = running(create(llm_node(["a"]).to()))
    msg = kit.message()
    async with open_stream(flow, msg) as stream:
        with pytest.raises(FlowRuntimeError, match="already has a subscription"):
            await open_stream(flow, msg).start()
        await stream.result()
    assert flow.inspect().is_quiescent


async def test_starting_a_stream_twice_is_rejected(kit: type[Kit], running: Start) -> None:
    flow = running(create(llm_node(["a"]).to()))
    async with open_stream(flow, kit.message()) as stream:
        with pytest.raises(StreamingUsageError, match="already started"):
            await stream.start()
        await stream.result()
    assert flow.inspect().is_quiescent


async def test_reading_an_unstarted_stream_is_rejected(kit: type[Kit], running: Start) -> None:
    flow = running(create(llm_node(["a"]).to()))
    unstarted = open_stream(flow, kit.message())
    with pytest.raises(StreamingUsageError, match="not started"):
        await anext(unstarted)
    await unstarted.aclose()
    assert unstarted.ended == "closed"
    assert flow.inspect().is_quiescent


async def test_no_streaming_path_is_reported_before_emitting(kit: type[Kit]) -> None:
    async def f(msg: Any, ctx: Context) -> Any:
        return msg

    a, b, c = Node(f, name="a"), Node(f, name="b"), Node(f, name="c")
    flow = create(a.to(b), b.to(c), c.to(b), allow_cycles=True)
    flow.run()
    try:
        with pytest.raises(StreamingPathError, match="no path from a to Rookery"):
            async with open_stream(flow, kit.message()):
                pass
        assert flow.inspect().traces == {}
    finally:
        await flow.stop()


async def test_slow_consumer_back_pressures_the_producer(kit: type[Kit], running: Start) -> None:
    maxsize, total = 4, 200
    blocked = asyncio.Event()
    state = {"produced": 0, "at_block": -1}

    async def producer(msg: Message, ctx: Context) -> Message:
        out = StreamWriter(ctx, msg)
        for i in range(total):
            emit = asyncio.ensure_future(out.write(f"t{i}"))
            await asyncio.sleep(0)  # one loop step: an emit with room completes in it
            if not emit.done() and not blocked.is_set():
                state["at_block"] = state["produced"]
                blocked.set()
            await emit
            state["produced"] += 1
        await out.close()
        return answer(msg, "end")

    flow = running(create(Node(producer, name="p").to(), queue_maxsize=maxsize))
    msg = kit.message()
    async with open_stream(flow, msg) as stream:
        first = await anext(stream)  # then stop reading for a while
        await kit.wait_for(blocked.wait())
        snap = flow.inspect()
        trace = snap.traces[msg.trace_id]
        assert trace.queued <= maxsize  # the subscription buffer is bounded
        assert trace.pending <= maxsize + 1  # + the producer's own item
        assert state["at_block"] <= maxsize + 1
        assert state["produced"] == state["at_block"]  # parked, not running ahead
        rest = [c async for c in stream]
        assert await stream.result() == FinalAnswer(text="end")
    texts = [first.text] + [c.text for c in rest]
    assert texts == [f"t{i}" for i in range(total)] + [""]
    assert state["produced"] == total


async def test_a_node_that_gives_up_raises_its_flow_error(kit: type[Kit], running: Start) -> None:
    async def llm(msg: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=msg, text="partial")
        raise ValueError("boom")

    flow = running(create(Node(llm, name="llm").to()))
    msg = kit.message()
    async with open_stream(flow, msg) as stream:
        first = await anext(stream)
        with pytest.raises(FlowError) as info:
            await stream.result()
    assert first.text == "partial"
    assert info.value.node_name == "llm"
    assert info.value.trace_id == msg.trace_id
    assert stream.ended == "failed"


async def test_a_closed_writer_names_itself_and_the_fix(kit: type[Kit], running: Start) -> None:
    errors: list[BaseException] = []

    async def llm(msg: Message, ctx: Context) -> None:
        out = StreamWriter(ctx, msg)
        await out.close()
        try:
            await out.write("late")
        except StreamingUsageError as exc:
            errors.append(exc)

    flow = running(create(Node(llm, name="llm").to()))
    async with open_stream(flow, kit.message()) as stream:
        await stream.result()
    (error,) = errors
    assert isinstance(error, FlowRuntimeError)
    assert "StreamWriter" in str(error)
    assert "new StreamWriter" in str(error)


async def test_a_failure_is_a_flow_error_whatever_the_flow_option(
    kit: type[Kit], running: Start
) -> None:
    async def llm(msg: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=msg, text="partial")
        raise ValueError("boom")

    for errors_to_rookery in (False, True):
        flow = running(create(Node(llm, name="llm").to(), emit_errors_to_rookery=errors_to_rookery))
        msg = kit.message()
        async with open_stream(flow, msg) as stream:
            with pytest.raises(FlowError) as info:
                await stream.result()
        assert (info.value.code, info.value.node_name) == ("NODE_EXCEPTION", "llm")
        assert isinstance(info.value.__cause__, ValueError)
        assert stream.ended == "failed"
        assert flow.inspect().is_quiescent  # nothing of it waits at the shared Rookery


async def test_a_request_dropped_without_output_raises_no_result(
    kit: type[Kit], running: Start
) -> None:
    async def gate(msg: Message, ctx: Context) -> None:
        return None  # drops the request: no chunk, no result

    flow = running(create(Node(gate, name="gate").to()))
    msg = kit.message()
    async with open_stream(flow, msg) as stream:
        with pytest.raises(FlowError) as info:
            await stream.result()
    assert (info.value.code, info.value.node_name, info.value.trace_id) == (
        "NO_RESULT", "gate", msg.trace_id,
    )  # fmt: skip
    assert stream.ended == "failed"


async def test_chunks_then_no_result_is_a_normal_end(kit: type[Kit], running: Start) -> None:
    async def llm(msg: Message, ctx: Context) -> None:
        await ctx.emit_chunk(parent=msg, text="only", done=True)

    flow = running(create(Node(llm, name="llm").to()))
    async with open_stream(flow, kit.message()) as stream:
        assert [c.text async for c in stream] == ["only"]
        assert await stream.result() is None
    assert stream.ended == "drained"


@pytest.mark.usefixtures("virtual_clock")  # the idle timeout fires only while all is idle
async def test_an_idle_timeout_loses_nothing(kit: type[Kit], running: Start) -> None:
    gate = asyncio.Event()

    async def llm(msg: Message, ctx: Context) -> Message:
        await ctx.emit_chunk(parent=msg, text="early")
        await gate.wait()
        await ctx.emit_chunk(parent=msg, text="late", done=True)
        return answer(msg, "done")

    flow = running(create(Node(llm, name="llm").to()))
    async with open_stream(flow, kit.message(), idle_timeout=1.0) as stream:
        assert (await anext(stream)).text == "early"
        with pytest.raises(TimeoutError):
            await anext(stream)  # nothing more yet
        assert stream.ended is None  # the stream stays usable
        gate.set()
        rest = [e async for e in stream.events()]
    assert [type(e).__name__ for e in rest] == ["StreamChunk", "StreamResult"]
    late, result = rest
    assert isinstance(late, StreamChunk) and (late.text, late.seq) == ("late", 1)
    assert isinstance(result, StreamResult) and result.value == FinalAnswer(text="done")


async def test_expect_types_the_result_and_checks_it(kit: type[Kit], running: Start) -> None:
    flow = running(create(llm_node(["a"]).to()))
    async with open_stream(flow, kit.message(), expect=FinalAnswer) as stream:
        events = [e async for e in stream.events()]
    result = events[-1]
    assert isinstance(result, StreamResult)
    assert result.value == FinalAnswer(text="a")  # the payload, checked on arrival
    assert isinstance(result.item, Message)
    assert stream.results == [FinalAnswer(text="a")]
    assert stream.ended == "drained"


@pytest.mark.parametrize(
    ("expect", "hint"),
    [
        (
            Message,
            "a stream's result is the payload of the Message that reached Rookery: "
            "pass expect=FinalAnswer",
        ),
        (
            StreamChunk,
            "the flow's exit node returned a Message whose payload is FinalAnswer: "
            "pass expect=FinalAnswer or fix the node",
        ),
    ],
)
async def test_a_result_that_is_not_expected_raises_flow_type_error(
    kit: type[Kit], running: Start, expect: type[object], hint: str
) -> None:
    flow = running(create(llm_node(["a"]).to()))
    msg = kit.message()
    async with open_stream(flow, msg, expect=expect) as stream:
        assert (await anext(stream)).text == "a"
        with pytest.raises(FlowTypeError) as info:
            await stream.result()
        assert stream.ended == "failed"
        with pytest.raises(StopAsyncIteration):  # the stream has ended
            await anext(stream)
    assert str(info.value) == (
        f"trace {msg.trace_id}: expected a result of type {expect.__qualname__}, "
        f"got FinalAnswer; {hint}"
    )
    assert stream.results == []
    assert flow.inspect().is_quiescent
