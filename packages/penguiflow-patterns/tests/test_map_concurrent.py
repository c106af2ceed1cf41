"""map_concurrent: order, bound, structured failure and cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from penguiflow.patterns import map_concurrent


async def yields(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def other_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current}


async def test_results_in_input_order_not_completion_order() -> None:
    finished: list[int] = []

    async def work(i: int) -> int:
        await yields(10 - i)  # later items finish first
        finished.append(i)
        return i * i

    result = await map_concurrent(range(10), work, max_concurrency=10)
    assert result == [i * i for i in range(10)]
    assert finished == sorted(finished, reverse=True)


async def test_empty_input_gives_empty_list() -> None:
    async def work(i: int) -> int:
        raise AssertionError("not called")

    assert await map_concurrent([], work) == []


async def test_iterable_consumed_eagerly() -> None:
    seen: list[int] = []

    def gen() -> Any:
        for i in range(5):
            seen.append(i)
            yield i

    async def work(i: int) -> int:
        assert seen == [0, 1, 2, 3, 4]  # all consumed before the first call
        return i

    assert await map_concurrent(gen(), work, max_concurrency=2) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("limit", [1, 2, 3, 8])
async def test_at_most_max_concurrency_at_once(limit: int) -> None:
    active = peak = 0

    async def work(i: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await yields(1 + i % 3)
        active -= 1
        return i

    assert await map_concurrent(range(20), work, max_concurrency=limit) == list(range(20))
    assert peak == limit


async def test_default_limit_is_eight() -> None:
    active = peak = 0

    async def work(i: int) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await yields(2)
        active -= 1

    await map_concurrent(range(30), work)
    assert peak == 8


@pytest.mark.parametrize("bad", [0, -1])
async def test_max_concurrency_below_one_is_an_error(bad: int) -> None:
    async def work(i: int) -> int:
        return i

    with pytest.raises(ValueError, match="max_concurrency must be >= 1"):
        await map_concurrent([1], work, max_concurrency=bad)


@pytest.mark.parametrize("bad", [1.5, True, "2"])
async def test_max_concurrency_must_be_int(bad: Any) -> None:
    async def work(i: int) -> int:
        return i

    with pytest.raises(TypeError, match="max_concurrency must be an int"):
        await map_concurrent([1], work, max_concurrency=bad)


async def test_first_failure_cancels_siblings_and_propagates() -> None:
    before = other_tasks()
    release = asyncio.Event()  # never set: siblings would block forever
    started: list[int] = []
    cancelled: list[int] = []
    boom = ValueError("boom")

    async def work(i: int) -> int:
        started.append(i)
        if i == 2:
            await yields(3)  # fail while the others are parked
            raise boom
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    with pytest.raises(ValueError, match="boom") as info:
        await map_concurrent(range(10), work, max_concurrency=4)
    assert info.value is boom
    assert sorted(started) == [0, 1, 2, 3]  # no new item started after the failure
    assert sorted(cancelled) == [0, 1, 3]
    assert other_tasks() == before  # no orphan task


async def test_first_error_wins_over_later_ones() -> None:
    async def work(i: int) -> int:
        await yields(i)
        raise RuntimeError(f"fail {i}")

    with pytest.raises(RuntimeError, match="fail 0"):
        await map_concurrent(range(5), work, max_concurrency=5)


async def test_error_raised_while_cancelled_does_not_mask_first() -> None:
    hold = asyncio.Event()

    async def work(i: int) -> int:
        if i == 0:
            await yields(2)
            raise KeyError("first")
        try:
            await hold.wait()
        except asyncio.CancelledError:
            raise OSError("cleanup failure") from None
        return i

    with pytest.raises(KeyError, match="first"):
        await map_concurrent(range(3), work, max_concurrency=3)


async def test_sequential_path_stops_at_first_failure() -> None:
    started: list[int] = []

    async def work(i: int) -> int:
        started.append(i)
        if i == 1:
            raise ValueError("stop")
        return i

    with pytest.raises(ValueError, match="stop"):
        await map_concurrent(range(5), work, max_concurrency=1)
    assert started == [0, 1]


@pytest.mark.parametrize("limit", [1, 3])
async def test_return_exceptions_collects_failures_in_place(limit: int) -> None:
    async def work(i: int) -> int:
        await yields(i % 2)
        if i % 3 == 0:
            raise ValueError(f"bad {i}")
        return i

    result = await map_concurrent(range(7), work, max_concurrency=limit, return_exceptions=True)
    assert [type(r) for r in result] == [
        ValueError, int, int, ValueError, int, int, ValueError
    ]  # fmt: skip
    assert str(result[3]) == "bad 3"
    assert result[1] == 1


async def test_caller_cancellation_cancels_and_awaits_workers() -> None:
    before = other_tasks()
    started = asyncio.Event()
    running = 0
    cancelled: list[int] = []

    async def work(i: int) -> int:
        nonlocal running
        running += 1
        if running == 3:
            started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    outer = asyncio.create_task(map_concurrent(range(10), work, max_concurrency=3))
    async with asyncio.timeout(5):
        await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert sorted(cancelled) == [0, 1, 2]
    assert other_tasks() == before
