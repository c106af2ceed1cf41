"""Byte-exact output (the documented format), ordering, determinism and argument checks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.core import create
from penguiflow.viz import flow_to_dot, flow_to_mermaid

if TYPE_CHECKING:
    from conftest import Cases, MakeNode

MERMAID_CONTROLLER = """\
graph TD
    planner["planner"]
    controller["controller"]
    sum["sum"]
    OpenSea["OpenSea"]
    Rookery["Rookery"]
    classDef controller_loop fill:#fef3c7,stroke:#b45309,stroke-width:1px
    classDef endpoint fill:#e0f2fe,stroke:#0369a1,stroke-width:1px
    class controller controller_loop
    class OpenSea endpoint
    class Rookery endpoint
    OpenSea -->|ingress| planner
    planner --> controller
    controller -->|loop| controller
    controller --> sum
    sum -->|egress| Rookery"""

DOT_CONTROLLER = """\
digraph PenguiFlow {
    rankdir=TB
    node [shape=box, style=rounded]
    planner [label="planner"]
    controller [label="controller", style="rounded,filled", fillcolor="#fef3c7"]
    sum [label="sum"]
    OpenSea [label="OpenSea", shape=oval, style="filled", fillcolor="#e0f2fe"]
    Rookery [label="Rookery", shape=oval, style="filled", fillcolor="#e0f2fe"]
    OpenSea -> planner [label="ingress"]
    planner -> controller
    controller -> controller [label="loop"]
    controller -> sum
    sum -> Rookery [label="egress"]
}"""


def test_mermaid_is_byte_exact(cases: Cases) -> None:
    assert flow_to_mermaid(cases["controller"]().flow) == MERMAID_CONTROLLER


def test_dot_is_byte_exact(cases: Cases) -> None:
    assert flow_to_dot(cases["controller"]().flow) == DOT_CONTROLLER


def test_direction_and_rankdir_only_change_the_header(cases: Cases) -> None:
    flow = cases["controller"]().flow
    mermaid = flow_to_mermaid(flow, direction="LR").split("\n")
    assert mermaid[0] == "graph LR"
    assert mermaid[1:] == MERMAID_CONTROLLER.split("\n")[1:]
    dot = flow_to_dot(flow, rankdir="LR").split("\n")
    assert dot[1] == "    rankdir=LR"
    assert dot[:1] + dot[2:] == DOT_CONTROLLER.split("\n")[:1] + DOT_CONTROLLER.split("\n")[2:]


def test_fan_out_fan_in_order(cases: Cases) -> None:
    # Nodes in order of first appearance, then the endpoints; edges ingress, internal
    # in declaration order, egress. No class is used, so no classDef/class for nodes.
    assert flow_to_mermaid(cases["fan_out_in"]().flow) == textwrap.dedent(
        """\
        graph TD
            split["split"]
            a["a"]
            b["b"]
            c["c"]
            join["join"]
            OpenSea["OpenSea"]
            Rookery["Rookery"]
            classDef endpoint fill:#e0f2fe,stroke:#0369a1,stroke-width:1px
            class OpenSea endpoint
            class Rookery endpoint
            OpenSea -->|ingress| split
            split --> a
            split --> b
            split --> c
            a --> join
            b --> join
            c --> join
            join -->|egress| Rookery"""
    )


def test_several_ingress_and_egress_follow_node_order(make_node: MakeNode) -> None:
    a, b, x, y = (make_node(n) for n in ("a", "b", "x", "y"))
    flow = create(b.to(y), a.to(x), x.to(), y.to())
    lines = flow_to_dot(flow).split("\n")
    assert lines[3:] == [
        '    b [label="b"]',
        '    y [label="y"]',
        '    a [label="a"]',
        '    x [label="x"]',
        '    OpenSea [label="OpenSea", shape=oval, style="filled", fillcolor="#e0f2fe"]',
        '    Rookery [label="Rookery", shape=oval, style="filled", fillcolor="#e0f2fe"]',
        '    OpenSea -> b [label="ingress"]',
        '    OpenSea -> a [label="ingress"]',
        "    b -> y",
        "    a -> x",
        '    y -> Rookery [label="egress"]',
        '    x -> Rookery [label="egress"]',
        "}",
    ]


def test_self_loops_and_cycles_under_allow_cycles(cases: Cases) -> None:
    # "loop" has a self-edge but no allow_cycle (allowed by allow_cycles=True): it is a
    # controller_loop, its self-edge counts as incoming (no ingress), and with another
    # successor it has no egress. ping/pong form a 2-node cycle: no loop label.
    assert flow_to_dot(cases["self_loop_mixed"]().flow) == textwrap.dedent(
        """\
        digraph PenguiFlow {
            rankdir=TB
            node [shape=box, style=rounded]
            entry [label="entry"]
            loop [label="loop", style="rounded,filled", fillcolor="#fef3c7"]
            ping [label="ping"]
            out [label="out"]
            pong [label="pong"]
            OpenSea [label="OpenSea", shape=oval, style="filled", fillcolor="#e0f2fe"]
            Rookery [label="Rookery", shape=oval, style="filled", fillcolor="#e0f2fe"]
            OpenSea -> entry [label="ingress"]
            entry -> loop
            entry -> ping
            loop -> loop [label="loop"]
            loop -> out
            ping -> pong
            pong -> ping
            pong -> out
            out -> Rookery [label="egress"]
        }"""
    )


def test_allow_cycle_without_self_edge_is_still_a_controller(make_node: MakeNode) -> None:
    a, b = make_node("a", allow_cycle=True), make_node("b")
    text = flow_to_mermaid(create(a.to(b), b.to()))
    assert "    class a controller_loop" in text.split("\n")
    assert "loop|" not in text


def test_pure_cycle_has_no_boundaries(cases: Cases) -> None:
    assert flow_to_mermaid(cases["pure_cycle"]().flow) == textwrap.dedent(
        """\
        graph TD
            a["a"]
            b["b"]
            a --> b
            b --> a"""
    )


def test_single_node(make_node: MakeNode) -> None:
    only = make_node("only")
    assert flow_to_dot(create(only.to()), rankdir="LR") == textwrap.dedent(
        """\
        digraph PenguiFlow {
            rankdir=LR
            node [shape=box, style=rounded]
            only [label="only"]
            OpenSea [label="OpenSea", shape=oval, style="filled", fillcolor="#e0f2fe"]
            Rookery [label="Rookery", shape=oval, style="filled", fillcolor="#e0f2fe"]
            OpenSea -> only [label="ingress"]
            only -> Rookery [label="egress"]
        }"""
    )


def test_duplicate_edges_are_drawn_once(make_node: MakeNode) -> None:
    a, b = make_node("a"), make_node("b")
    flow = create(a.to(b, b), a.to(b), b.to())
    assert flow_to_mermaid(flow).count("a --> b") == 1


def test_output_is_pure_and_does_not_start_the_flow(cases: Cases) -> None:
    flow = cases["controller"]().flow
    first = flow_to_mermaid(flow), flow_to_dot(flow)
    assert (flow_to_mermaid(flow), flow_to_dot(flow)) == first
    assert flow.is_running is False
    assert flow.inspect().workers == 0


def test_same_topology_built_twice_gives_the_same_text(cases: Cases) -> None:
    for build in cases.values():
        one, two = build(), build()
        assert flow_to_mermaid(one.flow, **one.kwargs()) == flow_to_mermaid(
            two.flow, **two.kwargs()
        )
        assert flow_to_dot(one.flow, **one.kwargs()) == flow_to_dot(two.flow, **two.kwargs())


SCRIPT = """
from penguiflow.core import create
from penguiflow.node import Node, NodePolicy
from penguiflow.viz import flow_to_dot, flow_to_mermaid

