"""Smoke tests: start the example app on an ephemeral port and stream answers."""

from __future__ import annotations

import asyncio
import contextlib
import html
import importlib.util
import json
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
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


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", http="h11", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
        sock.close()


def parse(lines: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, JSON data) per SSE event; comment lines are skipped."""
    events, name, data = [], "message", ""
    for line in [*lines, ""]:
        if line == "":
            if data:
                events.append((name, json.loads(data)))
            name, data = "message", ""
        elif line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
    return events


async def stream(http: httpx.AsyncClient, q: str) -> list[tuple[str, dict[str, Any]]]:
    async with http.stream("GET", "/chat", params={"q": q}) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-trace-id"]
        return parse([line async for line in resp.aiter_lines()])


async def test_example_streams_tokens_then_the_answer() -> None:
    app = load_app_module().create_app(delay_s=0)
    async with serve(app) as addr, httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as http:
        events = await stream(http, "hi")
        page = await http.get("/")
    names = [name for name, _ in events]
    assert names[0] == "start"
    assert names[-2:] == ["result", "end"]
    chunks = [data for name, data in events if name == "chunk"]
    assert {c["node"] for c in chunks} == {"llm"}
    answer = events[-2][1]["result"]["text"]
    assert "".join(c["text"] for c in chunks).strip() == answer
    assert answer.startswith("You asked: 'hi'.")
    assert events[-1][1]["reason"] == "drained"
    assert page.status_code == 200
    assert "new EventSource" in page.text
    assert app.state.flow.is_running is False  # lifespan stopped the flow


async def test_example_reports_a_node_error() -> None:
    app = load_app_module().create_app(delay_s=0)
    async with serve(app) as addr, httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as http:
        events = await stream(http, "fail")
    assert [name for name, _ in events] == ["start", "chunk", "error"]
    error = events[-1][1]
    assert (error["code"], error["node"]) == ("NODE_EXCEPTION", "llm")
    assert "10.0.0.7" not in json.dumps(events)  # the exception text stays on the server


async def test_example_serves_clients_at_the_same_time() -> None:
    # One token per minute after the first: if clients were served one after another,
    # the second client's first token would never come within the test's timeout.
    app = load_app_module().create_app(delay_s=60)
    async with (
        serve(app) as addr,
        httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as http,
        contextlib.AsyncExitStack() as streams,
    ):
        readers: list[AsyncIterator[str]] = []  # kept alive: dropping one closes its stream

        async def first_token(q: str) -> str:
            resp = await streams.enter_async_context(http.stream("GET", "/chat", params={"q": q}))
            readers.append(lines := resp.aiter_lines())
            async for line in lines:
                if line.startswith("data: ") and '"text"' in line:
                    text: str = json.loads(line.removeprefix("data: "))["text"]
                    return text
            raise AssertionError("no token")

        async with asyncio.timeout(10):
            firsts = await asyncio.gather(*(first_token(f"q{i}") for i in range(5)))
        assert firsts == [f"You asked: 'q{i}'. " for i in range(5)]
        # Leaving closes the five connections: each trace is cancelled.


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
async def test_example_page_streams_in_a_browser() -> None:
    assert CHROMIUM is not None
    app = load_app_module().create_app(delay_s=0)
    async with serve(app) as addr:
        with tempfile.TemporaryDirectory() as profile:
            proc = await asyncio.create_subprocess_exec(
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                f"http://{addr}/?q=hi",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            async with asyncio.timeout(90):
                stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
    dom = html.unescape(stdout.decode())
    assert "You asked: 'hi'. PenguiFlow is a typed" in dom
    assert "done (nodes: llm)" in dom
