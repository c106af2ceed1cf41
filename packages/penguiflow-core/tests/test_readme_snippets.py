"""The README's core snippets run verbatim, so what a reader copies works.

Each snippet below is copied byte for byte from the README. The Core Concepts snippets
reference ``packer_node`` and ``PackOut`` without defining them; the only glue added is
a definition of those two names, placed between the Node and Flow snippets.
"""

from __future__ import annotations

import ast
import asyncio
import textwrap
from typing import Any

import pytest

from penguiflow import Context

QUICKSTART = """
from pydantic import BaseModel
from penguiflow import Headers, Message, ModelRegistry, Node, NodePolicy, create


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


async def triage(msg: TriageIn, ctx) -> TriageOut:
    topic = "metrics" if "metric" in msg.text else "general"
    return TriageOut(text=msg.text, topic=topic)


async def retrieve(msg: TriageOut, ctx) -> RetrieveOut:
    docs = [f"doc_{i}_{msg.topic}" for i in range(2)]
    return RetrieveOut(topic=msg.topic, docs=docs)


async def pack(msg: RetrieveOut, ctx) -> PackOut:
    prompt = f"[{msg.topic}] summarize {len(msg.docs)} docs"
    return PackOut(prompt=prompt)


triage_node = Node(triage, name="triage", policy=NodePolicy(validate="both"))
retrieve_node = Node(retrieve, name="retrieve", policy=NodePolicy(validate="both"))
pack_node = Node(pack, name="pack", policy=NodePolicy(validate="both"))

registry = ModelRegistry()
registry.register("triage", TriageIn, TriageOut)
registry.register("retrieve", TriageOut, RetrieveOut)
registry.register("pack", RetrieveOut, PackOut)

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
print(out.prompt)  # PackOut(prompt='[metrics] summarize 2 docs')

await flow.stop()
"""

CONCEPT_MESSAGE = """
from pydantic import BaseModel
from penguiflow.types import Message, Headers

class QueryIn(BaseModel):
    text: str

msg = Message(
    payload=QueryIn(text="unique reach last 30 days"),
    headers=Headers(tenant="acme")
)
msg.meta["request_id"] = "abc123"
"""

CONCEPT_NODE = """
from penguiflow.node import Node

class QueryOut(BaseModel):
    topic: str

async def triage(msg: QueryIn, ctx) -> QueryOut:
    return QueryOut(topic="metrics")

triage_node = Node(triage, name="triage")
"""

GLUE_PACKER = """
class PackOut(BaseModel):
    prompt: str

async def packer(msg: QueryOut, ctx) -> PackOut:
    return PackOut(prompt=f"pack {msg.topic}")

packer_node = Node(packer, name="packer")
"""

CONCEPT_FLOW = """
from penguiflow.core import create

flow = create(
    triage_node.to(packer_node)
)
"""

CONCEPT_RUNNING = """
from penguiflow.registry import ModelRegistry

registry = ModelRegistry()
registry.register("triage", QueryIn, QueryOut)
registry.register("packer", QueryOut, PackOut)

flow.run(registry=registry)

await flow.emit(msg)          # emit into OpenSea
out = await flow.fetch()      # fetch from Rookery
print(out.payload)            # PackOut(...)
await flow.stop()
"""

PLAYBOOK = """
from penguiflow.types import Message

async def controller(msg: Message, ctx) -> Message:
    playbook_result = await ctx.call_playbook(build_retrieval_playbook, msg)
    return msg.model_copy(update={"payload": playbook_result})
"""


async def run_snippet(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    code = compile(
        textwrap.dedent(source), "<readme>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    result = eval(code, namespace)
    if asyncio.iscoroutine(result):
        await asyncio.wait_for(result, 2.0)
    return namespace


async def test_quickstart_runs_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    ns = await run_snippet(QUICKSTART, {})
    assert capsys.readouterr().out == "[metrics] summarize 2 docs\n"
    out = ns["out"]
    assert out.payload == ns["PackOut"](prompt="[metrics] summarize 2 docs")
    # The envelope travelled: same trace id and headers as the emitted message
    assert out.trace_id == ns["message"].trace_id
    assert out.headers.tenant == "acme"
    assert not ns["flow"].is_running


async def test_core_concepts_run_verbatim(capsys: pytest.CaptureFixture[str]) -> None:
    ns: dict[str, Any] = {}
    for snippet in (CONCEPT_MESSAGE, CONCEPT_NODE, GLUE_PACKER, CONCEPT_FLOW, CONCEPT_RUNNING):
        await run_snippet(snippet, ns)
    assert capsys.readouterr().out == "prompt='pack metrics'\n"
    out = ns["out"]
    assert out.payload == ns["PackOut"](prompt="pack metrics")
    assert out.meta == {"request_id": "abc123"}
    assert out.trace_id == ns["msg"].trace_id


async def test_playbook_snippet_runs_verbatim() -> None:
    from penguiflow import Headers, Message, Node, NodePolicy, create

    async def retrieve(msg: Any, ctx: Context) -> Any:
        return msg.model_copy(update={"payload": f"docs for {msg.payload}"})

    def build_retrieval_playbook() -> Any:
        return create(Node(retrieve, policy=NodePolicy(validate="none")).to()), None

    ns = await run_snippet(PLAYBOOK, {"build_retrieval_playbook": build_retrieval_playbook})
    flow = create(Node(ns["controller"], policy=NodePolicy(validate="none")).to())
    flow.run()
    try:
        parent = Message(payload="q", headers=Headers(tenant="acme"))
        await flow.emit(parent)
        out = await asyncio.wait_for(flow.fetch(), 1.0)
        assert out.payload == "docs for q"
        assert out.trace_id == parent.trace_id
    finally:
        await flow.stop()


async def test_emit_chunk_snippet_runs_verbatim() -> None:
    from penguiflow import Headers, Message, Node, NodePolicy, create

    source = "await ctx.emit_chunk(parent=msg, text=token, done=done)"

    async def producer(msg: Any, ctx: Context) -> None:
        for token, done in (("hel", False), ("lo", True)):
            await run_snippet(source, {"ctx": ctx, "msg": msg, "token": token, "done": done})

    flow = create(Node(producer, policy=NodePolicy(validate="none")).to())
    flow.run()
    try:
        await flow.emit(Message(payload="q", headers=Headers(tenant="acme")))
        chunks = [(await asyncio.wait_for(flow.fetch(), 1.0)).payload for _ in range(2)]
        assert [(c.seq, c.text, c.done) for c in chunks] == [(0, "hel", False), (1, "lo", True)]
    finally:
        await flow.stop()