async def work(item, ctx):
    return item

def n(name, **kw):
    return Node(work, name=name, policy=NodePolicy(validate="none"), **kw)

names = ["s", "a b", "a-b", "a.b", "end", "node", "x", "y", "z", "ctl"]
nodes = {k: n(k, allow_cycle=(k == "ctl")) for k in names}
s, ctl = nodes["s"], nodes["ctl"]
others = [v for k, v in nodes.items() if k not in ("s", "ctl")]
flow = create(s.to(*others), *(o.to(ctl) for o in others), ctl.to(ctl))
print(flow_to_mermaid(flow))
print(flow_to_dot(flow))
"""


def test_output_does_not_depend_on_hash_seed() -> None:
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        outputs.add(proc.stdout)
    assert len(outputs) == 1


@pytest.mark.parametrize("direction", ["td", "TX", "", "LR ", "graph"])
def test_unknown_direction_is_rejected(direction: Any, cases: Cases) -> None:  # not a Direction
    with pytest.raises(ValueError, match="direction must be one of TB, TD, BT, RL, LR"):
        flow_to_mermaid(cases["controller"]().flow, direction=direction)


@pytest.mark.parametrize("rankdir", ["TD", "lr", "", "TB;"])
def test_unknown_rankdir_is_rejected(rankdir: Any, cases: Cases) -> None:  # not a RankDir
    with pytest.raises(ValueError, match="rankdir must be one of TB, LR, BT, RL"):
        flow_to_dot(cases["controller"]().flow, rankdir=rankdir)


@pytest.mark.parametrize("render", [flow_to_mermaid, flow_to_dot])
def test_a_non_flow_is_rejected(render: Any) -> None:  # called with a non-flow
    with pytest.raises(TypeError, match="expected a PenguiFlow, got dict"):
        render({})


@pytest.mark.parametrize("render", [flow_to_mermaid, flow_to_dot])
def test_options_are_keyword_only(render: Any, cases: Cases) -> None:  # called positionally
    with pytest.raises(TypeError):
        render(cases["controller"]().flow, "LR")


README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_are_the_real_output(make_node: MakeNode) -> None:
    planner, summarize = make_node("planner"), make_node("summarize")
    controller = make_node("controller", allow_cycle=True)
    flow = create(planner.to(controller), controller.to(controller, summarize), summarize.to())
    readme = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```(mermaid|dot)\n(.*?)\n```", readme, flags=re.S)
    assert blocks[0] == ("mermaid", flow_to_mermaid(flow))
    assert blocks[1] == ("dot", flow_to_dot(flow))
