"""The README's quickstart as a typed user writes it: checked by mypy --strict and pyright
strict in CI (``tests/typing/check.py``), and runnable."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from penguiflow import (
    Context,
    Headers,
    Message,
    ModelRegistry,
    Node,
    NodePolicy,
    PenguiFlow,
    create,
    join_k,
    predicate_router,
)


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
    return PackOut(prompt=f"[{msg.topic}] summarize {len(msg.docs)} docs")


triage_node = Node(triage, name="triage", policy=NodePolicy(validate="both"))
retrieve_node = Node(retrieve, name="retrieve", policy=NodePolicy(validate="both"))
pack_node = Node(pack, name="pack", policy=NodePolicy(validate="both"))

# Add-on names re-exported from penguiflow are typed (penguiflow-patterns is installed).
joiner: Node = join_k("join", 1)
router: Node = predicate_router("route", lambda item: True)


def build() -> tuple[PenguiFlow, ModelRegistry]:
    registry = ModelRegistry.from_nodes(triage_node, retrieve_node, pack_node)
    flow = create(triage_node.to(retrieve_node), retrieve_node.to(pack_node))
    return flow, registry


async def main() -> str:
    flow, registry = build()
    flow.run(registry=registry, wiring="strict")
    try:
        message = Message(
            payload=TriageIn(text="show marketing metrics"), headers=Headers(tenant="acme")
        )
        out = await flow.invoke(message)
        assert isinstance(out, Message)
        payload = out.payload
        assert isinstance(payload, PackOut)
        return payload.prompt
    finally:
        await flow.stop()


def test_the_typed_readme_flow_runs() -> None:
    assert asyncio.run(main()) == "[metrics] summarize 2 docs"
