"""The kernel: a flow's lifecycle, client calls, trace accounting, enqueue and dequeue
paths, and the workers. Everything else lives in a module of its own (see
``docs/architecture.md`` for the map and the path of one message).

Design notes (the why behind the hot path):

* Every edge (``Floe``) has its own bound, but the entries of all edges that end at one
  consumer sit in that consumer's single FIFO inbox. A worker therefore waits on one
  future, never races several queues, and FIFO order per edge is kept.
* Each node has ``max_concurrency`` long-lived worker tasks (one by default). A node
  function runs *inline* in its worker: no task per message. Cancelling one trace's
  in-flight invocation cancels the worker task and then ``uncancel()``s it, so the
  worker survives and picks up the next item.
* Every queued entry of a tracked item is also indexed by its trace, so ``cancel(t)``
  costs O(items of t), not O(queue length): purged entries are skipped in place.
* Every wait parks a plain future in a ``ParkingLot`` and awaits it inline, and
  ``FlowEvent``s are built only when ``Hooks.observed(level)`` says someone listens.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from ._chunks import StreamCounters
from ._context import Ending, KernelPort, wired_context
from ._controller import PLAIN, SPECIAL, Router, is_special
from ._copy import with_payload
from ._edges import (
    OPEN_SEA,
    ROOKERY,
    Entry,
    Floe,
    Inbox,
    Owner,
    Trace,
    purge,
    reset_stopped,
    wake_stopped,
)
from ._events import DEBUG, INFO, Hooks, enabled, known, logger
from ._graph import FlowGraph
from ._parking import ParkingLot
from ._playbook import SubflowFactory, run_playbook
from ._request import RequestAPI
from ._retries import Retries
from ._slots import (
    NodeRuntime,
    Slot,
    absorb_cancel,
    ahead_of,
    defer,
    interrupt,
    join_workers,
    mark_stopping,
    release_slots,
    start_workers,
)
from ._subscription import Outcome, SubscriptionEnd, View, finish, mark_seen, route
from ._trace import trace_id_of
from ._validation import AdapterSource, Validator, build_validators
from ._wiring import Adjacency, Plan, Wiring, WiringMode, check_wiring, collect, plan, run_checks
from .clock import wall_time
from .errors import (
    FlowBuildError,
    FlowNotRunningError,
    FlowRuntimeError,
    FlowStoppedError,
    TraceCancelled,
)
from .node import Node
from .types import Message, StreamChunk

if TYPE_CHECKING:
    from .middlewares import Middleware

__all__ = ["DEFAULT_QUEUE_MAXSIZE", "PenguiFlow", "PlaybookFactory", "call_playbook"]

DEFAULT_QUEUE_MAXSIZE: Final = 64
STOP_GRACE_S: Final = 1.0
"""How long ``stop()`` lets a cancelled worker clean up before cancelling it again."""


class PenguiFlow(FlowGraph, RequestAPI):
    """A wired graph of nodes with bounded edges, run on the caller's event loop.

    Build it with :func:`create`; construction needs no event loop and starts nothing.
    Graph errors are raised here, naming the node at fault.

    Args:
        *adjacencies: ``node.to(successor, ...)`` entries.
        queue_maxsize: Capacity of every edge; ``<= 0`` means unbounded.
        allow_cycles: Skip the cycle check entirely.
        middlewares: Async callables receiving every ``FlowEvent``.
        emit_errors_to_rookery: When a node gives up on an item, deliver a
            :class:`~penguiflow.errors.FlowError` to Rookery instead of dropping it
            silently (``False``, the default, keeps the behaviour of earlier versions).
        retry_budget: Retries one request may spend across all its nodes; once spent,
            failures are final and the outcome's ``FlowError.code`` is ``"RETRY_BUDGET"``.
    """

    def __init__(
        self,
        *adjacencies: Adjacency,
        queue_maxsize: int = DEFAULT_QUEUE_MAXSIZE,
        allow_cycles: bool = False,
        middlewares: Sequence[Middleware] | None = None,
        emit_errors_to_rookery: bool = False,
        retry_budget: int | None = None,
    ) -> None:
        self._retry_budget = retry_budget
        if isinstance(queue_maxsize, bool) or not isinstance(queue_maxsize, int):
            raise FlowBuildError(f"queue_maxsize must be an int, got {queue_maxsize!r}")
        self._queue_maxsize = queue_maxsize
        self._errors_to_rookery = emit_errors_to_rookery
        self._traces: dict[str, Trace] = {}
        self._hooks = Hooks(tuple(middlewares or ()), queue_maxsize, self._traces)
        nodes, edges = collect(adjacencies)
        shape = plan(nodes, edges, allow_cycles=allow_cycles)
        self._nodes: tuple[Node, ...] = tuple(nodes)
        self._running = False
        self._stopped = False
        self._registry: AdapterSource | None = None
        self._subs: dict[str, View] = {}
        self._streams = StreamCounters()  # nodes' streams: forgotten when the trace ends
        self._client_streams = StreamCounters()  # flow.emit_chunk's: kept while open
        self._tasks: list[asyncio.Task[None]] = []
        self._winding: asyncio.Future[None] | None = None  # while a stop() winds down
        self._generation = 0
        self._build(nodes, shape)
        run_checks(self, self._nodes)

    def _build(self, nodes: list[Node], shape: Plan) -> None:
        wiring = Wiring(nodes, shape, self._queue_maxsize)
        self._port = port = KernelPort(
            flow=self,
            hooks=self._hooks,
            queue_maxsize=self._queue_maxsize,
            streams=self._streams,
            traces=self._traces,
            ops=_KERNEL_OPS,
        )
        self._floes = wiring.floes
        self._opensea = wiring.opensea
        self._rookery = wiring.rookery
        self._rookery_floes = wiring.rookery_floes
        self._endpoint_contexts = {
            OPEN_SEA: wired_context(wiring.opensea, port, self._client_streams),
            ROOKERY: wired_context(wiring.rookery, port),
        }
        # One record per node holds its context and ports; nothing else is keyed by node.
        self._runtimes = [
            NodeRuntime(n, p, wired_context(p, port), self._queue_maxsize)
            for n, p in zip(nodes, wiring.ports, strict=True)
        ]
        self._runtime_of: dict[Owner, NodeRuntime] = {rt.node: rt for rt in self._runtimes}
        self._router = Router(self._hooks, port, self._rookery_floes)
        self._retries = Retries(
            self._hooks, self._router, self._errors_to_rookery, self._subs, self._retry_budget
        )

    # -- lifecycle ----------------------------------------------------------------------

    def run(self, *, registry: AdapterSource | None = None, wiring: WiringMode = "warn") -> None:
        """Start one worker task per node (``max_concurrency`` per node) on the running loop.

        Raises:
            RuntimeError: Already running, no running event loop, or ``registry`` lacks
                nodes that validate. A failed ``run()`` leaves the flow stopped.
            FlowBuildError: ``wiring="strict"`` and an edge's models do not fit (``"warn"``,
                the default, logs it once per edge; ``"off"`` skips the check).
        """
        if self._running or self._winding is not None:
            raise FlowRuntimeError("PenguiFlow already running (or its stop() has not returned)")
        loop = asyncio.get_running_loop()
        if registry is None and wiring in ("strict", "warn", "off"):  # nothing to check
            validators: Sequence[Validator | None] = [None] * len(self._runtimes)
        else:
            specs = [(rt.node.name, rt.policy.validate) for rt in self._runtimes]
            validators = build_validators(specs, registry)
            check_wiring(self._floes, registry, wiring)
        self._registry = registry
        port, worker, tasks = self._port, self._worker, self._tasks
        for rt, validator in zip(self._runtimes, validators, strict=True):
            rt.validator = validator
            tasks += start_workers(rt, worker, port, loop)
        self._running = self._port.running = True
        self._stopped = False

    async def stop(self, *, timeout: float | None = None) -> None:
        """Cancel every worker and wait for it; the flow can ``run()`` again afterwards.

        Queued items stay on their edges (and their trace accounting stays consistent);
        in-flight invocations see ``CancelledError``; request handles and ``subscribe``
        views end with ``"stopped"``; callers blocked in ``emit``, ``fetch`` or
        ``emit_chunk`` get ``FlowStoppedError``, as does emitting until the next ``run()``.
        A second ``stop()`` waits for the first. It may be called from inside a node or a
        middleware: the calling worker ends once it is back in the runtime.

        Args:
            timeout: Give up after this many seconds on workers whose node swallows
                cancellation (each is logged, naming its node) instead of waiting for them.
                ``None`` waits, re-cancelling stubborn workers every second; if ``stop()``
                itself is cancelled, it waits one more second at most.
        """
        if not self._running:
            if self._winding is not None:  # another stop() is winding the flow down
                await asyncio.shield(self._winding)
            return
        self._winding = winding = asyncio.get_running_loop().create_future()
        self._running = self._port.running = False
        self._stopped = True
        self._generation += 1  # a worker that swallowed its cancellation exits at once
        if self._subs:
            for sub in list(self._subs.values()):
                finish(sub, "stopped")
        tasks, self._tasks = self._tasks, []
        me = asyncio.current_task()
        inside = me in tasks
        if inside:
            tasks = [task for task in tasks if task is not me]  # never wait for ourselves
        mark_stopping(self._runtimes)
        for task in tasks:
            task.cancel()
        # A request that gets "the flow stopped" as its outcome leaves nothing behind;
        # other queued items stay on their edges for the next run().
        if self._subs:
            for tid in list(self._subs):
                trace = self._traces.get(tid)
                if trace is not None and not trace.cancelled:
                    self._abort(trace, running=False)
        wake_stopped(self._rookery, self._opensea, self._traces.values())
        interrupted = False
        try:
            interrupted, stuck = await join_workers(tasks, STOP_GRACE_S, timeout)
            for task in stuck:
                self._tasks.append(task)  # still alive: inspect().workers keeps counting it
                logger.error(
                    "stop_timeout: worker %s ignores cancellation; stop() gave up on it",
                    task.get_name(),
                    extra={"node_name": task.get_name().removeprefix("penguiflow:")},
                )
        finally:
            release_slots(self._runtimes)
            reset_stopped(self._traces.values())
            # and whoever parked while the workers wound down:
            wake_stopped(self._rookery, self._opensea, self._traces.values())
            self._hooks.call(self._hooks.stop)
            self._port.unbind()  # a stopped flow nobody holds is freed at once
            self._winding = None
            winding.set_result(None)
        if inside and me is not None:
            # stop() returns to the node or middleware that called it; its worker is
            # cancelled at its next await, and ends.
            asyncio.get_running_loop().call_soon(me.cancel)
        if interrupted:
            raise asyncio.CancelledError

    # -- talking to the flow from outside -----------------------------------------------

    def _ingress(self, to: Node | Sequence[Node] | None) -> list[Floe]:
        if self._stopped:
            raise FlowStoppedError("PenguiFlow was stopped; call run() before emitting again")
        opensea = self._opensea
        if not opensea.outs:
            raise FlowRuntimeError(
                "flow has no ingress node (every node has a predecessor); nothing can be emitted"
            )
        return opensea.outs if to is None else opensea.targets(to)

    async def emit(self, msg: Any, to: Node | Sequence[Node] | None = None) -> None:
        """Enqueue ``msg`` on the ingress edges (all, or those of ``to``); waits when full.

        Raises:
            UnknownNodeError: A target is not an ingress node (a ``KeyError``).
            FlowStoppedError: The flow was stopped and not run again.
        """
        floes = self._opensea.outs if to is None and not self._stopped else None
        if not floes:
            floes = self._ingress(to)  # the edges of ``to``, or the error to raise
        plain = type(msg) is Message and type(msg.payload) in PLAIN  # never a WM re-emit
        if not floes or (not plain and self._router.suppressed(msg, self._traces)):
            return
        tid = msg.trace_id if type(msg) is Message else trace_id_of(msg)
        trace = self._trace(tid) if tid is not None else None
        i = self._offer(floes, msg, trace, 0)
        n = len(floes)
        while i < n:  # backpressure: the same loop as _send_rest, one frame less
            floe = self._claim(floes[i], trace, msg)
            while 0 < floe.maxsize <= floe.live:
                fut = floe.putters.park()
                try:
                    await fut
                    if self._stopped:  # woken by stop()'s own purge: nothing enters now
                        raise FlowStoppedError("PenguiFlow was stopped; this message was not sent")
                except BaseException:
                    self._abandon(floe, fut, trace)
                    raise
            self._enqueue(floe, msg, trace)
            i = self._offer(floes, msg, trace, i + 1)

    def emit_nowait(self, msg: Any, to: Node | Sequence[Node] | None = None) -> None:
        """Like ``emit`` but raise ``asyncio.QueueFull`` (enqueuing nothing) when full."""
        floes = self._ingress(to)
        if self._router.suppressed(msg, self._traces):
            return
        self._send_nowait(floes, msg)

    async def emit_chunk(
        self,
        *,
        parent: Message,
        text: str,
        stream_id: str | None = None,
        seq: int | None = None,
        done: bool = False,
        meta: Mapping[str, Any] | None = None,
        to: Node | Sequence[Node] | None = None,
    ) -> StreamChunk:
        """``Context.emit_chunk`` from outside the flow, onto the ingress edges."""
        self._ingress(to)
        return await self._endpoint_contexts[OPEN_SEA].emit_chunk(
            parent=parent, text=text, stream_id=stream_id, seq=seq, done=done, meta=meta, to=to
        )

    async def fetch(self, from_: Node | Sequence[Node] | None = None) -> Any:
        """Return the next item that reached Rookery, exactly as it was delivered.

        Completes the item's trace accounting. With several egress edges, returns
        whichever item is available first (FIFO within one edge).
        """
        rookery = self._rookery
        if from_ is None:
            items = rookery.inbox.items
            while items:  # fast path: an item is waiting
                entry = items[0]
                trace = entry.trace
                if entry.dead or (trace is not None and trace.cancelled):
                    break
                items.popleft()
                item = entry.item
                floe = entry.floe
                floe.live -= 1
                if floe.putters:
                    floe.putters.unpark()
                if trace is not None:
                    entry.unlink()
                    self._release(trace)
                return item
        return await self._fetch(rookery.inbox, rookery.sources(from_), None)

    fetch_any = fetch
    """Same as ``fetch``: whichever Rookery edge has an item first."""

    async def cancel(self, trace_id: str) -> bool:
        """Cancel one trace: drop its queued items, abort its in-flight invocations.

        Idempotent. Other traces are untouched. Costs O(items of the trace), not
        O(total queue length).

        Returns:
            True if the trace had work (pending or in flight), else False.

        Raises:
            FlowNotRunningError: The flow is not running.
        """
        if not self._running:
            raise FlowNotRunningError("PenguiFlow is not running")
        hooks = self._hooks
        trace = self._traces.get(trace_id)
        if trace is None or (trace.pending <= 0 and trace.inflight <= 0):
            # Nothing of the trace runs or waits in core, but components may still hold
            # state for it (a half-filled join bucket): let them drop it.
            hooks.call(hooks.cancel, trace_id)
            return False
        if trace.cancelled:
            return True
        # The cancel takes full effect before anything is awaited, so a caller that is
        # itself cancelled meanwhile cannot leave the trace half-cancelled.
        pending = trace.pending
        finished = self._abort(trace)
        if hooks.observed(INFO):
            await hooks.emit(
                "trace_cancel_start",
                ports=self._opensea,
                level=INFO,
                trace=trace,
                trace_id=trace_id,
                extra={"pending": pending},
            )
            if finished:
                await self._hooks.cancel_finished(self._rookery, trace_id)
        return True

    def _abort(self, trace: Trace, *, running: bool = True) -> bool:
        """Cancel ``trace`` at once; True when nothing of it is left (it just ended).

        ``running=False`` (from ``stop()``, which cancels every worker itself) leaves the
        workers alone, so a ``stop()`` called from a node is not interrupted.
        """
        trace_id = trace.trace_id
        trace.cancelled = True
        self._hooks.call(self._hooks.cancel, trace_id)
        purged = purge(trace)
        self._streams.forget(trace_id)
        self._client_streams.forget(trace_id)
        if running:
            interrupt(self._runtimes, trace)
        if trace.waiters is not None:
            trace.waiters.unpark_all()
            trace.waiters = None
        sub = self._subs.get(trace_id)
        if sub is not None:
            finish(sub, "cancelled")
        if not purged:
            return False
        trace.pending -= purged - 1
        return self._release(trace)

    # -- accounting ---------------------------------------------------------------------

    def _trace(self, trace_id: str) -> Trace:
        trace = self._traces.get(trace_id)
        if trace is None:
            trace = self._traces[trace_id] = Trace(trace_id)
            if self._subs:
                sub = self._subs.get(trace_id)
                if sub is not None:
                    mark_seen(sub)
        return trace

    def _release(self, trace: Trace) -> bool:
        """Finish one item of ``trace``; True when a cancelled trace just ended."""
        pending = trace.pending = trace.pending - 1
        if trace.waiters is not None:  # a chunk producer waits for room: let it look again
            trace.waiters.unpark_all()
            trace.waiters = None
        if pending > 0:
            return False
        tid = trace.trace_id
        if self._traces.get(tid) is trace:
            del self._traces[tid]
        if trace.ended is not None:
            trace.ended.unpark_all()
        if self._streams.by_trace:
            self._streams.forget(tid)  # a stream cut short (no ``done`` chunk) ends here
        hooks = self._hooks
        if hooks.done:
            hooks.call(hooks.done, tid)
        if self._subs:
            sub = self._subs.get(tid)
            if sub is not None:
                reason: SubscriptionEnd = "cancelled" if trace.cancelled else "drained"
                finish(sub, reason, True, trace.last_node)  # if seen; where it stopped
        return trace.cancelled

    async def _expire(self, owner: Owner, message: Message) -> None:
        rt = self._runtime_of.get(owner)
        trace = self._traces.get(message.trace_id)
        if rt is not None:
            await self._router.deadline_skip(rt, message, trace)

    async def _wait_trace_capacity(self, trace_id: str, owner: Owner) -> None:
        maxsize = self._queue_maxsize
        while True:
            if self._stopped:
                raise FlowStoppedError("the flow stopped; this chunk was not sent")
            trace = self._traces.get(trace_id)
            if trace is None or trace.pending - 1 < maxsize or not self._running:
                return
            if ahead_of(owner, trace, self._runtimes, self._runtime_of) < maxsize:
                return
            if trace.cancelled:
                raise TraceCancelled(trace_id)
            if trace.waiters is None:
                trace.waiters = ParkingLot()
            await trace.waiters.wait()

    # -- enqueue ------------------------------------------------------------------------

    def _enqueue(self, floe: Floe, item: Any, trace: Trace | None) -> None:
        """Append to ``floe`` (which has room); the item is already counted for its trace."""
        entry = Entry(item, trace, floe)
        floe.live += 1
        inbox = floe.inbox
        inbox.items.append(entry)
        if inbox.waiters:
            inbox.waiters.unpark()

    def _redirect(self, floe: Floe, trace: Trace | None) -> Floe | Outcome:
        """A Rookery edge of a trace with a view: the view's edge, or the ``Outcome``."""
        if trace is not None:
            view = self._subs.get(trace.trace_id)
            if view is not None:
                return route(view, floe)
        return floe

    def _offer(self, floes: Sequence[Floe], item: Any, trace: Trace | None, i: int) -> int:
        """Enqueue ``item`` on ``floes[i:]`` without waiting; return where a full edge stopped it.

        Enqueuing onto an edge with room never suspends the caller, so a producer that
        never meets a full edge never yields to the loop.
        """
        subs = self._subs
        n = len(floes)
        while i < n:
            floe = floes[i]
            if floe.to_rookery and trace is not None:
                if trace.cancelled:  # a late item (a node's cleanup): nobody may read it
                    i += 1
                    continue
                view = subs.get(trace.trace_id) if subs else None  # ``_redirect``, inline
                if view is not None:
                    target = route(view, floe)
                    if isinstance(target, Outcome):  # taken as it arrives: nothing to queue
                        target.take(item)
                        i += 1
                        continue
                    floe = target
            if floe.maxsize > 0 and floe.live >= floe.maxsize:
                return i
            entry = Entry(item, trace, floe)
            floe.live += 1
            inbox = floe.inbox
            inbox.items.append(entry)
            if trace is not None:
                trace.pending += 1
            if inbox.waiters:
                inbox.waiters.unpark()
            i += 1
        return n

    async def _send_rest(
        self, floes: Sequence[Floe], item: Any, trace: Trace | None, i: int
    ) -> None:
        """Finish a send that ``_offer`` stopped at the full edge ``floes[i]``: wait for room.

        A blocked put already counts for its trace, so the trace is not seen as finished
        while its item waits; if the wait is cancelled, the count is given back.
        ``PenguiFlow.emit`` inlines this loop so a client parked on backpressure holds one
        coroutine frame, not two.
        """
        n = len(floes)
        while i < n:
            floe: Floe | None = self._claim(floes[i], trace, item)
            # A node never waits for room on its own loop edge: the item it hands on there
            # replaces the one it is handling, so a controller loop cannot block itself.
            while floe is not None and 0 < floe.maxsize <= floe.live and not floe.loop:
                fut = floe.putters.park()
                try:
                    await fut
                except BaseException:
                    self._abandon(floe, fut, trace)
                    raise
                if floe.to_rookery:
                    floe = self._reroute(floes[i], floe, item, trace)
            if floe is not None:
                self._enqueue(floe, item, trace)
            i = self._offer(floes, item, trace, i + 1)

    def _claim(self, floe: Floe, trace: Trace | None, item: Any) -> Floe:
        """Count a put that may block, and resolve a subscription's Rookery edge.

        ``_offer`` stopped at this edge, so it is full: an ``Outcome`` never is.
        """
        if self._subs and floe.to_rookery:
            target = self._redirect(floe, trace)
            floe = floe if isinstance(target, Outcome) else target
        if trace is not None:
            trace.pending += 1
        return floe

    def _reroute(self, shared: Floe, floe: Floe, item: Any, trace: Trace | None) -> Floe | None:
        """Where a put parked on a Rookery edge goes now: nowhere if its trace was cancelled
        meanwhile, on if its view ended or closed, None if an ``Outcome`` took it."""
        if trace is not None and trace.cancelled:
            target = None
        else:
            target = self._redirect(shared, trace)
            if target is floe or not isinstance(target, Outcome):
                return target
            target.take(item)
        if trace is not None and self._release(trace):
            self._hooks.schedule_cancel_finished(self._rookery, trace.trace_id)
        return None

    def _abandon(self, floe: Floe, fut: asyncio.Future[None], trace: Trace | None) -> None:
        """A blocked put was interrupted: pass on its wake-up, give back its count."""
        floe.putters.withdraw(fut)
        if trace is not None and self._release(trace):
            self._hooks.schedule_cancel_finished(self._rookery, trace.trace_id)

    def _send(self, floes: Sequence[Floe], item: Any) -> Awaitable[None] | None:
        # Sync, returning what to await only when an edge is full: no coroutine per emit.
        if not floes:
            return None  # ``to=[]``: nothing is sent, and no trace is started for nothing
        tid = item.trace_id if type(item) is Message else trace_id_of(item)
        trace = self._trace(tid) if tid is not None else None
        i = self._offer(floes, item, trace, 0)
        return self._send_rest(floes, item, trace, i) if i < len(floes) else None

    def _send_nowait(self, floes: Sequence[Floe], item: Any) -> None:
        if not floes:
            return
        tid = trace_id_of(item)
        trace = self._trace(tid) if tid is not None else None
        taken: list[Outcome] = []  # they take the item once nothing can fail any more
        if self._subs:
            kept: list[Floe] = []
            for floe in floes:
                target = self._redirect(floe, trace) if floe.to_rookery else floe
                if isinstance(target, Outcome):
                    taken.append(target)
                else:
                    kept.append(target)
            floes = kept
        need: dict[Floe, int] = {}
        for floe in floes:
            need[floe] = need.get(floe, 0) + 1
        for floe, count in need.items():
            if floe.maxsize > 0 and floe.live + count > floe.maxsize:
                if trace is not None and trace.pending == 0:
                    self._traces.pop(trace.trace_id, None)
                raise asyncio.QueueFull
        for outcome in taken:
            outcome.take(item)
        for floe in floes:
            if trace is not None:
                trace.pending += 1
            self._enqueue(floe, item, trace)

    # -- dequeue ------------------------------------------------------------------------

    def _take(self, inbox: Inbox, allowed: set[Floe] | None) -> Entry | None:
        items = inbox.items
        if allowed is None:
            while items:
                entry = items.popleft()
                if not entry.dead:
                    return entry
                inbox.dead -= 1
            return None
        for i, entry in enumerate(items):
            if not entry.dead and entry.floe in allowed:
                del items[i]
                return entry
        return None

    def _consume(self, entry: Entry, *, schedule_events: bool = False) -> Any:
        """Take ``entry`` off its edge and complete its accounting (a fetch)."""
        floe = entry.floe
        floe.live -= 1
        if floe.putters:
            floe.putters.unpark()
        trace = entry.trace
        if trace is not None:
            entry.unlink()
            if self._release(trace) and schedule_events:
                self._hooks.schedule_cancel_finished(self._rookery, trace.trace_id)
        return entry.item

    async def _fetch(self, inbox: Inbox, allowed: set[Floe] | None, sub: Ending | None) -> Any:
        while True:
            entry = self._take(inbox, allowed)
            if entry is not None:
                trace = entry.trace
                if trace is not None and trace.cancelled:
                    self._consume(entry, schedule_events=True)
                    continue
                item = self._consume(entry)
                if trace is not None and trace.pending == 0 and trace.cancelled:
                    await self._hooks.cancel_finished(self._rookery, trace.trace_id)
                return item
            if sub is not None and sub.done is not None:
                raise StopAsyncIteration
            if self._stopped:
                raise FlowStoppedError("the flow was stopped; call run() before fetching again")
            waiters = inbox.waiters
            fut = asyncio.get_running_loop().create_future()  # ``waiters.park()``, inline
            waiters.append(fut)
            try:
                await fut
            except BaseException:
                waiters.withdraw(fut)
                raise

    # -- workers ------------------------------------------------------------------------

    async def _worker(self, rt: NodeRuntime, slot: Slot) -> None:
        inbox = rt.inbox
        items = inbox.items
        waiters = inbox.waiters
        serial = rt.concurrency == 1
        loop = asyncio.get_running_loop()
        generation = self._generation
        entry: Entry | None = None
        try:
            while True:
                if self._generation != generation:
                    raise asyncio.CancelledError  # stopped, but our cancellation was eaten
                if not items:
                    entry = None  # an idle worker keeps nothing of the last item alive
                    # ``waiters.park()`` inlined: an idle worker parks once per item.
                    fut = loop.create_future()
                    waiters.append(fut)
                    try:
                        await fut
                    except BaseException:
                        waiters.withdraw(fut)
                        raise
                    continue
                entry = items.popleft()
                if entry.dead:
                    inbox.dead -= 1
                    continue
                if serial or entry.trace is None:
                    try:  # inline, not a helper coroutine: this is every hop
                        await self._handle(rt, slot, entry, loop)
                    except BaseException as exc:
                        if not self._contain(rt, slot, exc):
                            raise
                    continue
                # max_concurrency > 1: items of one trace run one after another, in order.
                trace = entry.trace
                backlog = rt.backlogs.get(trace)
                if backlog is not None:
                    defer(rt, entry)
                    backlog.append(entry)
                    continue
                backlog = rt.backlogs[trace] = deque()
                rt.owners[trace] = slot
                try:
                    while True:
                        try:
                            await self._handle(rt, slot, entry, loop)
                        except BaseException as exc:
                            if not self._contain(rt, slot, exc):
                                raise
                        while backlog and backlog[0].dead:
                            backlog.popleft()
                        if not backlog:
                            break
                        entry = backlog.popleft()
                finally:
                    rt.backlogs.pop(trace, None)
                    rt.owners.pop(trace, None)
                    if backlog:  # interrupted (stop): the trace's next items go back in line
                        items.extendleft(reversed(backlog))
        except asyncio.CancelledError:
            hooks = self._hooks
            if hooks.observed(DEBUG):
                await hooks.emit("node_cancelled", ports=rt.ports, level=DEBUG)
            raise

    def _contain(self, rt: NodeRuntime, slot: Slot, exc: BaseException) -> bool:
        """Log what escaped handling an item and go on; False: it must end the worker."""
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            return False
        if isinstance(exc, asyncio.CancelledError) and slot.stopping:
            return False  # stop(), or whoever owns the worker task: the worker ends
        logger.error("worker_error", exc_info=exc, extra={"node_name": rt.node.name})
        return True

    async def _handle(
        self, rt: NodeRuntime, slot: Slot, entry: Entry, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Handle one item: deadline, cancel check, attempts, routing, accounting.

        This is the per-hop hot path: one coroutine frame between the worker and the node
        function, routing done inline, events and timers only when asked for.
        """
        floe = entry.floe
        floe.live -= 1
        if floe.putters:
            floe.putters.unpark()
        item = entry.item
        trace = entry.trace
        tid: str | None = None
        if trace is not None:
            entry.unlink()
            tid = trace.trace_id
        slot.busy = True
        hooks = self._hooks
        ctx = slot.ctx
        ctx.message = item
        attempt = 0  # ``ctx.attempt`` is 1 unless a retry raised it: reset below if so
        try:
            if type(item) is Message or isinstance(item, Message):
                deadline: float | None = item.deadline_s
                if deadline is not None and wall_time() > deadline:
                    await self._router.deadline_answer(rt, slot, item, trace)
                    return
            else:
                deadline = None
            if trace is not None and trace.cancelled:
                if hooks.observed(INFO):
                    await hooks.emit(
                        "trace_cancel_drop", ports=rt.ports, level=INFO, trace=trace, trace_id=tid
                    )
                return
            func = rt.func
            validator = rt.validator
            timeout = rt.timeout
            failure: BaseException | None
            while True:
                # INFO disabled implies DEBUG disabled: one check covers node_start/success.
                watched: object = hooks.middlewares or known.get(INFO)
                if watched is None:
                    watched = enabled(INFO)
                if watched and (hooks.middlewares or enabled(DEBUG)):
                    await hooks.emit(
                        "node_start",
                        ports=rt.ports,
                        level=DEBUG,
                        trace=trace,
                        trace_id=tid,
                        attempt=attempt,
                        latency_ms=0.0,
                    )
                started = loop.time()
                slot.current = trace
                if trace is not None:
                    trace.inflight += 1
                limit = timeout
                if deadline is not None:  # an attempt never runs past the message deadline
                    scope: asyncio.Timeout | None = None  # read only when there is a deadline
                    left = deadline - wall_time()
                    if limit is None or left < limit:
                        limit = left
                try:
                    if trace is not None and trace.cancelled:
                        raise TraceCancelled(tid)
                    arg = item if validator is None else validator.prepare(item)
                    if limit is None:
                        result = await func(arg, ctx)
                    else:
                        async with (scope := asyncio.timeout(limit)):
                            result = await func(arg, ctx)
                    if validator is not None:
                        result = validator.finish(item, result)
                    if slot.cancel_for is not None or slot.stopping:
                        raise asyncio.CancelledError  # swallowed our cancel, or stop() came
                    if result is not None:
                        if type(result) is Message:
                            rtid: str | None = result.trace_id
                            kind = type(result.payload)
                            special = kind not in PLAIN
                            if special and kind not in SPECIAL:
                                special = is_special(result.payload)
                        else:
                            rtid = trace_id_of(result)
                            special = isinstance(result, Message) and is_special(result.payload)
                            if (
                                not special
                                and rt.self_floe is not None
                                and is_special(result)
                                and isinstance(item, Message)
                            ):
                                # A controller's bare WM/FinalAnswer (no registry to re-wrap
                                # it) still belongs to the incoming envelope and its trace.
                                result = with_payload(item, result)
                                rtid, special = result.trace_id, True
                        if rtid is None:
                            # A bare result still belongs to the request it came from:
                            # its trace follows it (cancel, accounting, the handle).
                            rtrace = trace
                        elif trace is not None and rtid == tid:
                            rtrace = trace
                        else:
                            rtrace = self._trace(rtid)
                        if not special or not await self._router.special(rt, item, result, rtrace):
                            outs = rt.outs
                            i = self._offer(outs, result, rtrace, 0)
                            if i < len(outs):
                                await self._send_rest(outs, result, rtrace, i)
                    elif trace is not None:
                        trace.last_node = rt.node.name  # ends here unless more follows
                except TraceCancelled as exc:
                    # Only our own trace's cancel ends the item quietly; another's (a request
                    # the node made elsewhere, cancelled there) is a node failure.
                    failure = None if trace is not None and trace.cancelled else exc
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:
                    if slot.cancel_for is not None:
                        # Our own trace cancel, however the node reacted to it.
                        absorb_cancel(slot)
                        failure = None
                    elif slot.stopping:
                        # stop() or the worker's owner: never eaten, never retried.
                        if isinstance(exc, asyncio.CancelledError):
                            raise
                        raise asyncio.CancelledError from exc
                    elif deadline is not None and limit != timeout and scope and scope.expired():
                        # Cut short by the message deadline, not by the node's timeout.
                        slot.current = None
                        if trace is not None:
                            trace.inflight -= 1
                        latency = (loop.time() - started) * 1000.0
                        await self._router.deadline_answer(rt, slot, item, trace, latency)
                        return
                    elif isinstance(exc, Exception | asyncio.CancelledError):
                        # A CancelledError nobody asked for (an awaited future cancelled
                        # elsewhere) is a failure of the node, retried like any other.
                        failure = exc
                    else:
                        # Other BaseExceptions are never retried, but they do not kill
                        # the worker either: the item fails at once.
                        latency = (loop.time() - started) * 1000.0
                        await self._retries.give_up(rt, trace, tid, attempt, latency, exc)
                        return
                else:
                    slot.current = None
                    if trace is not None:
                        trace.inflight -= 1
                    if watched or hooks.middlewares:
                        await hooks.emit(
                            "node_success",
                            ports=rt.ports,
                            level=INFO,
                            trace=trace,
                            trace_id=tid,
                            attempt=attempt,
                            latency_ms=(loop.time() - started) * 1000.0,
                        )
                    return
                finally:
                    if slot.current is not None:
                        slot.current = None
                        if trace is not None:
                            trace.inflight -= 1
                if failure is None:
                    if hooks.observed(INFO):
                        await hooks.emit(
                            "node_trace_cancelled",
                            ports=rt.ports,
                            level=INFO,
                            trace=trace,
                            trace_id=tid,
                        )
                    return
                latency = (loop.time() - started) * 1000.0
                attempt = await self._retries.failed(
                    rt, slot, trace, tid, attempt, failure, latency, item, deadline
                )
                if attempt < 0:
                    return
                ctx.attempt = attempt + 1
        finally:
            ctx.message = None
            if attempt:
                ctx.attempt = 1
            slot.busy = False
            if trace is not None and self._release(trace):
                await self._hooks.cancel_finished(self._rookery, trace.trace_id)

    async def _play(self, playbook: SubflowFactory, parent_msg: Any, timeout: float | None) -> Any:
        trace_id = trace_id_of(parent_msg)
        if trace_id is not None:
            trace = self._traces.get(trace_id)
            if trace is not None and trace.cancelled:
                raise TraceCancelled(trace_id)
        return await run_playbook(playbook, parent_msg, timeout, on_cancel=self.on_trace_cancel)


# A flow's ``KernelPort`` binds each operation ``op`` to ``PenguiFlow._op`` on first use;
# these two adapt a kernel method instead.
_KERNEL_OPS: Final[Mapping[str, Callable[..., Any]]] = {
    "consume": lambda flow, entry: flow._consume(entry, schedule_events=True),
    "cancel_ended": lambda flow, trace_id: flow._hooks.schedule_cancel_finished(
        flow._rookery, trace_id
    ),
}

PlaybookFactory: TypeAlias = Callable[[], "tuple[PenguiFlow, AdapterSource | None]"]
"""A zero-argument callable returning ``(flow, registry)``, called once per playbook call."""


async def call_playbook(
    playbook: PlaybookFactory,
    parent_msg: Any,
    timeout: float | None = None,
    *,
    runtime: PenguiFlow | None = None,
) -> Any:
    """Run a fresh subflow for ``parent_msg`` and return its first Rookery payload.

    The subflow sees the very same message (trace id, headers, meta, deadline). When
    ``runtime`` is given, cancelling the trace there cancels it in the subflow too. The
    subflow is always stopped (shielded) before this returns or raises.

    Raises:
        TraceCancelled: The parent trace is (or becomes) cancelled.
        TimeoutError: No result within ``timeout`` seconds.
    """
    if runtime is not None:
        return await runtime._play(playbook, parent_msg, timeout)
    return await run_playbook(playbook, parent_msg, timeout)
