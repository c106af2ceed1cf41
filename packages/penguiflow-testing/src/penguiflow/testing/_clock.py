"""A virtual clock for asyncio: timers fire as soon as every task is waiting.

:class:`VirtualEventLoop` is an ``asyncio.SelectorEventLoop`` whose ``time()`` is a number
it owns. When the loop has no callback ready to run and no I/O is ready, it does not
sleep until its next timer: it jumps its clock forward to that timer (the "autojump" of
trio's ``MockClock``). Everything asyncio builds on ``loop.time()`` and timers follows:
``asyncio.sleep``, ``asyncio.timeout``, ``asyncio.wait_for``, ``loop.call_later``. So the
runtime's retry backoff, node ``timeout_s``, playbook timeouts and any timer in product
code run instantly, in a deterministic order.

Wall-clock time (``Message.ts``, ``deadline_s`` checks) is read by core through
``penguiflow.clock.wall_time()``. :class:`VirtualClock` installs
``base + loop.time()`` there with ``penguiflow.clock.use_wall_clock``, so deadlines follow
virtual time too.

How the jump works: ``BaseEventLoop._run_once`` computes how long it may block (0 when a
callback is ready, the delay to the earliest timer otherwise, ``None`` with no timer at
all) and passes it to ``selector.select``. The loop is built with a selector wrapper that
polls the real selector without blocking and, when nothing is ready, advances the virtual
clock by exactly that delay instead of sleeping. No private loop method is overridden.

Limits (documented in the README):

* Real I/O that is *in progress* (a socket waiting for a remote peer) is invisible to a
  non-blocking poll, so timers may fire before a slow peer answers. Pass
  ``autojump_threshold`` (real seconds to wait for I/O before jumping) for such tests.
* Work in ``run_in_executor`` threads is tracked: while a job is pending the loop waits
  for real instead of jumping. Threads started some other way are not.
* With no timer at all and nothing ready, the loop blocks on real I/O, exactly like a
  normal loop: a deadlock stays a deadlock (bound your waits with a timeout).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import selectors
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, Unpack, final

from penguiflow.clock import use_wall_clock

from ._errors import KitUsageError

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = ["VirtualClock", "VirtualEventLoop", "run_virtual"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


@final
class _AutojumpSelector(selectors.BaseSelector):
    """Delegates to a real selector; turns "block for t seconds" into "advance by t"."""

    def __init__(self, loop: VirtualEventLoop, inner: selectors.BaseSelector) -> None:
        self._loop = loop
        self._inner = inner

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self._loop
        if timeout is not None and timeout <= 0:
            # A callback is ready (or the loop is stopping): never move time.
            return self._inner.select(0)
        if timeout is None:
            # No timer at all: virtual time has nothing to jump to. Wait for real I/O
            # (a thread finishing, a socket) like any loop would.
            return self._inner.select(None)
        if loop._real_waits:
            # Executor jobs are running in threads: let real time pass, at most until the
            # next timer, and only then jump.
            real_wait: float = timeout
        else:
            real_wait = min(timeout, loop.autojump_threshold)
        events = self._inner.select(real_wait)
        if events:
            return events
        loop._jump(timeout)
        return []


class VirtualEventLoop(asyncio.SelectorEventLoop):
    """An event loop with a virtual, auto-advancing clock.

    ``time()`` starts at ``start`` and only moves when the loop would otherwise wait for
    its next timer (it then jumps there at once) or when :meth:`advance` is called.
    Callbacks and I/O that are ready always run before time moves, so the order of events
    is the order of their deadlines, reproducibly.

    It is a drop-in loop: use it as ``asyncio.Runner(loop_factory=VirtualEventLoop)``, via
    :func:`run_virtual`, or through the ``virtual_clock`` pytest fixture.

    Args:
        start: The initial value of ``time()``.
        autojump_threshold: Real seconds to wait for I/O before jumping to the next timer
            (0 jumps at once; use a small value for tests that talk to real network
            peers, so their answers arrive before timers fire).
    """

    def __init__(self, *, start: float = 0.0, autojump_threshold: float = 0.0) -> None:
        self._virtual_now = float(start)
        self._start = float(start)
        self._jumps = 0
        self._real_waits = 0
        self.autojump_threshold = autojump_threshold
        super().__init__(_AutojumpSelector(self, selectors.DefaultSelector()))
        if autojump_threshold < 0 or math.isnan(autojump_threshold):
            self.close()
            raise ValueError(f"autojump_threshold must be >= 0, got {autojump_threshold!r}")

    def time(self) -> float:
        """Return the virtual monotonic time of this loop."""
        return self._virtual_now

    @property
    def elapsed(self) -> float:
        """Virtual seconds since the loop was created."""
        return self._virtual_now - self._start

    @property
    def jumps(self) -> int:
        """How many times the clock jumped to a timer (a measure of work saved)."""
        return self._jumps

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` now.

        Timers that become due run at the loop's next iteration (``await
        asyncio.sleep(0)`` twice lets them run). Under autojump, ``await
        asyncio.sleep(seconds)`` is usually what a test wants instead: it advances *and*
        runs everything due on the way, in order.

        Raises:
            ValueError: ``seconds`` is negative (time never goes back).
        """
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"cannot advance a clock by {seconds!r} seconds")
        self._virtual_now += seconds

    def _jump(self, seconds: float) -> None:
        self._virtual_now += seconds
        self._jumps += 1

    def run_in_executor(
        self,
        executor: Executor | None,
        func: Callable[[Unpack[_Ts]], _T],
        *args: *_Ts,
    ) -> asyncio.Future[_T]:
        """Like ``loop.run_in_executor``; while the job runs, time passes for real."""
        future = super().run_in_executor(executor, func, *args)
        self._real_waits += 1
        future.add_done_callback(self._job_done)
        return future

    def _job_done(self, _future: object) -> None:
        self._real_waits -= 1

    async def shutdown_default_executor(self, *args: Any) -> None:
        """Like the base method; joining executor threads waits in real time."""
        self._real_waits += 1
        try:
            await super().shutdown_default_executor(*args)
        finally:
            self._real_waits -= 1


