"""``map_concurrent``: bounded, ordered, structured fan-out over in-memory items."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, TypeVar, overload

from penguiflow.errors import FlowBuildError, FlowTypeError

__all__ = ["map_concurrent"]

T = TypeVar("T")
R = TypeVar("R")


@overload
async def map_concurrent(
    items: Iterable[T],
    worker: Callable[[T], Awaitable[R]],
    *,
    max_concurrency: int = ...,
    return_exceptions: Literal[False] = ...,
) -> list[R]: ...


@overload
async def map_concurrent(
    items: Iterable[T],
    worker: Callable[[T], Awaitable[R]],
    *,
    max_concurrency: int = ...,
    return_exceptions: Literal[True],
) -> list[R | Exception]: ...


@overload
async def map_concurrent(
    items: Iterable[T],
    worker: Callable[[T], Awaitable[R]],
    *,
    max_concurrency: int = ...,
    return_exceptions: bool,
) -> list[R] | list[R | Exception]: ...


async def map_concurrent(
    items: Iterable[T],
    worker: Callable[[T], Awaitable[R]],
    *,
    max_concurrency: int = 8,
    return_exceptions: bool = False,
) -> list[R] | list[R | Exception]:
    """Run ``worker`` over ``items`` with bounded concurrency; return results in input order.

    ``items`` is consumed eagerly. At most ``max_concurrency`` calls of ``worker`` run at
    once: that many runner tasks pull the next item as soon as they finish one, so a slow
    item never holds back the others and no task is created per item.

    Concurrency is *structured*, like ``asyncio.TaskGroup``: every task started here has
    finished before this coroutine returns or raises.

    - By default the first failure wins: the other runners are cancelled and awaited, then
      that first exception is raised as is (not wrapped in an ``ExceptionGroup``). Errors
      that other workers raise while being cancelled are discarded.
    - With ``return_exceptions=True`` an ``Exception`` raised for an item is stored in that
      item's slot and the others keep going. ``BaseException``s (``CancelledError``,
      ``KeyboardInterrupt``) are never collected.
    - When the caller is cancelled, the runners are cancelled and awaited, then the
      cancellation propagates.

    With ``max_concurrency == 1`` (or a single item) the items run one after another in
    the caller's task, without any task.

    Args:
        items: The inputs.
        worker: An async callable taking **one** item.
        max_concurrency: The most calls in flight at once. Unlike earlier PenguiFlow
            versions, which clamped with ``max(1, ...)``, a value below 1 is an error: it
            is almost always a bug (an empty pool size computed by the caller, for
            instance).
        return_exceptions: Collect per-item failures in place instead of raising.

    Returns:
        One result per item, in input order (``[]`` for no items).

    Raises:
        FlowBuildError: ``max_concurrency`` is below 1 (a ``ValueError``).
        FlowTypeError: ``max_concurrency`` is not an ``int`` (a ``TypeError``).
        Exception: The first failure of ``worker`` (unless ``return_exceptions``).
    """
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
        raise FlowTypeError(
            f"map_concurrent: max_concurrency must be an int, got {max_concurrency!r}"
        )
    if max_concurrency < 1:
        raise FlowBuildError(f"map_concurrent: max_concurrency must be >= 1, got {max_concurrency}")
    inputs = list(items)
    count = len(inputs)
    results: list[Any] = [None] * count
    if count == 0:
        return results
    if max_concurrency == 1 or count == 1:
        for index, item in enumerate(inputs):
            if return_exceptions:
                try:
                    results[index] = await worker(item)
                except Exception as exc:
                    results[index] = exc
            else:
                results[index] = await worker(item)
        return results

    queue = iter(enumerate(inputs))  # shared by the runners; next() never suspends

    async def run_collecting() -> None:
        for index, item in queue:
            try:
                results[index] = await worker(item)
            except Exception as exc:
                results[index] = exc

    async def run() -> None:
        for index, item in queue:
            results[index] = await worker(item)

    runner = run_collecting if return_exceptions else run
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(max_concurrency, count)):
                group.create_task(runner())
    except BaseExceptionGroup as group_error:
        # TaskGroup records errors in the order the runners failed: the first is ours.
        first = group_error.exceptions[0]
        raise first from None
    return results
