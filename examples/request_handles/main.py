"""One shared flow behind an HTTP service: every request gets exactly one outcome.

The service keeps one running flow for its lifetime and calls it from every request
handler at once, with the request API:

* ``await flow.invoke(message, timeout=...)`` for a plain JSON endpoint (``POST /ask``);
* ``async with flow.request(message) as req:`` for a streamed answer (``GET /stream``):
  ``req.chunks()`` yields the tokens, ``await req.result()`` the outcome.

Each outcome maps to an HTTP answer; a failing node becomes a typed error whose JSON
names the node and the error code, while the exception and its traceback stay in the
server log. A timeout cancels the request's trace; ``DELETE /ask/{request_id}`` cancels
one from elsewhere; a streaming client that disconnects cancels its own.

Run the demo (no server, core only)::

    python examples/request_handles/main.py

Serve it (needs ``penguiflow-streaming[asgi]`` for Starlette, and uvicorn)::

    python examples/request_handles/main.py --serve      # http://127.0.0.1:8000

    curl -s -XPOST localhost:8000/ask -d '{"question": "what is a trace"}'
    curl -s -XPOST localhost:8000/ask -d '{"question": "fail"}'
    curl -s -XPOST localhost:8000/ask -d '{"question": "slow", "timeout": 0.5}'
    curl -s -XPOST localhost:8000/ask -H 'x-request-id: r1' -d '{"question": "slow"}' &
    curl -s -XDELETE localhost:8000/ask/r1
    curl -sN 'localhost:8000/stream?q=endless'                      # Ctrl-C cancels it
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from penguiflow import Headers, Message, Node, NodePolicy, PenguiFlow, create
from penguiflow.errors import FlowError, FlowStoppedError, TraceCancelled

if TYPE_CHECKING:
    from starlette.applications import Starlette

log = logging.getLogger("request_handles")

WORDS = "A trace is one request: it enters the flow once and ends with one outcome."


class BackendDown(RuntimeError):
    """The (mock) search backend refused the connection."""


class Service:
    """The flow, shared by every request, and what its nodes observed (for the demo)."""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.delay_s = delay_s
        self.cancelled: list[str] = []
        """Trace ids whose ``answer`` invocation was interrupted by a cancel."""
        self.flow = self.build_flow()

    def build_flow(self) -> PenguiFlow:
        """``clean -> answer``: ``answer`` streams words, then returns the full text."""

        async def clean(message: Message, ctx: Any) -> Message:
            question = str(message.payload).strip().lower()
            return message.model_copy(update={"payload": question})

        async def answer(message: Message, ctx: Any) -> Message:
            question = message.payload
            try:
                if question == "fail":
                    raise BackendDown("search backend 10.0.0.7:9200 refused the connection")
                if question == "slow":
                    await asyncio.sleep(3600)  # a backend that never answers
                words = WORDS.split(" ")
                if question == "endless":
                    words = ["tick"] * 1_000_000
                for word in words:
                    await ctx.emit_chunk(parent=message, text=word + " ")
                    await asyncio.sleep(self.delay_s)
            except asyncio.CancelledError:
                self.cancelled.append(message.trace_id)  # a real node releases things here
                raise
            return message.model_copy(update={"payload": WORDS})

        policy = NodePolicy(validate="none")
        # One invocation per request in flight: ``max_concurrency`` is how many requests
        # the node serves at once. A failed attempt is retried once, 10 ms later.
        answer_policy = NodePolicy(
            validate="none", max_concurrency=64, max_retries=1, backoff_base=0.01
        )
        clean_node = Node(clean, name="clean", policy=policy)
        answer_node = Node(answer, name="answer", policy=answer_policy)
        return create(clean_node.to(answer_node), answer_node.to())

    @staticmethod
    def message(question: str, request_id: str | None = None) -> Message:
        """One HTTP request is one message, hence one trace (its id: the request id)."""
        if request_id:
            return Message(payload=question, headers=Headers(tenant="demo"), trace_id=request_id)
        return Message(payload=question, headers=Headers(tenant="demo"))

    async def ask(
        self, question: str, *, timeout: float | None = None, request_id: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Answer one request: ``(HTTP status, JSON body)``. Never raises for an outcome."""
        message = self.message(question, request_id)
        try:
            result = await self.flow.invoke(message, timeout=timeout, expect=Message)
        except (FlowError, TimeoutError, TraceCancelled, FlowStoppedError) as exc:
            return error_response(exc, message.trace_id)
        return 200, {"trace_id": message.trace_id, "answer": result.payload}

    async def cancel(self, request_id: str) -> bool:
        """Cancel a request from elsewhere (another client, an admin, a shutdown)."""
        return await self.flow.cancel(request_id)

    async def stream(self, question: str) -> AsyncIterator[dict[str, Any]]:
        """The request's chunks as they come, then its outcome (one JSON object each).

        Leaving early (the client went away and the server closes this generator)
        leaves the ``async with`` block, which cancels the request's trace.
        """
        message = self.message(question)
        async with self.flow.request(message, expect=Message) as req:
            async for chunk in req.chunks():
                yield {"chunk": chunk.text, "seq": chunk.seq, "node": chunk.node}
            try:
                result = await req.result()
            except (FlowError, TraceCancelled, FlowStoppedError) as exc:
                yield error_response(exc, req.trace_id)[1]
            else:
                yield {"trace_id": req.trace_id, "answer": result.payload}


