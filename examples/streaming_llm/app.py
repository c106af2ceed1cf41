"""A mock LLM streams tokens through a PenguiFlow flow to a browser and to curl (SSE).

Run it::

    python examples/streaming_llm/app.py            # http://127.0.0.1:8000

then open http://127.0.0.1:8000/ in a browser (the page reads the stream with
``EventSource``), or watch the raw events with curl::

    curl -N 'http://127.0.0.1:8000/chat?q=What+is+PenguiFlow'

Ask ``fail`` to see a node error reach the client as an ``error`` event.

The flow is one node, ``llm``: it writes each token with a ``StreamWriter`` and returns
the full answer as a ``FinalAnswer``. The endpoint is
``penguiflow.streaming.asgi.sse_endpoint``: each request is one trace; closing the page
or curl cancels that trace; a slow client slows the node down; a client that stops
reading for ``send_timeout`` seconds is cut off so it cannot hold a node slot.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from penguiflow.core import Context, PenguiFlow, create
from penguiflow.node import Node, NodePolicy
from penguiflow.streaming import StreamWriter
from penguiflow.streaming.asgi import sse_endpoint
from penguiflow.types import FinalAnswer, Headers, Message

PAGE = Path(__file__).with_name("index.html")

CANNED = (
    "PenguiFlow is a typed, async-first orchestration library. "
    "Nodes talk over bounded queues, so slow consumers push back instead of piling up."
)

CLIENTS_AT_ONCE = 64
"""How many requests the streaming node serves at the same time.

Each request is one invocation of the ``llm`` node, which lasts as long as the answer
streams. With the default ``max_concurrency=1`` the clients would be served one after
another; set it to about the number of clients you expect at once.
"""


class ModelUnavailable(RuntimeError):
    """The (mock) model backend failed; the client gets a ``NODE_EXCEPTION`` error event."""


async def mock_llm(prompt: str, delay_s: float) -> AsyncIterator[str]:
    """Pretend to be a model: yield the canned answer word by word."""
    yield f"You asked: {prompt!r}. "
    if prompt.strip().lower() == "fail":
        raise ModelUnavailable("backend 10.0.0.7 refused the connection")  # never sent
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

    node = Node(llm, name="llm", policy=NodePolicy(max_concurrency=CLIENTS_AT_ONCE))
    # A node that gives up reaches the client as an error event: no flow option needed.
    return create(node.to())


def to_message(request: Request) -> Message:
    """Each HTTP request becomes one message, i.e. one trace."""
    prompt = request.query_params.get("q", "hello")
    return Message(payload=prompt, headers=Headers(tenant="demo"))


async def index(request: Request) -> HTMLResponse:
    """The page that streams the answer in the browser."""
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


def create_app(delay_s: float = 0.05, *, send_timeout: float = 5.0) -> Starlette:
    """The Starlette app; the flow runs for the app's lifetime (lifespan)."""
    flow = build_flow(delay_s)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        flow.run()
        try:
            yield
        finally:
            await flow.stop()

    chat = sse_endpoint(flow, to_message, send_timeout=send_timeout, ping_interval=15.0)
    app = Starlette(routes=[Route("/", index), Route("/chat", chat)], lifespan=lifespan)
    app.state.flow = flow
    return app


if __name__ == "__main__":
    import uvicorn

    port = int(os.environ.get("PORT", "8000"))
    uvicorn.run(create_app(), host="127.0.0.1", port=port, log_level="info")
