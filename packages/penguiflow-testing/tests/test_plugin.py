"""The pytest plugin, exercised in sub-sessions (pytester) in auto and strict mode."""

from __future__ import annotations

import textwrap

import pytest

INI = """
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
addopts = --strict-markers --strict-config -p no:cacheprovider -p no:hypothesispytest
filterwarnings = error
"""

VIRTUAL_TESTS = """
import asyncio
import time

import pytest
import pytest_asyncio

from penguiflow.clock import wall_time
from penguiflow.core import create
from penguiflow.node import Node, NodePolicy
from penguiflow.testing import VirtualEventLoop, simulate_error
from penguiflow.types import Headers, Message


@pytest_asyncio.fixture
async def fixture_loop(virtual_clock):
    return asyncio.get_running_loop()


@pytest.mark.asyncio
async def test_runs_on_virtual_time(virtual_clock, fixture_loop):
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualEventLoop)
    assert fixture_loop is loop
    started = time.perf_counter()
    await asyncio.sleep(3600)
    assert time.perf_counter() - started < 0.5
    assert virtual_clock.time() == 3600.0
    assert wall_time() == virtual_clock.base + 3600.0
    assert Message(payload=1, headers=Headers(tenant="t")).ts == wall_time()


@pytest.mark.asyncio
async def test_retries_with_the_kit(flow_kit, virtual_clock):
    flaky = simulate_error("fetch", "E", fail_times=2)
    flow = create(Node(flaky, policy=NodePolicy(max_retries=2, backoff_base=5)).to())
    message = Message(payload="q", headers=Headers(tenant="t"))
    assert await flow_kit.run_one(flow, message, timeout_s=60) is message
    assert virtual_clock.time() == 15.0
    flow_kit.assert_node_sequence(message.trace_id, ["fetch"])


@pytest.mark.asyncio
async def test_other_tests_keep_a_real_loop():
    assert not isinstance(asyncio.get_running_loop(), VirtualEventLoop)


def test_sync_test_uses_run(virtual_clock):
    async def main():
        await asyncio.sleep(90)
        return wall_time()

    assert virtual_clock.run(main()) == virtual_clock.base + 90.0
"""


@pytest.mark.parametrize("mode", ["auto", "strict"])
def test_virtual_clock_fixture_in_both_asyncio_modes(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makeini(INI.format(mode=mode))
    pytester.makepyfile(test_virtual=VIRTUAL_TESTS)
    result = pytester.runpytest("-o", f"asyncio_mode={mode}", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([f"*asyncio: mode=*{mode.upper()}*"])


def test_module_wide_virtual_time_with_usefixtures(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(mode="auto"))
    pytester.makepyfile(
        test_module=textwrap.dedent(
            """
            import asyncio

            import pytest

            from penguiflow.testing import VirtualEventLoop

            pytestmark = pytest.mark.usefixtures("virtual_clock")


            async def test_one():
                assert isinstance(asyncio.get_running_loop(), VirtualEventLoop)
                await asyncio.sleep(10_000)
            """
        )
    )
    pytester.runpytest().assert_outcomes(passed=1)


LEAKY = """
import asyncio

import pytest

from penguiflow.core import create
from penguiflow.node import Node
from penguiflow.types import Headers, Message


async def block(message, ctx):
    await asyncio.Event().wait()


async def echo(message, ctx):
    return message


MARK


async def test_leaks(flow_kit):
    flow = flow_kit.attach(create(Node(block).to()))
    flow.run()
    await flow.emit(Message(payload=1, headers=Headers(tenant="t"), trace_id="busy"))
    await flow.emit(Message(payload=2, headers=Headers(tenant="t"), trace_id="queued"))
    await asyncio.sleep(0)  # the worker takes "busy"; stop() then finishes it
    await flow.stop()


MARK


async def test_forgets_to_stop(flow_kit):
    flow = flow_kit.attach(create(Node(echo).to()))
    flow.run()


MARK


async def test_clean(flow_kit):
    flow = create(Node(echo).to())
    message = Message(payload=1, headers=Headers(tenant="t"))
    assert await flow_kit.run_one(flow, message) is message


MARK


async def test_fails_anyway(flow_kit):
    flow = flow_kit.attach(create(Node(echo).to()))
    flow.run()
    assert False, "the test body failed"


async def test_unchecked(flow_kit):
    flow = flow_kit.attach(create(Node(echo).to()))
    flow.run()
"""


def test_quiescent_marker_reports_leaks_at_teardown(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(mode="auto"))
    pytester.makepyfile(test_leaky=LEAKY.replace("MARK", "@pytest.mark.penguiflow_quiescent"))
    result = pytester.runpytest()
    result.assert_outcomes(passed=4, failed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks*",
            "*penguiflow quiescence check after test_leaky.py::test_leaks: flows are not*",
            "*trace queued: pending=1 queued=1 inflight=0*",
            "*items queued on edges: OpenSea->block: 1*",
            "*ERROR at teardown of test_forgets_to_stop*",
            "*flow never stopped (worker tasks alive: 0): call `await flow.stop()`*",
        ]
    )
    assert "trace busy" not in result.stdout.str()
    assert "teardown of test_fails_anyway" not in result.stdout.str()
    assert "teardown of test_unchecked" not in result.stdout.str()


ENDED_EARLY = """
import pytest

from penguiflow.core import create
from penguiflow.node import Node

pytestmark = pytest.mark.penguiflow_quiescent


async def echo(message, ctx):
    return message


async def test_skips_itself(flow_kit):
    flow_kit.attach(create(Node(echo).to())).run()
    pytest.skip("service not available here")


@pytest.mark.xfail(reason="known bug", strict=True)
async def test_known_bug(flow_kit):
    flow_kit.attach(create(Node(echo).to())).run()
    assert False, "the known bug"
"""


def test_skipped_and_xfailed_tests_are_not_checked(pytester: pytest.Pytester) -> None:
    # Like a failure, a skip or an expected failure ends the test early: the flows it
    # left running are part of that outcome, reported once, not as a teardown error.
    pytester.makeini(INI.format(mode="auto"))
    pytester.makepyfile(test_early=ENDED_EARLY)
    result = pytester.runpytest("-rA")
    result.assert_outcomes(skipped=1, xfailed=1)
    assert "ERROR at teardown" not in result.stdout.str()


@pytest.mark.parametrize("how", ["option", "ini"])
def test_quiescence_for_every_test(pytester: pytest.Pytester, how: str) -> None:
    ini = INI.format(mode="auto")
    if how == "ini":
        ini += "penguiflow_quiescent = true\n"
    pytester.makeini(ini)
    pytester.makepyfile(test_leaky=LEAKY.replace("MARK", ""))
    args = ["--penguiflow-quiescent"] if how == "option" else []
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=4, failed=1, errors=3)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_unchecked*"])


