"""Soak: long runs keep memory flat and leave no task behind.

Four shapes, each driven by one producer and one consumer running concurrently, with
the flow's bounded edges as the only buffer:

- a 3-node chain (one message per trace, results checked in emission order);
- a controller loop (``c.to(c)``, hop budget, one FinalAnswer per trace);
- a fan-out/join (``a -> (b, c) -> join_k(2)``; every trace joined exactly once);
- a streaming node (``ctx.emit_chunk``; chunks of each stream in ``seq`` order).

Memory: RSS (``/proc/self/statm`` after ``gc.collect()``) is read once the warm-up
(the first 10 %) is done and again at the end; the growth must stay under
``sizes.rss_budget_mb``. The chain also runs under ``tracemalloc`` at the CI size, so a
leak of even a few bytes per message shows up. Tasks: ``asyncio.all_tasks()`` after
``stop()`` equals the set from before ``run()``.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from penguiflow import WM, Context, FinalAnswer, Headers, Message, Node, NodePolicy, create
from penguiflow.core import BUDGET_EXCEEDED_TEXT, PenguiFlow
from penguiflow.patterns import join_k
from penguiflow.types import StreamChunk

if TYPE_CHECKING:
    from conftest import Figure, Rss, Sizes, TaskLeaks, TasksNow

H = Headers(tenant="soak")
MB = 1024 * 1024


async def drive(
    flow: PenguiFlow,
    *,
    emits: int,
    make: Callable[[int], Any],
    fetches: int,
    check: Callable[[int, Any], None],
    rss: Callable[[], int],
    trace_memory: bool = False,
) -> dict[str, float]:
    """Emit ``emits`` items and fetch ``fetches`` results concurrently; measure memory.

    The first 10 % of the fetches are the warm-up; memory is read after it and at the end.
    """
    warm = max(1, fetches // 10)
    marks: dict[str, float] = {}

    async def produce() -> None:
        for i in range(emits):
            await flow.emit(make(i))

    async def consume() -> None:
        for i in range(fetches):
            check(i, await flow.fetch())
            if i + 1 == warm:
                marks["rss_warm"] = rss()
                marks["t_warm"] = time.perf_counter()
                if trace_memory:
                    tracemalloc.start()

    started = time.perf_counter()
    async with asyncio.timeout(600):  # hang guard only
        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce())
            tg.create_task(consume())
    ended = time.perf_counter()
    if trace_memory:
        marks["traced_kb"] = tracemalloc.get_traced_memory()[0] / 1024
        tracemalloc.stop()
    marks["rss_end"] = rss()
    marks["seconds"] = ended - started
    marks["growth_mb"] = (marks["rss_end"] - marks["rss_warm"]) / MB
    return marks


async def finish(
    flow: PenguiFlow,
    before: set[asyncio.Task[Any]],
    task_leaks: Callable[[set[asyncio.Task[Any]]], list[str]],
) -> None:
    """Nothing left while running; ``stop()`` leaves no worker and no task."""
    snap = flow.inspect()
    assert snap.is_quiescent, snap
    await asyncio.wait_for(flow.stop(), 10)
    assert flow.inspect().workers == 0
    assert task_leaks(before) == []


def node(name: str, fn: Callable[[Any, Any], Awaitable[Any]], **policy: Any) -> Node:
    return Node(fn, name=name, policy=NodePolicy(**policy))


async def test_chain_soak_flat_memory_no_tasks(
    sizes: Sizes, rss: Rss, tasks_now: TasksNow, task_leaks: TaskLeaks, figure: Figure
) -> None:
    n = sizes.chain_messages

    async def a(msg: Message, ctx: Context) -> Message:
        return msg

    async def b(msg: Message, ctx: Context) -> Message:
        return msg

    async def c(msg: Message, ctx: Context) -> Message:
        return msg

    na, nb, nc = node("a", a), node("b", b), node("c", c)
    flow = create(na.to(nb), nb.to(nc), nc.to())
    before = tasks_now()
    flow.run()

    def check(i: int, out: Any) -> None:
        assert out.payload == i  # a linear chain keeps emission order

    marks = await drive(
        flow,
        emits=n,
        make=lambda i: Message(payload=i, headers=H),
        fetches=n,
        check=check,
        rss=rss,
        trace_memory=not sizes.soak,
    )
    await finish(flow, before, task_leaks)
    figure(messages=n, hops=3 * n, seconds=round(marks["seconds"], 2), **_mem(marks))
    assert marks["growth_mb"] < sizes.rss_budget_mb, marks
    if "traced_kb" in marks:
        # ~18,000 messages after warm-up: 256 KiB retained would be < 15 bytes/message.
        assert marks["traced_kb"] < 256, marks


async def test_controller_loop_soak(
    sizes: Sizes, rss: Rss, tasks_now: TasksNow, task_leaks: TaskLeaks, figure: Figure
) -> None:
    hops_per_trace = 500
    traces = max(1, sizes.controller_hops // hops_per_trace)
    calls = 0

    async def controller(msg: Message, ctx: Context) -> Message:
        nonlocal calls
        calls += 1
        return msg  # never advances hops itself: the runtime does

    c = Node(controller, name="controller", allow_cycle=True)
    flow = create(c.to(c))
    before = tasks_now()
    flow.run()

    def make(i: int) -> Message:
        return Message(payload=WM(query=str(i), budget_hops=hops_per_trace), headers=H)

    seen: set[str] = set()

    def check(i: int, out: Any) -> None:
        assert isinstance(out.payload, FinalAnswer)
        assert out.payload.text == BUDGET_EXCEEDED_TEXT
        assert out.trace_id not in seen  # exactly one terminal result per trace
        seen.add(out.trace_id)

    marks = await drive(flow, emits=traces, make=make, fetches=traces, check=check, rss=rss)
    await finish(flow, before, task_leaks)
    assert calls == traces * hops_per_trace
    figure(traces=traces, hops=calls, seconds=round(marks["seconds"], 2), **_mem(marks))
    assert marks["growth_mb"] < sizes.rss_budget_mb, marks


async def test_fanout_join_soak(
    sizes: Sizes, rss: Rss, tasks_now: TasksNow, task_leaks: TaskLeaks, figure: Figure
) -> None:
    n = sizes.join_traces

    async def split(msg: Message, ctx: Context) -> Message:
        return msg

    async def left(msg: Message, ctx: Context) -> Message:
        return msg.model_copy(update={"payload": ("L", msg.payload)})

    async def right(msg: Message, ctx: Context) -> Message:
        return msg.model_copy(update={"payload": ("R", msg.payload)})

    a, b, c = node("split", split), node("left", left), node("right", right)
    j = join_k("join", 2)
    flow = create(a.to(b, c), b.to(j), c.to(j), j.to())
    before = tasks_now()
    flow.run()

    def check(i: int, out: Any) -> None:
        parts = sorted(out.payload)
        assert [p[0] for p in parts] == ["L", "R"]
        assert parts[0][1] == parts[1][1]

    marks = await drive(
        flow,
        emits=n,
        make=lambda i: Message(payload=i, headers=H),
        fetches=n,
        check=check,
        rss=rss,
    )
    assert not any(flow.inspect().resources.values())  # every bucket released
    await finish(flow, before, task_leaks)
    figure(traces=n, messages=4 * n, seconds=round(marks["seconds"], 2), **_mem(marks))
    assert marks["growth_mb"] < sizes.rss_budget_mb, marks


async def test_streaming_node_soak(
    sizes: Sizes, rss: Rss, tasks_now: TasksNow, task_leaks: TaskLeaks, figure: Figure
) -> None:
    per_stream = 100
    streams = max(1, sizes.stream_chunks // per_stream)

    async def streamer(msg: Message, ctx: Context) -> None:
        for k in range(per_stream):
            await ctx.emit_chunk(parent=msg, text=str(k), done=k == per_stream - 1)
        return None

    s = node("streamer", streamer)
    flow = create(s.to())
    before = tasks_now()
    flow.run()
    last: dict[str, int] = {}

    def check(i: int, out: Any) -> None:
        chunk = out.payload
        assert isinstance(chunk, StreamChunk)
        expected = last.get(chunk.stream_id, -1) + 1
        assert chunk.seq == expected  # seq order on every edge
        assert chunk.text == str(expected)
        if chunk.done:
            del last[chunk.stream_id]
        else:
            last[chunk.stream_id] = chunk.seq

    marks = await drive(
        flow,
        emits=streams,
        make=lambda i: Message(payload=i, headers=H),
        fetches=streams * per_stream,
        check=check,
        rss=rss,
    )
    assert last == {}
    await finish(flow, before, task_leaks)
    figure(
        streams=streams,
        chunks=streams * per_stream,
        seconds=round(marks["seconds"], 2),
        **_mem(marks),
    )
    assert marks["growth_mb"] < sizes.rss_budget_mb, marks


def _mem(marks: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rss_mb": round(marks["rss_end"] / MB, 1),
        "rss_growth_mb": round(marks["growth_mb"], 2),
    }
    if "traced_kb" in marks:
        out["tracemalloc_kb"] = round(marks["traced_kb"], 1)
    return out
