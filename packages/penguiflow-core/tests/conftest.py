"""Shared fixtures of the penguiflow-core suite.

Helpers that tests call directly (``node``, ``msg``) are tiny and repeated in each file on
purpose: with ``--import-mode=importlib`` test modules cannot import each other.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import pytest

from penguiflow import FlowEvent, PenguiFlow, create

if TYPE_CHECKING:
    from penguiflow.testing import Recorder

HAS_TESTKIT = importlib.util.find_spec("penguiflow.testing") is not None

MakeFlow = Callable[..., PenguiFlow]
"""The ``make_flow`` fixture's type (test modules import it under ``TYPE_CHECKING``)."""

_assert_quiescent: Callable[[Iterable[PenguiFlow]], None] | None = None


@pytest.fixture
def recorder() -> Recorder:
    """The test kit's ``Recorder`` (a stand-in with the same methods in core-only runs)."""
    if HAS_TESTKIT:
        from penguiflow.testing import Recorder

        return Recorder()
    # The stand-in has the methods these tests call; typed as the kit's class for them.
    return cast("Recorder", _StandInRecorder())


@pytest.fixture
async def make_flow(request: pytest.FixtureRequest) -> AsyncIterator[MakeFlow]:
    """``create`` that remembers the flow, stops it when the test ends, then checks it.

    The check: no worker task and nothing in flight after ``stop()``; and, with the test
    kit installed, its quiescence check (no trace, queued item, stream counter, probe
    resource or subscription left), unless the test is marked ``leaves_state``: it leaves
    queued items or open streams behind on purpose, which a stopped flow may keep.
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
    # (Queued items may stay on their edges across a stop: a later run() delivers them.)
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


class _StandInRecorder:
    """Core-only stand-in for ``penguiflow.testing.Recorder`` (same methods)."""

    def __init__(self, *, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self.events: list[FlowEvent] = []
        self._changed: asyncio.Event | None = None

    async def __call__(self, event: FlowEvent) -> None:
        self.events.append(event)
        if self._changed is not None:
            self._changed.set()

    def matching(
        self, event_type: str | None = None, node: str | None = None, trace_id: Any = None
    ) -> list[FlowEvent]:
        return [
            e
            for e in self.events
            if (event_type is None or e.event_type == event_type)
            and (node is None or e.node_name == node)
            and (trace_id is None or e.trace_id == trace_id)
        ]

    def names(self, node: str | None = None, trace_id: Any = None) -> list[str]:
        return [e.event_type for e in self.matching(None, node, trace_id)]

    async def wait(
        self,
        event_type: str,
        node: str | None = None,
        trace_id: Any = None,
        *,
        count: int = 1,
        timeout_s: float | None = None,
    ) -> FlowEvent:
        self._changed = self._changed or asyncio.Event()
        async with asyncio.timeout(self.timeout_s if timeout_s is None else timeout_s):
            while len(self.matching(event_type, node, trace_id)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.matching(event_type, node, trace_id)[count - 1]


if not HAS_TESTKIT:
    # Core-only environment (no penguiflow-testing): timing tests run on real time, with
    # durations small enough for that. With the test kit installed, its ``virtual_clock``
    # fixture runs them on virtual time instead (instant and deterministic).
    @pytest.fixture
    def virtual_clock() -> None:
        return None
else:
    from penguiflow.testing import assert_flows_quiescent as _assert_quiescent
