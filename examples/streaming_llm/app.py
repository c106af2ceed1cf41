"""A mock LLM streams tokens through a PenguiFlow flow to an SSE endpoint.

Run it::

    python examples/streaming_llm/app.py            # http://127.0.0.1:8000

and watch the tokens arrive one by one::

    curl -N 'http://127.0.0.1:8000/chat?q=What+is+PenguiFlow'

The flow is one node, ``llm``: it writes each token with a ``StreamWriter`` (chunks carry
the node's name in ``meta``) and returns the full answer as a ``FinalAnswer``. The
endpoint is ``penguiflow.streaming.asgi.sse_endpoint``: each request is one trace,
closing curl (Ctrl-C) cancels that trace, and a slow client slows the node down.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from penguiflow.core import Context, PenguiFlow, create
from penguiflow.node import Node
from penguiflow.streaming import StreamWriter
from penguiflow.streaming.asgi import sse_endpoint
from penguiflow.types import FinalAnswer, Headers, Message

CANNED = (
    "PenguiFlow is a typed, async-first orchestration library. "
    "Nodes talk over bounded queues, so slow consumers push back instead of piling up."
)


async def mock_llm(prompt: str, delay_s: float) -> AsyncIterator[str]:
    """Pretend to be a model: yield the canned answer word by word."""
    yield f"You asked: {prompt!r}. "
    for word in CANNED.split(" "):
        if delay_s:
            await asyncio.sleep(delay_s)  # a real model's latency per token
        yield word + " "


def build_flow(delay_s: float = 0.05) -> PenguiFlow:
    """One streaming node: tokens as chunks, then the whole text as the final answer."""

    async def llm(msg: Message, ctx: Context) -> Message:
        text = []
        async with StreamWriter(ctx, msg) as out:
            async for token in mock_llm(str(msg.payload), delay_s):
                text.append(token)
                await out.write(token)  # waits while the client lags (backpressure)
        return msg.model_copy(update={"payload": FinalAnswer(text="".join(text).strip())})

    return create(Node(llm, name="llm").to())


def to_message(request: Request) -> Message:
    """Each HTTP request becomes one message, i.e. one trace."""
    prompt = request.query_params.get("q", "hello")
    return Message(payload=prompt, headers=Headers(tenant="demo"))


def create_app(delay_s: float = 0.05) -> Starlette:
    """The Starlette app; the flow runs for the app's lifetime (lifespan)."""
    flow = build_flow(delay_s)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        flow.run()
        try:
            yield
        finally:
            await flow.stop()

    app = Starlette(routes=[Route("/chat", sse_endpoint(flow, to_message))], lifespan=lifespan)
    app.state.flow = flow
    return app


if __name__ == "__main__":
    import uvicorn

    port = int(os.environ.get("PORT", "8000"))
    uvicorn.run(create_app(), host="127.0.0.1", port=port, log_level="info")
