"""Print the OpenTelemetry spans of one request, as a tree.

A three-node flow (``triage`` -> ``retrieve`` -> ``answer``) is instrumented with
``penguiflow.otel.instrument``. ``retrieve`` runs a playbook (a one-node subflow,
wrapped with ``instrument_playbook``) and fails once before it succeeds, so the tree
shows a retry: one errored attempt span, one ok attempt span, and a ``node_retry``
event on the request span. The request arrives with a W3C ``traceparent`` in
``Message.meta``, as if a calling service had sent it: every span continues that
trace, and the result carries the request's own context onward.

The SDK is configured the usual way (a ``TracerProvider`` with a span processor); here
the exporter keeps spans in memory so the example can print them as a tree. Swap in
``ConsoleSpanExporter`` (``--json``) or an OTLP exporter in a real service.

Run it with::

    pip install penguiflow-otel opentelemetry-sdk   # or: hatch shell
    python examples/otel_console/main.py [--json]
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from penguiflow import Headers, Message, Node, NodePolicy, PenguiFlow, create
from penguiflow.otel import instrument, instrument_playbook

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
NONE = NodePolicy(validate="none")


def build(tracer_provider: TracerProvider) -> PenguiFlow:
    """The flow: triage -> retrieve (a playbook, flaky once) -> answer."""
    calls = {"retrieve": 0}

    async def search(msg: Message, ctx: Any) -> list[str]:
        return [f"doc about {msg.payload}"]

    def playbook() -> tuple[PenguiFlow, None]:
        node = Node(search, name="search", policy=NONE)
        return create(node.to()), None

    traced_playbook = instrument_playbook(playbook, tracer_provider=tracer_provider)

    async def triage(msg: Message, ctx: Any) -> Message:
        return msg

    async def retrieve(msg: Message, ctx: Any) -> Message:
        calls["retrieve"] += 1
        if calls["retrieve"] == 1:
            raise ConnectionError("search backend unavailable")
        docs = await ctx.call_playbook(traced_playbook, msg)
        return msg.model_copy(update={"payload": docs})

    async def answer(msg: Message, ctx: Any) -> Message:
        return msg.model_copy(update={"payload": f"answer from {len(msg.payload)} doc(s)"})

    t = Node(triage, name="triage", policy=NONE)
    r = Node(retrieve, name="retrieve", policy=NodePolicy(validate="none", max_retries=1))
    a = Node(answer, name="answer", policy=NONE)
    return create(t.to(r), r.to(a), a.to())


def tree(spans: list[ReadableSpan]) -> list[str]:
    """One line per span, indented under its parent, with outcome and events."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in spans}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        by_parent.setdefault(parent if parent in ids else None, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(by_parent.get(parent, []), key=lambda s: s.start_time or 0):
            attrs = span.attributes or {}
            facts = [f"outcome={attrs.get('penguiflow.outcome')!s}"]
            if "penguiflow.attempt" in attrs:
                facts.insert(0, f"attempt={attrs['penguiflow.attempt']!s}")
            if span.parent is not None and span.parent.is_remote:
                facts.append(f"parent=remote {span.parent.span_id:016x}")
            lines.append(f"{'  ' * depth}{span.name} [{', '.join(facts)}]")
            for event in span.events:
                node = str((event.attributes or {}).get("penguiflow.node.name", ""))
                lines.append(f"{'  ' * depth}  * {event.name} {node}".rstrip())
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return lines


async def main(json: bool = False) -> tuple[Message, list[ReadableSpan]]:
    """Run one request; return its result and the finished spans."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if json:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    flow = build(provider)
    uninstrument = instrument(flow, tracer_provider=provider, flow_name="otel_console")
    flow.run()
    try:
        request = Message(payload="penguins", headers=Headers(tenant="acme"))
        request.meta["traceparent"] = CALLER
        await flow.emit(request)
        result: Message = await flow.fetch()
    finally:
        await flow.stop()
        uninstrument()
    provider.shutdown()
    return result, list(exporter.get_finished_spans())


if __name__ == "__main__":
    result, spans = asyncio.run(main(json="--json" in sys.argv[1:]))
    print(f"trace {spans[0].context.trace_id:032x}")
    print("\n".join(tree(spans)))
    print(f"result: {result.payload}")
    print(f"result traceparent: {result.meta['traceparent']}")
