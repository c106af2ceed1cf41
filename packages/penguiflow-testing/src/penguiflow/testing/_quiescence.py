"""The quiescence check: did a flow leave anything behind?

Reads only ``flow.inspect()`` (core's public snapshot), so it sees exactly what core
accounts for: live traces (pending, queued, in flight), items on edges, in-flight
invocations, open ``subscribe()`` views, worker tasks and whatever components report
through ``flow.register_probe`` (join buckets, for instance).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._errors import QuiescenceError

if TYPE_CHECKING:
    from penguiflow.core import PenguiFlow
    from penguiflow.inspect import FlowSnapshot

__all__ = ["assert_flows_quiescent", "describe_leaks"]


def _owner_name(owner: object) -> str:
    return str(getattr(owner, "name", owner))


def describe_leaks(flow: PenguiFlow, *, require_stopped: bool = False) -> list[str]:
    """List what ``flow`` still holds, one line per fact, grouped by trace.

    Args:
        flow: The flow to inspect.
        require_stopped: Also report a flow that is still running.

    Returns:
        Human-readable lines; empty when the flow is quiescent.
    """
    snap: FlowSnapshot = flow.inspect()
    lines: list[str] = []
    resources_by_trace: dict[str, list[str]] = {}
    for probe, per_trace in snap.resources.items():
        for trace_id, count in per_trace.items():
            if count:
                resources_by_trace.setdefault(trace_id, []).append(f"{probe}={count}")
    for trace_id in sorted(set(snap.traces) | set(resources_by_trace)):
        trace = snap.traces.get(trace_id)
        parts: list[str] = []
        if trace is not None:
            parts.append(f"pending={trace.pending} queued={trace.queued} inflight={trace.inflight}")
            if trace.cancelled:
                parts.append("cancelled")
        else:
            parts.append("finished in core")
        if trace_id in resources_by_trace:
            parts.append("held by probes: " + ", ".join(resources_by_trace[trace_id]))
        lines.append(f"trace {trace_id}: " + "; ".join(parts))
    traced_queued = sum(t.queued for t in snap.traces.values())
    queued_edges = [e for e in snap.edges if e.depth]
    if queued_edges:
        total = sum(e.depth for e in queued_edges)
        where = ", ".join(
            f"{_owner_name(e.source)}->{_owner_name(e.target)}: {e.depth}" for e in queued_edges
        )
        untracked = total - traced_queued
        suffix = f" ({untracked} without a trace id)" if untracked > 0 else ""
        lines.append(f"items queued on edges: {where}{suffix}")
    busy = [f"{n.name}: {n.inflight}" for n in snap.nodes if n.inflight]
    if busy:
        lines.append("invocations in flight: " + ", ".join(busy))
    if snap.subscriptions:
        lines.append(f"subscribe() views still open: {snap.subscriptions}")
    if snap.running:
        if require_stopped:
            lines.append(
                f"flow never stopped (worker tasks alive: {snap.workers}): call `await flow.stop()`"
            )
    elif snap.workers:
        lines.append(f"worker tasks alive after stop(): {snap.workers}")
    return lines


def assert_flows_quiescent(flows: Iterable[PenguiFlow], *, require_stopped: bool = False) -> None:
    """Assert that none of ``flows`` holds any work; list every leak otherwise.

    Args:
        flows: The flows to check.
        require_stopped: Also fail for flows that are still running.

    Raises:
        QuiescenceError: Something was left behind; the message lists it per flow and
            trace.
    """
    reports: list[str] = []
    for flow in flows:
        leaks = describe_leaks(flow, require_stopped=require_stopped)
        if leaks:
            reports.append(f"{flow!r}:\n" + "\n".join(f"    {line}" for line in leaks))
    if reports:
        raise QuiescenceError("flows are not quiescent:\n  " + "\n  ".join(reports))
