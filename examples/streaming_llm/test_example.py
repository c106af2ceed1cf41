"""Smoke test: start the example app on an ephemeral port and stream one answer."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import sys
from pathlib import Path
from types import ModuleType

import httpx
import uvicorn

HERE = Path(__file__).resolve().parent


def load_app_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("streaming_llm_app", HERE / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_example_streams_tokens_then_the_answer() -> None:
    app_module = load_app_module()
    app = app_module.create_app(delay_s=0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", http="h11", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
            client.stream("GET", "/chat", params={"q": "hi"}) as resp,
        ):
            assert resp.status_code == 200
            body = [line async for line in resp.aiter_lines()]
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
        sock.close()
    events = "\n".join(body).split("\n\n")
    kinds = [e.splitlines()[0] for e in events if e.strip()]
    assert kinds[0] == "event: chunk"
    assert kinds[-3:] == ["event: done", "event: result", "event: end"]
    tokens = [
        e.splitlines()[2].removeprefix("data: ") for e in events if e.startswith("event: chunk")
    ]
    result = next(e for e in events if e.startswith("event: result"))
    answer = json.loads(result.splitlines()[1].removeprefix("data: "))["text"]
    assert "".join(tokens).strip() == answer
    assert answer.startswith("You asked: 'hi'.")
    assert app.state.flow.is_running is False  # lifespan stopped the flow
