"""Wiring: from ``node.to(...)`` adjacencies to edges, with the build-time checks.

Everything here runs once per ``create()`` (and once per playbook call), never per
message, and stays index-based so that building a small flow is cheap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeAlias

from ._edges import OPEN_SEA, ROOKERY, Floe, Ports
from .errors import CycleError, FlowBuildError
from .node import Node

__all__ = ["CHECK_HOOK", "Adjacency", "Wiring", "check_cycles", "collect", "run_checks"]

Adjacency: TypeAlias = tuple[Node, Iterable[Node]]

CHECK_HOOK: Final = "__penguiflow_check__"
"""Attribute name of a component's build-time check.

A node function may carry ``func.__penguiflow_check__ = check``; ``create()`` calls
``check(flow, node)`` for every node of the flow, and the check raises a
``FlowBuildError`` naming the node when the component cannot work in that graph (for
example a router whose variant has no successor). It must not have side effects.
"""


class Wiring:
    """The edges of a flow and each owner's ports, in a stable order.

    ``floes`` lists ingress edges, then internal edges in declaration order, then egress.
    """

    __slots__ = ("floes", "opensea", "ports", "rookery", "rookery_floes")

    def __init__(self, nodes: list[Node], edges: list[tuple[int, int]], maxsize: int) -> None:
        ports = [Ports(n) for n in nodes]
        opensea = Ports(OPEN_SEA)
        rookery = Ports(ROOKERY)
        count = len(nodes)
        incoming = [0] * count
        succ: list[list[int]] = [[] for _ in range(count)]
        for src, dst in edges:
            succ[src].append(dst)
            if not (src == dst and nodes[src].allow_cycle):
                incoming[dst] += 1
        floes: list[Floe] = []

        def link(sp: Ports, dp: Ports) -> Floe:
            floe = Floe(sp.owner, dp.owner, maxsize=maxsize, inbox=dp.inbox)
            sp.outs.append(floe)
            sp.by_target[dp.owner] = floe
            dp.ins.append(floe)
            floes.append(floe)
            return floe

        for i in range(count):
            if incoming[i] == 0:
                link(opensea, ports[i])
        for src, dst in edges:
            link(ports[src], ports[dst])
        # A node whose only successor is itself (a controller) also exits to Rookery.
        self.rookery_floes = [
            link(ports[i], rookery) for i in range(count) if all(j == i for j in succ[i])
        ]
        self.floes = tuple(floes)
        self.ports = ports
        self.opensea = opensea
        self.rookery = rookery


def collect(adjacencies: Sequence[Adjacency]) -> tuple[list[Node], list[tuple[int, int]]]:
    """Return the nodes in order of first appearance and the deduplicated edges (indices)."""
    nodes: list[Node] = []
    index: dict[int, int] = {}  # id(node) -> position; nodes compare by identity
    edges: dict[tuple[int, int], None] = {}
    for position, adjacency in enumerate(adjacencies):
        if not (isinstance(adjacency, tuple) and len(adjacency) == 2):
            raise FlowBuildError(
                f"adjacency #{position} must be (node, successors), e.g. node.to(...); "
                f"got {adjacency!r}"
            )
        start, successors = adjacency
        if not isinstance(start, Node):
            raise FlowBuildError(f"adjacency #{position}: {start!r} is not a Node")
        src = index.get(id(start))
        if src is None:
            src = index[id(start)] = len(nodes)
            nodes.append(start)
        for succ in successors:
            if not isinstance(succ, Node):
                raise FlowBuildError(
                    f"adjacency #{position} ({start.name}): successor {succ!r} is not a Node"
                )
            dst = index.get(id(succ))
            if dst is None:
                dst = index[id(succ)] = len(nodes)
                nodes.append(succ)
            edges[(src, dst)] = None
    if len({node.name for node in nodes}) != len(nodes):
        seen: set[str] = set()
        for node in nodes:
            if node.name in seen:
                raise FlowBuildError(
                    f"two different nodes are named {node.name!r}; node names must be unique "
                    "within a flow (the registry, routers and fetch(from_=) key by name)"
                )
            seen.add(node.name)
    return nodes, list(edges)


def check_cycles(nodes: list[Node], edges: list[tuple[int, int]]) -> None:
    """Raise CycleError naming a cycle; allowed self-loops (``allow_cycle``) are skipped."""
    count = len(nodes)
    succ: list[list[int]] = [[] for _ in range(count)]
    for src, dst in edges:
        if src == dst and nodes[src].allow_cycle:
            continue
        succ[src].append(dst)
    white, grey, black = 0, 1, 2
    color = [white] * count
    for root in range(count):
        if color[root] != white:
            continue
        path = [root]
        stack = [(root, 0)]
        color[root] = grey
        while stack:
            node, i = stack[-1]
            if i < len(succ[node]):
                stack[-1] = (node, i + 1)
                nxt = succ[node][i]
                if color[nxt] == grey:
                    cycle = [*path[path.index(nxt) :], nxt]
                    names = [nodes[n].name for n in cycle]
                    if len(cycle) == 2:
                        fix = (
                            f"a node that loops on itself (a controller) is declared with "
                            f"Node(..., allow_cycle=True), e.g. node {names[0]!r}"
                        )
                    else:
                        fix = "create(..., allow_cycles=True) accepts any cycle"
                    raise CycleError(
                        "Flow contains a cycle; enable allow_cycles to bypass "
                        f"(cycle: {' -> '.join(names)}). To fix it: {fix}"
                    )
                if color[nxt] == white:
                    color[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                color[node] = black
                stack.pop()
                path.pop()


def run_checks(flow: Any, nodes: Iterable[Node]) -> None:
    """Call each node function's build-time check (``CHECK_HOOK``), if it has one."""
    for node in nodes:
        check = getattr(node.func, CHECK_HOOK, None)
        if check is not None:
            check(flow, node)
