"""Export a flow's diagram as Markdown (Mermaid), DOT and, with Graphviz, SVG.

The flow has a fan-out (``triage`` sends each question to two retrievers), a fan-in
(``merge``) and a controller loop (``controller`` is wired to itself with
``allow_cycle=True``). ``retrieve_docs`` stands for a node that runs a subflow through
``call_playbook``; the ``playbooks=`` option marks it in the diagrams.

Two diagrams are written:

* the topology, exactly what ``flow_to_mermaid`` / ``flow_to_dot`` print;
* a live view: the same flow running with a stuck ``merge`` step, drawn with
  ``snapshot=flow.inspect()`` so the backlog (queue depths, in-flight calls) shows up.

Run it with::

    python examples/visualizer/main.py            # writes into examples/visualizer/out/
    python examples/visualizer/main.py --out DIR
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

from penguiflow import (
    FlowEvent,
    Middleware,
    Node,
    NodePolicy,
    create,
    flow_to_dot,
    flow_to_mermaid,
)
from penguiflow.core import PenguiFlow
from penguiflow.inspect import FlowSnapshot

OUT = Path(__file__).with_name("out")
PLAYBOOKS = {"retrieve_docs": "retrieval playbook"}
UNTYPED = NodePolicy(validate="none")


class Progress:
    """Middleware counting ``node_success`` events per node; lets the demo await them."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}
        self.changed = asyncio.Condition()

    async def __call__(self, event: FlowEvent) -> None:
        if event.event_type == "node_success" and event.node_name is not None:
            async with self.changed:
                self.done[event.node_name] = self.done.get(event.node_name, 0) + 1
                self.changed.notify_all()

    async def wait(self, counts: dict[str, int]) -> None:
        async with self.changed:
            await self.changed.wait_for(
                lambda: all(self.done.get(k, 0) >= n for k, n in counts.items())
            )


def build_flow(
    merge_gate: asyncio.Event | None = None,
    merge_started: asyncio.Event | None = None,
    middlewares: list[Middleware] | None = None,
) -> PenguiFlow:
    """The demo flow. With ``merge_gate``, ``merge`` waits for it before each item."""

    async def triage(question: str, ctx: Any) -> str:
        return question

    async def retrieve_web(question: str, ctx: Any) -> str:
        return f"web results for {question!r}"

    async def retrieve_docs(question: str, ctx: Any) -> str:
        return f"docs for {question!r}"  # a real app would call_playbook(...) here

    async def merge(evidence: str, ctx: Any) -> str:
        if merge_started is not None:
            merge_started.set()
        if merge_gate is not None:
            await merge_gate.wait()
        return evidence

    async def controller(draft: str, ctx: Any) -> str:
        return draft  # plain results route to every successor; WM loops on itself

    async def answer(draft: str, ctx: Any) -> str:
        return draft

    def node(fn: Any, **kwargs: Any) -> Node:
        return Node(fn, policy=UNTYPED, **kwargs)

    t, web, docs, m = node(triage), node(retrieve_web), node(retrieve_docs), node(merge)
    ctl, ans = node(controller, allow_cycle=True), node(answer)
    return create(
        t.to(web, docs),  # fan-out
        web.to(m),
        docs.to(m),  # fan-in
        m.to(ctl),
        ctl.to(ctl, ans),  # controller loop
        ans.to(),
        queue_maxsize=8,
        middlewares=middlewares,
    )


async def live_snapshot() -> tuple[PenguiFlow, FlowSnapshot]:
    """Run the flow with ``merge`` stuck and return a snapshot of the backlog."""
    gate, started, progress = asyncio.Event(), asyncio.Event(), Progress()
    flow = build_flow(gate, started, [progress])
    flow.run()
    try:
        for i in range(3):
            await flow.emit(f"question {i}")
        # No sleeping: await the events that make the picture deterministic. Both
        # retrievers handled all 3 questions (6 results for merge), and merge holds one.
        async with asyncio.timeout(5):
            await progress.wait({"retrieve_web": 3, "retrieve_docs": 3})
            await started.wait()
        return flow, flow.inspect()
    finally:
        gate.set()
        await flow.stop()


def write_svg(dot_file: Path) -> Path | None:
    """Render ``dot_file`` to SVG with Graphviz, if ``dot`` is installed."""
    exe = shutil.which("dot")
    if exe is None:
        return None
    svg = dot_file.with_suffix(".svg")
    subprocess.run([exe, "-Tsvg", str(dot_file), "-o", str(svg)], check=True, timeout=60)
    return svg


def main(out_dir: Path = OUT) -> dict[str, Path]:
    """Write every diagram into ``out_dir``; return the files by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    flow = build_flow()
    live_flow, snapshot = asyncio.run(live_snapshot())

    markdown = "\n".join(
        [
            "# Flow diagrams",
            "",
            'Topology (`flow_to_mermaid(flow, direction="LR", playbooks=...)`):',
            "",
            "```mermaid",
            flow_to_mermaid(flow, direction="LR", playbooks=PLAYBOOKS),
            "```",
            "",
            "Live view with `merge` stuck (`snapshot=flow.inspect()`):",
            "",
            "```mermaid",
            flow_to_mermaid(live_flow, direction="LR", snapshot=snapshot, playbooks=PLAYBOOKS),
            "```",
            "",
        ]
    )
    files = {"markdown": out_dir / "flow.md", "dot": out_dir / "flow.dot"}
    files["markdown"].write_text(markdown, encoding="utf-8")
    files["dot"].write_text(
        flow_to_dot(flow, rankdir="LR", playbooks=PLAYBOOKS) + "\n", encoding="utf-8"
    )
    files["live_dot"] = out_dir / "flow_live.dot"
    files["live_dot"].write_text(
        flow_to_dot(live_flow, rankdir="LR", snapshot=snapshot, playbooks=PLAYBOOKS) + "\n",
        encoding="utf-8",
    )
    for kind in ("dot", "live_dot"):
        svg = write_svg(files[kind])
        if svg is not None:
            files[kind.replace("dot", "svg")] = svg
    return files


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    written = main(parser.parse_args().out)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    if "svg" not in written:
        print("Graphviz `dot` not found: no SVG written (apt-get install graphviz)")
