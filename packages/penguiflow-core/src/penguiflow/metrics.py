"""``FlowEvent``: one structured runtime event.

Events are built only when someone listens (a middleware, or the ``penguiflow.core``
logger enabled for the event's level), so an unobserved flow pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

__all__ = ["FlowEvent"]


NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True, init=False)
class FlowEvent:
    """A snapshot of what happened, where, and how loaded the flow was at that moment.

    Frozen: assigning a field raises ``dataclasses.FrozenInstanceError``; ``extra`` is
    copied into a read-only mapping at construction.
    """

    event_type: str
    ts: float
    node_name: str | None
    node_id: str | None
    trace_id: str | None
    attempt: int
    latency_ms: float | None
    queue_depth_in: int
    queue_depth_out: int
    outgoing_edges: int
    queue_maxsize: int
    trace_pending: int | None
    trace_inflight: int
    trace_cancelled: bool
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Event-specific facts (read-only)."""

    def __init__(
        self,
        event_type: str,
        ts: float,
        node_name: str | None,
        node_id: str | None,
        trace_id: str | None,
        attempt: int,
        latency_ms: float | None,
        queue_depth_in: int,
        queue_depth_out: int,
        outgoing_edges: int,
        queue_maxsize: int,
        trace_pending: int | None,
        trace_inflight: int,
        trace_cancelled: bool,
        extra: Mapping[str, Any] = NO_EXTRA,
    ) -> None:
        # Hand-written rather than generated: the generated frozen __init__ costs about
        # twice as much, and an event is built for every hop someone listens to.
        s = _SETTERS
        s[0](self, event_type)
        s[1](self, ts)
        s[2](self, node_name)
        s[3](self, node_id)
        s[4](self, trace_id)
        s[5](self, attempt)
        s[6](self, latency_ms)
        s[7](self, queue_depth_in)
        s[8](self, queue_depth_out)
        s[9](self, outgoing_edges)
        s[10](self, queue_maxsize)
        s[11](self, trace_pending)
        s[12](self, trace_inflight)
        s[13](self, trace_cancelled)
        s[14](self, NO_EXTRA if extra is NO_EXTRA else MappingProxyType(dict(extra)))

    @property
    def queue_depth(self) -> int:
        """``queue_depth_in + queue_depth_out``."""
        return self.queue_depth_in + self.queue_depth_out

    def to_payload(self) -> dict[str, Any]:
        """Return a flat dict for logging; ``extra`` keys override the standard ones."""
        payload: dict[str, Any] = {
            "ts": self.ts,
            "event": self.event_type,
            "node_name": self.node_name,
            "node_id": self.node_id,
            "trace_id": self.trace_id,
            "latency_ms": self.latency_ms,
            "q_depth_in": self.queue_depth_in,
            "q_depth_out": self.queue_depth_out,
            "q_depth_total": self.queue_depth_in + self.queue_depth_out,
            "outgoing": self.outgoing_edges,
            "queue_maxsize": self.queue_maxsize,
            "attempt": self.attempt,
            "trace_inflight": self.trace_inflight,
            "trace_cancelled": self.trace_cancelled,
        }
        if self.trace_pending is not None:
            payload["trace_pending"] = self.trace_pending
        # The exception object itself (``extra["error"]``) stays out of log records:
        # its repr is already under ``"exception"``.
        payload.update((k, v) for k, v in self.extra.items() if not isinstance(v, BaseException))
        return payload

    def metric_samples(self) -> dict[str, float]:
        """Return the numeric facts of the event, for metrics sinks."""
        samples: dict[str, float] = {
            "queue_depth_in": float(self.queue_depth_in),
            "queue_depth_out": float(self.queue_depth_out),
            "queue_depth_total": float(self.queue_depth_in + self.queue_depth_out),
            "attempt": float(self.attempt),
            "trace_inflight": float(self.trace_inflight),
            "trace_cancelled": 1.0 if self.trace_cancelled else 0.0,
        }
        if self.trace_pending is not None:
            samples["trace_pending"] = float(self.trace_pending)
        if self.latency_ms is not None:
            samples["latency_ms"] = float(self.latency_ms)
        extra_latency = self.extra.get("latency_ms")
        if extra_latency is not None:
            try:
                samples["latency_ms"] = float(extra_latency)
            except (TypeError, ValueError):
                pass
        return samples

    def tag_values(self) -> dict[str, str]:
        """Return the string tags of the event, for metrics sinks."""
        tags = {"event_type": self.event_type}
        if self.node_name is not None:
            tags["node_name"] = self.node_name
        if self.node_id is not None:
            tags["node_id"] = self.node_id
        if self.trace_id is not None:
            tags["trace_id"] = self.trace_id
        for key, value in self.extra.items():
            if isinstance(value, str | int | float | bool):
                tags[key] = str(value)
        return tags


_SETTERS: tuple[Any, ...] = tuple(FlowEvent.__dict__[f.name].__set__ for f in fields(FlowEvent))


class EventDraft:
    """A mutable twin of ``FlowEvent``, for the runtime to build an event field by field.

    It has exactly ``FlowEvent``'s slots, so once every field is set, assigning
    ``draft.__class__ = FlowEvent`` turns it into an ordinary, frozen ``FlowEvent``. Plain
    attribute stores are several times cheaper than ``FlowEvent.__init__``'s descriptor
    calls (a frozen class cannot use them), and the runtime builds an event for every
    hop someone listens to. Never hand out a draft before it is sealed.
    """

    __slots__ = FlowEvent.__slots__
