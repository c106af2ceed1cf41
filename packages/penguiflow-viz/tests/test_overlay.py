"""The live overlay: ``snapshot=flow.inspect()`` on a running, backed-up flow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.core import OPEN_SEA, ROOKERY, Context, PenguiFlow, create
from penguiflow.metrics import FlowEvent
from penguiflow.node import Node, NodePolicy
from penguiflow.viz import flow_to_dot, flow_to_mermaid

if TYPE_CHECKING:
    from conftest import Cases, Grammar, Graphviz, MakeSnapshot, Mermaid

WAIT_S = 5.0


@dataclass
class Gate:
    """A node body that blocks until opened, reporting each call it starts."""

    opened: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    def node(self, name: str) -> Node:
        async def gate(item: Any, ctx: Context) -> Any:
            self.started.put_nowait(item)
            await self.opened.wait()
            return item

        return Node(gate, name=name, policy=NodePolicy(validate="none"))


class Successes:
    """Middleware counting ``node_success`` events per node, awaitable."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.changed = asyncio.Condition()

    async def __call__(self, event: FlowEvent) -> None:
        if event.event_type == "node_success" and event.node_name is not None:
            async with self.changed:
                self.counts[event.node_name] = self.counts.get(event.node_name, 0) + 1
                self.changed.notify_all()

    async def wait(self, name: str, count: int) -> None:
        async with asyncio.timeout(WAIT_S), self.changed:
            await self.changed.wait_for(lambda: self.counts.get(name, 0) >= count)


@dataclass
class Pipeline:
    flow: PenguiFlow
    gate: Gate
    gate_node: Node
    after: Node
    successes: Successes


@pytest.fixture
async def pipeline() -> AsyncIterator[Pipeline]:
    gate = Gate()
    gate_node = gate.node("gate")

    async def after_fn(item: Any, ctx: Context) -> Any:
        return item

    after = Node(after_fn, name="after", policy=NodePolicy(validate="none", max_concurrency=2))
    successes = Successes()
    flow = create(gate_node.to(after), after.to(), queue_maxsize=4, middlewares=[successes])
    flow.run()
    try:
        yield Pipeline(flow, gate, gate_node, after, successes)
    finally:
        gate.opened.set()
        await flow.stop()


async def _backed_up(p: Pipeline) -> None:
    """One item held inside ``gate``, two more waiting on its ingress edge."""
    await p.flow.emit("first")
    async with asyncio.timeout(WAIT_S):
        assert await p.gate.started.get() == "first"
    await p.flow.emit("second")
    await p.flow.emit("third")


async def test_overlay_shows_the_backlog(pipeline: Pipeline) -> None:
    await _backed_up(pipeline)
    snap = pipeline.flow.inspect()
    assert flow_to_mermaid(pipeline.flow, snapshot=snap) == "\n".join(
        [
            "graph TD",
            '    gate["gate<br/>queued 2, running 1/1"]',
            '    after["after<br/>queued 0, running 0/2"]',
            '    OpenSea["OpenSea"]',
            '    Rookery["Rookery<br/>queued 0"]',
            "    classDef backlog stroke:#b91c1c,stroke-width:3px",
            "    classDef endpoint fill:#e0f2fe,stroke:#0369a1,stroke-width:1px",
            "    class gate backlog",
            "    class OpenSea endpoint",
            "    class Rookery endpoint",
            "    OpenSea -->|ingress, 2/4 queued| gate",
            "    gate --> after",
            "    after -->|egress| Rookery",
            "    linkStyle 0 stroke:#b91c1c,stroke-width:2px",
        ]
    )
    assert flow_to_dot(pipeline.flow, snapshot=snap) == "\n".join(
        [
            "digraph PenguiFlow {",
            "    rankdir=TB",
            "    node [shape=box, style=rounded]",
            '    gate [label="gate\\nqueued 2, running 1/1", color="#b91c1c", penwidth=2]',
            '    after [label="after\\nqueued 0, running 0/2"]',
            '    OpenSea [label="OpenSea", shape=oval, style="filled", fillcolor="#e0f2fe"]',
            '    Rookery [label="Rookery\\nqueued 0", shape=oval, style="filled", '
            'fillcolor="#e0f2fe"]',
            '    OpenSea -> gate [label="ingress, 2/4 queued", color="#b91c1c", penwidth=2]',
            "    gate -> after",
            '    after -> Rookery [label="egress"]',
            "}",
        ]
    )


