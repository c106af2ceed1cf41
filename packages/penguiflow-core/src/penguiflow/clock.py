"""The single seam through which PenguiFlow reads wall-clock time.

Core reads wall time (``Message.ts``, ``deadline_s`` checks) only through
:func:`wall_time`. Monotonic waits (node timeouts, retry backoff, playbook timeouts) use the
running event loop's clock, so an event loop with a virtual ``time()`` drives them. A test
harness that installs such a loop and ``use_wall_clock(lambda: base + loop.time())`` makes
every timing behaviour of a flow instant and deterministic, without patching internals.

The override lives in a ``ContextVar``: it applies to the current task and to the tasks
created from it (``flow.run()`` starts its workers in the caller's context). Nothing is
global.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["use_wall_clock", "wall_time"]

_WALL: ContextVar[Callable[[], float] | None] = ContextVar("penguiflow_wall_clock", default=None)
_get = _WALL.get
_time = time.time


def wall_time() -> float:
    """Return the current wall-clock time in epoch seconds (``time.time()`` by default)."""
    fn = _get()
    return _time() if fn is None else fn()


@contextmanager
def use_wall_clock(fn: Callable[[], float]) -> Iterator[None]:
    """Read wall time from ``fn`` inside this block (and in tasks started from it).

    Args:
        fn: A zero-argument callable returning epoch seconds.
    """
    token = _WALL.set(fn)
    try:
        yield
    finally:
        _WALL.reset(token)
