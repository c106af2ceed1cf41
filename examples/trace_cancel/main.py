"""Cancel one request while it is stuck inside a playbook; the others carry on.

The ``agent`` node answers each request by running a one-node playbook (a mock LLM call).
One request hangs in the playbook. ``await flow.cancel(trace_id)`` then:

* emits ``trace_cancel_start`` (with how much work the trace still had);
* cancels the agent's in-flight invocation, and ``call_playbook`` mirrors the cancel into
  the subflow, so the playbook node sees ``asyncio.CancelledError`` at its ``await`` and
  can clean up;
* emits ``trace_cancel_finish`` once nothing of that trace is left anywhere.

The other request, handled concurrently (``max_concurrency=2``), is not affected.
No sleeps: the example waits on events.

Run it with::

    python examples/trace_cancel/main.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pydantic import BaseModel

from penguiflow import (
    Context,
    FlowEvent,
    Headers,
    Message,
    Middleware,
    Node,
    NodePolicy,
    PenguiFlow,
    create,
)

WATCHED = {"trace_cancel_start", "node_trace_cancelled", "trace_cancel_finish"}


class Ask(BaseModel):
    question: str


class State:
    """What the example observes, shared between nodes, middlewares and main()."""

    def __init__(self) -> None:
        self.llm_started: dict[str, asyncio.Event] = {}
        self.cleaned_up: list[str] = []  # trace ids whose playbook node saw CancelledError
        self.cancel_finished = asyncio.Event()
        self.events: list[tuple[str, str, str | None]] = []  # (flow, event, trace_id)

    def started(self, trace_id: str) -> asyncio.Event:
        return self.llm_started.setdefault(trace_id, asyncio.Event())


def event_printer(label: str, state: State) -> Middleware:
    """Build a middleware: one positional argument, the FlowEvent."""

    async def middleware(event: FlowEvent) -> None:
        if event.event_type not in WATCHED:
            return
        state.events.append((label, event.event_type, event.trace_id))
        print(
            f"  [{label} event] {event.event_type:<20} trace={event.trace_id} "
            f"node={event.node_name} pending={event.trace_pending}"
        )
        if label == "main" and event.event_type == "trace_cancel_finish":
            state.cancel_finished.set()

    return middleware


def playbook_factory(state: State) -> Callable[[], tuple[PenguiFlow, None]]:
    async def mock_llm(msg: Message, _ctx: Context) -> Message:
        ask: Ask = msg.payload
        state.started(msg.trace_id).set()
        try:
            if ask.question.startswith("hang"):
                await asyncio.Event().wait()  # an LLM call that never returns
            return msg.model_copy(update={"payload": f"answer to {ask.question!r}"})
        except asyncio.CancelledError:
            # Cleanup goes here (close the HTTP stream, release a slot...); then re-raise.
            print(f"  [playbook] mock_llm got CancelledError for trace={msg.trace_id}")
            state.cleaned_up.append(msg.trace_id)
            raise

    def build() -> tuple[PenguiFlow, None]:
        node = Node(mock_llm, policy=NodePolicy(validate="none"))
        return create(node.to(), middlewares=[event_printer("playbook", state)]), None

    return build


async def main() -> dict[str, object]:
    state = State()
    build_playbook = playbook_factory(state)

    async def agent(msg: Message, ctx: Context) -> Message:
        answer = await ctx.call_playbook(build_playbook, msg)
        return msg.model_copy(update={"payload": answer})

    agent_node = Node(agent, policy=NodePolicy(validate="none", max_concurrency=2))
    flow = create(agent_node.to(), middlewares=[event_printer("main", state)])
    flow.run()

    stuck = Message(payload=Ask(question="hang forever"), headers=Headers(tenant="acme"))
    normal = Message(payload=Ask(question="what is 2+2"), headers=Headers(tenant="acme"))
    try:
        await flow.emit(stuck)
        await flow.emit(normal)

        await state.started(stuck.trace_id).wait()  # the stuck trace is inside its playbook
        print(f"cancelling trace={stuck.trace_id}")
        first = await flow.cancel(stuck.trace_id)
        again = await flow.cancel(stuck.trace_id)  # idempotent: no second start event
        print(f"cancel() returned {first}, then {again}")

        out = await flow.fetch()  # only the other request produces a result
        print(f"result for trace={out.trace_id}: {out.payload!r}")
        await state.cancel_finished.wait()
        after = await flow.cancel(stuck.trace_id)  # the trace is gone now
        print(f"cancel() after finish returned {after}")
    finally:
        await flow.stop()

    return {
        "stuck": stuck.trace_id,
        "normal": normal.trace_id,
        "result": out,
        "cancel_returns": (first, again, after),
        "cleaned_up": state.cleaned_up,
        "events": state.events,
    }


if __name__ == "__main__":
    asyncio.run(main())
