"""Routing of special payloads: controller loops, final answers, budgets and deadlines.

A ``Message`` whose payload is a ``WM`` loops a controller node on its own edge; a
``FinalAnswer`` goes straight to Rookery. Budgets (hops, tokens) and the message deadline
end a loop with a ``FinalAnswer`` whose text says why, at most one deadline answer per
trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from ._context import KernelPort
from ._copy import copy_with, with_payload
from ._edges import Floe, Trace
from ._events import INFO, Hooks
from ._slots import NodeRuntime, Slot, absorb_cancel
from .clock import wall_time
from .errors import FlowRuntimeError
from .types import WM, FinalAnswer, Message

__all__ = [
    "BUDGET_EXCEEDED_TEXT",
    "DEADLINE_EXCEEDED_TEXT",
    "TOKEN_BUDGET_EXCEEDED_TEXT",
    "Router",
    "PLAIN",
    "SPECIAL",
    "is_special",
]

DEADLINE_EXCEEDED_TEXT: Final = "Deadline exceeded"
BUDGET_EXCEEDED_TEXT: Final = "Hop budget exhausted"
TOKEN_BUDGET_EXCEEDED_TEXT: Final = "Token budget exhausted"

_SPECIAL: Final = (WM, FinalAnswer)
# Payload types known to be neither WM nor FinalAnswer, and types known to be one of them.
# ``issubclass`` against pydantic models goes through a Python-level
# ``__subclasscheck__``, so each type is checked once. The kernel tests
# both sets inline: an ordinary payload, or a WM, costs no call per hop.
PLAIN: set[type] = set()
SPECIAL: set[type] = set()


def is_special(payload: object) -> bool:
    """Does this payload change routing (a ``WM`` or a ``FinalAnswer``)?"""
    cls = type(payload)
    if cls in SPECIAL:
        return True
    if cls in PLAIN:
        return False
    if issubclass(cls, _SPECIAL):
        SPECIAL.add(cls)
        return True
    PLAIN.add(cls)
    return False


class Router:
    """Sends special results where they belong, through the kernel's enqueue path.

    Args:
        hooks: The flow's hooks, for ``deadline_skip`` events.
        kernel: The flow's port, for its ``offer`` and ``send_rest`` (looked up per call,
            so the router holds no method bound to the flow).
        rookery_floes: The flow's egress edges.
    """

    __slots__ = ("hooks", "kernel", "rookery_floes")

    def __init__(self, hooks: Hooks, kernel: KernelPort, rookery_floes: list[Floe]) -> None:
        self.hooks = hooks
        self.kernel = kernel
        self.rookery_floes = rookery_floes

    async def send(self, floe: Floe, item: Any, trace: Trace | None) -> None:
        floes = (floe,)
        kernel = self.kernel
        if not kernel.offer(floes, item, trace, 0):
            await kernel.send_rest(floes, item, trace, 0)

    async def to_rookery(self, rt: NodeRuntime | None, item: Any, trace: Trace | None) -> None:
        """Send ``item`` to Rookery: on the node's own egress edge, else the first one."""
        floe = rt.rookery_floe if rt is not None else None
        if floe is None:
            if not self.rookery_floes:
                name = rt.node.name if rt is not None else "?"
                raise FlowRuntimeError(
                    f"node {name!r} has a result for Rookery, but the flow has no exit "
                    "node; give the flow a node without successors"
                )
            floe = self.rookery_floes[0]
        await self.send(floe, item, trace)

    async def special(self, rt: NodeRuntime, item: Any, msg: Message, trace: Trace | None) -> bool:
        """Route a ``Message`` carrying a WM or FinalAnswer; False means route normally.

        A WM from a controller is one hop of its loop: deadline, token and hop budgets,
        then the self-edge. The hop is handled here rather than in a helper coroutine:
        this runs on every hop of a loop.
        """
        wm = msg.payload
        if type(wm) is not WM and not isinstance(wm, WM):
            await self.to_rookery(rt, msg, trace)
            return True
        self_floe = rt.self_floe
        if self_floe is None:
            return False  # a WM from a node that is not a controller is plain data
        if msg.deadline_s is not None and wall_time() > msg.deadline_s:
            if trace is not None:
                if trace.deadline_fired:
                    return True
                trace.deadline_fired = True
            final = FinalAnswer(text=DEADLINE_EXCEEDED_TEXT)
            await self.to_rookery(rt, with_payload(msg, final), trace)
            return True
        if wm.budget_tokens is not None and wm.tokens_used >= wm.budget_tokens:
            await self.exhausted(rt, trace, "tokens", wm.budget_tokens)
            final = FinalAnswer(text=TOKEN_BUDGET_EXCEEDED_TEXT)
            await self.to_rookery(rt, with_payload(msg, final), trace)
            return True
        # The runtime counts hops itself: a controller that returns the WM it received
        # unchanged still advances by one, so a hop budget always ends the loop.
        # ``type(x) is`` first: pydantic's ``isinstance`` is a Python-level check.
        incoming = item.payload if type(item) is Message or isinstance(item, Message) else None
        inc = incoming.hops if type(incoming) is WM or isinstance(incoming, WM) else None
        nxt = inc + 1 if inc is not None and wm.hops <= inc else wm.hops
        if wm.budget_hops is not None and nxt >= wm.budget_hops:
            await self.exhausted(rt, trace, "hops", wm.budget_hops)
            final = FinalAnswer(text=BUDGET_EXCEEDED_TEXT)
            await self.to_rookery(rt, with_payload(msg, final), trace)
            return True
        if nxt != wm.hops:
            msg = with_payload(msg, copy_with(wm, "hops", nxt))
        if wm.budget_hops is None and wm.budget_tokens is None:
            # With no budget, every hop's WM is also visible at Rookery.
            await self.to_rookery(rt, msg.model_copy(deep=True), trace)
            if trace is not None:
                trace.wm_hops = nxt
        floes = (self_floe,)  # ``send``, inlined
        kernel = self.kernel
        if not kernel.offer(floes, msg, trace, 0):
            await kernel.send_rest(floes, msg, trace, 0)
        return True

    def suppressed(self, msg: Any, traces: Mapping[str, Trace]) -> bool:
        """A client re-emitting the WM a controller already copied to Rookery: skip it."""
        if type(msg) is not Message and not isinstance(msg, Message):
            return False
        payload = msg.payload
        if not is_special(payload) or not isinstance(payload, WM):
            return False
        trace = traces.get(msg.trace_id)
        return trace is not None and trace.wm_hops is not None and trace.wm_hops == payload.hops

    async def deadline_answer(
        self,
        rt: NodeRuntime,
        slot: Slot,
        item: Message,
        trace: Trace | None,
        latency_ms: float | None = None,
    ) -> None:
        """``deadline_skip``, interruptible by a cancel of the trace like node code."""
        slot.current = trace
        try:
            await self.deadline_skip(rt, item, trace, latency_ms)
        except asyncio.CancelledError:
            if slot.cancel_for is None:
                raise
            absorb_cancel(slot)
        finally:
            slot.current = None

    async def deadline_skip(
        self, rt: NodeRuntime, item: Message, trace: Trace | None, latency_ms: float | None = None
    ) -> None:
        """An item arrived past its deadline: answer "Deadline exceeded" instead of running.

        ``latency_ms`` is given when the deadline cut a running attempt short: the event
        then also ends that attempt, and says how long it ran.
        """
        tid = trace.trace_id if trace is not None else None
        hooks = self.hooks
        if hooks.observed(INFO):
            await hooks.emit(
                "deadline_skip",
                ports=rt.ports,
                level=INFO,
                trace=trace,
                trace_id=tid,
                latency_ms=latency_ms,
                extra={"deadline_s": item.deadline_s},
            )
        if trace is not None and trace.cancelled:
            return
        if isinstance(item.payload, FinalAnswer):
            await self.to_rookery(rt, item, trace)
            return
        if trace is not None:
            if trace.deadline_fired:
                return  # one deadline answer per trace, however many branches expire
            trace.deadline_fired = True
        answer = with_payload(item, FinalAnswer(text=DEADLINE_EXCEEDED_TEXT))
        await self.to_rookery(rt, answer, trace)

    async def exhausted(
        self, rt: NodeRuntime, trace: Trace | None, budget: str, limit: int
    ) -> None:
        """``budget_exhausted``: a controller loop ends on its hop or token budget."""
        hooks = self.hooks
        if hooks.observed(INFO):
            await hooks.emit(
                "budget_exhausted",
                ports=rt.ports,
                level=INFO,
                trace=trace,
                trace_id=trace.trace_id if trace is not None else None,
                extra={"budget": budget, "limit": limit},
            )
