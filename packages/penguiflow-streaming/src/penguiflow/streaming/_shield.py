"""Run cleanup to completion even when the caller is being cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["finish", "settle"]

T = TypeVar("T")


async def finish(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` to the end, even if the awaiting task is cancelled meanwhile.

    ``coro`` runs in its own task, so cancelling the caller does not interrupt it. When
    the caller was cancelled while waiting, ``CancelledError`` is re-raised *after*
    ``coro`` finished: cancellation is delayed, never swallowed. Cancel scopes that
    deliver cancellation again and again (anyio, hence Starlette) are handled too: every
    delivery is absorbed until ``coro`` is done.
    """
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            # Either we were cancelled (the task is still running, or it finished at
            # the same moment), or the task itself was cancelled (its result says so).
            if not task.done() or not task.cancelled():
                cancelled = True
    if cancelled:
        error = None if task.cancelled() else task.exception()
        raise asyncio.CancelledError from error
    return task.result()


async def settle(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until every one is done, shielded as by :func:`finish`.

    Their outcomes are not inspected here: the caller reads them (or not) afterwards.
    """
    for task in tasks:
        task.cancel()

    async def wait_all() -> None:
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    await finish(wait_all())
