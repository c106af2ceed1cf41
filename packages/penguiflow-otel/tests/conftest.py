"""Fixtures for penguiflow-otel: the real OpenTelemetry SDK, recording in memory.

``otel`` gives a tracer provider whose spans land in an ``InMemorySpanExporter`` (through
a ``SimpleSpanProcessor``, so a span is exported the moment it ends) and a meter provider
read by an ``InMemoryMetricReader`` (which collects on demand, in the calling thread).
Nothing global is touched: the providers are passed to ``instrument()`` explicitly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, Status

from penguiflow.types import Headers, Message


def message(payload: Any, **kwargs: Any) -> Message:
    """A Message for tenant "t"."""
    return Message(payload=payload, headers=Headers(tenant="t"), **kwargs)


class SpanEvent(Protocol):
    """What the tests read of a span event (the SDK types ``attributes`` as optional)."""

    @property
    def name(self) -> str: ...
    @property
    def attributes(self) -> Mapping[str, Any]: ...


class Span(Protocol):
    """What the tests read of a finished SDK span.

    The SDK types ``attributes``, ``start_time`` and ``end_time`` of a ``ReadableSpan`` as
    optional; a span the exporter received has ended, so all three are set.
    """

    @property
    def name(self) -> str: ...
    @property
    def context(self) -> SpanContext: ...
    @property
    def parent(self) -> SpanContext | None: ...
    @property
    def kind(self) -> SpanKind: ...
    @property
    def status(self) -> Status: ...
    @property
    def attributes(self) -> Mapping[str, Any]: ...
    @property
    def events(self) -> Sequence[SpanEvent]: ...
    @property
    def start_time(self) -> int: ...
    @property
    def end_time(self) -> int: ...


@dataclass
class Otel:
    """The SDK providers of one test and what they recorded."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self) -> list[Span]:
        """Finished spans, in the order they ended."""
        finished: list[ReadableSpan] = list(self.exporter.get_finished_spans())
        assert all(s.start_time is not None and s.end_time is not None for s in finished)
        return cast("list[Span]", finished)

    def requests(self) -> list[Span]:
        return [s for s in self.spans() if s.name == "penguiflow.request"]

    def attempts(self, node: str | None = None) -> list[Span]:
        """Attempt spans (of one node), in the order they started."""
        found = [
            s
            for s in self.spans()
            if s.name.startswith("penguiflow.node ")
            and (node is None or s.name == f"penguiflow.node {node}")
        ]
        return sorted(found, key=lambda s: s.start_time)

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points, from one collection."""
        data: MetricsData | None = self.reader.get_metrics_data()
        out: dict[str, list[Any]] = {}
        if data is None:
            return out
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    out.setdefault(metric.name, []).extend(metric.data.data_points)
        return out


def points(metrics: dict[str, list[Any]], name: str, **attrs: Any) -> list[Any]:
    """The data points of ``name`` whose attributes include ``attrs``."""
    return [
        p
        for p in metrics.get(name, [])
        if all(p.attributes.get(k.replace("__", ".")) == v for k, v in attrs.items())
    ]


def event_names(span: Span) -> Sequence[str]:
    return [e.name for e in span.events]


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(tracer_provider, meter_provider, exporter, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()


class Helpers:
    """The helpers above, as one fixture (test modules cannot import conftest)."""

    message = staticmethod(message)
    points = staticmethod(points)
    event_names = staticmethod(event_names)


@pytest.fixture
def helpers() -> type[Helpers]:
    """``helpers.message``, ``helpers.points``, ``helpers.event_names``."""
    return Helpers