@final
class VirtualClock:
    """Virtual time for one test: the loop's ``time()`` plus a matching wall clock.

    ``time()`` is the virtual monotonic time of the bound :class:`VirtualEventLoop`
    (the running one when called from inside it). ``wall_time()`` is ``base + time()``;
    :meth:`install` makes ``penguiflow.clock.wall_time()`` return it, so ``Message.ts``
    defaults and ``deadline_s`` checks follow virtual time. Nothing is global: the wall
    clock lives in a ``ContextVar`` and the time in the loop.

    Args:
        base: Epoch seconds that virtual time 0 maps to (default: the real ``time.time()``
            when the clock is created, so ``deadline_s = time.time() + 5`` written by
            product code still means "in about 5 seconds").
        autojump_threshold: Passed to every loop this clock creates.

    Example:
        ```python
        clock = VirtualClock()
        result = clock.run(main())   # main() may sleep for hours; this returns at once
        ```
    """

    def __init__(self, *, base: float | None = None, autojump_threshold: float = 0.0) -> None:
        self.base: float = time.time() if base is None else float(base)
        self.autojump_threshold = autojump_threshold
        self._loop: VirtualEventLoop | None = None

    def __repr__(self) -> str:
        return f"<VirtualClock t={self.time():.6f} base={self.base:.3f}>"

    def new_loop(self) -> VirtualEventLoop:
        """Create a :class:`VirtualEventLoop` and bind this clock to it (a loop factory)."""
        loop = VirtualEventLoop(autojump_threshold=self.autojump_threshold)
        self._loop = loop
        return loop

    @property
    def loop(self) -> VirtualEventLoop:
        """The loop this clock reads: the running virtual loop, else the last one bound.

        Raises:
            RuntimeError: No virtual loop is running and none was created by this clock
                (for an ``async def`` test, request the ``virtual_clock`` fixture so the
                plugin runs the test on a virtual loop).
        """
        loop = self._bound()
        if loop is None:
            raise RuntimeError(
                "this VirtualClock is not bound to a VirtualEventLoop: run code with "
                "clock.run(...) / run_virtual(...), or request the 'virtual_clock' fixture "
                "in an async test so it runs on a virtual loop"
            )
        return loop

    def _bound(self) -> VirtualEventLoop | None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if isinstance(running, VirtualEventLoop):
            self._loop = running
            return running
        if running is not None and self._loop is None:
            # Code runs on a real loop while it expects virtual time: say so instead of
            # letting timers take real seconds while this clock reads 0.0.
            raise KitUsageError(
                f"this VirtualClock is read inside a real event loop ({type(running).__name__})"
                ", so timers run in real time. In pytest, the 'virtual_clock' fixture "
                "needs pytest-asyncio >= 1.5 (pip install 'penguiflow-testing[pytest]') and "
                "a function-scoped loop; elsewhere run the code with clock.run(...) or "
                "run_virtual(...)"
            )
        return self._loop

    def time(self) -> float:
        """Virtual monotonic seconds (``loop.time()``; 0.0 before any loop exists).

        Raises:
            KitUsageError: Called inside a running event loop that is not virtual while
                this clock has no virtual loop (the code would silently run in real time).
        """
        loop = self._bound()
        return 0.0 if loop is None else loop.time()

    def wall_time(self) -> float:
        """Virtual epoch seconds: ``base + time()``."""
        return self.base + self.time()

    def advance(self, seconds: float) -> None:
        """Advance the bound loop's clock now; see :meth:`VirtualEventLoop.advance`."""
        self.loop.advance(seconds)

    @contextmanager
    def install(self) -> Iterator[VirtualClock]:
        """Route ``penguiflow.clock.wall_time()`` to :meth:`wall_time` inside the block.

        The override is a ``ContextVar``: tasks created inside the block (and the workers
        of flows started inside it) inherit it.
        """
        with use_wall_clock(self.wall_time):
            yield self

    def run(self, main: Coroutine[Any, Any, _T]) -> _T:
        """Run ``main`` to completion on a fresh virtual loop, with the wall clock installed.

        Args:
            main: The coroutine to run.

        Returns:
            What ``main`` returns.
        """
        with self.install(), asyncio.Runner(loop_factory=self.new_loop) as runner:
            return runner.run(main, context=contextvars.copy_context())


def run_virtual(
    main: Coroutine[Any, Any, _T],
    *,
    base: float | None = None,
    autojump_threshold: float = 0.0,
) -> _T:
    """Run ``main`` on a fresh :class:`VirtualEventLoop` and return its result.

    The ``asyncio.run`` of virtual time: sleeps, timeouts, retry backoffs and deadlines
    inside ``main`` complete instantly and deterministically.

    Args:
        main: The coroutine to run.
        base: Epoch seconds for virtual time 0 (default: now).
        autojump_threshold: See :class:`VirtualEventLoop`.

    Returns:
        What ``main`` returns.
    """
    return VirtualClock(base=base, autojump_threshold=autojump_threshold).run(main)
