"""Export every ``FlowEvent`` as metrics: to MLflow when it is installed, else to stdout.

``FlowEvent.metric_samples()`` gives the numeric facts of an event (latency, queue depths,
attempt, trace counters) and ``FlowEvent.tag_values()`` its string tags (event type, node,
trace id, plus simple ``extra`` values). A middleware - one async callable taking the
event - forwards both to a sink:

* ``MlflowSink`` logs ``<node>.<event>.<metric>`` metrics into an MLflow run;
* ``StdoutSink`` prints one line per event (used when ``import mlflow`` fails).

Run it with::

    python examples/mlflow_metrics/main.py
"""

from __future__ import annotations

import asyncio
import importlib
from types import ModuleType
from typing import Any, Protocol

from pydantic import BaseModel

from penguiflow import Context, FlowEvent, Headers, Message, ModelRegistry, Node, create

SHOWN = ("latency_ms", "attempt", "queue_depth_in", "queue_depth_out", "trace_pending")


class Sink(Protocol):
    name: str

    def export(self, samples: dict[str, float], tags: dict[str, str]) -> None: ...


class StdoutSink:
    name = "stdout"

    def __init__(self) -> None:
        self.exported: list[tuple[dict[str, str], dict[str, float]]] = []

    def export(self, samples: dict[str, float], tags: dict[str, str]) -> None:
        self.exported.append((tags, samples))
        where = f"{tags['event_type']:<14} node={tags.get('node_name', '-'):<6}"
        trace = tags.get("trace_id", "-")[:8]
        numbers = " ".join(f"{k}={v:g}" for k, v in samples.items() if k in SHOWN)
        print(f"{where} trace={trace:<8} {numbers}")


class MlflowSink:
    name = "mlflow"

    def __init__(self, mlflow: ModuleType) -> None:
        self.mlflow = mlflow
        self.exported: list[tuple[dict[str, str], dict[str, float]]] = []

    def export(self, samples: dict[str, float], tags: dict[str, str]) -> None:
        self.exported.append((tags, samples))
        prefix = f"{tags.get('node_name', 'flow')}.{tags['event_type']}"
        step = len(self.exported)
        self.mlflow.log_metrics({f"{prefix}.{k}": v for k, v in samples.items()}, step=step)


class MetricsMiddleware:
    """The middleware: called with ONE argument, the FlowEvent."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def __call__(self, event: FlowEvent) -> None:
        self.sink.export(event.metric_samples(), event.tag_values())


def load_mlflow() -> ModuleType | None:
    try:
        return importlib.import_module("mlflow")
    except ImportError:
        return None


# --- a small typed flow to observe ------------------------------------------------------


class Text(BaseModel):
    text: str


class Score(BaseModel):
    text: str
    score: float


async def clean(msg: Text, _ctx: Context) -> Text:
    return Text(text=msg.text.strip().lower())


async def score(msg: Text, _ctx: Context) -> Score:
    return Score(text=msg.text, score=len(set(msg.text)) / max(len(msg.text), 1))


async def run_flow(sink: Sink) -> list[Any]:
    clean_node, score_node = Node(clean), Node(score)
    flow = create(clean_node.to(score_node), middlewares=[MetricsMiddleware(sink)])
    registry = ModelRegistry()
    registry.register("clean", Text, Text)
    registry.register("score", Text, Score)
    flow.run(registry=registry)
    try:
        for text in ("  Penguins  ", "Rookery"):
            await flow.emit(Message(payload=Text(text=text), headers=Headers(tenant="acme")))
        return [(await flow.fetch()).payload for _ in range(2)]
    finally:
        await flow.stop()


async def main(sink: Sink | None = None) -> tuple[Sink, list[Any]]:
    """Run the flow with ``sink`` (default: MLflow if importable, else stdout)."""
    if sink is None:
        mlflow = load_mlflow()
        sink = StdoutSink() if mlflow is None else MlflowSink(mlflow)
    print(f"exporting FlowEvent metrics to {sink.name}")
    if isinstance(sink, MlflowSink):
        with sink.mlflow.start_run(run_name="penguiflow-example"):
            results = await run_flow(sink)
    else:
        results = await run_flow(sink)
    for result in results:
        print(f"result: {result!r}")
    return sink, results


if __name__ == "__main__":
    asyncio.run(main())
