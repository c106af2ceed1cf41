"""The virtual event loop: time jumps only when nothing is ready, in deadline order."""

from __future__ import annotations

import asyncio
import socket
import time
import warnings

import pytest
from hypothesis import given, settings, strategies as st

from penguiflow.clock import wall_time
from penguiflow.testing import VirtualClock, VirtualEventLoop, run_virtual
from penguiflow.types import Headers, Message


def test_long_sleeps_finish_instantly_in_deadline_order() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        seen: list[tuple[str, float]] = []

        async def sleeper(delay: float, tag: str) -> None:
            await asyncio.sleep(delay)
            seen.append((tag, loop.time()))

        await asyncio.gather(sleeper(3600, "hour"), sleeper(2.5, "b"), sleeper(0.001, "a"))
        return seen

    started = time.perf_counter()
    seen = run_virtual(main())
    assert time.perf_counter() - started < 0.5
    assert seen == [("a", 0.001), ("b", 2.5), ("hour", 3600.0)]


def test_runs_are_reproducible() -> None:
    async def main() -> list[tuple[int, float]]:
        loop = asyncio.get_running_loop()
        out: list[tuple[int, float]] = []

        def record(i: int) -> None:
            out.append((i, loop.time()))

        for i in range(20):
            loop.call_later((i * 7) % 5 + 0.5, record, i)
        await asyncio.sleep(10)
        return out

    assert run_virtual(main()) == run_virtual(main())


def test_timeout_fires_at_exact_virtual_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.Event().wait()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(100), timeout=12)
        return loop.time()

    assert run_virtual(main()) == 42.0


def test_time_does_not_move_while_callbacks_are_ready() -> None:
    async def main() -> tuple[list[float], float]:
        loop = asyncio.get_running_loop()
        timer = asyncio.ensure_future(asyncio.sleep(1))
        stamps = []
        for _ in range(200):
            await asyncio.sleep(0)
            stamps.append(loop.time())
        await timer
        return stamps, loop.time()

    stamps, end = run_virtual(main())
    assert set(stamps) == {0.0}
    assert end == 1.0


def test_ready_io_is_served_before_time_jumps() -> None:
    async def main() -> tuple[bytes, float, float]:
        loop = asyncio.get_running_loop()
        left, right = socket.socketpair()
        left.setblocking(False)
        right.setblocking(False)
        try:
            right.send(b"ping")
            async with asyncio.timeout(5):
                data = await loop.sock_recv(left, 4)
            got_at = loop.time()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(5):
                    await loop.sock_recv(left, 4)
            return data, got_at, loop.time()
        finally:
            left.close()
            right.close()

    assert run_virtual(main()) == (b"ping", 0.0, 5.0)


def test_executor_jobs_hold_the_clock() -> None:
    def blocking() -> str:
        time.sleep(0.02)  # real work in a thread; the loop must wait for it
        return "done"

    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(3600):
            result = await loop.run_in_executor(None, blocking)
        return result, loop.time()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result, now = run_virtual(main())
    assert result == "done"
    assert now < 1.0  # without tracking, the 3600 s timeout would have fired at once


def test_manual_advance_moves_time_and_fires_due_timers() -> None:
    async def main() -> tuple[float, list[float]]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualEventLoop)
        fired: list[float] = []
        loop.call_later(5, lambda: fired.append(loop.time()))
        loop.advance(10)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        with pytest.raises(ValueError, match="cannot advance"):
            loop.advance(-1)
        return loop.elapsed, fired

    assert run_virtual(main()) == (10.0, [10.0])


def test_loop_stats_and_validation() -> None:
    with pytest.raises(ValueError, match="autojump_threshold"):
        VirtualEventLoop(autojump_threshold=-1)
    loop = VirtualEventLoop(start=100.0)
    try:
        assert loop.time() == 100.0
        loop.run_until_complete(asyncio.sleep(3))
        assert loop.time() == 103.0
        assert loop.elapsed == 3.0
        assert loop.jumps >= 1
    finally:
        loop.close()


def test_autojump_threshold_still_reaches_timers() -> None:
    async def main() -> float:
        await asyncio.sleep(50)
        return asyncio.get_running_loop().time()

    assert run_virtual(main(), autojump_threshold=0.001) == 50.0


def test_wall_clock_follows_virtual_time() -> None:
    async def main() -> tuple[float, float, float]:
        first = Message(payload=1, headers=Headers(tenant="t")).ts
        await asyncio.sleep(5)
        second = Message(payload=2, headers=Headers(tenant="t")).ts
        return first, second, wall_time()

    assert run_virtual(main(), base=1_000.0) == (1_000.0, 1_005.0, 1_005.0)
    # Nothing leaks out of the run: wall time is real again.
    assert abs(wall_time() - time.time()) < 5


def test_clock_handle_binds_to_its_loop() -> None:
    clock = VirtualClock(base=50.0)
    assert clock.time() == 0.0
    assert clock.wall_time() == 50.0
    with pytest.raises(RuntimeError, match="not bound"):
        _ = clock.loop

    async def main() -> float:
        await asyncio.sleep(7)
        assert clock.loop is asyncio.get_running_loop()
        return clock.wall_time()

    assert clock.run(main()) == 57.0
    assert clock.time() == 7.0  # still readable after the run
    clock.advance(1)
    assert clock.time() == 8.0
    assert "VirtualClock" in repr(clock)


def test_cancellation_inside_virtual_time() -> None:
    async def main() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(asyncio.sleep(1000))
        await asyncio.sleep(3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled(), loop.time()

    assert run_virtual(main()) == (True, 3.0)


def test_cancelled_timers_do_not_move_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        far = loop.call_later(1000, lambda: None)
        far.cancel()
        await asyncio.sleep(1)
        return loop.time()

    assert run_virtual(main()) == 1.0


@settings(max_examples=60, deadline=None)
@given(
    delays=st.lists(
        st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=12,
    ),
    hops=st.integers(min_value=1, max_value=3),
)
def test_every_sleeper_wakes_at_its_deadline(delays: list[float], hops: int) -> None:
    async def main() -> tuple[list[tuple[float, int]], float]:
        loop = asyncio.get_running_loop()
        woke: list[tuple[float, int]] = []

        async def sleeper(index: int, delay: float) -> None:
            for _ in range(hops):  # several consecutive sleeps per task
                await asyncio.sleep(delay / hops)
            woke.append((loop.time(), index))

        await asyncio.gather(*(sleeper(i, d) for i, d in enumerate(delays)))
        return woke, loop.time()

    started = time.perf_counter()
    woke, end = run_virtual(main())
    assert time.perf_counter() - started < 1.0
    for now, index in woke:
        assert now == pytest.approx(delays[index], rel=1e-9, abs=1e-9)
    times = [now for now, _ in woke]
    assert times == sorted(times)
    assert end == pytest.approx(max(delays), rel=1e-9, abs=1e-9)
