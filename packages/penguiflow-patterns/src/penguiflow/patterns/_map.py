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
) -> list[R | Exception | asyncio.CancelledError]: ...


@overload
async def map_concurrent(
    items: Iterable[T],
    worker: Callable[[T], Awaitable[R]],
    *,
    max_concurrency: int = ...,
    return_exceptions: bool,
) -> list[R] | list[R | Exception | asyncio.CancelledError]: ...


async def map_concurrent(
    items: Iterable[T],
    worker: Callable[[T], Awaitable[R]],
    *,
    max_concurrency: int = 8,
    return_exceptions: bool = False,
) -> list[R] | list[R | Exception | asyncio.CancelledError]:
    """Run ``worker`` over ``items`` with bounded concurrency; return results in input order.

    ``items`` is consumed eagerly. At most ``max_concurrency`` calls of ``worker`` run at
    once: that many runner tasks pull the next item as soon as they finish one, so a slow
    item never holds back the others and no task is created per item.

    Concurrency is *structured*, like ``asyncio.TaskGroup``: every task started here has
    finished before this coroutine returns or raises, and a failure leaves the caller's
    task as it found it (never marked as being cancelled).

    - By default the first failure wins: the other runners are cancelled and awaited, then
      that first exception is raised as is (not wrapped in an ``ExceptionGroup``). Errors
      that other workers raise while being cancelled are discarded.
    - With ``return_exceptions=True`` an ``Exception`` raised for an item is stored in that
      item's slot and the others keep going.
    - A worker whose item ends in ``asyncio.CancelledError`` although nobody cancelled
      this call (it awaited a future that someone else cancelled, say) is a failure of
      that item like any other: it is raised (as the first failure), or, with
      ``return_exceptions=True``, the ``CancelledError`` is stored in the item's slot.
      No item is ever left ``None`` because its worker was cancelled.
    - When the caller is cancelled, the runners are cancelled and awaited, then the
      cancellation propagates. Other ``BaseException``s (``KeyboardInterrupt``) are never
      collected.

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
        asyncio.CancelledError: The first failure of ``worker`` was a ``CancelledError``
            not aimed at this call (unless ``return_exceptions``).
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
                except asyncio.CancelledError as exc:
                    if _aimed_at_us():
                        raise
                    results[index] = exc
            else:
                results[index] = await worker(item)
        return results

    queue = iter(enumerate(inputs))  # shared by the runners; next() never suspends
    failures: list[BaseException] = []  # in the order the items failed: the first wins
    runners: list[asyncio.Task[None]] = []

    def failed(exc: BaseException) -> None:
        failures.append(exc)
        if len(failures) == 1:
            current = asyncio.current_task()
            for task in runners:
                if task is not current:
                    task.cancel()

    async def run_collecting() -> None:
        for index, item in queue:
            try:
                results[index] = await worker(item)
            except Exception as exc:
                results[index] = exc
            except asyncio.CancelledError as exc:
                if _aimed_at_us():
                    raise
                results[index] = exc

    async def run() -> None:
        try:
            for index, item in queue:
                results[index] = await worker(item)
        except asyncio.CancelledError as exc:
            if _aimed_at_us():
                raise  # stopped by a sibling's failure or by the caller
            failed(exc)
        except Exception as exc:
            failed(exc)

    runner = run_collecting if return_exceptions else run
    loop = asyncio.get_running_loop()
    runners.extend(loop.create_task(runner()) for _ in range(min(max_concurrency, count)))
    # Supervised by hand rather than with asyncio.TaskGroup: on Python 3.11 a TaskGroup
    # whose child fails leaves its parent task marked as being cancelled
    # (``cancelling() == 1``) after it exits, and a PenguiFlow node calling this would then
    # look cancelled to the runtime.
    try:
        await asyncio.wait(runners)
    except BaseException:
        for task in runners:
            task.cancel()
        await _settle(runners)
        raise
    if failures:
        raise failures[0]
    for task in runners:  # KeyboardInterrupt, SystemExit: never collected
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error
    return results


async def _settle(tasks: list[asyncio.Task[None]]) -> None:
    """Wait until every task has finished, even if the caller is cancelled again meanwhile."""
    pending = [task for task in tasks if not task.done()]
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            pass  # the first cancellation is already being propagated
        pending = [task for task in pending if not task.done()]


def _aimed_at_us() -> bool:
    """Whether the running task itself is being cancelled (by its caller or a sibling's failure)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