def test_without_quiescence_nothing_is_checked(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(mode="auto"))
    pytester.makepyfile(test_leaky=LEAKY.replace("MARK", ""))
    pytester.runpytest().assert_outcomes(passed=4, failed=1)


def test_fixtures_and_marker_are_registered(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(mode="strict"))
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(["*flow_kit*", "*virtual_clock*"])
    markers = pytester.runpytest("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.penguiflow_quiescent*"])
    help_text = pytester.runpytest("--help")
    help_text.stdout.fnmatch_lines(["*--penguiflow-quiescent*"])


def test_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(mode="auto"))
    pytester.makepyfile(
        test_plain="""
        import asyncio

        async def test_plain():
            await asyncio.sleep(0)
        """
    )
    pytester.runpytest("-p", "no:penguiflow").assert_outcomes(passed=1)
    result = pytester.runpytest("-p", "no:penguiflow", "--penguiflow-quiescent")
    assert result.ret != 0


def test_other_loop_factory_hooks_are_respected(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(mode="auto"))
    pytester.makeconftest(
        """
        import asyncio

        class CustomLoop(asyncio.SelectorEventLoop):
            pass

        def pytest_asyncio_loop_factories(config, item):
            return {"custom": CustomLoop}
        """
    )
    pytester.makepyfile(
        test_loops="""
        import asyncio

        from penguiflow.testing import VirtualEventLoop

        async def test_custom():
            assert type(asyncio.get_running_loop()).__name__ == "CustomLoop"

        async def test_virtual(virtual_clock):
            assert isinstance(asyncio.get_running_loop(), VirtualEventLoop)
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_plugin_works_without_pytest_asyncio(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        addopts = -p no:asyncio -p no:anyio -p no:cacheprovider -p no:hypothesispytest
        """
    )
    pytester.makepyfile(
        test_no_asyncio="""
        import asyncio

        def test_sync(virtual_clock, flow_kit):
            async def main():
                await asyncio.sleep(60)
                return virtual_clock.time()

            assert virtual_clock.run(main()) == 60.0
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


# An async runner that knows nothing of the loop-factory hook, as pytest-asyncio < 1.5.
OLD_RUNNER = """
import asyncio
import inspect

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        names = pyfuncitem._fixtureinfo.argnames
        asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
        return True
    return None
"""


def test_virtual_clock_without_the_loop_factory_hook_fails_loudly(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(
        """
        [pytest]
        addopts = -p no:asyncio -p no:anyio -p no:cacheprovider -p no:hypothesispytest
        """
    )
    pytester.makeconftest(OLD_RUNNER)
    pytester.makepyfile(
        test_old="""
        import asyncio

        async def test_waits_a_long_time(virtual_clock):
            await asyncio.sleep(3600)  # would take an hour of real time

        async def test_real_loop_without_the_fixture():
            assert True
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*does not have, so the test would run in real time*"])
    result.stdout.fnmatch_lines(["*pip install 'penguiflow-testing*pytest*'*"])
    assert result.duration < 60


def test_reading_the_clock_on_a_real_loop_is_an_error() -> None:
    import asyncio

    from penguiflow.testing import KitUsageError, VirtualClock

    clock = VirtualClock()

    async def main() -> float:
        return clock.time()

    with pytest.raises(KitUsageError, match="timers run in real time"):
        asyncio.run(main())
    assert clock.time() == 0.0  # outside any loop: no virtual loop yet, nothing runs
