"""The graph model shared by the Mermaid and DOT renderers.

Built only from core's public topology (``flow.nodes``, ``flow.floes``) and, for the
overlay, from a :class:`~penguiflow.inspect.FlowSnapshot`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from penguiflow.core import OPEN_SEA, ROOKERY, Endpoint, PenguiFlow
from penguiflow.inspect import FlowSnapshot
from penguiflow.node import Node

from ._escape import is_reserved

__all__ = [
    "BACKLOG",
    "CONTROLLER_LOOP",
    "ENDPOINT",
    "PLAYBOOK",
    "Graph",
    "Load",
    "Playbooks",
    "VisualEdge",
    "VisualNode",
    "build_graph",
]

Owner: TypeAlias = Node | Endpoint
# Mapping keys are invariant: accept dict[Node, str] and dict[str, str] as well.
Playbooks: TypeAlias = Mapping[Node, str] | Mapping[str, str] | Mapping[Node | str, str]

BACKLOG: Final = "backlog"
CONTROLLER_LOOP: Final = "controller_loop"
ENDPOINT: Final = "endpoint"
PLAYBOOK: Final = "playbook"

_UNSAFE: Final = re.compile(r"[^0-9A-Za-z_]")


@dataclass(frozen=True, slots=True)
class Load:
    """Live figures of one visual node, from a snapshot."""

    queued: int
    """Items waiting on the node's incoming edges (for Rookery: waiting to be fetched)."""
    running: int | None = None
    """Invocations in flight; ``None`` for an endpoint."""
    max_concurrency: int | None = None
    """The node's concurrency limit; ``None`` for an endpoint."""

    def text(self) -> str:
        """The overlay line, e.g. ``queued 3, running 1/2``."""
        if self.running is None:
            return f"queued {self.queued}"
        return f"queued {self.queued}, running {self.running}/{self.max_concurrency}"


@dataclass(frozen=True, slots=True)
class VisualNode:
    """A node of the diagram: a flow node or a boundary."""

    owner: Owner
    ident: str
    """Identifier, unique within the diagram, ``[0-9A-Za-z_]+``, never a keyword."""
    label: str
    """Raw (unescaped) label."""
    classes: tuple[str, ...]
    """Class names, sorted."""
    playbook: str | None = None
    """Opt-in subflow annotation."""
    load: Load | None = None
    """Overlay figures; ``None`` without a snapshot."""

    @property
    def is_endpoint(self) -> bool:
        """True for OpenSea and Rookery."""
        return isinstance(self.owner, Endpoint)


@dataclass(frozen=True, slots=True)
class VisualEdge:
    """An edge of the diagram: one runtime Floe."""

    source: str
    """Identifier of the source visual node."""
    target: str
    """Identifier of the target visual node."""
    label: str | None
    """``loop``, ``ingress``, ``egress`` or ``None``."""
    maxsize: int
    """The edge's bound (``<= 0``: unbounded)."""
    depth: int | None = None
    """Items queued now; ``None`` without a snapshot."""

    @property
    def backlog(self) -> bool:
        """True when the snapshot shows items waiting on this edge."""
        return bool(self.depth)

    def text(self) -> str | None:
        """The edge label, with the overlay figure when items are waiting."""
        if not self.depth:
            return self.label
        bound = f"{self.depth}/{self.maxsize}" if self.maxsize > 0 else f"{self.depth}"
        figure = f"{bound} queued"
        return figure if self.label is None else f"{self.label}, {figure}"


