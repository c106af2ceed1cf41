"""Fan out to three retrievers, then fan in with ``join_k``.

The join holds one bucket per trace until all three parts arrive. Buckets never outlive
their trace: cancelling the trace (or stopping the flow) frees a half-filled bucket, and
``flow.inspect().resources["join_k:<name>"]`` shows what is held.

Run: ``python examples/fanout_join/main.py``
"""

from __future__ import annotations

import asyncio

from penguiflow import Headers, Message, Node, create
from penguiflow.patterns import join_k


async def fan(msg: Message, ctx: object) -> Message:
    return msg


def retriever(source: str) -> Node:
    async def retrieve(msg: Message, ctx: object) -> Message:
        return msg.model_copy(update={"payload": f"{source}: facts about {msg.payload}"})

    return Node(retrieve, name=source)


async def summarize(msg: Message, ctx: object) -> str:
    parts: list[str] = msg.payload
    return f"{len(parts)} sources -> " + "; ".join(sorted(parts))


async def main() -> str:
    fan_node = Node(fan, name="fan")
    sources = [retriever(name) for name in ("docs", "web", "sql")]
    join = join_k("join", 3)
    summary = Node(summarize, name="summarize")
    flow = create(
        fan_node.to(*sources),
        *(source.to(join) for source in sources),
        join.to(summary),
    )
    flow.run()
    try:
        await flow.emit(Message(payload="penguins", headers=Headers(tenant="acme")))
        result: str = await flow.fetch()
        leftovers = flow.inspect().resources.get("join_k:join", {})
    finally:
        await flow.stop()
    print(result)
    print(f"buckets left: {dict(leftovers)}")
    return result


if __name__ == "__main__":
    asyncio.run(main())
