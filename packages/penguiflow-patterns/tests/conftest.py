"""Shared helpers: await flow events and log records instead of sleeping."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, cast

import pytest

from penguiflow.core import PenguiFlow
from penguiflow.testing import Recorder
from penguiflow.types import Headers, Message

WAIT_S = 5.0  # upper bound for any awaited condition, so a bug fails instead of hanging


def message(payload: Any, **kwargs: Any) -> Message:
    """A Message for tenant "t"."""
    return Message(
        payload=payload, headers=Headers(tenant="t", **kwargs.pop("headers", {})), **kwargs
    )


class PatternRecord(logging.LogRecord):
    """A log record of ``penguiflow.patterns``, with the fields its ``extra=`` adds.

    For type checking only: the records are plain ``LogRecord`` objects. Which fields a
    record has depends on its message (routers: ``node_name``, ``trace_id``, ``reason``;
    joins: ``node_name``, ``trace_id``, ``held``, ``k``).
    """

    node_name: str
    trace_id: str
    reason: str
    held: int
    k: int


class LogCatcher(logging.Handler):
    """Logging handler on ``penguiflow.patterns`` whose records can be awaited."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[PatternRecord] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(cast("PatternRecord", record))
        self._changed.set()

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]

    async def wait(self, msg: str) -> PatternRecord:
        async with asyncio.timeout(WAIT_S):
            while True:
                for record in self.records:
                    if record.getMessage() == msg:
                        return record
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder(timeout_s=WAIT_S)


@pytest.fixture
def logs() -> Iterator[LogCatcher]:
    logger = logging.getLogger("penguiflow.patterns")
    handler = LogCatcher()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


async def fetch(flow: PenguiFlow) -> Any:
    """``flow.fetch()`` bounded by WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        return await flow.fetch()


def rookery_depth(flow: PenguiFlow) -> int:
    """Items waiting at Rookery."""
    return sum(
        e.depth for e in flow.inspect().edges if getattr(e.target, "name", None) == "Rookery"
    )


def assert_clean(flow: PenguiFlow) -> None:
    """No trace, queued item, in-flight call or held resource is left."""
    snap = flow.inspect()
    assert snap.traces == {}, snap.traces
    assert all(edge.depth == 0 for edge in snap.edges), snap.edges
    assert all(node.inflight == 0 for node in snap.nodes), snap.nodes
    assert not any(snap.resources.values()), snap.resources
    assert snap.is_quiescent


class Kit:
    """The helpers above, as one fixture (test modules cannot import conftest)."""

    message = staticmethod(message)
    fetch = staticmethod(fetch)
    rookery_depth = staticmethod(rookery_depth)
    assert_clean = staticmethod(assert_clean)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit


@pytest.fixture
async def running(request: pytest.FixtureRequest) -> AsyncIterator[list[PenguiFlow]]:
    """Collects flows a test started, stops them afterwards (even on failure), checks them.

    With the test kit installed, its quiescence check runs too (no trace, join bucket or
    queued item left), unless the test is marked ``leaves_state``.
    """
    flows: list[PenguiFlow] = []
    yield flows
    for flow in flows:
        await flow.stop()
        assert flow.inspect().workers == 0
    if _assert_quiescent is not None and request.node.get_closest_marker("leaves_state") is None:
        _assert_quiescent(flows)


_assert_quiescent: Callable[[Iterable[PenguiFlow]], None] | None = None

if importlib.util.find_spec("penguiflow.testing") is None:
    # Installed with penguiflow-core alone: timing tests run on real (tiny) durations.
    # With penguiflow-testing, its ``virtual_clock`` fixture makes them instant.
    @pytest.fixture
    def virtual_clock() -> None:
        return None
else:
    from penguiflow.testing import assert_flows_quiescent as _assert_quiescent
