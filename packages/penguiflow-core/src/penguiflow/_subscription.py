"""``Subscription``: one trace's Rookery output, diverted into its own bounded iterator.

While a trace has a subscription, whatever of that trace reaches Rookery goes to the
subscription's private edge instead, so a caller that waits for one request never sees
(or steals) another request's results.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Literal, TypeAlias

from ._context import KernelPort
from ._edges import ROOKERY, Floe

__all__ = ["Subscription", "SubscriptionEnd", "finish", "mark_seen", "redirect"]

SubscriptionEnd: TypeAlias = Literal["drained", "cancelled", "stopped", "closed"]
"""Why a subscription stopped producing items: its trace finished (``"drained"``), was
cancelled, the flow stopped, or the subscriber closed it."""


class Subscription:
    """Per-trace view of what reaches Rookery; see ``PenguiFlow.subscribe``.

    Iterate it (``async for item in sub``) or call ``get()``; iteration ends when the
    trace is done, cancelled, or the flow stops, and ``done`` says which.
    """

    __slots__ = ("_floe", "_kernel", "_seen", "_subs", "done", "errors", "last_node", "trace_id")

    def __init__(
        self,
        kernel: KernelPort,
        subs: dict[str, Subscription],
        trace_id: str,
        *,
        seen: bool,
        errors: bool = False,
    ) -> None:
        self._kernel = kernel
        self._subs = subs
        self.trace_id: str = trace_id
        self._floe = Floe(ROOKERY, ROOKERY, maxsize=kernel.queue_maxsize)
        self._seen = seen
        self.errors: bool = errors
        """Whether a ``FlowError`` is delivered when a node gives up on the trace."""
        self.done: SubscriptionEnd | None = None
        """Why iteration ended, or ``None`` while it may still produce items."""
        self.last_node: str | None = None
        """When the trace drained: the node that last handled one of its items without
        passing anything on (a router or join that dropped it), if any."""

    @property
    def started(self) -> bool:
        """True once the trace has had work in the flow (and so can end)."""
        return self._seen

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        return await self.get()

    async def get(self, timeout: float | None = None) -> Any:
        """Return the next item of the trace.

        Raises:
            StopAsyncIteration: The trace is done (``self.done`` says how).
            TimeoutError: Nothing arrived within ``timeout`` seconds.
        """
        if timeout is None:
            return await self._kernel.fetch(self._floe.inbox, None, self)
        async with asyncio.timeout(timeout):
            return await self._kernel.fetch(self._floe.inbox, None, self)

    async def aclose(self) -> None:
        """Unsubscribe; items not read yet are dropped and their accounting completed."""
        close(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# The request handle's interface: the same as ``get()`` and ``aclose()``, without a
# coroutine frame of their own (a request reads its result through them).


def next_item(sub: Subscription) -> Awaitable[Any]:
    """``sub.get()``: the next item, or ``StopAsyncIteration`` once the trace is done."""
    return sub._kernel.fetch(sub._floe.inbox, None, sub)


def close(sub: Subscription) -> None:
    """``sub.aclose()``."""
    if sub._subs.get(sub.trace_id) is sub:
        del sub._subs[sub.trace_id]
    finish(sub, "closed")
    inbox = sub._floe.inbox
    consume = sub._kernel.consume
    while inbox.items:
        entry = inbox.items.popleft()
        if not entry.dead:
            consume(entry)
    sub._floe.putters.unpark_all()


# The kernel's interface to subscriptions.


def redirect(sub: Subscription) -> Floe | None:
    """The edge that replaces Rookery for the subscribed trace, while the view is open."""
    return sub._floe if sub.done is None else None


def mark_seen(sub: Subscription) -> None:
    """The subscribed trace has started; its end will now end the subscription."""
    sub._seen = True


def finish(
    sub: Subscription,
    reason: SubscriptionEnd,
    *,
    if_seen: bool = False,
    last_node: str | None = None,
) -> None:
    """End the subscription (the first reason sticks) and wake its reader."""
    if if_seen and not sub._seen:
        return
    if sub.done is None:
        sub.done = reason
        sub.last_node = last_node
    sub._floe.inbox.waiters.unpark_all()
