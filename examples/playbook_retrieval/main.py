"""A controller that runs a retrieval -> rerank -> compress playbook per request.

``ctx.call_playbook(factory, msg)`` builds a fresh subflow from ``factory()``, runs it,
emits the *same* message into it and returns the payload of the first item that reaches
the subflow's Rookery. The subflow then stops, whatever happened.

What to look for in the output:

* the playbook's events carry the parent's ``trace_id`` (printed by a middleware), and
  its first node sees the parent's headers (the tenant selects the corpus);
* the controller gets back a plain ``Compressed`` object, like calling a function.

Run it with::

    python examples/playbook_retrieval/main.py
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from penguiflow import (
    Context,
    FlowEvent,
    Headers,
    Message,
    ModelRegistry,
    Node,
    NodePolicy,
    PenguiFlow,
    create,
)

CORPUS = {
    "acme": ["acme pricing faq", "acme sla", "acme onboarding guide", "acme pricing tiers"],
    "globex": ["globex pricing sheet", "globex security policy", "globex roadmap"],
}


class Query(BaseModel):
    text: str


class Docs(BaseModel):
    query: str
    docs: list[str]


class Compressed(BaseModel):
    summary: str
    sources: list[str]


# --- the playbook -----------------------------------------------------------------------


async def retrieve(msg: Message, ctx: Context) -> Message:
    """Sees the whole envelope (validate="none"), so it can read the request's headers."""
    query: Query = msg.payload
    corpus = CORPUS[msg.headers.tenant]
    hits = [doc for doc in corpus if any(word in doc for word in query.text.split())]
    print(f"  [playbook] retrieve for tenant={msg.headers.tenant} found {len(hits)} docs")
    return msg.model_copy(update={"payload": Docs(query=query.text, docs=hits)})


async def rerank(docs: Docs, _ctx: Context) -> Docs:
    """Typed node: receives the bare payload; its result is re-wrapped in the envelope."""
    ranked = sorted(docs.docs, key=lambda d: sum(w in d for w in docs.query.split()), reverse=True)
    return Docs(query=docs.query, docs=ranked[:2])


async def compress(docs: Docs, _ctx: Context) -> Compressed:
    return Compressed(summary=" | ".join(docs.docs), sources=docs.docs)


async def show_playbook_events(event: FlowEvent) -> None:
    """A one-argument middleware: prints which trace each playbook node worked for."""
    if event.event_type == "node_success":
        print(f"  [playbook] {event.node_name:<8} ok  trace={event.trace_id}")


def build_retrieval_playbook() -> tuple[PenguiFlow, ModelRegistry]:
    """Playbook factory: called once per ``call_playbook``, returns (flow, registry)."""
    retrieve_node = Node(retrieve, policy=NodePolicy(validate="none"))
    rerank_node = Node(rerank)
    compress_node = Node(compress)
    flow = create(
        retrieve_node.to(rerank_node),
        rerank_node.to(compress_node),
        middlewares=[show_playbook_events],
    )
    registry = ModelRegistry()
    registry.register("rerank", Docs, Docs)
    registry.register("compress", Docs, Compressed)
    return flow, registry


# --- the main flow ----------------------------------------------------------------------


async def controller(msg: Message, ctx: Context) -> Message:
    print(f"[controller] trace={msg.trace_id} query={msg.payload.text!r}")
    compressed: Compressed = await ctx.call_playbook(build_retrieval_playbook, msg, timeout=1.0)
    return msg.model_copy(update={"payload": compressed})


async def main() -> list[Message]:
    """Send one request per tenant; return the results in the order they were sent."""
    controller_node = Node(controller, policy=NodePolicy(validate="none"))
    flow = create(controller_node.to())
    flow.run()

    requests = [
        Message(payload=Query(text="pricing tiers"), headers=Headers(tenant="acme")),
        Message(payload=Query(text="pricing security"), headers=Headers(tenant="globex")),
    ]
    results: list[Message] = []
    try:
        for msg in requests:
            await flow.emit(msg)
            out: Message = await flow.fetch()
            # The result is still the request's envelope: same trace_id, same headers.
            assert out.trace_id == msg.trace_id and out.headers == msg.headers
            print(f"[result] tenant={out.headers.tenant} summary={out.payload.summary!r}\n")
            results.append(out)
    finally:
        await flow.stop()
    return results


if __name__ == "__main__":
    asyncio.run(main())
