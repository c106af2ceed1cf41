"""Riding out Redis trouble: which errors pass with time, and how long to wait between tries.

The same growing wait also paces polls for room: a forward to a full node stream, and a
chunk for a client whose reply stream is full (``room_poll``).

A dropped connection (a network blip, ``CLIENT KILL``, a Redis restart) is not the end of a
worker or of a client's reply reader: redis-py opens a new connection on the next command,
so the loops that talk to Redis wait a little and try again. A Redis restarted without
persistence has also lost the streams' consumer group; ``is_no_group`` tells that apart so
the group can be created again.
"""

from __future__ import annotations

import asyncio
from typing import Final

from redis.exceptions import (
    ConnectionError as RedisConnectionError,
    ResponseError,
    TimeoutError as RedisTimeoutError,
)

__all__ = ["Backoff", "is_lost", "is_no_group", "room_poll"]

_FIRST_S: Final = 0.05
_MOST_S: Final = 1.0
"""Waits between tries grow from the first to the second, so a reconnect takes at most
about a second once Redis is reachable again."""


def is_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a lost or timed-out connection (Redis loading counts too)."""
    return isinstance(exc, RedisConnectionError | RedisTimeoutError)


def is_no_group(exc: BaseException) -> bool:
    """Whether ``exc`` says a stream or its consumer group does not exist (any more)."""
    if not isinstance(exc, ResponseError):
        return False
    text = str(exc)
    return "NOGROUP" in text or "no such key" in text


class Backoff:
    """Waits between tries of one loop: short at first, longer while failures go on."""

    __slots__ = ("_first", "_most", "_next")

    def __init__(self, first: float = _FIRST_S, most: float = _MOST_S) -> None:
        self._first = first
        self._most = most
        self._next = 0.0

    @property
    def failing(self) -> bool:
        """True after a failure, until ``reset()`` (a try that worked)."""
        return self._next > 0

    async def wait(self) -> None:
        """Sleep before the next try (cancellable)."""
        self._next = min(2 * self._next, self._most) if self._next else self._first
        await asyncio.sleep(self._next)

    def reset(self) -> None:
        self._next = 0.0


def room_poll() -> Backoff:
    """Waits between looks for room that another process makes (a reader catching up):
    2 ms at first, so a short wait costs little, growing to at most 0.1 s."""
    return Backoff(0.002, 0.1)
