"""map_concurrent: order, bound, structured failure and cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from penguiflow.core import Context, create
from penguiflow.errors import FlowError
from penguiflow.node import Node, NodePolicy
from penguiflow.patterns import map_concurrent
from penguiflow.types import Headers, Message


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


def cancelled_future() -> asyncio.Future[int]:
    """A future someone else cancelled: awaiting it raises CancelledError in the awaiter."""
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    future.cancel()
    return future


@pytest.mark.parametrize("limit", [1, 3])
async def test_a_worker_cancelled_by_someone_else_raises(limit: int) -> None:
    before = other_tasks()
    finished: list[int] = []

    async def work(i: int) -> int:
        if i == 2:
            return await cancelled_future()
        await yields(1)
        finished.append(i)
        return i

    with pytest.raises(asyncio.CancelledError):
        await map_concurrent(range(6), work, max_concurrency=limit)
    assert 5 not in finished  # the first failure stopped the rest
    assert other_tasks() == before
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # nobody cancelled the caller


@pytest.mark.parametrize("limit", [1, 3])
async def test_return_exceptions_collects_a_cancelled_worker(limit: int) -> None:
    async def work(i: int) -> int:
        await yields(i % 2)
        if i == 2:
            return await cancelled_future()
        return i

    result = await map_concurrent(range(5), work, max_concurrency=limit, return_exceptions=True)
    assert isinstance(result[2], asyncio.CancelledError)
    assert result[:2] + result[3:] == [0, 1, 3, 4]


async def test_return_exceptions_still_propagates_the_callers_cancellation() -> None:
    started = asyncio.Event()

    async def work(i: int) -> int:
        started.set()
        await asyncio.Event().wait()
        return i

    outer = asyncio.create_task(
        map_concurrent(range(4), work, max_concurrency=2, return_exceptions=True)
    )
    async with asyncio.timeout(5):
        await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert outer.cancelled()


async def test_a_failure_leaves_the_callers_task_uncancelled() -> None:
    async def work(i: int) -> int:
        await yields(i)
        if i == 1:
            raise ValueError("bad 1")
        return i

    with pytest.raises(ValueError, match="bad 1"):
        await map_concurrent(range(4), work, max_concurrency=4)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await yields(1)  # and the caller carries on: nothing cancels it later


async def test_a_failing_worker_inside_a_node_is_that_nodes_error() -> None:
    async def fan(msg: Message, ctx: Context) -> Message:
        async def work(i: int) -> int:
            await yields(i)
            if i == 2:
                raise ValueError("bad item 2")
            return i

        return msg.model_copy(update={"payload": await map_concurrent(range(4), work)})

    flow = create(Node(fan, name="fan", policy=NodePolicy(validate="none")).to())
    flow.run()
    try:
        msg = Message(payload="x", headers=Headers(tenant="t"))
        with pytest.raises(FlowError) as info:
            await flow.invoke(msg, timeout=5)
        assert (info.value.code, info.value.node_name) == ("NODE_EXCEPTION", "fan")
        assert isinstance(info.value.__cause__, ValueError)
        assert flow.inspect().workers == 1  # the node's worker survived
    finally:
        await flow.stop()


async def test_a_node_whose_task_group_fails_is_that_nodes_error() -> None:
    async def fan(msg: Message, ctx: Context) -> Message:
        if msg.payload == "fail":
            async with asyncio.TaskGroup() as group:
                group.create_task(asyncio.sleep(0, result=None))
                group.create_task(_raise(ValueError("child failed")))
        return msg

    flow = create(Node(fan, name="fan", policy=NodePolicy(validate="none")).to())
    flow.run()
    try:
        with pytest.raises(FlowError) as info:
            await flow.invoke(Message(payload="fail", headers=Headers(tenant="t")), timeout=5)
        assert (info.value.code, info.value.node_name) == ("NODE_EXCEPTION", "fan")
        ok = await flow.invoke(
            Message(payload="ok", headers=Headers(tenant="t")), timeout=5, expect=Message
        )
        assert ok.payload == "ok"  # the node's worker survived
    finally:
        await flow.stop()


async def _raise(error: Exception) -> None:
    raise error
