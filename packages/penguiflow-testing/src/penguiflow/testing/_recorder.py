"""``Recorder``: a middleware that keeps every event and lets a test await one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from penguiflow.metrics import FlowEvent

from ._errors import FlowTimeoutError, KitUsageError

__all__ = ["Recorder"]


class Recorder:
    """A middleware that keeps every :class:`~penguiflow.metrics.FlowEvent` it receives.

    Attach it with ``flow.add_middleware(recorder)`` (or ``create(..., middlewares=[...])``),
    then filter what it saw with :meth:`matching` and :meth:`names`, or wait for an event
    with :meth:`wait` instead of sleeping. It records every flow it is attached to, in
    arrival order; unlike :class:`FlowTestKit` it does not group events per trace.

    Args:
        timeout_s: Default upper bound of :meth:`wait`, in loop seconds (virtual seconds
            under the virtual clock), so a missing event fails the test instead of hanging.

    Example:
        ```python
        recorder = Recorder()
        flow = create(node.to(), middlewares=[recorder])
        flow.run()
        await flow.emit(message)
        failed = await recorder.wait("node_failed", node="fetch")
        assert failed.attempt == 2
        ```
    """

    __test__ = False

    def __init__(self, *, timeout_s: float = 5.0) -> None:
        if timeout_s <= 0:
            raise KitUsageError(f"Recorder(timeout_s={timeout_s!r}): give a positive number")
        self.timeout_s = timeout_s
        self.events: list[FlowEvent] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return f"<Recorder {len(self.events)} events>"

    async def __call__(self, event: FlowEvent) -> None:
        """Record ``event`` and wake the waiters it satisfies (the middleware hook)."""
        self.events.append(event)
        if self._waiters:
            for ready, future in list(self._waiters):
                if not future.done() and ready():
                    future.set_result(None)

    def matching(
        self,
        event_type: str | None = None,
        node: str | None = None,
        trace_id: str | None = None,
    ) -> list[FlowEvent]:
        """The recorded events with this type, node name and trace id (``None``: any)."""
        return [
            event
            for event in self.events
            if (event_type is None or event.event_type == event_type)
            and (node is None or event.node_name == node)
            and (trace_id is None or event.trace_id == trace_id)
        ]

    def names(self, node: str | None = None, trace_id: str | None = None) -> list[str]:
        """The event types recorded for this node and trace (``None``: any), in order."""
        return [event.event_type for event in self.matching(None, node, trace_id)]

    def clear(self) -> None:
        """Forget the events recorded so far (waiters keep waiting)."""
        self.events.clear()

    async def wait(
        self,
        event_type: str,
        node: str | None = None,
        trace_id: str | None = None,
        *,
        count: int = 1,
        timeout_s: float | None = None,
    ) -> FlowEvent:
        """Wait until ``count`` matching events were recorded and return the last of them.

        Events recorded before the call count too.

        Raises:
            FlowTimeoutError: Fewer than ``count`` matching events arrived within
                ``timeout_s`` (default: the recorder's) loop seconds; the message lists
                the events seen.
        """
        if count < 1:
            raise KitUsageError(f"Recorder.wait(count={count!r}): count starts at 1")
        limit = self.timeout_s if timeout_s is None else timeout_s

        def ready() -> bool:
            return len(self.matching(event_type, node, trace_id)) >= count

        if not ready():
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiter = (ready, future)
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(limit):
                    await future
            except TimeoutError:
                text = self._timeout_text(event_type, node, trace_id, count, limit)
                raise FlowTimeoutError(text) from None
            finally:
                self._waiters.remove(waiter)
        return self.matching(event_type, node, trace_id)[count - 1]

    def _timeout_text(
        self, event_type: str, node: str | None, trace_id: str | None, count: int, limit: float
    ) -> str:
        wanted = [f"{event_type!r}"]
        if node is not None:
            wanted.append(f"node {node!r}")
        if trace_id is not None:
            wanted.append(f"trace {trace_id!r}")
        seen = len(self.matching(event_type, node, trace_id))
        recent = ", ".join(f"{e.node_name}.{e.event_type}" for e in self.events[-20:])
        return (
            f"Recorder.wait timed out after {limit:g}s (loop time): wanted {count} "
            f"{' '.join(wanted)} event(s), saw {seen}; last events: [{recent}]"
        )
