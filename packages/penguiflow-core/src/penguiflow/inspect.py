"""Read-only snapshots of a flow, for diagrams, dashboards and leak checks.

``flow.inspect()`` returns a :class:`FlowSnapshot`. Add-ons (the visualizer's overlay,
the test kit's quiescence check) read flows only through these objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._edges import Endpoint
    from .node import Node

__all__ = ["EdgeSnapshot", "FlowSnapshot", "NodeSnapshot", "TraceSnapshot"]


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """One node: how much waits for it and how much of it runs."""

    node: Node
    name: str
    queue_depth_in: int
    """Items queued on the node's incoming edges."""
    inflight: int
    """Invocations running now."""
    max_concurrency: int


@dataclass(frozen=True, slots=True)
class EdgeSnapshot:
    """One edge (Floe) and its live depth."""

    source: Node | Endpoint
    target: Node | Endpoint
    maxsize: int
    """The bound; ``<= 0`` means unbounded."""
    depth: int
    """Items queued now."""


@dataclass(frozen=True, slots=True)
class TraceSnapshot:
    """One live trace."""

    trace_id: str
    pending: int
    """Items of the trace not yet finished (queued, in flight, or waiting at Rookery)."""
    queued: int
    """Items of the trace sitting on edges."""
    inflight: int
    """Node invocations of the trace running now."""
    cancelled: bool


@dataclass(frozen=True, slots=True)
class FlowSnapshot:
    """A consistent picture of a flow at one instant."""

    running: bool
    queue_maxsize: int
    nodes: tuple[NodeSnapshot, ...]
    edges: tuple[EdgeSnapshot, ...]
    traces: Mapping[str, TraceSnapshot]
    """Live traces only: a finished trace leaves nothing behind."""
    resources: Mapping[str, Mapping[str, int]]
    """Per-trace state held by components (probe name -> trace id -> count)."""
    workers: int
    """Worker tasks alive."""
    subscriptions: int
    """Open ``subscribe()`` views."""

    @property
    def is_quiescent(self) -> bool:
        """True when no trace, queued item, in-flight call, subscription or resource is left.

        Worker tasks are not counted (a running flow has them); check ``workers == 0``
        after ``stop()`` for that.
        """
        return (
            not self.traces
            and all(edge.depth == 0 for edge in self.edges)
            and all(node.inflight == 0 for node in self.nodes)
            and not any(self.resources.values())
            and self.subscriptions == 0
        )
