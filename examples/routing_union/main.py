"""Route a discriminated union to typed handlers with ``union_router``.

The router validates each payload against the union, picks the successor named after
the variant's ``kind`` and forwards the same envelope (trace id, headers, meta) with the
validated payload.

Run: ``python examples/routing_union/main.py``
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from penguiflow import Headers, Message, Node, create
from penguiflow.patterns import union_router


class SearchQuery(BaseModel):
    kind: Literal["search"] = "search"
    text: str


class CalcQuery(BaseModel):
    kind: Literal["calc"] = "calc"
    a: float
    b: float


Query = Annotated[SearchQuery | CalcQuery, Field(discriminator="kind")]


async def search(msg: Message, ctx: object) -> str:
    query: SearchQuery = msg.payload
    return f"search: looking up {query.text!r} (trace {msg.trace_id[:8]})"


async def calc(msg: Message, ctx: object) -> str:
    query: CalcQuery = msg.payload
    return f"calc: {query.a} + {query.b} = {query.a + query.b}"


async def main() -> list[str]:
    router = union_router("dispatch", Query)
    flow = create(router.to(Node(search, name="search"), Node(calc, name="calc")))
    flow.run()
    try:
        headers = Headers(tenant="acme")
        await flow.emit(Message(payload={"kind": "calc", "a": 2, "b": 3}, headers=headers))
        await flow.emit(Message(payload=SearchQuery(text="penguins"), headers=headers))
        lines = sorted([await flow.fetch() for _ in range(2)])
    finally:
        await flow.stop()
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    asyncio.run(main())
