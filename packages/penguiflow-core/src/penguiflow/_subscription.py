"""Per-trace views of Rookery: ``Subscription`` and ``Outcome``.

While a trace has a view, whatever of that trace reaches Rookery goes to the view instead,
so a caller that waits for one request never sees (or steals) another request's results.
A ``Subscription`` diverts the items into its own bounded edge, to be read one by one
(chunks included). An ``Outcome`` (what ``flow.invoke`` waits on) queues nothing: it keeps
the trace's first result as it arrives and drops the rest, chunks included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Literal, TypeAlias

from ._context import KernelPort
from ._edges import ROOKERY, Floe
from .types import Message, StreamChunk

__all__ = [
    "Outcome",
    "Subscription",
    "SubscriptionEnd",
    "View",
    "close",
    "finish",
    "mark_seen",
    "next_item",
    "route",
]

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
        subs: dict[str, View],
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


def close(sub: View) -> None:
    """``sub.aclose()``; for an ``Outcome``, its end (its reader has what it needs)."""
    subs = sub._subs
    if subs.get(sub.trace_id) is sub:
        del subs[sub.trace_id]
    if isinstance(sub, Outcome):
        if sub.done is None:
            sub.done = "closed"
        return
    finish(sub, "closed")
    inbox = sub._floe.inbox
    consume = sub._kernel.consume
    while inbox.items:
        entry = inbox.items.popleft()
        if not entry.dead:
            consume(entry)
    sub._floe.putters.unpark_all()


class Outcome:
    """What ``flow.invoke`` waits on: its trace's first result, or why there is none.

    ``future`` completes when the result arrives (``result``) or the trace ends without one
    (``done`` says how, ``last_node`` where it was dropped). Nothing is queued for it:
    the kernel hands it each item of the trace bound for Rookery, and it keeps the first
    that is not a stream chunk.
    """

    __slots__ = (
        "_seen",
        "_subs",
        "done",
        "errors",
        "future",
        "has_result",
        "last_node",
        "result",
        "trace_id",
    )

    def __init__(
        self, subs: dict[str, View], trace_id: str, seen: bool, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._subs = subs
        self._seen = seen
        self.trace_id: str = trace_id
        self.errors: bool = True
        self.done: SubscriptionEnd | None = None
        self.last_node: str | None = None
        self.result: Any = None
        """The first result (valid once ``has_result``)."""
        self.has_result = False
        self.future: asyncio.Future[None] = loop.create_future()

    @property
    def started(self) -> bool:
        """True once the trace has had work in the flow (and so can end)."""
        return self._seen

    def take(self, item: Any) -> None:
        """An item of the trace reached Rookery: keep it if it is the first result."""
        if self.has_result:
            return
        if type(item) is Message or isinstance(item, Message):
            kind = type(item.payload)
            if kind not in _NOT_CHUNKS and _chunk_type(kind):
                return
        self.result = item
        self.has_result = True
        if not self.future.done():
            self.future.set_result(None)


# Payload types known not to be stream chunks: ``issubclass`` against a pydantic model
# is a Python-level check, so each type is checked once, and a result's type is then one
# set lookup.
_NOT_CHUNKS: set[type] = set()


def _chunk_type(kind: type) -> bool:
    if issubclass(kind, StreamChunk):
        return True
    _NOT_CHUNKS.add(kind)
    return False


View: TypeAlias = "Subscription | Outcome"
"""A per-trace view of Rookery."""


# The kernel's interface to subscriptions.


def route(view: View, floe: Floe) -> Floe | Outcome:
    """Where an item of the viewed trace bound for ``floe`` (a Rookery edge) goes: the
    subscription's edge, the outcome (which ``take``s it), or Rookery once the view ended."""
    if view.done is not None:
        return floe
    return view if isinstance(view, Outcome) else view._floe


def mark_seen(sub: View) -> None:
    """The subscribed trace has started; its end will now end the subscription."""
    sub._seen = True


def finish(
    sub: View,
    reason: SubscriptionEnd,
    if_seen: bool = False,
    last_node: str | None = None,
) -> None:
    """End the view (the first reason sticks) and wake its reader."""
    if if_seen and not sub._seen:
        return
    if sub.done is None:
        sub.done = reason
        sub.last_node = last_node
    if isinstance(sub, Outcome):
        if not sub.future.done():
            sub.future.set_result(None)
    else:
        sub._floe.inbox.waiters.unpark_all()
