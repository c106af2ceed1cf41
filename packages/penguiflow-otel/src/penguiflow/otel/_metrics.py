"""OpenTelemetry instruments shared by every instrumented flow of one meter provider.

OpenTelemetry keeps an instrument for the life of its meter and has no way to remove an
observable callback. Creating the same observable gauge twice keeps only the first
callback. So each meter provider gets one set of instruments; their callbacks walk the
flows that are instrumented *now* (each flow registers on ``instrument()`` and leaves on
uninstrument), and a flow is told apart by its ``penguiflow.flow`` attribute.

Observable callbacks run when a reader collects, which the SDK's periodic reader does on
its own thread. ``flow.inspect()`` reads structures that the event loop mutates, so a
collection from another thread asks the flow's loop to take the snapshot
(:meth:`Source.snapshot`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, Protocol

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from ._version import __version__

if TYPE_CHECKING:
    from penguiflow.inspect import FlowSnapshot

__all__ = ["Meters", "Source", "meters_for"]

METER_NAME: Final = "penguiflow.otel"

FLOW: Final = "penguiflow.flow"
NODE: Final = "penguiflow.node.name"
OUTCOME: Final = "penguiflow.outcome"
EDGE_SOURCE: Final = "penguiflow.edge.source"
EDGE_TARGET: Final = "penguiflow.edge.target"
PROBE: Final = "penguiflow.probe"


class Source(Protocol):
    """An instrumented flow, as the observable callbacks see it."""

    flow_name: str

    def snapshot(self) -> FlowSnapshot | None:
        """Return ``flow.inspect()`` taken safely, or None when there is nothing to show."""


class Meters:
    """The instruments of one meter provider, and the flows they observe."""

    def __init__(self, provider: MeterProvider) -> None:
        meter = provider.get_meter(METER_NAME, __version__)
        self.duration = meter.create_histogram(
            "penguiflow.node.duration",
            unit="s",
            description="Duration of node attempts, by node and outcome.",
        )
        self.retries = meter.create_counter(
            "penguiflow.node.retries",
            unit="{retry}",
            description="Retries scheduled after a failed attempt, by node.",
        )
        self.failures = meter.create_counter(
            "penguiflow.node.failures",
            unit="{item}",
            description="Items a node gave up on after its last attempt, by node.",
        )
        self._lock = threading.Lock()
        # Weak: an instrumented flow that is dropped without uninstrument goes away too.
        self._sources: weakref.WeakSet[Source] = weakref.WeakSet()
        meter.create_observable_gauge(
            "penguiflow.traces.live",
            callbacks=[self._live_traces],
            unit="{trace}",
            description="Traces with work pending in the flow.",
        )
        meter.create_observable_gauge(
            "penguiflow.edge.queued",
            callbacks=[self._queued],
            unit="{item}",
            description="Items waiting on each edge.",
        )
        meter.create_observable_gauge(
            "penguiflow.node.inflight",
            callbacks=[self._inflight],
            unit="{invocation}",
            description="Node invocations running now.",
        )
        meter.create_observable_gauge(
            "penguiflow.probe.resources",
            callbacks=[self._resources],
            unit="{resource}",
            description="What each probe (join buckets, open streams, ...) holds, summed "
            "over traces.",
        )

    def add(self, source: Source) -> None:
        """Start observing ``source``."""
        with self._lock:
            self._sources.add(source)

    def discard(self, source: Source) -> None:
        """Stop observing ``source`` (no error if it was not observed)."""
        with self._lock:
            self._sources.discard(source)

    def _snapshots(self) -> list[tuple[str, FlowSnapshot]]:
        with self._lock:
            sources = list(self._sources)
        out = []
        for source in sources:
            snap = source.snapshot()
            if snap is not None:
                out.append((source.flow_name, snap))
        return out

    def _live_traces(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(len(snap.traces), {FLOW: name}) for name, snap in self._snapshots()]

    def _queued(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                edge.depth,
                {FLOW: name, EDGE_SOURCE: edge.source.name, EDGE_TARGET: edge.target.name},
            )
            for name, snap in self._snapshots()
            for edge in snap.edges
        ]

    def _inflight(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(node.inflight, {FLOW: name, NODE: node.name})
            for name, snap in self._snapshots()
            for node in snap.nodes
        ]

    def _resources(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(sum(per_trace.values()), {FLOW: name, PROBE: probe})
            for name, snap in self._snapshots()
            for probe, per_trace in snap.resources.items()
        ]


_registry: weakref.WeakKeyDictionary[MeterProvider, Meters] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def meters_for(provider: MeterProvider) -> Meters:
    """Return the shared instruments of ``provider``, creating them on first use."""
    with _registry_lock:
        meters = _registry.get(provider)
        if meters is None:
            meters = _registry[provider] = Meters(provider)
        return meters
