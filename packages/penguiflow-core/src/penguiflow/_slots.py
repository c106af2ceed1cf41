"""Worker slots, and everything a node's workers need, resolved once per flow."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Final

from ._context import Context, KernelPort, wired_context
from ._edges import ROOKERY, Entry, Floe, Inbox, Owner, Ports, Trace
from ._validation import Validator
from .node import Node, NodePolicy

__all__ = [
    "NodeRuntime",
    "Slot",
    "absorb_cancel",
    "ahead_of",
    "defer",
    "interrupt",
    "join_workers",
    "mark_stopping",
    "release_slots",
    "start_workers",
]


class Slot:
    """One worker task of a node, and the trace it is handling right now."""

    __slots__ = ("busy", "cancel_for", "ctx", "current", "stopping", "task")

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        """The context this slot's invocations get (its ``message`` is theirs)."""
        self.task: asyncio.Task[None] | None = None
        self.current: Trace | None = None
        """The trace whose node code runs now (what a trace cancel interrupts)."""
        self.cancel_for: Trace | None = None
        """Set while this worker is being cancelled on behalf of a trace cancel."""
        self.busy = False
        self.stopping = False
        """Set by ``stop()`` before it cancels the worker: that cancellation is final.

        The runtime tells its own cancellations apart with these flags, never with
        ``Task.cancelling()``, which code inside a node may leave raised (on Python 3.11 a
        ``TaskGroup`` whose child failed does)."""


# A serial node never defers an item; it shares this never-used, bound-less stand-in.
_NO_BACKLOG: Final = Floe(ROOKERY, ROOKERY, maxsize=0)


class NodeRuntime:
    """A node's wiring, policy and workers, resolved once at ``create``/``run``."""

    __slots__ = (
        "ahead",
        "backlog_floe",
        "backlogs",
        "concurrency",
        "ctx",
        "func",
        "inbox",
        "node",
        "outs",
        "owners",
        "policy",
        "ports",
        "retries",
        "rookery_floe",
        "self_floe",
        "slots",
        "timeout",
        "validator",
    )

    def __init__(self, node: Node, ports: Ports, ctx: Context, queue_maxsize: int) -> None:
        self.node = node
        self.ports = ports
        self.ctx = ctx
        self.func = node.func
        self.policy: NodePolicy = node.policy
        self.timeout = node.policy.timeout_s
        self.retries = node.policy.max_retries
        self.concurrency = node.policy.max_concurrency
        self.inbox: Inbox = ports.inbox
        self.outs: list[Floe] = ports.outs
        self.self_floe = ports.by_target.get(node)
        self.rookery_floe = ports.by_target.get(ROOKERY)
        self.validator: Validator | None = None
        self.ahead: frozenset[Owner] | None = None
        """Rookery and the nodes strictly after this one (computed on first need)."""
        self.slots: Sequence[Slot] = ()
        self.backlogs: dict[Trace, deque[Entry]] = {}
        """max_concurrency > 1: items of a trace waiting behind the one running."""
        self.owners: dict[Trace, Slot] = {}
        """max_concurrency > 1: which slot runs a trace now."""
        self.backlog_floe: Floe = _NO_BACKLOG
        """max_concurrency > 1: counts backlog items that gave their edge slot back."""
        if self.concurrency > 1 and queue_maxsize > 0:
            self.backlog_floe = Floe(node, node, maxsize=queue_maxsize * self.concurrency)


def interrupt(runtimes: Iterable[NodeRuntime], trace: Trace) -> None:
    """Abort ``trace``'s in-flight invocations and drop its per-node backlogs.

    The worker running it is cancelled and later ``uncancel()``s itself, so it survives.
    O(nodes): a serial node has one slot; a concurrent node runs a trace on at most one
    slot at a time (per-trace order), found through its owners map.
    """
    for rt in runtimes:
        if rt.concurrency == 1:
            slots: Sequence[Slot] = rt.slots
        else:
            owner = rt.owners.get(trace)
            slots = () if owner is None else (owner,)
        for slot in slots:
            if slot.current is trace and slot.cancel_for is None and slot.task is not None:
                slot.cancel_for = trace
                slot.task.cancel()
        backlog = rt.backlogs.get(trace)
        if backlog:
            backlog.clear()


def ahead_of(
    producer: Owner, trace: Trace, runtimes: Sequence[NodeRuntime], of: dict[Owner, NodeRuntime]
) -> int:
    """Items of ``trace`` a stream producer is ahead of: queued for or running at the nodes
    after it, or waiting at Rookery. O(items of the trace + slots).

    Only what lies strictly after the producer counts. Items at the producer or at the
    nodes that feed it can move on only through the producer itself, and items on sibling
    branches may wait for the same capacity: counting either would have producers wait on
    themselves or on each other. Edge backpressure already bounds them. A producer outside
    the flow (``flow.emit_chunk``) is before every node, so everything of the trace counts.
    """
    rt = of.get(producer)
    ahead = _ahead(rt, of) if rt is not None else None
    count = 0
    entry = trace.head
    while entry is not None:
        if not entry.dead and (ahead is None or entry.floe.target in ahead):
            count += 1
        entry = entry.next
    for other in runtimes:
        if ahead is None or other.node in ahead:
            for slot in other.slots:
                if slot.current is trace:
                    count += 1
    return count


