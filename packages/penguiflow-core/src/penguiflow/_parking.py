"""``ParkingLot``: the one wait queue every blocking path of the runtime parks in.

A worker waiting for its inbox, a producer waiting for room on an edge, a streaming node
waiting for its trace's capacity and a subscriber waiting for results all do the same
thing: append a future, await it inline, and on an interrupted wait either give the
wake-up to the next waiter or take the future back out. That pattern lives here once.

The lot *is* a ``deque`` of futures, so the hot-path check ``if lot:`` is a C-level
length test, and a parked caller awaits a plain future with no extra coroutine frame::

    fut = lot.park()
    try:
        await fut
    except BaseException:
        lot.withdraw(fut)
        raise
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

__all__ = ["ParkingLot"]


class ParkingLot(deque["asyncio.Future[None]"]):
    """FIFO of parked futures; ``unpark`` wakes the oldest one still waiting."""

    __slots__ = ()

    def park(self) -> asyncio.Future[None]:
        """Append and return a new future of the running loop; the caller awaits it."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.append(fut)
        return fut

    def unpark(self) -> None:
        """Wake the oldest parked future that is still waiting (skipping abandoned ones)."""
        while self:
            fut = self.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def unpark_all(self, error: Callable[[], BaseException] | None = None) -> None:
        """Wake every parked future; with ``error``, each waiter raises a fresh one."""
        while self:
            fut = self.popleft()
            if not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error())

    async def wait(self, timeout: float | None = None) -> bool:
        """Park and wait to be woken; False if ``timeout`` passed first.

        For waits off the hot path: it costs one coroutine frame more than parking inline.
        """
        fut = self.park()
        try:
            if timeout is None:
                await fut
            else:
                async with asyncio.timeout(timeout):
                    await fut
        except TimeoutError:
            self.withdraw(fut)
            return False
        except BaseException:
            self.withdraw(fut)
            raise
        return True

    def withdraw(self, fut: asyncio.Future[None]) -> None:
        """Clean up after a wait on ``fut`` was interrupted.

        If ``fut`` had already been woken, its wake-up passes to the next waiter, so no
        wake-up is ever lost; otherwise ``fut`` leaves the lot.
        """
        if fut.done() and not fut.cancelled():
            self.unpark()
        else:
            try:
                self.remove(fut)
            except ValueError:
                pass
