"""What instrumenting a flow costs: ``chain_pipe`` throughput with and without OpenTelemetry.

    python packages/penguiflow-otel/benchmarks/overhead.py [--runs 3] [--min-time 1.5]

``chain_pipe`` is the shared benchmark's scenario: three pass-through nodes
(``validate="none"``), messages pipelined through (a producer emits while the consumer
fetches). Each mode runs in turn, ``--runs`` times, and the median rate is reported:

- ``plain``: not instrumented (the baseline);
- ``middleware``: one no-op middleware (what core's event path costs by itself);
- ``otel-noop``: ``instrument(flow)`` with the API's no-op providers (no SDK configured);
- ``otel-sdk``: the SDK's ``TracerProvider`` and ``MeterProvider``, spans recorded and
  handed to a ``BatchSpanProcessor`` whose exporter discards them, metrics recorded and
  never collected.

Per-hop cost = (1/rate_mode - 1/rate_plain) / 3 hops, in microseconds; it includes the
request span, amortised over the three hops of each message.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider

from penguiflow.core import PenguiFlow, create
from penguiflow.metrics import FlowEvent
from penguiflow.node import Node, NodePolicy
from penguiflow.otel import instrument
from penguiflow.types import Headers, Message

HOPS = 3
BATCH = 2000


class _Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def _pass(msg: Any, ctx: Any) -> Any:
    return msg


def _chain() -> PenguiFlow:
    policy = NodePolicy(validate="none")
    a, b, c = (Node(_pass, name=n, policy=policy) for n in "abc")
    return create(a.to(b), b.to(c), c.to())


async def _noop_mw(event: FlowEvent) -> None:
    return None


def _setup(mode: str) -> tuple[PenguiFlow, Callable[[], None]]:
    flow = _chain()
    if mode == "plain":
        return flow, lambda: None
    if mode == "middleware":
        flow.add_middleware(_noop_mw)
        return flow, lambda: None
    if mode == "otel-noop":
        undo = instrument(
            flow, tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider()
        )
        return flow, undo
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_Discard()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    undo = instrument(flow, tracer_provider=tracer_provider, meter_provider=meter_provider)

    def teardown() -> None:
        undo()
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return flow, teardown


async def _batch(flow: PenguiFlow, n: int, headers: Headers) -> None:
    async def produce() -> None:
        for i in range(n):
            await flow.emit(Message(payload=i, headers=headers))

    producer = asyncio.ensure_future(produce())
    for _ in range(n):
        await flow.fetch()
    await producer


async def _rate(mode: str, min_time: float, batch: int) -> float:
    flow, teardown = _setup(mode)
    headers = Headers(tenant="bench")
    flow.run()
    try:
        await _batch(flow, min(batch, 200), headers)  # warm-up
        done, seconds = 0, 0.0
        while seconds < min_time or done == 0:
            gc.collect()
            t0 = time.perf_counter()
            await _batch(flow, batch, headers)
            seconds += time.perf_counter() - t0
            done += batch
    finally:
        await flow.stop()
        teardown()
    return done / seconds


MODES = ("plain", "middleware", "otel-noop", "otel-sdk")


def main(argv: Sequence[str] | None = None) -> int:
    """Run every mode ``--runs`` times, print a Markdown table of median rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.5)
    parser.add_argument("--batch", type=int, default=BATCH)
    args = parser.parse_args(argv)
    logging.getLogger("penguiflow").setLevel(logging.CRITICAL)  # time the runtime, not logs
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.runs):
        for mode in MODES:
            rates[mode].append(asyncio.run(_rate(mode, args.min_time, args.batch)))
    med = {m: statistics.median(r) for m, r in rates.items()}
    print(f"python {platform.python_version()}, {platform.machine()}, runs={args.runs}")
    print("| mode | msgs/s | vs plain | cost per hop (µs) |")
    print("|---|---:|---:|---:|")
    for mode in MODES:
        per_hop = (1 / med[mode] - 1 / med["plain"]) / HOPS * 1e6
        cost = "—" if mode == "plain" else f"{per_hop:.1f}"
        print(f"| {mode} | {med[mode]:,.0f} | {med[mode] / med['plain']:.2f} | {cost} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
