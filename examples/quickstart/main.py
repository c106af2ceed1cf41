"""Quickstart: the README's three-node pipeline, run end to end.

Everything below the imports is the README's Quickstart snippet, with two additions: the
``ctx`` parameters are annotated (the examples are checked with ``mypy --strict``), and the
``async def main()`` wrapper (``await`` needs a coroutine outside a notebook) prints one
extra line, ``out.payload``, showing the full result envelope.

Run it with::

    python examples/quickstart/main.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from penguiflow import Context, Headers, Message, ModelRegistry, Node, NodePolicy, create


class TriageIn(BaseModel):
    text: str


class TriageOut(BaseModel):
    text: str
    topic: str


class RetrieveOut(BaseModel):
    topic: str
    docs: list[str]


class PackOut(BaseModel):
    prompt: str


async def triage(msg: TriageIn, ctx: Context) -> TriageOut:
    topic = "metrics" if "metric" in msg.text else "general"
    return TriageOut(text=msg.text, topic=topic)


async def retrieve(msg: TriageOut, ctx: Context) -> RetrieveOut:
    docs = [f"doc_{i}_{msg.topic}" for i in range(2)]
    return RetrieveOut(topic=msg.topic, docs=docs)


async def pack(msg: RetrieveOut, ctx: Context) -> PackOut:
    prompt = f"[{msg.topic}] summarize {len(msg.docs)} docs"
    return PackOut(prompt=prompt)


triage_node = Node(triage, name="triage", policy=NodePolicy(validate="both"))
retrieve_node = Node(retrieve, name="retrieve", policy=NodePolicy(validate="both"))
pack_node = Node(pack, name="pack", policy=NodePolicy(validate="both"))

registry = ModelRegistry()
registry.register("triage", TriageIn, TriageOut)
registry.register("retrieve", TriageOut, RetrieveOut)
registry.register("pack", RetrieveOut, PackOut)


async def main() -> Any:
    """Run the README snippet and return what reached Rookery (for the smoke test)."""
    # flow.run() must be called while an event loop is running, hence inside main().
    flow = create(
        triage_node.to(retrieve_node),
        retrieve_node.to(pack_node),
    )
    flow.run(registry=registry)

    message = Message(
        payload=TriageIn(text="show marketing metrics"),
        headers=Headers(tenant="acme"),
    )

    await flow.emit(message)
    out = await flow.fetch()
    print(out.prompt)  # [metrics] summarize 2 docs
    # `out` is the envelope (a Message): the typed nodes received bare payloads and their
    # results were re-wrapped, so trace_id and headers travelled through all three hops.
    print(out.payload)  # prompt='[metrics] summarize 2 docs'

    await flow.stop()
    return out


if __name__ == "__main__":
    asyncio.run(main())
