"""One pipeline for the commands of many concurrent callers.

Under load, hundreds of requests each want a round trip to Redis at about the same time.
A ``Batcher`` collects the commands callers add while one pipeline is in flight and sends
them all in the next one, so a request pays a share of a round trip instead of a whole
one. With ``transaction=True`` each pipeline is one ``MULTI``/``EXEC``: every caller's
commands still run atomically (with the others of that batch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["Batcher"]


class Batcher:
    """Runs callers' commands in shared pipelines, in the order they were added."""

    __slots__ = ("_queue", "_redis", "_task", "_transaction")

    def __init__(self, redis: Any, *, transaction: bool) -> None:
        self._redis = redis
        self._transaction = transaction
        self._queue: list[tuple[Callable[[Any], None], asyncio.Future[list[Any]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def run(self, add: Callable[[Any], None]) -> list[Any]:
        """Queue the commands ``add(pipe)`` adds; return their replies once sent.

        If the caller is cancelled meanwhile, the commands are still sent.
        """
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((add, future))
        if self._task is None:
            self._task = asyncio.create_task(self._flush(), name="penguiflow.redis:batch")
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                spans: list[tuple[int, int]] = []
                try:
                    async with self._redis.pipeline(transaction=self._transaction) as pipe:
                        for add, _ in batch:
                            start = len(pipe.command_stack)
                            add(pipe)
                            spans.append((start, len(pipe.command_stack)))
                        replies = await pipe.execute()
                except BaseException as exc:
                    error = exc if isinstance(exc, Exception) else ConnectionError("cancelled")
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    raise
                for (start, end), (_, future) in zip(spans, batch, strict=True):
                    if not future.done():
                        future.set_result(replies[start:end])
        except Exception:
            pass  # every caller of the failed batch has the exception
        finally:
            self._task = None
            for _, future in self._queue:  # cancelled with callers still queued
                if not future.done():
                    future.set_exception(ConnectionError("the batch was cancelled"))
            self._queue = []
