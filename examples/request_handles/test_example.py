"""Smoke tests: the demo script, then the service on a real server with a real HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import uvicorn

HERE = Path(__file__).resolve().parent
MAIN = HERE / "main.py"
SECRET = "10.0.0.7"  # in the failing node's exception text: it must never reach a client


def load_module() -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location("request_handles_example", MAIN)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", http="h11", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield http
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
        sock.close()


def test_demo_script_prints_one_outcome_per_request() -> None:
    proc = subprocess.run(
        [sys.executable, str(MAIN)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line.split(maxsplit=2)[1:] for line in proc.stdout.splitlines()}
    assert {name: status for name, (status, _) in lines.items()} == {
        "normal": "200",
        "failing": "502",
        "timeout": "504",
        "cancelled": "409",
    }
    failing = json.loads(lines["failing"][1])["error"]
    assert (failing["code"], failing["node"], failing["attempts"]) == (
        "NODE_EXCEPTION",
        "answer",
        2,
    )
    # The exception and its traceback went to the log (stderr), not into any answer.
    assert SECRET not in proc.stdout
    assert "BackendDown: search backend" in proc.stderr


async def test_one_shared_flow_serves_every_outcome_at_once() -> None:
    app = load_module().create_app(delay_s=0.001)
    async with serve(app) as http:

        async def ask(question: str, **extra: Any) -> httpx.Response:
            headers = extra.pop("headers", {})
            return await http.post("/ask", json={"question": question, **extra}, headers=headers)

        async def cancel_when_started(rid: str) -> None:
            while not (await http.delete(f"/ask/{rid}")).json()["cancelled"]:
                await asyncio.sleep(0.01)

        async with asyncio.timeout(30):
            canceller = asyncio.create_task(cancel_when_started("r-cancel"))
            *normal, failing, timed_out, cancelled = await asyncio.gather(
                *(ask(f"question {i}") for i in range(5)),
                ask("fail"),
                ask("slow", timeout=0.3),
                ask("slow", headers={"x-request-id": "r-cancel"}),
            )
            await canceller

        for resp in normal:
            assert resp.status_code == 200
            assert resp.json()["answer"].startswith("A trace is one request")
        assert len({resp.json()["trace_id"] for resp in normal}) == 5

        assert failing.status_code == 502
        error = failing.json()["error"]
        assert (error["code"], error["node"], error["attempts"]) == ("NODE_EXCEPTION", "answer", 2)
        assert SECRET not in failing.text
        assert "Traceback" not in failing.text

        assert timed_out.status_code == 504
        assert timed_out.json()["error"]["code"] == "TIMEOUT"
        assert cancelled.status_code == 409
        assert cancelled.json()["error"] == {"trace_id": "r-cancel", "code": "CANCELLED"}

        service = app.state.service
        # The timed-out request was interrupted inside its node (the explicit cancel may
        # have caught its request still queued, before the node started).
        assert timed_out.json()["error"]["trace_id"] in service.cancelled
        assert service.flow.inspect().is_quiescent
    assert service.flow.is_running is False  # the lifespan stopped the flow


async def test_stream_sends_chunks_then_the_outcome() -> None:
    app = load_module().create_app(delay_s=0)
    async with serve(app) as http:
        resp = await http.get("/stream", params={"q": "hello"})
        failed = await http.get("/stream", params={"q": "fail"})
    items = [json.loads(line) for line in resp.text.splitlines()]
    chunks, outcome = items[:-1], items[-1]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert {c["node"] for c in chunks} == {"answer"}
    assert "".join(c["chunk"] for c in chunks).strip() == outcome["answer"]
    last = json.loads(failed.text.splitlines()[-1])
    assert last["error"]["code"] == "NODE_EXCEPTION"
    assert SECRET not in failed.text


async def test_a_client_that_disconnects_cancels_its_request() -> None:
    app = load_module().create_app(delay_s=0.01)
    service = None
    async with serve(app) as http:
        service = app.state.service
        async with http.stream("GET", "/stream", params={"q": "endless"}) as resp:
            lines = resp.aiter_lines()
            first = json.loads(await anext(lines))
            assert first["chunk"] == "tick "
        # The connection is closed: the server's next write fails, the handler leaves
        # its ``async with flow.request(...)`` block, and that cancels the trace.
        async with asyncio.timeout(10):
            while not service.cancelled:
                await asyncio.sleep(0.01)
            while not service.flow.inspect().is_quiescent:
                await asyncio.sleep(0.01)
    assert len(service.cancelled) == 1
