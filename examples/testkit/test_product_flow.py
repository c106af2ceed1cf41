"""A product team's flow tests, written with penguiflow-testing.

The first half is the "product code" (in a real repository it lives in its own package
and is imported here); the second half is the test file. The tests use the plugin's
fixtures: ``flow_kit`` (drive flows, record events per trace) and ``virtual_clock``
(every timer fires at once, wall time follows), and the ``penguiflow_quiescent`` marker
(after each test, every flow the kit saw must be stopped and hold nothing).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import BaseModel

from penguiflow.clock import wall_time
from penguiflow.core import DEADLINE_EXCEEDED_TEXT, Context, PenguiFlow, create
from penguiflow.node import Node, NodePolicy
from penguiflow.registry import ModelRegistry
from penguiflow.testing import (
    FlowTestKit,
    VirtualClock,
    assert_preserves_message_envelope,
    simulate_error,
)
from penguiflow.types import FinalAnswer, Headers, Message

# --------------------------------------------------------------------- product code


class Ticket(BaseModel):
    text: str
    kind: str = "unknown"
    articles: list[str] = []


async def classify(ticket: Ticket, ctx: Context) -> Ticket:
    kind = "billing" if "invoice" in ticket.text.lower() else "general"
    return ticket.model_copy(update={"kind": kind})


async def search_kb(ticket: Ticket, ctx: Context) -> Ticket:
    await asyncio.sleep(0.8)  # the knowledge-base HTTP call
    return ticket.model_copy(update={"articles": [f"kb/{ticket.kind}/1", f"kb/{ticket.kind}/2"]})


async def answer(message: Message, ctx: Context) -> Message:
    ticket: Ticket = message.payload
    for word in ("Please ", "see ", "our ", "articles."):
        await ctx.emit_chunk(parent=message, text=word)
    await ctx.emit_chunk(parent=message, text="", done=True)
    final = FinalAnswer(text="Please see our articles.", citations=ticket.articles)
    return message.model_copy(update={"payload": final})


KB_POLICY = NodePolicy(timeout_s=5.0, max_retries=2, backoff_base=2.0, backoff_mult=2.0)


def build_flow(search: Any = search_kb) -> tuple[PenguiFlow, ModelRegistry]:
    """classify -> search_kb (retried, with a timeout) -> answer (streams, then answers)."""
    classify_node = Node(classify)
    search_node = Node(search, name="search_kb", policy=KB_POLICY)
    answer_node = Node(answer, policy=NodePolicy(validate="none"))
    flow = create(classify_node.to(search_node), search_node.to(answer_node), answer_node.to())
    registry = ModelRegistry()
    registry.register("classify", Ticket, Ticket)
    registry.register("search_kb", Ticket, Ticket)
    return flow, registry


# --------------------------------------------------------------------------- tests

# asyncio: pytest-asyncio's default strict mode runs only marked async tests.
pytestmark = [pytest.mark.asyncio, pytest.mark.penguiflow_quiescent]


def ticket(text: str = "Where is my invoice?", **fields: Any) -> Message:
    return Message(payload=Ticket(text=text), headers=Headers(tenant="acme"), **fields)


async def test_happy_path(flow_kit: FlowTestKit, virtual_clock: VirtualClock) -> None:
    flow, registry = build_flow()
    message = ticket()

    run = await flow_kit.run_trace(flow, message, registry=registry, timeout_s=60)

    assert run.done == "drained"
    assert run.text == "Please see our articles."
    (final,) = run.payloads
    assert isinstance(final, FinalAnswer)
    assert final.citations == ["kb/billing/1", "kb/billing/2"]
    flow_kit.assert_node_sequence(message.trace_id, ["classify", "search_kb", "answer"])
    assert virtual_clock.time() == pytest.approx(0.8)  # the KB call, on virtual time


async def test_flaky_knowledge_base_is_retried_instantly(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    flaky = simulate_error(
        "search_kb",
        "E_KB_503",
        fail_times=2,
        result_factory=lambda t: t.model_copy(update={"articles": ["kb/cached"]}),
    )
    flow, registry = build_flow(search=flaky)
    message = ticket()
    started = time.perf_counter()

    result = await flow_kit.run_one(flow, message, registry=registry, timeout_s=60, expect=Message)

    assert time.perf_counter() - started < 0.5  # 6 s of backoff, run in milliseconds
    assert virtual_clock.time() == 6.0  # backoff 2 s, then 4 s
    assert flaky.attempts == 3
    assert result.payload.citations == ["kb/cached"]  # the result; the chunks are skipped
    retries = [
        e for e in flow_kit.get_recorded_events(message.trace_id) if e.event_type == "node_retry"
    ]
    assert [e.extra["sleep_s"] for e in retries] == [2.0, 4.0]
    flow_kit.assert_node_sequence(message.trace_id, ["classify", "search_kb", "answer"])


async def test_hanging_knowledge_base_times_out(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    async def hangs(ticket: Ticket, ctx: Context) -> Ticket:
        await asyncio.sleep(3600)
        return ticket

    flow, registry = build_flow(search=hangs)
    message = ticket()

    run = await flow_kit.run_trace(flow, message, registry=registry, timeout_s=60)

    assert run.items == ()  # every attempt timed out: nothing reached Rookery...
    assert run.done == "failed"  # ...and the run says why
    assert run.error is not None
    assert (run.error.code, run.error.node_name, run.error.attempts) == (
        "NODE_TIMEOUT", "search_kb", 3,
    )  # fmt: skip
    kinds = [e.event_type for e in run.events]
    assert kinds.count("node_timeout") == 3
    assert kinds[-1] == "node_failed"
    assert virtual_clock.time() == 5 + 2 + 5 + 4 + 5


async def test_deadline_turns_into_a_final_answer(
    flow_kit: FlowTestKit, virtual_clock: VirtualClock
) -> None:
    async def slow_kb(ticket: Ticket, ctx: Context) -> Ticket:
        await asyncio.sleep(4.0)  # under the node timeout, over the request deadline
        return ticket

    flow, registry = build_flow(search=slow_kb)
    message = ticket(deadline_s=wall_time() + 3.0)

    result = await flow_kit.run_one(flow, message, registry=registry, timeout_s=60, expect=Message)

    assert result.payload == FinalAnswer(text=DEADLINE_EXCEEDED_TEXT)
    assert result.trace_id == message.trace_id
    flow_kit.assert_node_sequence(message.trace_id, ["classify", "search_kb"])


async def test_answer_keeps_the_envelope() -> None:
    message = ticket()
    message.payload.articles = ["kb/general/1"]

    check = await assert_preserves_message_envelope(Node(answer), message)

    assert [chunk.text for chunk in check.chunks][:2] == ["Please ", "see "]
    assert check.result is not None
    assert check.result.payload.citations == ["kb/general/1"]