def error_response(exc: BaseException, trace_id: str) -> tuple[int, dict[str, Any]]:
    """Map an outcome that is not a result to an HTTP status and a JSON error body.

    The body says what happened and where; the exception itself (with the failing line
    in its traceback, as ``__cause__`` of a ``FlowError``) goes to the server log only.
    """
    error: dict[str, Any] = {"trace_id": trace_id}
    if isinstance(exc, FlowError):
        log.error("request %s failed at node %r", trace_id, exc.node_name, exc_info=exc)
        status = 504 if exc.code == "NODE_TIMEOUT" else 502
        error |= {"code": exc.code, "node": exc.node_name, "attempts": exc.attempts}
    elif isinstance(exc, TimeoutError):
        status, error["code"] = 504, "TIMEOUT"  # the trace was cancelled first
    elif isinstance(exc, TraceCancelled):
        status, error["code"] = 409, "CANCELLED"
    elif isinstance(exc, FlowStoppedError):
        status, error["code"] = 503, "SHUTTING_DOWN"
    else:  # pragma: no cover - the four outcomes above are the only ones
        raise exc
    return status, {"error": error}


def create_app(delay_s: float = 0.01) -> Starlette:
    """The Starlette app: one ``Service`` (one running flow) for the app's lifetime."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    service = Service(delay_s)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.flow.run()
        try:
            yield
        finally:
            await service.flow.stop(timeout=5.0)

    async def ask(request: Request) -> JSONResponse:
        body = await request.json()
        status, payload = await service.ask(
            str(body["question"]),
            timeout=body.get("timeout", 30.0),
            request_id=request.headers.get("x-request-id"),
        )
        return JSONResponse(payload, status_code=status)

    async def cancel(request: Request) -> JSONResponse:
        return JSONResponse({"cancelled": await service.cancel(request.path_params["rid"])})

    async def stream(request: Request) -> StreamingResponse:
        async def lines() -> AsyncIterator[str]:
            async for item in service.stream(request.query_params.get("q", "hello")):
                yield json.dumps(item) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    routes = [
        Route("/ask", ask, methods=["POST"]),
        Route("/ask/{rid}", cancel, methods=["DELETE"]),
        Route("/stream", stream),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service = service
    return app


async def demo() -> dict[str, tuple[int, dict[str, Any]]]:
    """Four requests at once through one flow, as four HTTP handlers would make them."""
    service = Service()
    flow = service.flow
    flow.run()
    try:
        asked = asyncio.create_task(service.ask("slow", request_id="req-42", timeout=10.0))
        while not await service.cancel("req-42"):  # once the request has entered the flow
            await asyncio.sleep(0.001)
        normal, failing, timeout, cancelled = await asyncio.gather(
            service.ask("What is a trace?"),
            service.ask("fail"),
            service.ask("slow", timeout=0.2),
            asked,
        )
        assert flow.inspect().is_quiescent  # nothing of the four requests is left behind
    finally:
        await flow.stop()
    return {"normal": normal, "failing": failing, "timeout": timeout, "cancelled": cancelled}


if __name__ == "__main__":
    if "--serve" in sys.argv:
        import uvicorn

        port = int(os.environ.get("PORT", "8000"))
        uvicorn.run(create_app(), host="127.0.0.1", port=port, log_level="info")
    else:
        for name, (status, body) in asyncio.run(demo()).items():
            print(f"{name:<9} {status} {json.dumps(body)}")
