"""Builds ``flow.inspect()``'s read-only snapshot from the kernel's live state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ._chunks import STREAMS_PROBE
from ._edges import Floe, Trace, entries
from ._events import Hooks
from ._slots import NodeRuntime
from .inspect import EdgeSnapshot, FlowSnapshot, NodeSnapshot, TraceSnapshot

__all__ = ["snapshot"]


def snapshot(
    *,
    running: bool,
    queue_maxsize: int,
    runtimes: Iterable[NodeRuntime],
    floes: Iterable[Floe],
    traces: Mapping[str, Trace],
    streams: Mapping[str, int],
    probes: Hooks,
    workers: int,
    subscriptions: int,
) -> FlowSnapshot:
    """Copy what the kernel holds into frozen snapshot objects."""
    nodes = tuple(
        NodeSnapshot(
            node=rt.node,
            name=rt.node.name,
            queue_depth_in=sum(floe.live for floe in rt.ports.ins),
            inflight=sum(1 for slot in rt.slots if slot.busy),
            max_concurrency=rt.concurrency,
        )
        for rt in runtimes
    )
    edges = tuple(
        EdgeSnapshot(source=f.source, target=f.target, maxsize=f.maxsize, depth=f.live)
        for f in floes
    )
    trace_snaps = {
        tid: TraceSnapshot(
            trace_id=tid,
            pending=t.pending,
            queued=sum(1 for e in entries(t) if not e.dead),
            inflight=t.inflight,
            cancelled=t.cancelled,
        )
        for tid, t in traces.items()
    }
    return FlowSnapshot(
        running=running,
        queue_maxsize=queue_maxsize,
        nodes=nodes,
        edges=edges,
        traces=trace_snaps,
        resources={STREAMS_PROBE: dict(streams), **probes.read_probes()},
        workers=workers,
        subscriptions=subscriptions,
    )
