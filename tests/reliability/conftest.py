"""Shared fixtures of the reliability suite (soak, cancel storms, faults, properties, stop).

Sizes: every test runs at a CI size by default (the whole suite stays well under a
minute on a loaded 2-core machine). ``--soak`` switches to the full sizes (the
1,000,000-message soak of the 3-node chain and friends, a 20,000-trace cancel storm).
Measured figures are printed in a "reliability figures" section of the terminal summary.

Helpers that tests call directly are small and live in each module on purpose: with
``--import-mode=importlib`` test modules cannot import each other.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from penguiflow import FlowEvent, PenguiFlow

_PAGE = os.sysconf("SC_PAGE_SIZE")
_FIGURES = pytest.StashKey[list[tuple[str, dict[str, Any]]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--soak`` (full sizes: the 1M-message soak and bigger storms)."""
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="reliability suite: run at soak sizes (1,000,000 messages; minutes, not seconds)",
    )


Figure = Callable[..., None]
"""The ``figure`` fixture's type."""
Rss = Callable[[], int]
"""The ``rss`` fixture's type."""
TasksNow = Callable[[], set[asyncio.Task[Any]]]
"""The ``tasks_now`` fixture's type."""
TaskLeaks = Callable[[set[asyncio.Task[Any]]], list[str]]
"""The ``task_leaks`` fixture's type."""


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Figure:
    """``figure(**values)`` records measured figures; printed in the terminal summary."""
    store = request.config.stash.setdefault(_FIGURES, [])

    def record(**values: Any) -> None:
        store.append((request.node.name, values))

    return record


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the figures the reliability tests measured (messages, traces, time, memory)."""
    store = config.stash.get(_FIGURES, [])
    if not store:
        return
    terminalreporter.section("reliability figures")
    for name, values in store:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        terminalreporter.write_line(f"{name}: {shown}")


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; CI defaults, or the full sizes with ``--soak``."""

    soak: bool
    chain_messages: int
    controller_hops: int
    join_traces: int
    stream_chunks: int
    storm_traces: int
    rss_budget_mb: float


@pytest.fixture(scope="session")
def sizes(pytestconfig: pytest.Config) -> Sizes:
    """The sizes of this run (see the module docstring)."""
    if pytestconfig.getoption("--soak"):
        return Sizes(
            soak=True,
            chain_messages=1_000_000,
            controller_hops=1_000_000,
            join_traces=250_000,
            stream_chunks=1_000_000,
            storm_traces=20_000,
            rss_budget_mb=4.0,
        )
    return Sizes(
        soak=False,
        chain_messages=20_000,
        controller_hops=20_000,
        join_traces=5_000,
        stream_chunks=20_000,
        storm_traces=3_000,
        rss_budget_mb=4.0,
    )


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm``, after a full GC."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


@pytest.fixture
def rss() -> Rss:
    """``rss()`` returns the current RSS in bytes (after ``gc.collect()``)."""
    return rss_bytes


class Recorder:
    """A middleware that keeps every event and lets a test await one (no sleeps)."""

    def __init__(self) -> None:
        self.events: list[FlowEvent] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    async def __call__(self, event: FlowEvent) -> None:
        self.events.append(event)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred():
                fut.set_result(None)

    def of(self, event_type: str, trace_id: Any = ..., node: str | None = None) -> list[FlowEvent]:
        return [
            e
            for e in self.events
            if e.event_type == event_type
            and (trace_id is ... or e.trace_id == trace_id)
            and (node is None or e.node_name == node)
        ]

    def names(self, trace_id: Any = ...) -> list[str]:
        return [e.event_type for e in self.events if trace_id is ... or e.trace_id == trace_id]

    async def until(
        self, event_type: str, count: int = 1, trace_id: Any = ..., timeout: float = 5.0
    ) -> list[FlowEvent]:
        """Wait (hang guard: ``timeout``) until ``count`` such events were recorded."""

        def pred() -> bool:
            return len(self.of(event_type, trace_id)) >= count

        if not pred():
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((pred, fut))
            await asyncio.wait_for(fut, timeout)
        return self.of(event_type, trace_id)


@pytest.fixture
def recorder() -> Recorder:
    """A fresh event recorder (pass it as a middleware)."""
    return Recorder()


def flow_tasks() -> set[asyncio.Task[Any]]:
    """Tasks of the running loop other than the current one."""
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


@pytest.fixture
def task_leaks() -> TaskLeaks:
    """``task_leaks(before)`` names the tasks alive now that were not in ``before``."""

    def leaks(before: set[asyncio.Task[Any]]) -> list[str]:
        return sorted(t.get_name() for t in flow_tasks() - before)

    return leaks


@pytest.fixture
def tasks_now() -> TasksNow:
    """``tasks_now()`` snapshots the live tasks (except the caller's)."""
    return flow_tasks


@pytest.fixture
async def flows() -> AsyncIterator[list[PenguiFlow]]:
    """Flows appended here are stopped at teardown, even when the test failed."""
    started: list[PenguiFlow] = []
    yield started
    for flow in started:
        await asyncio.wait_for(flow.stop(), 10)


@pytest.fixture
def no_gc_noise() -> Iterator[None]:
    """Collect garbage before and after (RSS figures are comparable between tests)."""
    gc.collect()
    yield
    gc.collect()
