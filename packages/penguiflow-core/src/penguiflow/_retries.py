"""Failed attempts: report, back off and retry per ``NodePolicy``, or give up on the item."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any

from ._controller import Router
from ._edges import Trace
from ._events import ERROR, INFO, WARNING, Hooks
from ._slots import NodeRuntime, Slot, absorb_cancel
from ._subscription import View
from .clock import wall_time
from .errors import FlowBuildError, FlowError, TraceCancelled

__all__ = ["Retries"]


class Retries:
    """What happens after a node attempt fails.

    Args:
        hooks: The flow's hooks, for ``node_error``/``node_retry``/``node_failed`` events.
        router: Where a ``FlowError`` goes when errors are delivered to Rookery.
        errors_to_rookery: Deliver a ``FlowError`` to the shared Rookery path too.
        views: Per-trace views (requests, subscriptions) by trace id.
        budget: The flow's per-request retry budget.
    """

    __slots__ = ("budget", "errors_to_rookery", "hooks", "random", "router", "views")

    def __init__(
        self,
        hooks: Hooks,
        router: Router,
        errors_to_rookery: bool,
        views: Mapping[str, View],
        budget: int | None,
    ) -> None:
        self.hooks = hooks
        self.router = router
        self.errors_to_rookery = errors_to_rookery
        self.views = views
        """The flow's per-trace views by trace id: their traces always get the error."""
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget < 0
        ):
            raise FlowBuildError(f"retry_budget must be an int >= 0 or None, got {budget!r}")
        self.budget = budget
        """Retries one trace may spend across all nodes (``None``: no cap)."""
        # The flow's own random source, made on first use (seeding one costs ~10 µs, and
        # flows are built per playbook call): jitter never touches the global ``random``.
        self.random: random.Random | None = None

    async def failed(
        self,
        rt: NodeRuntime,
        slot: Slot,
        trace: Trace | None,
        tid: str | None,
        attempt: int,
        failure: BaseException,
        latency: float,
        item: Any,
        deadline: float | None,
    ) -> int:
        """Report a failed attempt, then back off; return the next attempt, or -1 to stop.

        No retry starts when its backoff would end past the message deadline: the trace
        gets its deadline answer instead.
        """
        hooks = self.hooks
        ports = rt.ports
        is_timeout = isinstance(failure, TimeoutError)
        level = WARNING if is_timeout else ERROR
        if hooks.observed(level):
            await hooks.emit(
                "node_timeout" if is_timeout else "node_error",
                ports=ports,
                level=level,
                trace=trace,
                trace_id=tid,
                attempt=attempt,
                latency_ms=latency,
                extra={"exception": repr(failure), "error": failure},
            )
        policy = rt.policy
        if attempt >= rt.retries or not policy.retries(failure):
            await self.give_up(rt, trace, tid, attempt, latency, failure)
            return -1
        budget = self.budget
        if budget is not None and trace is not None:
            if trace.retries >= budget:
                if hooks.observed(INFO):
                    await hooks.emit(
                        "budget_exhausted",
                        ports=ports,
                        level=INFO,
                        trace=trace,
                        trace_id=tid,
                        attempt=attempt,
                        extra={"budget": "retries", "limit": budget},
                    )
                await self.give_up(rt, trace, tid, attempt, latency, failure, "RETRY_BUDGET")
                return -1
            trace.retries += 1
        attempt += 1
        delay = policy.backoff(attempt)
        if policy.jitter:
            rng = self.random
            if rng is None:
                rng = self.random = random.Random()
            delay *= 1.0 - policy.jitter * rng.random()
        if deadline is not None and wall_time() + delay >= deadline:
            await self.router.deadline_skip(rt, item, trace)
            return -1
        if hooks.observed(INFO):
            await hooks.emit(
                "node_retry",
                ports=ports,
                level=INFO,
                trace=trace,
                trace_id=tid,
                attempt=attempt,
                extra={"sleep_s": delay, "exception": repr(failure)},
            )
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
        code: str | None = None,
    ) -> None:
        """The item is dropped: ``node_failed``, and a ``FlowError`` to Rookery if asked."""
        hooks = self.hooks
        if hooks.observed(ERROR):
            await hooks.emit(
                "node_failed",
                ports=rt.ports,
                level=ERROR,
                trace=trace,
                trace_id=tid,
                attempt=attempt,
                latency_ms=latency,
                extra={"exception": repr(failure), "error": failure, "code": code or ""},
            )
        view = None if tid is None else self.views.get(tid)
        wanted = self.errors_to_rookery or (view is not None and view.errors)
        if wanted and self.router.rookery_floes:
            error = FlowError(
                trace_id=tid,
                node_name=rt.node.name,
                node_id=rt.node.node_id,
                code=code
                or ("NODE_TIMEOUT" if isinstance(failure, TimeoutError) else "NODE_EXCEPTION"),
                attempts=attempt + 1,
                original=failure,
            )
            await self.router.to_rookery(rt, error, trace)