@dataclass(frozen=True, slots=True)
class Graph:
    """Visual nodes and edges, in output order."""

    nodes: tuple[VisualNode, ...]
    edges: tuple[VisualEdge, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        """Every class in use, sorted by name."""
        return tuple(sorted({cls for node in self.nodes for cls in node.classes}))


def _label(owner: Owner) -> str:
    if isinstance(owner, Endpoint):
        return owner.name
    return owner.name or owner.node_id


class _Identifiers:
    """Hands out identifiers: label with unsafe characters as ``_``, then ``_2``, ``_3``."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def new(self, label: str) -> str:
        base = _UNSAFE.sub("_", label) or "node"
        ident, n = base, 1
        while ident in self._used or is_reserved(ident):
            n += 1
            ident = f"{base}_{n}"
        self._used.add(ident)
        return ident


def _edge_label(source: Owner, target: Owner) -> str | None:
    if source is target:
        return "loop"
    if source == OPEN_SEA:
        return "ingress"
    if target == ROOKERY:
        return "egress"
    return None


def _resolve_playbooks(nodes: tuple[Node, ...], playbooks: Playbooks) -> dict[Node, str]:
    known = set(nodes)
    by_name: dict[str, list[Node]] = {}
    for node in nodes:
        by_name.setdefault(node.name, []).append(node)
    resolved: dict[Node, str] = {}
    items: list[tuple[object, object]] = list(playbooks.items())
    for key, label in items:
        if not isinstance(label, str):
            raise TypeError(f"playbooks: the label for {key!r} must be a str, got {label!r}")
        if isinstance(key, Node):
            if key not in known:
                raise ValueError(f"playbooks: node {key.name!r} is not a node of this flow")
            targets = [key]
        elif isinstance(key, str):
            if key not in by_name:
                raise ValueError(f"playbooks: no node named {key!r} in this flow")
            targets = by_name[key]
        else:
            raise TypeError(f"playbooks: keys must be Node or str, got {key!r}")
        for node in targets:
            if node in resolved and resolved[node] != label:
                raise ValueError(
                    f"playbooks: node {node.name!r} is annotated twice "
                    f"({resolved[node]!r} and {label!r})"
                )
            resolved[node] = label
    return resolved


def _loads(
    flow: PenguiFlow, snapshot: FlowSnapshot
) -> tuple[dict[Owner, Load], dict[tuple[Owner, Owner], int]]:
    if {ns.node for ns in snapshot.nodes} != set(flow.nodes):
        raise ValueError("snapshot does not describe this flow (its nodes differ)")
    loads: dict[Owner, Load] = {
        ns.node: Load(ns.queue_depth_in, ns.inflight, ns.max_concurrency) for ns in snapshot.nodes
    }
    depths = {(es.source, es.target): es.depth for es in snapshot.edges}
    loads[ROOKERY] = Load(sum(es.depth for es in snapshot.edges if es.target == ROOKERY))
    return loads, depths


def build_graph(
    flow: PenguiFlow,
    *,
    snapshot: FlowSnapshot | None = None,
    playbooks: Playbooks | None = None,
) -> Graph:
    """Build the diagram model of ``flow``.

    Args:
        flow: The flow to draw (it need not be running).
        snapshot: Optional ``flow.inspect()`` result for the live overlay.
        playbooks: Optional ``{node or node name: subflow label}`` annotations.

    Returns:
        Nodes in order of first appearance, then OpenSea and Rookery when they have
        edges; edges as ingress, internal (declaration order), egress.

    Raises:
        TypeError: ``flow`` is not a ``PenguiFlow``, or a playbook key/label has the
            wrong type.
        ValueError: the snapshot is of another flow, or a playbook key names no node of
            this flow.
    """
    if not isinstance(flow, PenguiFlow):
        raise TypeError(f"expected a PenguiFlow, got {type(flow).__name__}")
    nodes = flow.nodes
    floes = flow.floes
    pb = _resolve_playbooks(nodes, playbooks) if playbooks else {}
    loads, depths = _loads(flow, snapshot) if snapshot is not None else ({}, {})

    self_looped = {f.source for f in floes if f.source is f.target}
    owners: list[Owner] = list(nodes)
    if any(f.source == OPEN_SEA for f in floes):
        owners.append(OPEN_SEA)
    if any(f.target == ROOKERY for f in floes):
        owners.append(ROOKERY)

    idents = _Identifiers()
    visual: list[VisualNode] = []
    ident_of: dict[Owner, str] = {}
    for owner in owners:
        label = _label(owner)
        ident = ident_of[owner] = idents.new(label)
        load = loads.get(owner)
        classes: set[str] = set()
        if isinstance(owner, Endpoint):
            classes.add(ENDPOINT)
        elif owner.allow_cycle or owner in self_looped:
            classes.add(CONTROLLER_LOOP)
        playbook = pb.get(owner) if isinstance(owner, Node) else None
        if playbook is not None:
            classes.add(PLAYBOOK)
        if load is not None and load.queued > 0:
            classes.add(BACKLOG)
        visual.append(VisualNode(owner, ident, label, tuple(sorted(classes)), playbook, load))

    # flow.floes is already in this order; the stable sort only guards that order.
    def rank(source: Owner, target: Owner) -> int:
        return 0 if source == OPEN_SEA else 2 if target == ROOKERY else 1

    edges = tuple(
        VisualEdge(
            ident_of[f.source],
            ident_of[f.target],
            _edge_label(f.source, f.target),
            f.maxsize,
            depths.get((f.source, f.target), 0) if snapshot is not None else None,
        )
        for f in sorted(floes, key=lambda f: rank(f.source, f.target))
    )
    return Graph(tuple(visual), edges)
