"""A controller loop guarded by a deadline, a hop budget and a token budget at once.

The controller node is wired to itself (``allow_cycle=True`` + ``controller.to(controller)``)
and works on a ``WM`` (working memory). Each invocation is one "hop": it pretends to call
an LLM, records a fact and the tokens it spent, and either loops again or answers.

Every request below sets all three guardrails; each one is tuned so that a different
guardrail ends it:

* ``answer``   - finishes on its own with a ``FinalAnswer`` (with citations);
* ``hops``     - an open question that never converges: "Hop budget exhausted";
* ``tokens``   - an expensive question: "Token budget exhausted";
* ``deadline`` - a slow question: "Deadline exceeded".

Simulated latency: instead of sleeping, every fake LLM call advances a fake wall clock by
one second through ``penguiflow.clock.use_wall_clock``. The runtime reads deadlines
through that same clock, so the demo is instant and deterministic. Real code leaves the
clock alone.

Run it with::

    python examples/controller_multihop/main.py
"""

from __future__ import annotations

import asyncio
import time

from penguiflow import WM, Context, FinalAnswer, Headers, Message, Node, NodePolicy, create
from penguiflow.clock import use_wall_clock

TOKENS_PER_CALL = 100
FACTS_NEEDED = {"easy": 3}  # questions not listed here never converge


class FakeClock:
    """Wall clock that only moves when the fake LLM "spends" time."""

    def __init__(self) -> None:
        self.base = time.time()
        self.offset = 0.0

    def __call__(self) -> float:
        return self.base + self.offset


CLOCK = FakeClock()


async def controller(msg: Message, ctx: Context) -> Message:
    """One hop: gather a fact, count tokens, then answer or loop."""
    wm: WM = msg.payload
    CLOCK.offset += 1.0  # the "LLM call" takes one (simulated) second
    fact = f"fact#{len(wm.facts) + 1} about {wm.query!r}"
    wm = wm.model_copy(
        update={"facts": [*wm.facts, fact], "tokens_used": wm.tokens_used + TOKENS_PER_CALL}
    )
    # meta travels with the message, and also onto the runtime's guardrail answers.
    msg.meta["llm_calls"] = msg.meta.get("llm_calls", 0) + 1

    if len(wm.facts) >= FACTS_NEEDED.get(wm.query, 10**9):
        answer = FinalAnswer(text=f"answered {wm.query!r}", citations=wm.facts)
        # A Message(FinalAnswer) goes straight to Rookery; the loop ends here.
        return msg.model_copy(update={"payload": answer})
    # A Message(WM) loops back to the controller. We leave wm.hops alone: the runtime
    # advances it and enforces budget_hops, budget_tokens and deadline_s for us.
    return msg.model_copy(update={"payload": wm})


def request(query: str, *, budget_hops: int, budget_tokens: int, deadline_in_s: float) -> Message:
    """Build a request with all three guardrails set."""
    return Message(
        payload=WM(query=query, budget_hops=budget_hops, budget_tokens=budget_tokens),
        headers=Headers(tenant="acme"),
        deadline_s=CLOCK() + deadline_in_s,  # an absolute wall-clock instant
        meta={"case": query},
    )


async def main() -> dict[str, tuple[str, int]]:
    """Run the four requests one after another; return {case: (final text, llm calls)}."""
    controller_node = Node(
        controller, name="controller", policy=NodePolicy(validate="none"), allow_cycle=True
    )
    flow = create(controller_node.to(controller_node))

    # (query, budget_hops, budget_tokens, deadline in seconds from now)
    cases = [
        ("easy", 8, 1_000, 60.0),
        ("hops", 4, 1_000, 60.0),  # 4 hops allowed, the question needs more
        ("tokens", 8, 250, 60.0),  # 100 tokens per call: the 3rd call crosses 250
        ("deadline", 8, 1_000, 2.5),  # 1 s per call: the 3rd call ends past 2.5 s
    ]

    results_by_case: dict[str, tuple[str, int]] = {}
    # Workers started by run() inherit this clock, and so does the deadline check.
    with use_wall_clock(CLOCK):
        flow.run()
        try:
            for query, hops, tokens, deadline_in_s in cases:
                msg = request(
                    query, budget_hops=hops, budget_tokens=tokens, deadline_in_s=deadline_in_s
                )
                # subscribe() collects this trace's Rookery items until the trace drains,
                # which proves the loop produced exactly one result.
                async with flow.subscribe(msg.trace_id) as results:
                    await flow.emit(msg)
                    items = [item async for item in results]
                assert len(items) == 1, items
                out = items[0]
                answer: FinalAnswer = out.payload
                calls = out.meta.get("llm_calls", 0)
                results_by_case[query] = (answer.text, calls)
                print(f"{query:>8}: {answer.text!r} after {calls} LLM calls")
                if answer.citations:
                    print(f"          citations: {answer.citations}")
        finally:
            await flow.stop()
    return results_by_case


if __name__ == "__main__":
    asyncio.run(main())
