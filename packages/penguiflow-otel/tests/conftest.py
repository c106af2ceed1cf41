"""Fixtures for penguiflow-otel: the real OpenTelemetry SDK, recording in memory.

``otel`` gives a tracer provider whose spans land in an ``InMemorySpanExporter`` (through
a ``SimpleSpanProcessor``, so a span is exported the moment it ends) and a meter provider
read by an ``InMemoryMetricReader`` (which collects on demand, in the calling thread).
Nothing global is touched: the providers are passed to ``instrument()`` explicitly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from penguiflow.types import Headers, Message


def message(payload: Any, **kwargs: Any) -> Message:
    """A Message for tenant "t"."""
    return Message(payload=payload, headers=Headers(tenant="t"), **kwargs)


@dataclass
class Otel:
    """The SDK providers of one test and what they recorded."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader

    def spans(self) -> list[ReadableSpan]:
        """Finished spans, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def requests(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == "penguiflow.request"]

    def attempts(self, node: str | None = None) -> list[ReadableSpan]:
        """Attempt spans (of one node), in the order they started."""
        found = [
            s
            for s in self.spans()
            if s.name.startswith("penguiflow.node ")
            and (node is None or s.name == f"penguiflow.node {node}")
        ]
        return sorted(found, key=lambda s: s.start_time or 0)

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


def event_names(span: ReadableSpan) -> Sequence[str]:
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


@pytest.fixture
def helpers() -> Any:
    """``helpers.message``, ``helpers.points``, ``helpers.event_names``."""

    class Helpers:
        message = staticmethod(message)
        points = staticmethod(points)
        event_names = staticmethod(event_names)

    return Helpers
