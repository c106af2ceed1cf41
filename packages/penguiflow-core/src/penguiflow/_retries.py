"""Failed attempts: report, back off and retry per ``NodePolicy``, or give up on the item."""

from __future__ import annotations

import asyncio

from ._controller import Router
from ._edges import Trace
from ._events import ERROR, INFO, WARNING, Hooks
from ._slots import NodeRuntime, Slot, absorb_cancel
from .errors import FlowError, TraceCancelled

__all__ = ["Retries"]


class Retries:
    """What happens after a node attempt fails.

    Args:
        hooks: The flow's hooks, for ``node_error``/``node_retry``/``node_failed`` events.
        router: Where a ``FlowError`` goes when errors are delivered to Rookery.
        errors_to_rookery: Deliver a ``FlowError`` when a node gives up.
    """

    __slots__ = ("errors_to_rookery", "hooks", "router")

    def __init__(self, hooks: Hooks, router: Router, errors_to_rookery: bool) -> None:
        self.hooks = hooks
        self.router = router
        self.errors_to_rookery = errors_to_rookery

    async def failed(
        self,
        rt: NodeRuntime,
        slot: Slot,
        trace: Trace | None,
        tid: str | None,
        attempt: int,
        failure: Exception,
        latency: float,
    ) -> int:
        """Report a failed attempt, then back off; return the next attempt, or -1 to drop."""
        hooks = self.hooks
        ports = rt.ports
        is_timeout = isinstance(failure, TimeoutError)
        level = WARNING if is_timeout else ERROR
        if hooks.observed(level):
            await hooks.emit(
                "node_timeout" if is_timeout else "node_error", ports=ports, level=level,
                trace=trace, trace_id=tid, attempt=attempt, latency_ms=latency,
                extra={"exception": repr(failure)},
            )  # fmt: skip
        if attempt >= rt.retries:
            await self.give_up(rt, trace, tid, attempt, latency, failure)
            return -1
        attempt += 1
        delay = rt.policy.backoff(attempt)
        if hooks.observed(INFO):
            await hooks.emit(
                "node_retry", ports=ports, level=INFO, trace=trace, trace_id=tid,
                attempt=attempt, extra={"sleep_s": delay, "exception": repr(failure)},
            )  # fmt: skip
        slot.current = trace
        try:
            if trace is not None and trace.cancelled:
                raise TraceCancelled(tid)
            if delay > 0:
                await asyncio.sleep(delay)
            if slot.cancel_for is not None:
                raise asyncio.CancelledError
        except asyncio.CancelledError:
            if slot.cancel_for is None:
                raise
            absorb_cancel(slot)
        except TraceCancelled:
            pass
        else:
            return attempt
        finally:
            slot.current = None
        if hooks.observed(INFO):
            await hooks.emit(
                "node_trace_cancelled", ports=ports, level=INFO, trace=trace, trace_id=tid
            )
        return -1

    async def give_up(
        self,
        rt: NodeRuntime,
        trace: Trace | None,
        tid: str | None,
        attempt: int,
        latency: float,
        failure: BaseException,
    ) -> None:
        """The item is dropped: ``node_failed``, and a ``FlowError`` to Rookery if asked."""
        hooks = self.hooks
        if hooks.observed(ERROR):
            await hooks.emit(
                "node_failed", ports=rt.ports, level=ERROR, trace=trace, trace_id=tid,
                attempt=attempt, latency_ms=latency, extra={"exception": repr(failure)},
            )  # fmt: skip
        if self.errors_to_rookery and self.router.rookery_floes:
            error = FlowError(
                trace_id=tid,
                node_name=rt.node.name,
                node_id=rt.node.node_id,
                code="NODE_TIMEOUT" if isinstance(failure, TimeoutError) else "NODE_EXCEPTION",
                attempts=attempt + 1,
                original=failure,
            )
            await self.router.to_rookery(rt, error, trace)
