"""Enrich ``Message.meta`` hop by hop, then stream the answer with the metadata attached.

``meta`` is a free-form dict on every ``Message`` for breadcrumbs that are not part of the
business payload (request ids, costs, model names...). The runtime never drops it:

* ``retrieve`` (envelope-level node) adds the retrieval cost in place;
* ``summarize`` (typed node) only sees its payload, yet meta rides along because its
  result is re-wrapped into the incoming envelope;
* ``stream`` adds summarizer details with ``model_copy`` and streams the summary word by
  word with ``ctx.emit_chunk``: every chunk's envelope carries a copy of the parent's meta.

Run it with::

    python examples/metadata_propagation/main.py
"""

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
    StreamChunk,
    create,
)


class Query(BaseModel):
    text: str


class Docs(BaseModel):
    docs: list[str]


class Summary(BaseModel):
    text: str


async def retrieve(msg: Message, _ctx: Context) -> Message:
    query: Query = msg.payload
    docs = [f"{query.text} doc {i}" for i in range(3)]
    # In-place mutation is fine: meta belongs to this message.
    msg.meta["retrieval"] = {"docs": len(docs), "cost_usd": 0.0021}
    print(f"[retrieve]  meta={msg.meta}")
    return msg.model_copy(update={"payload": Docs(docs=docs)})


async def summarize(docs: Docs, _ctx: Context) -> Summary:
    # A typed node never sees the envelope; the runtime keeps its meta for it.
    print("[summarize] (typed node: sees only the payload)")
    return Summary(text=f"penguins huddle in {len(docs.docs)} documents")


async def stream(msg: Message, ctx: Context) -> None:
    # Returning a copy with a new meta dict is the other way to add (or redact) keys.
    summarizer = {"model": "mock-llm-1", "prompt_tokens": 42}
    msg = msg.model_copy(update={"meta": {**msg.meta, "summarizer": summarizer}})
    print(f"[stream]    meta={msg.meta}")
    words = msg.payload.text.split()
    for i, word in enumerate(words):
        # The chunk envelope gets a copy of msg.meta; `meta=` goes on the chunk itself.
        await ctx.emit_chunk(parent=msg, text=word, done=i == len(words) - 1, meta={"pos": i})


async def main() -> list[Message]:
    """Send one request; return the chunk messages that reached Rookery."""
    retrieve_node = Node(retrieve, policy=NodePolicy(validate="none"))
    summarize_node = Node(summarize)
    stream_node = Node(stream, policy=NodePolicy(validate="none"))
    flow = create(retrieve_node.to(summarize_node), summarize_node.to(stream_node))

    registry = ModelRegistry()
    registry.register("summarize", Docs, Summary)
    flow.run(registry=registry)

    request = Message(
        payload=Query(text="emperor penguins"),
        headers=Headers(tenant="acme"),
        meta={"request_id": "abc123"},
    )
    print(f"[client]    meta={request.meta}")
    chunks: list[Message] = []
    try:
        await flow.emit(request)
        while True:
            out: Message = await flow.fetch()
            chunk: StreamChunk = out.payload
            chunks.append(out)
            print(
                f"[chunk {chunk.seq}]   {chunk.text!r:<12} chunk.meta={chunk.meta} "
                f"request_id={out.meta['request_id']} cost={out.meta['retrieval']['cost_usd']}"
            )
            if chunk.done:
                break
    finally:
        await flow.stop()
    print(f"[client]    final envelope meta={chunks[-1].meta}")
    return chunks


if __name__ == "__main__":
    asyncio.run(main())