def _ahead(rt: NodeRuntime, of: dict[Owner, NodeRuntime]) -> frozenset[Owner]:
    """Rookery, and the nodes reachable from ``rt`` that cannot reach it back."""
    if rt.ahead is None:
        behind = _reach(rt, of, lambda r: [f.source for f in r.ports.ins])
        after = _reach(rt, of, lambda r: [f.target for f in r.ports.outs])
        rt.ahead = frozenset(after - behind) | {ROOKERY}
    return rt.ahead


def _reach(
    rt: NodeRuntime, of: dict[Owner, NodeRuntime], step: Callable[[NodeRuntime], list[Owner]]
) -> set[Owner]:
    """``rt``'s node and every owner reachable from it by ``step``."""
    seen: set[Owner] = {rt.node}
    todo = [rt]
    while todo:
        for owner in step(todo.pop()):
            if owner not in seen:
                seen.add(owner)
                nxt = of.get(owner)
                if nxt is not None:
                    todo.append(nxt)
    return seen


def mark_stopping(runtimes: Iterable[NodeRuntime]) -> None:
    """``stop()`` is about to cancel every worker: a cancel now is never a node failure."""
    for rt in runtimes:
        for slot in rt.slots:
            slot.stopping = True


def release_slots(runtimes: Iterable[NodeRuntime]) -> None:
    """The workers ended: drop their slots and per-trace state (a run starts afresh)."""
    for rt in runtimes:
        for slot in rt.slots:
            slot.task = None  # the ended task's traceback holds the slot
        rt.slots = ()
        rt.backlogs.clear()
        rt.owners.clear()


async def join_workers(
    tasks: list[asyncio.Task[None]], grace: float, timeout: float | None
) -> tuple[bool, list[asyncio.Task[None]]]:
    """Wait until every (already cancelled) worker task has ended.

    A worker still alive after ``grace`` seconds (a node that swallows cancellation, a
    middleware blocking on ``node_cancelled``) is cancelled again. The wait goes on even
    if the caller is cancelled meanwhile, so a stopped flow leaves no task behind, but
    then for ``grace`` seconds at most; ``timeout`` bounds the whole wait.

    Returns:
        Whether the caller was cancelled (for it to re-raise), and the workers given up on.
    """
    loop = asyncio.get_running_loop()
    give_up = None if timeout is None else loop.time() + timeout
    interrupted = False
    pending = {task for task in tasks if not task.done()}
    if pending:
        # Idle workers finish within one loop step of their cancellation; yielding once
        # usually ends them all, without arming the grace timer below.
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            interrupted = True
            give_up = min(give_up or math.inf, loop.time() + grace)
        pending = {task for task in pending if not task.done()}
    while pending:
        wait = grace if give_up is None else min(grace, give_up - loop.time())
        if wait <= 0:
            break
        try:
            _, pending = await asyncio.wait(pending, timeout=wait)
        except asyncio.CancelledError:
            interrupted = True
            give_up = min(give_up or math.inf, loop.time() + grace)
            pending = {task for task in pending if not task.done()}
        for task in pending:
            task.cancel()
    return interrupted, sorted(pending, key=lambda t: t.get_name()) if pending else []


def absorb_cancel(slot: Slot) -> None:
    """Turn our own trace cancellation of this worker back into a live worker.

    Raises:
        asyncio.CancelledError: ``stop()`` cancelled the worker too; that goes on.
    """
    slot.cancel_for = None
    task = slot.task
    if task is not None:
        task.uncancel()
    if slot.stopping:
        raise asyncio.CancelledError


def defer(rt: NodeRuntime, entry: Entry) -> None:
    """Park an item behind its trace's running item, giving its edge slot back.

    So one trace's backlog never throttles other traces while slots sit idle; the node's
    backlog is bounded instead (``queue_maxsize`` per slot), and so is its memory.
    """
    backlog = rt.backlog_floe
    if backlog.maxsize > 0 and backlog.live < backlog.maxsize:
        floe = entry.floe
        floe.live -= 1
        if floe.putters:
            floe.putters.unpark()
        entry.floe = backlog
        backlog.live += 1


def start_workers(
    rt: NodeRuntime,
    worker: Callable[[NodeRuntime, Slot], Coroutine[Any, Any, None]],
    kernel: KernelPort,
    loop: asyncio.AbstractEventLoop,
) -> list[asyncio.Task[None]]:
    """Start a node's ``max_concurrency`` worker tasks, each with its own slot."""
    slots: list[Slot] = []
    rt.slots = slots
    tasks = []
    for i in range(rt.concurrency):
        # Each slot has its own context, so ``ctx.message`` is per invocation.
        slot = Slot(rt.ctx if i == 0 else wired_context(rt.ports, kernel))
        name = f"penguiflow:{rt.node.name}"
        if rt.concurrency > 1:
            name = f"{name}#{i}"
        slot.task = loop.create_task(worker(rt, slot), name=name)
        slots.append(slot)
        tasks.append(slot.task)
    return tasks
