"""A real browser reads the SSE response with ``EventSource``.

Headless Chromium (Debian's ``chromium`` package, installed by ``.ci/run``) loads a page
from the test server; the page's script opens an ``EventSource`` per question, parses
each event's data with ``JSON.parse`` and writes what it received into the page, which
Chromium then prints (``--dump-dom``). The test checks the tokens, the producing nodes'
names and the error event as the browser saw them.
"""

from __future__ import annotations

import asyncio
import html
import json
import shutil
import tempfile
from typing import TYPE_CHECKING

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from penguiflow.core import Context, PenguiFlow, create
from penguiflow.node import Node, NodePolicy
from penguiflow.streaming import StreamWriter
from penguiflow.streaming.asgi import sse_endpoint
from penguiflow.types import FinalAnswer, Headers, Message

if TYPE_CHECKING:
    from conftest import Kit, Start


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (apt-get install chromium chromium-driver; "
    ".ci/run installs it)",
)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>running</title></head>
<body><pre id="out"></pre>
<script>
const out = [];
function ask(q) {
  return new Promise((resolve) => {
    const es = new EventSource("/stream?q=" + encodeURIComponent(q));
    const seen = {q: q, start: null, chunks: [], result: null, error: null, end: null, ids: []};
    const keep = (name) => (e) => {
      seen.ids.push(e.lastEventId);
      const data = JSON.parse(e.data);
      if (name === "chunk") seen.chunks.push(data); else seen[name] = data;
      if (name === "end" || name === "error") { es.close(); resolve(seen); }
    };
    for (const name of ["start", "chunk", "result", "end"]) {
      es.addEventListener(name, keep(name));
    }
    es.addEventListener("error", (e) => {
      if (e.data === undefined) { es.close(); seen.broken = true; resolve(seen); return; }
      keep("error")(e);
    });
  });
}
(async () => {
  out.push(await ask("hello"));
  out.push(await ask("fail"));
  document.getElementById("out").textContent = JSON.stringify(out);
  document.title = "finished";
})();
</script></body></html>
"""


def build_flow() -> PenguiFlow:
    async def llm(msg: Message, ctx: Context) -> Message:
        if msg.payload == "fail":
            await ctx.emit_chunk(parent=msg, text="thinking...", meta={"node": "llm"})
            raise RuntimeError("the model backend is down")
        async with StreamWriter(ctx, msg) as out:
            for token in ["Hello", " from", " a", " browser"]:
                await out.write(token)
        return msg.model_copy(update={"payload": FinalAnswer(text="Hello from a browser")})

    node = Node(llm, name="llm", policy=NodePolicy(max_concurrency=4))
    return create(node.to())


def make_message(request: Request) -> Message:
    return Message(payload=request.query_params["q"], headers=Headers(tenant="browser"))


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def dump_dom(url: str) -> str:
    assert CHROMIUM is not None
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
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(90.0):
                stdout, stderr = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout.decode()


async def test_event_source_in_a_real_browser(kit: type[Kit], running: Start) -> None:
    flow = running(build_flow())
    app = Starlette(routes=[Route("/", page), Route("/stream", sse_endpoint(flow, make_message))])
    async with kit.serve(app) as addr:
        dom = await dump_dom(f"http://{addr}/")
    assert "<title>finished</title>" in dom, dom[-2000:]
    text = dom.split('<pre id="out">', 1)[1].split("</pre>", 1)[0]
    ok, failed = json.loads(html.unescape(text))

    assert ok["start"]["trace_id"]
    assert [c["text"] for c in ok["chunks"]] == ["Hello", " from", " a", " browser", ""]
    assert {c["node"] for c in ok["chunks"]} == {"llm"}
    assert [c["seq"] for c in ok["chunks"]] == [0, 1, 2, 3, 4]
    assert ok["result"]["result"] == {"text": "Hello from a browser", "citations": []}
    assert ok["end"] == {"trace_id": ok["start"]["trace_id"], "reason": "drained"}
    assert ok["ids"] == [str(i) for i in range(1, len(ok["ids"]) + 1)]
    assert ok["error"] is None

    assert [c["text"] for c in failed["chunks"]] == ["thinking..."]
    assert failed["error"] == {
        "trace_id": failed["start"]["trace_id"],
        "code": "NODE_EXCEPTION",
        "node": "llm",
        "component": "llm",
        "message": "node 'llm' failed after 1 attempt",
    }
    assert failed["end"] is None
    assert "backend is down" not in dom