async def test_overlay_shows_results_waiting_at_rookery(pipeline: Pipeline) -> None:
    await _backed_up(pipeline)
    pipeline.gate.opened.set()
    await pipeline.successes.wait("after", 3)
    snap = pipeline.flow.inspect()
    lines = flow_to_mermaid(pipeline.flow, snapshot=snap).split("\n")
    assert '    gate["gate<br/>queued 0, running 0/1"]' in lines
    assert '    Rookery["Rookery<br/>queued 3"]' in lines
    assert "    class Rookery backlog" in lines
    assert "    after -->|egress, 3/4 queued| Rookery" in lines
    assert "    linkStyle 2 stroke:#b91c1c,stroke-width:2px" in lines
    dot = flow_to_dot(pipeline.flow, snapshot=snap).split("\n")
    assert (
        '    Rookery [label="Rookery\\nqueued 3", shape=oval, style="filled", '
        'fillcolor="#e0f2fe", color="#b91c1c", penwidth=2]'
    ) in dot
    for _ in range(3):
        async with asyncio.timeout(WAIT_S):
            await pipeline.flow.fetch()
    idle = flow_to_mermaid(pipeline.flow, snapshot=pipeline.flow.inspect())
    assert "backlog" not in idle
    assert '    Rookery["Rookery<br/>queued 0"]' in idle.split("\n")


async def test_without_a_snapshot_the_output_is_unchanged(pipeline: Pipeline) -> None:
    before = flow_to_mermaid(pipeline.flow), flow_to_dot(pipeline.flow)
    await _backed_up(pipeline)
    assert (flow_to_mermaid(pipeline.flow), flow_to_dot(pipeline.flow)) == before
    assert "queued" not in before[0] + before[1]


async def test_live_overlay_passes_the_real_parsers(
    pipeline: Pipeline, graphviz: Graphviz, mermaid: Mermaid, grammar: type[Grammar]
) -> None:
    await _backed_up(pipeline)
    snap = pipeline.flow.inspect()
    dot = flow_to_dot(pipeline.flow, snapshot=snap, playbooks={"after": "summarise"})
    graphviz.svg(dot)
    assert graphviz.model(dot).labels["gate"] == "gate\nqueued 2, running 1/1"
    text = flow_to_mermaid(pipeline.flow, snapshot=snap, playbooks={"after": "summarise"})
    parsed = mermaid.parse(text)
    assert parsed.labels == grammar.mermaid(text).labels
    assert parsed.classes["gate"] == ["backlog"]
    assert parsed.classes["after"] == ["playbook"]
    assert parsed.shapes["after"] == "subroutine"


def test_unbounded_edges_show_the_depth_alone(
    make_node: Callable[..., Node], make_snapshot: MakeSnapshot
) -> None:
    a = make_node("a")
    flow = create(a.to(), queue_maxsize=0)
    snap = make_snapshot(flow, {(OPEN_SEA, a): 5, (a, ROOKERY): 1})
    lines = flow_to_mermaid(flow, snapshot=snap).split("\n")
    assert "    OpenSea -->|ingress, 5 queued| a" in lines
    assert "    a -->|egress, 1 queued| Rookery" in lines
    assert "    linkStyle 0,1 stroke:#b91c1c,stroke-width:2px" in lines


def test_an_internal_edge_with_a_backlog_gets_a_label(
    make_node: Callable[..., Node], make_snapshot: MakeSnapshot
) -> None:
    a, b = make_node("a"), make_node("b", max_concurrency=4)
    flow = create(a.to(b), b.to())
    snap = make_snapshot(flow, {(a, b): 3})
    dot = flow_to_dot(flow, snapshot=snap).split("\n")
    assert '    a -> b [label="3/64 queued", color="#b91c1c", penwidth=2]' in dot
    assert '    b [label="b\\nqueued 3, running 1/4", color="#b91c1c", penwidth=2]' in dot


def test_controller_with_backlog_keeps_both_classes(
    make_node: Callable[..., Node], make_snapshot: MakeSnapshot, cases: Cases
) -> None:
    case = cases["controller"]()
    ctl = case.nodes["controller"]
    snap = make_snapshot(case.flow, {(ctl, ctl): 2})
    lines = flow_to_mermaid(case.flow, snapshot=snap).split("\n")
    assert lines.count("    class controller backlog") == 1
    assert lines.count("    class controller controller_loop") == 1
    assert "    controller -->|loop, 2/64 queued| controller" in lines
    dot = flow_to_dot(case.flow, snapshot=snap).split("\n")
    assert (
        '    controller [label="controller\\nqueued 2, running 1/1", style="rounded,filled", '
        'fillcolor="#fef3c7", color="#b91c1c", penwidth=2]'
    ) in dot


def test_a_snapshot_of_another_flow_is_rejected(
    make_node: Callable[..., Node], cases: Cases
) -> None:
    one, other = cases["controller"](), cases["controller"]()
    with pytest.raises(ValueError, match="snapshot does not describe this flow"):
        flow_to_mermaid(one.flow, snapshot=other.flow.inspect())
    with pytest.raises(ValueError, match="snapshot does not describe this flow"):
        flow_to_dot(one.flow, snapshot=other.flow.inspect())
