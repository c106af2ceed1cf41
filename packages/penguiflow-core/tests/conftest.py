"""Shared fixtures of the penguiflow-core suite.

Helpers that tests call directly (``node``, ``msg``) are tiny and repeated in each file on
purpose: with ``--import-mode=importlib`` test modules cannot import each other.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from penguiflow import FlowEvent, PenguiFlow, create


class Recorder:
    """A middleware that keeps every event and lets a test await one."""

    def __init__(self) -> None:
        self.events: list[FlowEvent] = []
        self._waiters: list[tuple[Callable[[list[FlowEvent]], bool], asyncio.Future[None]]] = []

    async def __call__(self, event: FlowEvent) -> None:
        self.events.append(event)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(self.events):
                fut.set_result(None)

    def of(self, event_type: str, trace_id: Any = ...) -> list[FlowEvent]:
        return [
            e
            for e in self.events
            if e.event_type == event_type and (trace_id is ... or e.trace_id == trace_id)
        ]

    def names(self, trace_id: Any = ..., node_name: str | None = None) -> list[str]:
        return [
            e.event_type
            for e in self.events
            if (trace_id is ... or e.trace_id == trace_id)
            and (node_name is None or e.node_name == node_name)
        ]

    async def until(
        self, event_type: str, count: int = 1, trace_id: Any = ..., timeout: float = 1.0
    ) -> list[FlowEvent]:
        def pred(_: list[FlowEvent]) -> bool:
            return len(self.of(event_type, trace_id)) >= count

        if not pred(self.events):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((pred, fut))
            await asyncio.wait_for(fut, timeout)
        return self.of(event_type, trace_id)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def make_flow(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., PenguiFlow]]:
    """``create`` that remembers the flow, stops it when the test ends, then checks it.

    The check: no worker task and nothing in flight after ``stop()``; and, with the test
    kit installed, its quiescence check (no trace, queued item, stream counter, probe
    resource or subscription left), unless the test is marked ``leaves_state``: it leaves
    queued items or open streams behind on purpose, as the contract allows.
    """
    flows: list[PenguiFlow] = []

    def make(*adjacencies: Any, **kwargs: Any) -> PenguiFlow:
        flow = create(*adjacencies, **kwargs)
        flows.append(flow)
        return flow

    yield make
    for flow in flows:
        await flow.stop()
    # Leak check after every test: a stopped flow keeps no worker and runs nothing.
    # (Queued items may legitimately stay on their edges across a stop: contract §5.3.)
    for flow in flows:
        snapshot = flow.inspect()
        assert snapshot.workers == 0, f"{flow!r} left {snapshot.workers} worker task(s)"
        busy = [node.name for node in snapshot.nodes if node.inflight]
        assert not busy, f"{flow!r} still runs {busy} after stop()"
    if _assert_quiescent is not None and request.node.get_closest_marker("leaves_state") is None:
        _assert_quiescent(flows)
    stray = [
        task.get_name()
        for task in asyncio.all_tasks()
        if task.get_name().startswith("penguiflow:") and not task.done()
    ]
    assert not stray, f"worker tasks left running: {stray}"


if importlib.util.find_spec("penguiflow.testing") is None:
    _assert_quiescent = None

    # Core-only environment (no penguiflow-testing): timing tests run on real time, with
    # durations small enough for that. With the test kit installed, its ``virtual_clock``
    # fixture runs them on virtual time instead (instant and deterministic).
    @pytest.fixture
    def virtual_clock() -> None:
        return None
else:
    from penguiflow.testing import assert_flows_quiescent as _assert_quiescent
