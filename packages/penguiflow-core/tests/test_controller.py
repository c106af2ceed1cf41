"""Controller loops: hop counting, budgets, the progress mirror, one final answer per trace."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.clock import use_wall_clock
from penguiflow.core import Context, PenguiFlow
from penguiflow.node import Node, NodePolicy
from penguiflow.registry import ModelRegistry
from penguiflow.types import WM, FinalAnswer, Headers, Message

if TYPE_CHECKING:
    from conftest import MakeFlow
    from penguiflow.testing import Recorder

# Timing-dependent: on the test kit's virtual clock when penguiflow-testing is installed.
pytestmark = pytest.mark.usefixtures("virtual_clock")


def controller(fn: Any, name: str = "ctl", **policy: Any) -> Node:
    policy = {"validate": "none", **policy}
    return Node(fn, name=name, policy=NodePolicy(**policy), allow_cycle=True)


def node(fn: Any, name: str) -> Node:
    return Node(fn, name=name, policy=NodePolicy(validate="none"))


def wm_msg(**wm: Any) -> Message:
    meta = wm.pop("meta", {})
    deadline = wm.pop("deadline_s", None)
    return Message(
        payload=WM(query="q", **wm), headers=Headers(tenant="t"), meta=meta, deadline_s=deadline
    )


async def fetch(flow: PenguiFlow) -> Any:
    return await asyncio.wait_for(flow.fetch(), 1.0)


async def test_hop_budget_counts_hops_and_ends_with_one_final_answer(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    seen_hops: list[int] = []

    async def idle(m: Message, ctx: Context) -> Message:
        seen_hops.append(m.payload.hops)
        return m  # never advances hops itself

    c = controller(idle)
    flow = make_flow(c.to(c), middlewares=[recorder])
    flow.run()
    m = wm_msg(budget_hops=3, meta={"k": 1})
    await flow.emit(m)
    out = await fetch(flow)
    assert seen_hops == [0, 1, 2]  # invoked exactly budget_hops times
    assert out.payload == FinalAnswer(text="Hop budget exhausted", citations=[])
    assert (out.trace_id, out.headers, out.meta) == (m.trace_id, m.headers, {"k": 1})
    assert flow.inspect().traces == {}  # exactly one result: nothing else pending
    assert len(recorder.matching("node_success")) == 3


async def test_runtime_does_not_double_count_hops_the_controller_advanced(
    make_flow: MakeFlow,
) -> None:
    """The runtime adds a hop only when the controller did not advance hops itself."""
    seen_hops: list[int] = []

    async def stepper(m: Message, ctx: Context) -> Message:
        seen_hops.append(m.payload.hops)
        wm = m.payload.model_copy(update={"hops": m.payload.hops + 1})
        return m.model_copy(update={"payload": wm})

    c = controller(stepper)
    flow = make_flow(c.to(c))
    flow.run()
    await flow.emit(wm_msg(budget_hops=4))
    out = await fetch(flow)
    assert seen_hops == [0, 1, 2, 3]  # 3 -> 4 reaches the budget
    assert out.payload.text == "Hop budget exhausted"


async def test_controller_jumping_hops_is_respected(make_flow: MakeFlow) -> None:
    seen_hops: list[int] = []

    async def jumper(m: Message, ctx: Context) -> Message:
        seen_hops.append(m.payload.hops)
        wm = m.payload.model_copy(update={"hops": m.payload.hops + 3})
        return m.model_copy(update={"payload": wm})

    c = controller(jumper)
    flow = make_flow(c.to(c))
    flow.run()
    await flow.emit(wm_msg(budget_hops=8))
    assert (await fetch(flow)).payload.text == "Hop budget exhausted"
    assert seen_hops == [0, 3, 6]  # 3 and 6 are below 8, then 9 >= 8


async def test_token_budget(make_flow: MakeFlow) -> None:
    calls: list[int] = []

    async def spend(m: Message, ctx: Context) -> Message:
        calls.append(m.payload.tokens_used)
        wm = m.payload.model_copy(update={"tokens_used": m.payload.tokens_used + 40})
        return m.model_copy(update={"payload": wm, "meta": {"spent": wm.tokens_used}})

    c = controller(spend)
    flow = make_flow(c.to(c))
    flow.run()
    m = wm_msg(budget_tokens=100, budget_hops=None)
    await flow.emit(m)
    out = await fetch(flow)
    assert calls == [0, 40, 80]
    assert out.payload == FinalAnswer(text="Token budget exhausted")
    # the exhaustion result is a copy of the *returned* message
    assert out.meta == {"spent": 120}
    assert out.trace_id == m.trace_id
    assert flow.inspect().traces == {}


async def test_token_budget_checked_before_hop_budget(make_flow: MakeFlow) -> None:
    async def spend(m: Message, ctx: Context) -> Message:
        wm = m.payload.model_copy(update={"tokens_used": 10})
        return m.model_copy(update={"payload": wm})

    c = controller(spend)
    flow = make_flow(c.to(c))
    flow.run()
    await flow.emit(wm_msg(budget_tokens=10, budget_hops=1))
    assert (await fetch(flow)).payload.text == "Token budget exhausted"


async def test_deadline_on_returned_wm_message(make_flow: MakeFlow, recorder: Recorder) -> None:
    now = [1000.0]
    calls: list[int] = []

    async def slow(m: Message, ctx: Context) -> Message:
        calls.append(1)
        now[0] = 2000.0  # the deadline passes while the controller works
        return m

    c = controller(slow)
    with use_wall_clock(lambda: now[0]):
        flow = make_flow(c.to(c), middlewares=[recorder])
        flow.run()
    m = wm_msg(deadline_s=1500.0, budget_hops=None, budget_tokens=5)
    await flow.emit(m)
    out = await fetch(flow)
    assert out.payload == FinalAnswer(text="Deadline exceeded")
    assert out.deadline_s == 1500.0
    assert calls == [1]
    assert recorder.matching("deadline_skip") == []  # case (b): no deadline_skip event
    assert flow.inspect().traces == {}


async def test_controller_message_final_answer_is_delivered_exactly_once(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    """A final answer is not fed back to the controller: node_success, then the trace drains."""
    calls: list[int] = []

    async def answer(m: Message, ctx: Context) -> Message:
        calls.append(m.payload.hops)
        if m.payload.hops < 2:
            return m
        return m.model_copy(update={"payload": FinalAnswer(text="42")})

    c = controller(answer)
    flow = make_flow(c.to(c), middlewares=[recorder])
    flow.run()
    m = wm_msg(budget_hops=10)
    await flow.emit(m)
    out = await fetch(flow)
    assert out.payload == FinalAnswer(text="42")
    assert calls == [0, 1, 2]
    assert flow.inspect().traces == {}
    assert flow.floes[-1].queue.qsize() == 0
    successes = recorder.matching("node_success", trace_id=m.trace_id)
    assert len(successes) == 3
    assert recorder.names(trace_id=m.trace_id)[-1] == "node_success"


async def test_exhaustion_does_not_reinvoke_the_controller(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    """A budget-exhausted answer is delivered once, without invoking the controller again."""
    calls: list[int] = []

    async def idle(m: Message, ctx: Context) -> Message:
        calls.append(1)
        return m

    c = controller(idle)
    flow = make_flow(c.to(c), middlewares=[recorder])
    flow.run()
    await flow.emit(wm_msg(budget_hops=1))
    out = await fetch(flow)
    assert out.payload.text == "Hop budget exhausted"
    assert calls == [1]
    assert recorder.names()[-1] == "node_success"
    assert flow.inspect().traces == {}


async def test_bare_final_answer_from_a_typed_controller_is_one_result(
    make_flow: MakeFlow, recorder: Recorder
) -> None:
    """A bare FinalAnswer from a registered controller re-wraps into the envelope."""
    calls: list[int] = []

    async def typed(wm: WM, ctx: Context) -> WM | FinalAnswer:
        calls.append(wm.hops)
        if wm.hops < 2:
            return wm
        return FinalAnswer(text="done", citations=["c1"])

    reg = ModelRegistry()
    reg.register("typed", WM, FinalAnswer)
    c = controller(typed, "typed", validate="in")
    flow = make_flow(c.to(c), middlewares=[recorder])
    flow.run(registry=reg)
    m = wm_msg(budget_hops=10, meta={"req": "r1"})
    await flow.emit(m)
    out = await fetch(flow)
    assert isinstance(out, Message)
    assert out.payload == FinalAnswer(text="done", citations=["c1"])
    assert (out.trace_id, out.meta) == (m.trace_id, {"req": "r1"})
    assert calls == [0, 1, 2]
    assert flow.inspect().traces == {}
    assert recorder.matching("node_error") == []


async def test_wm_goes_only_to_the_self_edge_and_results_use_any_rookery_edge(
    make_flow: MakeFlow,
) -> None:
    seen_by_sink: list[Any] = []

    async def idle(m: Message, ctx: Context) -> Message:
        return m

    async def sink(m: Any, ctx: Context) -> Any:
        seen_by_sink.append(m)
        return m

    c, s = controller(idle), node(sink, "sink")
    flow = make_flow(c.to(c, s))
    flow.run()
    await flow.emit(wm_msg(budget_hops=3))
    out = await fetch(flow)
    assert out.payload.text == "Hop budget exhausted"
    assert seen_by_sink == []


async def test_non_wm_results_of_a_controller_route_normally(make_flow: MakeFlow) -> None:
    seen_by_sink: list[Any] = []

    async def ctl(m: Any, ctx: Context) -> Any:
        if isinstance(m, Message):
            return "plain"
        return None  # the "plain" item looping back on the self-edge stops here

    async def sink(m: Any, ctx: Context) -> Any:
        seen_by_sink.append(m)
        return m

    c, s = controller(ctl), node(sink, "sink")
    flow = make_flow(c.to(c, s))
    flow.run()
    await flow.emit(wm_msg())
    assert await fetch(flow) == "plain"
    assert seen_by_sink == ["plain"]


async def test_progress_mirror_for_unbounded_controllers(make_flow: MakeFlow) -> None:
    received: list[Message] = []

    async def loop(m: Message, ctx: Context) -> Message:
        received.append(m)
        if m.payload.hops >= 2:
            return m.model_copy(update={"payload": FinalAnswer(text="fin")})
        return m

    c = controller(loop)
    flow = make_flow(c.to(c))
    flow.run()
    m = wm_msg(budget_hops=None)
    await flow.emit(m)
    mirrors = [await fetch(flow), await fetch(flow)]
    final = await fetch(flow)
    assert [x.payload.hops for x in mirrors] == [1, 2]
    assert all(x.trace_id == m.trace_id for x in mirrors)
    assert final.payload == FinalAnswer(text="fin")
    # mirrors are deep copies, not the objects that looped back to the controller
    assert mirrors[0] is not received[1]
    assert mirrors[0].payload is not received[1].payload
    assert mirrors[0] == received[1]
    assert flow.inspect().traces == {}


async def test_no_mirror_when_a_budget_is_set(make_flow: MakeFlow) -> None:
    calls: list[int] = []

    async def loop(m: Message, ctx: Context) -> Message:
        calls.append(m.payload.hops)
        if m.payload.hops >= 2:
            return m.model_copy(update={"payload": FinalAnswer(text="fin")})
        return m

    c = controller(loop)
    flow = make_flow(c.to(c))
    flow.run()
    await flow.emit(wm_msg(budget_hops=None, budget_tokens=1000))
    out = await fetch(flow)
    assert out.payload.text == "fin"  # the first Rookery item: no mirror before it
    assert calls == [0, 1, 2]
    assert flow.inspect().traces == {}


async def test_mirrored_wm_re_emit_is_suppressed(make_flow: MakeFlow) -> None:
    calls: list[int] = []
    second = asyncio.Event()
    release = asyncio.Event()

    async def loop(m: Message, ctx: Context) -> Message:
        calls.append(m.payload.hops)
        if len(calls) == 2:
            second.set()
            await release.wait()
            return m.model_copy(update={"payload": FinalAnswer(text="fin")})
        return m

    c = controller(loop)
    flow = make_flow(c.to(c))
    flow.run()
    m = wm_msg(budget_hops=None)
    await flow.emit(m)
    mirror = await fetch(flow)
    await asyncio.wait_for(second.wait(), 1.0)
    assert mirror.payload.hops == 1
    await flow.emit(mirror)  # silently ignored: no second loop
    flow.emit_nowait(mirror)
    assert flow.context(c).queue_depth_in() == 0
    release.set()
    assert (await fetch(flow)).payload.text == "fin"
    assert calls == [0, 1]
    assert flow.inspect().traces == {}


async def test_wm_with_other_hops_is_not_suppressed(make_flow: MakeFlow) -> None:
    second = asyncio.Event()
    release = asyncio.Event()
    calls: list[int] = []

    third = asyncio.Event()

    async def loop(m: Message, ctx: Context) -> Any:
        calls.append(m.payload.hops)
        if len(calls) == 2:
            second.set()
            await release.wait()
        if len(calls) == 3:
            third.set()
        return m if len(calls) == 1 else None

    c = controller(loop)
    flow = make_flow(c.to(c))
    flow.run()
    m = wm_msg(budget_hops=None)
    await flow.emit(m)
    mirror = await fetch(flow)
    await asyncio.wait_for(second.wait(), 1.0)
    other = mirror.model_copy(update={"payload": WM(query="q", hops=7, budget_hops=None)})
    await flow.emit(other)
    assert flow.context(c).queue_depth_in() == 1
    release.set()
    await asyncio.wait_for(third.wait(), 1.0)
    assert calls == [0, 1, 7]
