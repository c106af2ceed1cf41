"""Enrich a batch inside one node with ``map_concurrent``.

At most ``max_concurrency`` enrichments run at once; results come back in input order;
if one fails, the others are cancelled and the error fails the node (no orphan tasks).
``return_exceptions=True`` collects failures in place instead.

Run: ``python examples/map_concurrent/main.py``
"""

from __future__ import annotations

import asyncio

from penguiflow import Headers, Message, Node, create
from penguiflow.patterns import map_concurrent


async def enrich(doc: str) -> str:
    await asyncio.sleep(0.001 * (len(doc) % 3))  # pretend I/O of varying length
    if doc == "broken":
        raise ValueError("cannot enrich 'broken'")
    return doc.upper()


async def enrich_batch(msg: Message, ctx: object) -> Message:
    results = await map_concurrent(msg.payload, enrich, max_concurrency=4, return_exceptions=True)
    lines = [f"error: {r}" if isinstance(r, Exception) else r for r in results]
    return msg.model_copy(update={"payload": lines})


async def main() -> list[str]:
    flow = create(Node(enrich_batch, name="enrich_batch").to())
    flow.run()
    try:
        docs = ["alpha", "beta", "broken", "gamma", "delta", "epsilon"]
        await flow.emit(Message(payload=docs, headers=Headers(tenant="acme")))
        out: Message = await flow.fetch()
    finally:
        await flow.stop()
    for line in out.payload:
        print(line)
    return list(out.payload)


if __name__ == "__main__":
    asyncio.run(main())
