"""The ``penguiflow`` pytest plugin (registered through the ``pytest11`` entry point).

Fixtures:

- ``flow_kit``: a fresh :class:`~penguiflow.testing.FlowTestKit` per test.
- ``virtual_clock``: a :class:`~penguiflow.testing.VirtualClock` with its wall clock
  installed. An ``async def`` test (or async fixture) that requests it runs on a
  :class:`~penguiflow.testing.VirtualEventLoop` (through pytest-asyncio's
  ``pytest_asyncio_loop_factories`` hook), so every timer fires instantly. A sync test
  can run coroutines on virtual time with ``virtual_clock.run(coro)``.

Quiescence: mark a test ``@pytest.mark.penguiflow_quiescent`` (or a module with
``pytestmark``), pass ``--penguiflow-quiescent``, or set the ini option
``penguiflow_quiescent = true``, and after the test (once its fixtures are torn down)
every flow seen by its ``flow_kit`` fixtures must be stopped and hold nothing: no trace,
queued item, in-flight call, probe resource, open subscription or worker task. A leak is
reported as a teardown error listing what was left, per trace. Tests that already failed
are not checked again.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

import pytest

from ._clock import VirtualClock, VirtualEventLoop
from ._errors import QuiescenceError
from ._kit import FlowTestKit
from ._quiescence import assert_flows_quiescent

__all__ = ["flow_kit", "virtual_clock"]

_KITS = pytest.StashKey[list[FlowTestKit]]()
_NOT_CHECKED = pytest.StashKey[bool]()

_MARKER = "penguiflow_quiescent"
_VIRTUAL_FACTORY = "penguiflow_virtual_clock"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register ``--penguiflow-quiescent`` and the ``penguiflow_quiescent`` ini option."""
    group = parser.getgroup("penguiflow", "PenguiFlow test kit")
    group.addoption(
        "--penguiflow-quiescent",
        action="store_true",
        default=False,
        dest="penguiflow_quiescent",
        help="after every test, assert that each flow seen by a flow_kit is stopped and "
        "left nothing behind",
    )
    parser.addini(
        "penguiflow_quiescent",
        type="bool",
        default=False,
        help="run the PenguiFlow quiescence check after every test",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``penguiflow_quiescent`` marker (for ``--strict-markers``)."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}: after the test, assert that every flow seen by its flow_kit fixtures "
        "is stopped and holds no trace, queued item, task or probe resource",
    )


@pytest.fixture
def flow_kit(request: pytest.FixtureRequest) -> Iterator[FlowTestKit]:
    """A fresh ``FlowTestKit``; its flows are checked for leaks when quiescence is on."""
    kit = FlowTestKit()
    request.node.stash.setdefault(_KITS, []).append(kit)
    yield kit
    kit.close()


@pytest.fixture
def virtual_clock(request: pytest.FixtureRequest) -> Iterator[VirtualClock]:
    """Virtual time for this test: timers fire at once, wall time follows.

    In an ``async def`` test the running loop is a ``VirtualEventLoop``; in a sync test
    use ``virtual_clock.run(coro)``. ``penguiflow.clock.wall_time()`` returns
    ``virtual_clock.wall_time()`` for the whole test.
    """
    test_function = getattr(request.node, "obj", None)
    if inspect.iscoroutinefunction(test_function) and not _loop_factories_supported(request.config):
        pytest.fail(
            "the virtual_clock fixture runs an async test on a virtual loop through "
            f"pytest-asyncio's loop-factory hook, which this pytest-asyncio "
            f"({_pytest_asyncio_version()}) does not have, so the test would run in real "
            "time. Install pytest-asyncio >= 1.5 (pip install 'penguiflow-testing[pytest]'), "
            "or make the test sync and use virtual_clock.run(coro)",
            pytrace=False,
        )
    clock = VirtualClock()
    with clock.install():
        yield clock


def _loop_factories_supported(config: pytest.Config) -> bool:
    # Our own implementation of the hook makes ``config.hook`` grow the attribute even
    # when no plugin declares it, so look for the declaration (pytest-asyncio >= 1.5).
    caller = getattr(config.hook, "pytest_asyncio_loop_factories", None)
    return caller is not None and caller.spec is not None


def _pytest_asyncio_version() -> str:
    try:
        return "version " + importlib.metadata.version("pytest-asyncio")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _wants_virtual(item: pytest.Item) -> bool:
    return "virtual_clock" in getattr(item, "fixturenames", ())


@pytest.hookimpl(wrapper=True, optionalhook=True)
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Generator[None, Mapping[str, Callable[[], asyncio.AbstractEventLoop]] | None, Any]:
    """Run tests that request ``virtual_clock`` on a ``VirtualEventLoop``.

    Other tests keep whatever other implementations chose, or pytest-asyncio's default
    loop (``asyncio.new_event_loop`` under the active policy).
    """
    result = yield
    if _wants_virtual(item):
        return {_VIRTUAL_FACTORY: VirtualEventLoop}
    if result is None:
        return {"asyncio": asyncio.new_event_loop}
    return result


def _quiescence_enabled(item: pytest.Item) -> bool:
    config = item.config
    return bool(
        item.get_closest_marker(_MARKER) is not None
        or config.getoption("penguiflow_quiescent")
        or config.getini("penguiflow_quiescent")
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember a test that did not pass: it is not checked for leaks.

    A failure, a skip and an expected failure (xfail reports as skipped) all end the
    test early, so its flows may still run: that is the outcome to report, once.
    """
    report = yield
    if report.when != "teardown" and (report.failed or report.skipped):
        item.stash[_NOT_CHECKED] = True
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """After every fixture is torn down, run the quiescence check when it is enabled."""
    yield
    if not _quiescence_enabled(item) or item.stash.get(_NOT_CHECKED, False):
        return
    flows = {id(flow): flow for kit in item.stash.get(_KITS, []) for flow in kit.flows}
    try:
        assert_flows_quiescent(flows.values(), require_stopped=True)
    except QuiescenceError as exc:
        failure = str(exc)
    else:
        return
    pytest.fail(f"penguiflow quiescence check after {item.nodeid}: {failure}", pytrace=False)
