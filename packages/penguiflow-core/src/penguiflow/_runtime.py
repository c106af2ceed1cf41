"""The runtime kernel: edges, workers, trace accounting, cancellation, events.

Design notes (the why behind the hot path):

* Every edge (``Floe``) has its own bound, but the entries of all edges that end at one
  consumer sit in that consumer's single FIFO inbox (contract §5.7 allows this). A worker
  therefore waits on one future, never races several queues, and FIFO order per edge is
  kept.
* Each node has ``max_concurrency`` long-lived worker tasks (one by default). A node
  function runs *inline* in its worker: no task per message. Cancelling one trace's
  in-flight invocation cancels the worker task and then ``uncancel()``s it, so the
  worker survives and picks up the next item.
* Every queued entry of a tracked item is also indexed by its trace, so ``cancel(t)``
  costs O(items of t), never O(total queue length): purged entries are marked dead in
  place and skipped by consumers.
* ``FlowEvent``s are built only when a middleware is attached or the ``penguiflow.core``
  logger is enabled for the event's level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from pydantic import BaseModel

from ._validation import AdapterSource, Validator, copy_with, with_payload
from .clock import wall_time
from .errors import (
    CycleError,
    FlowBuildError,
    FlowError,
    FlowNotRunningError,
    FlowRuntimeError,
    FlowStoppedError,
    TraceCancelled,
)
from .inspect import EdgeSnapshot, FlowSnapshot, NodeSnapshot, TraceSnapshot
from .metrics import _NO_EXTRA, FlowEvent
from .middlewares import Middleware
from .node import Node
from .types import WM, FinalAnswer, Message, StreamChunk

__all__ = [
    "BUDGET_EXCEEDED_TEXT",
    "DEADLINE_EXCEEDED_TEXT",
    "DEFAULT_QUEUE_MAXSIZE",
    "OPEN_SEA",
    "ROOKERY",
    "TOKEN_BUDGET_EXCEEDED_TEXT",
    "Context",
    "Endpoint",
    "Floe",
    "PenguiFlow",
    "PlaybookFactory",
    "Subscription",
    "call_playbook",
    "create",
]

DEFAULT_QUEUE_MAXSIZE: Final = 64
DEADLINE_EXCEEDED_TEXT: Final = "Deadline exceeded"
BUDGET_EXCEEDED_TEXT: Final = "Hop budget exhausted"
TOKEN_BUDGET_EXCEEDED_TEXT: Final = "Token budget exhausted"
STREAMS_PROBE: Final = "penguiflow.streams"
"""``inspect().resources`` key: open stream counters (no ``done`` chunk yet) per trace."""
STOP_GRACE_S: Final = 1.0
"""How long ``stop()`` lets a cancelled worker clean up before cancelling it again."""

logger = logging.getLogger("penguiflow.core")
# A library logs, the application decides where to: without logging configured, the
# events do not spill onto stderr through logging's last-resort handler.
logging.getLogger("penguiflow").addHandler(logging.NullHandler())
_enabled = logger.isEnabledFor
_DEBUG, _INFO, _WARNING, _ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A synthetic boundary of a flow: ``OPEN_SEA`` (ingress) or ``ROOKERY`` (egress)."""

    name: str


_SPECIAL: Final = (WM, FinalAnswer)  # payloads that change routing (contract §5.5)
# type -> is it a WM or FinalAnswer (sub)class. ``isinstance`` against pydantic models
# goes through a Python-level ``__instancecheck__``; this cache keeps it off the hot path.
_special_types: dict[type, bool] = {}


def _is_special(payload: object) -> bool:
    cls = type(payload)
    special = _special_types.get(cls)
    if special is None:
        special = _special_types[cls] = issubclass(cls, _SPECIAL)
    return special


OPEN_SEA: Final = Endpoint("OpenSea")
ROOKERY: Final = Endpoint("Rookery")

Owner: TypeAlias = Node | Endpoint
PlaybookFactory: TypeAlias = Callable[[], "tuple[PenguiFlow, AdapterSource | None]"]


# --------------------------------------------------------------------------- trace ids


_TID_NONE, _TID_FIELD, _TID_GETATTR = 0, 1, 2
_tid_kind: dict[type, int] = {
    str: _TID_NONE,
    bytes: _TID_NONE,
    int: _TID_NONE,
    float: _TID_NONE,
    bool: _TID_NONE,
    dict: _TID_NONE,
    list: _TID_NONE,
    tuple: _TID_NONE,
    type(None): _TID_NONE,
    Message: _TID_FIELD,
}


def _classify(cls: type) -> int:
    if issubclass(cls, Message):
        return _TID_FIELD
    if issubclass(cls, BaseModel):
        extra = cls.model_config.get("extra")
        if "trace_id" in cls.model_fields:
            return _TID_FIELD
        if extra != "allow" and not hasattr(cls, "trace_id"):
            return _TID_NONE
    return _TID_GETATTR


def trace_id_of(item: object) -> str | None:
    """Return ``getattr(item, "trace_id", None)``, cheaply for known types (§0)."""
    cls = type(item)
    kind = _tid_kind.get(cls)
    if kind is None:
        kind = _tid_kind[cls] = _classify(cls)
    if kind == _TID_NONE:
        return None
    if kind == _TID_FIELD:
        tid = item.__dict__.get("trace_id")
    else:
        tid = getattr(item, "trace_id", None)
    return tid if isinstance(tid, str) else None


# --------------------------------------------------------------------------- state


class _Trace:
    """Per-trace bookkeeping; discarded the moment ``pending`` reaches 0."""

    __slots__ = (
        "cancelled",
        "deadline_fired",
        "head",
        "inflight",
        "pending",
        "trace_id",
        "waiters",
        "wm_hops",
    )

    def __init__(self, trace_id: str) -> None:
        self.trace_id = trace_id
        self.pending = 0
        self.inflight = 0
        self.cancelled = False
        self.deadline_fired = False
        self.head: _Entry | None = None  # queued entries of the trace, a linked list
        self.wm_hops: int | None = None
        self.waiters: list[asyncio.Future[None]] | None = None  # emit_chunk capacity waits


class _Entry:
    """One queued item. ``dead`` entries were purged by a cancel and are skipped.

    Entries of one trace form a doubly linked list (``prev``/``next``) headed at
    ``_Trace.head``, so a cancel finds them in O(items of the trace) and a consumer
    unlinks one in O(1), without a per-trace container.
    """

    __slots__ = ("dead", "floe", "item", "next", "prev", "trace")

    def __init__(self, item: Any, trace: _Trace | None, floe: Floe) -> None:
        self.item = item
        self.trace = trace
        self.floe = floe
        self.dead = False
        self.prev: _Entry | None = None
        self.next: _Entry | None = None
        if trace is not None:
            head = trace.head
            if head is not None:
                head.prev = self
                self.next = head
            trace.head = self

    def unlink(self) -> None:
        """Remove the entry from its trace's list (it is being consumed)."""
        prev, nxt = self.prev, self.next
        if prev is not None:
            prev.next = nxt
        else:
            trace = self.trace
            if trace is not None and trace.head is self:
                trace.head = nxt
        if nxt is not None:
            nxt.prev = prev


def _trace_entries(trace: _Trace) -> list[_Entry]:
    entries = []
    entry = trace.head
    while entry is not None:
        entries.append(entry)
        entry = entry.next
    return entries


class _Inbox:
    """The single FIFO a consumer reads: entries of all its incoming edges."""

    __slots__ = ("floes", "items", "waiters")

    def __init__(self) -> None:
        self.items: deque[_Entry] = deque()
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.floes: list[Floe] = []

    def wake(self) -> None:
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return


class _FloeQueue:
    """Read-only, ``asyncio.Queue``-shaped view of an edge (``Floe.queue``)."""

    __slots__ = ("_floe",)

    def __init__(self, floe: Floe) -> None:
        self._floe = floe

    @property
    def maxsize(self) -> int:
        return self._floe.maxsize

    def qsize(self) -> int:
        return self._floe.live

    def empty(self) -> bool:
        return self._floe.live == 0

    def full(self) -> bool:
        floe = self._floe
        return 0 < floe.maxsize <= floe.live

    def __repr__(self) -> str:
        return f"<FloeQueue {self._floe.live}/{self._floe.maxsize}>"


class Floe:
    """A directed, bounded edge between two owners (nodes or endpoints).

    Args:
        source: Producer side.
        target: Consumer side.
        maxsize: Capacity; ``<= 0`` means unbounded.
    """

    __slots__ = ("inbox", "live", "maxsize", "putters", "source", "target", "to_rookery")

    def __init__(
        self, source: Owner, target: Owner, *, maxsize: int, inbox: _Inbox | None = None
    ) -> None:
        self.source = source
        self.target = target
        self.maxsize = maxsize
        self.live = 0
        self.putters: deque[asyncio.Future[None]] = deque()
        self.inbox = inbox = _Inbox() if inbox is None else inbox
        inbox.floes.append(self)
        self.to_rookery = target is ROOKERY or target == ROOKERY

    @property
    def queue(self) -> _FloeQueue:
        """A read-only view with ``qsize()``, ``maxsize``, ``empty()`` and ``full()``."""
        return _FloeQueue(self)

    def _wake_putter(self) -> None:
        putters = self.putters
        while putters:
            fut = putters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def __repr__(self) -> str:
        return f"Floe({_name(self.source)} -> {_name(self.target)}, {self.live}/{self.maxsize})"


def _name(owner: object) -> str:
    if isinstance(owner, Node | Endpoint):
        return owner.name
    return getattr(owner, "name", None) or repr(owner)


class _Slot:
    """One worker task of a node and what it is handling right now."""

    __slots__ = ("busy", "cancel_for", "current", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.current: _Trace | None = None
        self.cancel_for: _Trace | None = None
        self.busy = False


class _NodeRuntime:
    """Everything a node's workers need, resolved once at ``create``/``run``."""

    __slots__ = (
        "backlogs",
        "concurrency",
        "ctx",
        "func",
        "inbox",
        "node",
        "outs",
        "owners",
        "policy",
        "retries",
        "rookery_floe",
        "self_floe",
        "slots",
        "timeout",
        "validator",
    )

    def __init__(self, node: Node, ctx: Context) -> None:
        self.node = node
        self.ctx = ctx
        self.func = node.func
        self.policy = node.policy
        self.timeout = node.policy.timeout_s
        self.retries = node.policy.max_retries
        self.concurrency = node.policy.max_concurrency
        self.inbox = ctx._inbox
        self.outs = ctx._outs
        self.self_floe = ctx._out_by_target.get(node)
        self.rookery_floe = ctx._out_by_target.get(ROOKERY)
        self.validator: Validator | None = None
        self.slots: list[_Slot] = []
        self.backlogs: dict[_Trace, deque[_Entry]] = {}
        self.owners: dict[_Trace, _Slot] = {}  # max_concurrency > 1: who runs a trace


# --------------------------------------------------------------------------- context


class Context:
    """What a node function receives as ``ctx``: emit, stream, fetch, call playbooks.

    The runtime creates one context per node and one for each of OpenSea and Rookery.
    A context built by hand (``Context(node)``) has no runtime; it is useful to call
    ``Node.invoke`` directly, and its ``emit`` raises.
    """

    __slots__ = (
        "_ident",
        "_inbox",
        "_ins",
        "_out_by_target",
        "_outs",
        "_owner",
        "_runtime",
        "_stream_traces",
        "_streams",
    )

    def __init__(self, owner: Owner, runtime: PenguiFlow | None = None) -> None:
        self._owner = owner
        self._runtime = runtime
        # (node_name, node_id) as events report them; endpoints use their name for both.
        self._ident = (owner.name, owner.node_id if isinstance(owner, Node) else owner.name)
        self._outs: list[Floe] = []
        self._ins: list[Floe] = []
        self._out_by_target: dict[Owner, Floe] = {}
        self._inbox = _Inbox()
        self._streams: dict[str, int] = {}
        self._stream_traces: dict[str, set[str]] = {}

    def __repr__(self) -> str:
        return f"Context({_name(self._owner)})"

    @property
    def owner(self) -> Owner:
        """The node or endpoint this context belongs to."""
        return self._owner

    @property
    def runtime(self) -> PenguiFlow | None:
        """The flow this context belongs to, or ``None`` for a detached context."""
        return self._runtime

    # -- topology ---------------------------------------------------------------

    def outgoing_count(self) -> int:
        """Number of outgoing edges."""
        return len(self._outs)

    def queue_depth_in(self) -> int:
        """Items queued on the incoming edges."""
        return sum(floe.live for floe in self._ins)

    def queue_depth_out(self) -> int:
        """Items queued on the outgoing edges."""
        return sum(floe.live for floe in self._outs)

    def _targets(self, to: Owner | Sequence[Owner] | None) -> list[Floe]:
        if to is None:
            return self._outs
        if isinstance(to, Node | Endpoint):
            to = (to,)
        floes = []
        by_target = self._out_by_target
        for target in to:
            floe = by_target.get(target) if isinstance(target, Node | Endpoint) else None
            if floe is None:
                raise KeyError(f"Unknown target {_name(target)} for {_name(self._owner)}")
            floes.append(floe)
        return floes

    def _sources(self, from_: Owner | Sequence[Owner] | None) -> set[Floe] | None:
        if not self._ins:
            raise RuntimeError("context has no incoming floes to fetch from")
        if from_ is None:
            return None
        if isinstance(from_, Node | Endpoint):
            from_ = (from_,)
        allowed: set[Floe] = set()
        for source in from_:
            match = [floe for floe in self._ins if floe.source == source]
            if not match:
                raise KeyError(f"Unknown target {_name(source)} for {_name(self._owner)}")
            allowed.update(match)
        return allowed

    def _attached(self) -> PenguiFlow:
        runtime = self._runtime
        if runtime is None:
            raise FlowNotRunningError("Context is not attached to a running flow")
        return runtime

    # -- emitting ----------------------------------------------------------------

    async def emit(self, msg: Any, to: Owner | Sequence[Owner] | None = None) -> None:
        """Send ``msg`` on the outgoing edges (all of them, or those towards ``to``).

        Waits while a destination edge is full (backpressure).

        Raises:
            KeyError: A target is not an outgoing neighbour.
            FlowNotRunningError: The context is detached.
        """
        runtime = self._attached()
        await runtime._send(self._targets(to), msg)

    def emit_nowait(self, msg: Any, to: Owner | Sequence[Owner] | None = None) -> None:
        """Like ``emit``, but raise ``asyncio.QueueFull`` instead of waiting.

        Every target is checked before anything is enqueued, so a failed call enqueues
        nothing.
        """
        runtime = self._attached()
        runtime._send_nowait(self._targets(to), msg)

    async def emit_chunk(
        self,
        *,
        parent: Message,
        text: str,
        stream_id: str | None = None,
        seq: int | None = None,
        done: bool = False,
        meta: Mapping[str, Any] | None = None,
        to: Owner | Sequence[Owner] | None = None,
    ) -> StreamChunk:
        """Emit one ``StreamChunk`` of the stream ``stream_id`` (default: the trace id).

        Follow-up chunks wait for per-trace capacity: the producer stays at most about one
        queue's worth ahead of unconsumed output of its trace (contract §5.11).
        """
        runtime = self._attached()
        trace_id = parent.trace_id
        sid = stream_id or trace_id
        streams = self._streams
        prev = streams.get(sid)
        if seq is None:
            seq = 0 if prev is None else prev + 1
        streams[sid] = seq
        sids = self._stream_traces.get(trace_id)
        if sids is None:
            sids = self._stream_traces[trace_id] = set()
        sids.add(sid)
        chunk = StreamChunk(
            stream_id=sid, seq=seq, text=text, done=done, meta=dict(meta) if meta else {}
        )
        envelope = Message(
            payload=chunk,
            headers=parent.headers,
            trace_id=trace_id,
            deadline_s=parent.deadline_s,
            meta=dict(parent.meta),
        )
        if prev is not None and runtime._queue_maxsize > 0:
            await runtime._wait_trace_capacity(trace_id)
        await runtime._send(self._targets(to), envelope)
        if done:
            streams.pop(sid, None)
            sids.discard(sid)
            if not sids:
                self._stream_traces.pop(trace_id, None)
        return chunk

    def _forget_streams(self, trace_id: str) -> None:
        sids = self._stream_traces.pop(trace_id, None)
        if sids:
            for sid in sids:
                self._streams.pop(sid, None)

    # -- fetching ------------------------------------------------------------------

    async def fetch(self, from_: Owner | Sequence[Owner] | None = None) -> Any:
        """Return the next item from the incoming edges (optionally only from ``from_``)."""
        runtime = self._attached()
        return await runtime._fetch(self, self._sources(from_))

    async def fetch_any(self, from_: Owner | Sequence[Owner] | None = None) -> Any:
        """Return whichever incoming item is available first (same as ``fetch``)."""
        return await self.fetch(from_)

    def fetch_nowait(self, from_: Owner | Sequence[Owner] | None = None) -> Any:
        """Return an item available now, or raise ``asyncio.QueueEmpty``."""
        runtime = self._attached()
        entry = runtime._take(self._inbox, self._sources(from_))
        if entry is None:
            raise asyncio.QueueEmpty("no messages available")
        return runtime._consume(entry, schedule_events=True)

    async def report(
        self,
        event_type: str,
        *,
        trace_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        level: int = logging.INFO,
    ) -> None:
        """Emit a custom ``FlowEvent`` from this context (logged, then passed to middlewares).

        For components that drop or release work on their own (a join bucket that timed
        out, a router that found no route). Costs nothing when nobody listens.
        """
        runtime = self._attached()
        if runtime._observed(level):
            await runtime._event(event_type, self, None, trace_id, 0, None, extra, level)

    async def call_playbook(
        self, playbook: PlaybookFactory, parent_msg: Any, *, timeout: float | None = None
    ) -> Any:
        """Run ``playbook`` as a subflow for ``parent_msg``; see :func:`call_playbook`."""
        return await call_playbook(playbook, parent_msg, timeout=timeout, runtime=self._runtime)


# --------------------------------------------------------------------------- subscriptions


class Subscription:
    """Per-trace view of what reaches Rookery; see ``PenguiFlow.subscribe``."""

    __slots__ = ("_ctx", "_floe", "_flow", "_seen", "done", "trace_id")

    def __init__(self, flow: PenguiFlow, trace_id: str) -> None:
        self._flow = flow
        self.trace_id = trace_id
        self._floe = Floe(ROOKERY, ROOKERY, maxsize=flow._queue_maxsize)
        self._ctx = Context(ROOKERY, flow)
        self._ctx._ins.append(self._floe)
        self._ctx._inbox = self._floe.inbox
        self._seen = trace_id in flow._traces
        self.done: Literal["drained", "cancelled", "stopped", "closed"] | None = None
        """Why iteration ended, or ``None`` while it may still produce items."""

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
        async with asyncio.timeout(timeout):
            return await self._flow._fetch(self._ctx, None, self)

    def _finish(self, reason: Literal["drained", "cancelled", "stopped", "closed"]) -> None:
        if self.done is None:
            self.done = reason
        waiters = self._floe.inbox.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    async def aclose(self) -> None:
        """Unsubscribe; items not read yet are dropped and their accounting completed."""
        flow = self._flow
        if flow._subs.get(self.trace_id) is self:
            del flow._subs[self.trace_id]
        self._finish("closed")
        inbox = self._floe.inbox
        while inbox.items:
            entry = inbox.items.popleft()
            if not entry.dead:
                flow._consume(entry, schedule_events=True)
        for fut in self._floe.putters:
            if not fut.done():
                fut.set_result(None)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# --------------------------------------------------------------------------- the flow


Adjacency: TypeAlias = tuple[Node, Iterable[Node]]


class PenguiFlow:
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
            silently (contract D7; ``False`` keeps the contract's behaviour).
    """

    def __init__(
        self,
        *adjacencies: Adjacency,
        queue_maxsize: int = DEFAULT_QUEUE_MAXSIZE,
        allow_cycles: bool = False,
        middlewares: Sequence[Middleware] | None = None,
        emit_errors_to_rookery: bool = False,
    ) -> None:
        if isinstance(queue_maxsize, bool) or not isinstance(queue_maxsize, int):
            raise FlowBuildError(f"queue_maxsize must be an int, got {queue_maxsize!r}")
        self._queue_maxsize = queue_maxsize
        self._errors_to_rookery = emit_errors_to_rookery
        # A tuple, replaced (never mutated) on add/remove: events iterate it without a copy.
        self._mws: tuple[Middleware, ...] = tuple(middlewares or ())
        for mw in self._mws:
            if not callable(mw):
                raise FlowBuildError(f"middleware {mw!r} is not callable")
        nodes, edges = _collect(adjacencies)
        if not allow_cycles:
            _check_cycles(nodes, edges)
        self._nodes: tuple[Node, ...] = tuple(nodes)
        self._build(nodes, edges)
        self._running = False
        self._stopped = False
        self._registry: AdapterSource | None = None
        self._traces: dict[str, _Trace] = {}
        self._subs: dict[str, Subscription] = {}
        self._cancel_hooks: list[Callable[[str], None]] = []
        self._done_hooks: list[Callable[[str], None]] = []
        self._stop_hooks: list[Callable[[], None]] = []
        self._probes: dict[str, Callable[[], Mapping[str, int]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._generation = 0
        self._background: set[asyncio.Task[None]] = set()
        for node in self._nodes:
            # Build-time checks of components (e.g. a union router whose variant has no
            # successor): a side-effect-free callable attached to the node function.
            check = getattr(node.func, "__penguiflow_check__", None)
            if check is not None:
                check(self, node)

    def _build(self, nodes: list[Node], edges: list[tuple[int, int]]) -> None:
        # Index-based: flows are also built per request (playbooks), so this stays cheap.
        maxsize = self._queue_maxsize
        ctxs = [Context(n, self) for n in nodes]
        opensea = Context(OPEN_SEA, self)
        rookery = Context(ROOKERY, self)
        count = len(nodes)
        incoming = [0] * count
        succ: list[list[int]] = [[] for _ in range(count)]
        for src, dst in edges:
            succ[src].append(dst)
            if not (src == dst and nodes[src].allow_cycle):
                incoming[dst] += 1
        floes: list[Floe] = []

        def link(sctx: Context, dctx: Context) -> None:
            floe = Floe(sctx._owner, dctx._owner, maxsize=maxsize, inbox=dctx._inbox)
            sctx._outs.append(floe)
            sctx._out_by_target[dctx._owner] = floe
            dctx._ins.append(floe)
            floes.append(floe)

        for i in range(count):
            if incoming[i] == 0:
                link(opensea, ctxs[i])
        for src, dst in edges:
            link(ctxs[src], ctxs[dst])
        rookery_floes = []
        for i in range(count):
            if all(j == i for j in succ[i]):
                link(ctxs[i], rookery)
                rookery_floes.append(floes[-1])
        self._floes = tuple(floes)
        self._contexts: dict[Owner, Context] = dict(zip(nodes, ctxs, strict=True))
        self._opensea = opensea
        self._rookery = rookery
        self._runtimes = [_NodeRuntime(n, c) for n, c in zip(nodes, ctxs, strict=True)]
        self._rookery_floes = rookery_floes

    # -- public topology --------------------------------------------------------------

    @property
    def nodes(self) -> tuple[Node, ...]:
        """The nodes, in order of first appearance in the adjacency list."""
        return self._nodes

    @property
    def floes(self) -> tuple[Floe, ...]:
        """Every edge: ingress, then internal edges in declaration order, then egress."""
        return self._floes

    def successors(self, node: Node) -> tuple[Owner, ...]:
        """The targets of ``node``'s outgoing edges (``ROOKERY`` for an egress node)."""
        return tuple(floe.target for floe in self.context(node)._outs)

    def predecessors(self, node: Node) -> tuple[Owner, ...]:
        """The sources of ``node``'s incoming edges (``OPEN_SEA`` for an ingress node)."""
        return tuple(floe.source for floe in self.context(node)._ins)

    def context(self, owner: Owner) -> Context:
        """The context of a node of this flow, or of ``OPEN_SEA`` / ``ROOKERY``."""
        if owner == OPEN_SEA:
            return self._opensea
        if owner == ROOKERY:
            return self._rookery
        try:
            return self._contexts[owner]
        except (KeyError, TypeError):
            raise KeyError(f"{_name(owner)} is not a node of this flow") from None

    @property
    def is_running(self) -> bool:
        """True between ``run()`` and ``stop()``."""
        return self._running

    @property
    def queue_maxsize(self) -> int:
        """The capacity of every edge (``<= 0``: unbounded)."""
        return self._queue_maxsize

    @property
    def registry(self) -> AdapterSource | None:
        """The registry given to the last ``run()``."""
        return self._registry

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<PenguiFlow {len(self._nodes)} nodes, {len(self._floes)} floes, {state}>"

    # -- hooks and probes ---------------------------------------------------------------

    def add_middleware(self, mw: Middleware) -> None:
        """Append a middleware; it receives every later event, even while running."""
        if not callable(mw):
            raise TypeError(f"middleware {mw!r} is not callable")
        self._mws = (*self._mws, mw)

    def remove_middleware(self, mw: Middleware) -> bool:
        """Remove a middleware (its first registration); return False if it was not there."""
        mws = list(self._mws)
        try:
            mws.remove(mw)
        except ValueError:
            return False
        self._mws = tuple(mws)
        return True

    def on_trace_cancel(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(trace_id)`` when a cancel of that trace starts."""
        return _add_hook(self._cancel_hooks, callback)

    def on_trace_done(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(trace_id)`` when a trace's pending count reaches 0."""
        return _add_hook(self._done_hooks, callback)

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` on every ``stop()``, after the workers are gone."""
        return _add_hook(self._stop_hooks, callback)

    def register_probe(
        self, name: str, probe: Callable[[], Mapping[str, int]]
    ) -> Callable[[], None]:
        """Report per-trace state held outside core (shown in ``inspect().resources``)."""
        self._probes[name] = probe

        def remove() -> None:
            if self._probes.get(name) is probe:
                del self._probes[name]

        return remove

    def _call_hooks(self, hooks: list[Callable[..., None]], *args: Any) -> None:
        for hook in tuple(hooks):
            try:
                hook(*args)
            except Exception:
                logger.exception("hook_error")

    # -- lifecycle ----------------------------------------------------------------------

    def run(self, *, registry: AdapterSource | None = None) -> None:
        """Start one worker task per node (``max_concurrency`` per node) on the running loop.

        Raises:
            RuntimeError: Already running, no running event loop, or ``registry`` lacks
                nodes that validate. A failed ``run()`` leaves the flow stopped.
        """
        if self._running:
            raise FlowRuntimeError("PenguiFlow already running")
        loop = asyncio.get_running_loop()
        validators: list[Validator | None] = []
        if registry is not None:
            missing = []
            for rt in self._runtimes:
                if rt.policy.validate == "none":
                    continue
                try:
                    registry.adapters(rt.node.name)
                except KeyError:
                    missing.append(rt.node.name)
            if missing:
                raise FlowRuntimeError(
                    "ModelRegistry is missing entries for nodes requiring validation: "
                    + ", ".join(sorted(set(missing)))
                )
        for rt in self._runtimes:
            validate = rt.policy.validate
            if registry is None or validate == "none":
                validators.append(None)
            else:
                validators.append(Validator(rt.node.name, validate, registry))
        self._registry = registry
        tasks = self._tasks
        for rt, validator in zip(self._runtimes, validators, strict=True):
            rt.validator = validator
            rt.slots = []
            for i in range(rt.concurrency):
                slot = _Slot()
                name = f"penguiflow:{rt.node.name}"
                if rt.concurrency > 1:
                    name = f"{name}#{i}"
                slot.task = loop.create_task(self._worker(rt, slot), name=name)
                rt.slots.append(slot)
                tasks.append(slot.task)
        self._running = True
        self._stopped = False

    async def stop(self) -> None:
        """Cancel every worker and wait for it; the flow can ``run()`` again afterwards.

        Queued items stay on their edges (and their trace accounting stays consistent);
        in-flight invocations see ``CancelledError``; ``subscribe`` views end with
        ``"stopped"``; blocked ``emit_chunk`` callers are released. Emitting while stopped
        raises ``FlowStoppedError`` until the next ``run()``.
        """
        if not self._running:
            return
        self._running = False
        self._stopped = True
        self._generation += 1  # a worker that swallowed its cancellation exits at once
        for sub in list(self._subs.values()):
            sub._finish("stopped")
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        interrupted = False
        try:
            # Wait for every worker even if stop() itself is cancelled meanwhile: a
            # stopped flow never leaves a task behind. The cancellation is re-raised.
            # A worker still alive after a grace period (a node that swallows
            # cancellation, a middleware blocking on node_cancelled) is cancelled again.
            pending = {task for task in tasks if not task.done()}
            if pending:
                # Idle workers finish within one loop step of their cancellation; yielding
                # once usually ends them all, without arming the grace timer below.
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    interrupted = True
                pending = {task for task in pending if not task.done()}
            while pending:
                try:
                    _, pending = await asyncio.wait(pending, timeout=STOP_GRACE_S)
                except asyncio.CancelledError:
                    interrupted = True
                    pending = {task for task in pending if not task.done()}
                for task in pending:
                    task.cancel()
        finally:
            for rt in self._runtimes:
                rt.slots = []
                rt.backlogs.clear()
                rt.owners.clear()
            for trace in list(self._traces.values()):
                trace.cancelled = False
                trace.wm_hops = None
                trace.deadline_fired = False
                _wake_all(trace.waiters)
                trace.waiters = None
            self._call_hooks(self._stop_hooks)
        if interrupted:
            raise asyncio.CancelledError

    # -- introspection ------------------------------------------------------------------

    def inspect(self) -> FlowSnapshot:
        """Return a read-only snapshot of nodes, edges, live traces and probes."""
        nodes = tuple(
            NodeSnapshot(
                node=rt.node,
                name=rt.node.name,
                queue_depth_in=rt.ctx.queue_depth_in(),
                inflight=sum(1 for slot in rt.slots if slot.busy),
                max_concurrency=rt.concurrency,
            )
            for rt in self._runtimes
        )
        edges = tuple(
            EdgeSnapshot(source=f.source, target=f.target, maxsize=f.maxsize, depth=f.live)
            for f in self._floes
        )
        traces = {
            tid: TraceSnapshot(
                trace_id=tid,
                pending=t.pending,
                queued=sum(1 for e in _trace_entries(t) if not e.dead),
                inflight=t.inflight,
                cancelled=t.cancelled,
            )
            for tid, t in self._traces.items()
        }
        resources: dict[str, Mapping[str, int]] = {}
        streams: dict[str, int] = {}
        for ctx in (self._opensea, *self._contexts.values()):
            for tid, sids in ctx._stream_traces.items():
                if sids:
                    streams[tid] = streams.get(tid, 0) + len(sids)
        resources[STREAMS_PROBE] = streams
        for name, probe in self._probes.items():
            try:
                resources[name] = {k: v for k, v in dict(probe()).items() if v}
            except Exception:
                logger.exception("probe_error")
        return FlowSnapshot(
            running=self._running,
            queue_maxsize=self._queue_maxsize,
            nodes=nodes,
            edges=edges,
            traces=traces,
            resources=resources,
            workers=sum(1 for t in self._tasks if not t.done()),
            subscriptions=len(self._subs),
        )

    # -- talking to the flow from outside -----------------------------------------------

    def _ingress(self, to: Node | Sequence[Node] | None) -> list[Floe]:
        if self._stopped:
            raise FlowStoppedError("PenguiFlow was stopped; call run() before emitting again")
        if not self._opensea._outs:
            raise FlowRuntimeError(
                "flow has no ingress node (every node has a predecessor); nothing can be emitted"
            )
        return self._opensea._targets(to)

    def _suppressed(self, msg: Any) -> bool:
        if type(msg) is not Message and not isinstance(msg, Message):
            return False
        payload = msg.payload
        if not _is_special(payload) or not isinstance(payload, WM):
            return False
        trace = self._traces.get(msg.trace_id)
        return trace is not None and trace.wm_hops is not None and trace.wm_hops == payload.hops

    async def emit(self, msg: Any, to: Node | Sequence[Node] | None = None) -> None:
        """Enqueue ``msg`` on the ingress edges (all, or those of ``to``); waits when full.

        Raises:
            KeyError: A target is not an ingress node.
            FlowStoppedError: The flow was stopped and not run again.
        """
        floes = self._ingress(to)
        if self._suppressed(msg):
            return
        tid = msg.trace_id if type(msg) is Message else trace_id_of(msg)
        trace = self._trace(tid) if tid is not None else None
        i = self._offer(floes, msg, trace, 0)
        n = len(floes)
        while i < n:  # backpressure: the same loop as _send_rest, one frame less
            floe = self._claim(floes[i], trace)
            while (fut := _room(floe)) is not None:
                try:
                    await fut
                except BaseException:
                    self._abandon(floe, fut, trace)
                    raise
            self._enqueue(floe, msg, trace)
            i = self._offer(floes, msg, trace, i + 1)

    def emit_nowait(self, msg: Any, to: Node | Sequence[Node] | None = None) -> None:
        """Like ``emit`` but raise ``asyncio.QueueFull`` (enqueuing nothing) when full."""
        floes = self._ingress(to)
        if self._suppressed(msg):
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
        """``Context.emit_chunk`` on the OpenSea context (its own sequence counters)."""
        self._ingress(to)
        return await self._opensea.emit_chunk(
            parent=parent, text=text, stream_id=stream_id, seq=seq, done=done, meta=meta, to=to
        )

    async def fetch(self, from_: Node | Sequence[Node] | None = None) -> Any:
        """Return the next item that reached Rookery, exactly as it was delivered.

        Completes the item's trace accounting. With several egress edges, returns
        whichever item is available first (FIFO within one edge).
        """
        if from_ is None:
            items = self._rookery._inbox.items
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
                    floe._wake_putter()
                if trace is not None:
                    entry.unlink()
                    self._release(trace)
                return item
        return await self._fetch(self._rookery, self._rookery._sources(from_))

    async def fetch_any(self, from_: Node | Sequence[Node] | None = None) -> Any:
        """Same as ``fetch``: whichever Rookery edge has an item first."""
        return await self.fetch(from_)

    def subscribe(self, trace_id: str) -> Subscription:
        """Divert the Rookery output of one trace into a bounded, per-trace iterator.

        Use it as ``async with flow.subscribe(msg.trace_id) as results:``; iteration ends
        when the trace is done, cancelled, or the flow stops (``results.done``).

        Raises:
            FlowRuntimeError: The trace already has a subscription.
        """
        if trace_id in self._subs:
            raise FlowRuntimeError(f"trace {trace_id} already has a subscription")
        sub = Subscription(self, trace_id)
        self._subs[trace_id] = sub
        return sub

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
        trace = self._traces.get(trace_id)
        if trace is None or (trace.pending <= 0 and trace.inflight <= 0):
            # Nothing of the trace runs or waits in core, but components may still hold
            # state for it (a half-filled join bucket): let them drop it (contract B2).
            self._call_hooks(self._cancel_hooks, trace_id)
            return False
        if trace.cancelled:
            return True
        trace.cancelled = True
        self._call_hooks(self._cancel_hooks, trace_id)
        if self._observed(_INFO):
            await self._event(
                "trace_cancel_start", self._opensea, trace, trace_id, 0, None,
                {"pending": trace.pending}, _INFO,
            )  # fmt: skip
        # Purge queued items of the trace, wherever they wait (Rookery included).
        purged = 0
        for entry in _trace_entries(trace):
            if entry.dead:
                continue
            entry.dead = True
            entry.item = None
            floe = entry.floe
            floe.live -= 1
            if floe.putters:
                floe._wake_putter()
            purged += 1
        trace.head = None
        for ctx in self._contexts.values():
            ctx._forget_streams(trace_id)
        self._opensea._forget_streams(trace_id)
        # Abort in-flight invocations: cancel the worker, which survives (uncancel).
        # O(nodes): a serial node has one slot; a concurrent node runs a trace on at
        # most one slot at a time (per-trace order), found through its owners map.
        for rt in self._runtimes:
            if rt.concurrency == 1:
                slots: Sequence[_Slot] = rt.slots
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
        _wake_all(trace.waiters)
        trace.waiters = None
        sub = self._subs.get(trace_id)
        if sub is not None:
            sub._finish("cancelled")
        if purged:
            trace.pending -= purged - 1
            if self._release(trace):
                await self._cancel_finished(trace_id)
        return True

    # -- events -------------------------------------------------------------------------

    def _observed(self, level: int) -> bool:
        return bool(self._mws) or _enabled(level)

    async def _event(
        self,
        kind: str,
        ctx: Context,
        trace: _Trace | None,
        trace_id: str | None,
        attempt: int,
        latency_ms: float | None,
        extra: Mapping[str, Any] | None,
        level: int,
    ) -> None:
        if trace is None and trace_id is not None:
            trace = self._traces.get(trace_id)
        if trace is not None:
            pending: int | None = trace.pending
            inflight, cancelled = trace.inflight, trace.cancelled
        else:
            pending = 0 if trace_id is not None else None
            inflight, cancelled = 0, False
        ins, outs = ctx._ins, ctx._outs
        name, node_id = ctx._ident
        event = FlowEvent(
            kind,
            wall_time(),
            name,
            node_id,
            trace_id,
            attempt,
            latency_ms,
            ins[0].live if len(ins) == 1 else sum(floe.live for floe in ins),
            outs[0].live if len(outs) == 1 else sum(floe.live for floe in outs),
            len(outs),
            self._queue_maxsize,
            pending,
            inflight,
            cancelled,
            extra if extra else _NO_EXTRA,
        )
        if _enabled(level):
            try:
                logger.log(level, kind, extra=event.to_payload())
            except Exception:
                logger.log(level, kind)
        for mw in self._mws:
            try:
                await mw(event)
            except Exception:
                logger.exception("middleware_error")

    async def _cancel_finished(self, trace_id: str) -> None:
        if self._observed(_INFO):
            await self._event(
                "trace_cancel_finish", self._rookery, None, trace_id, 0, None, None, _INFO
            )

    def _schedule_cancel_finished(self, trace_id: str) -> None:
        if self._observed(_INFO):
            task = asyncio.get_running_loop().create_task(self._cancel_finished(trace_id))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # -- accounting ---------------------------------------------------------------------

    def _trace(self, trace_id: str) -> _Trace:
        trace = self._traces.get(trace_id)
        if trace is None:
            trace = self._traces[trace_id] = _Trace(trace_id)
            if self._subs:
                sub = self._subs.get(trace_id)
                if sub is not None:
                    sub._seen = True
        return trace

    def _release(self, trace: _Trace) -> bool:
        """Finish one item of ``trace``; True when a cancelled trace just ended."""
        pending = trace.pending = trace.pending - 1
        if trace.waiters is not None and pending - 1 < self._queue_maxsize:
            _wake_all(trace.waiters)
            trace.waiters = None
        if pending > 0:
            return False
        tid = trace.trace_id
        if self._traces.get(tid) is trace:
            del self._traces[tid]
        if self._done_hooks:
            self._call_hooks(self._done_hooks, tid)
        if self._subs:
            sub = self._subs.get(tid)
            if sub is not None and sub._seen:
                sub._finish("cancelled" if trace.cancelled else "drained")
        return trace.cancelled

    async def _wait_trace_capacity(self, trace_id: str) -> None:
        maxsize = self._queue_maxsize
        while True:
            trace = self._traces.get(trace_id)
            if trace is None or trace.pending - 1 < maxsize or not self._running:
                return
            if trace.cancelled:
                raise TraceCancelled(trace_id)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if trace.waiters is None:
                trace.waiters = []
            trace.waiters.append(fut)
            await fut

    # -- enqueue ------------------------------------------------------------------------

    def _enqueue(self, floe: Floe, item: Any, trace: _Trace | None) -> None:
        """Append to ``floe`` (which has room); the item is already counted for its trace."""
        entry = _Entry(item, trace, floe)
        floe.live += 1
        inbox = floe.inbox
        inbox.items.append(entry)
        if inbox.waiters:
            inbox.wake()

    def _redirect(self, floe: Floe, trace: _Trace | None) -> Floe:
        """A Rookery edge of a subscribed trace is replaced by the subscription's edge."""
        if trace is not None:
            sub = self._subs.get(trace.trace_id)
            if sub is not None and sub.done is None:
                return sub._floe
        return floe

    def _offer(self, floes: Sequence[Floe], item: Any, trace: _Trace | None, i: int) -> int:
        """Enqueue ``item`` on ``floes[i:]`` without waiting; return where a full edge stopped it.

        Enqueuing onto an edge with room never suspends the caller (contract §5.14).
        """
        subs = self._subs
        n = len(floes)
        while i < n:
            floe = floes[i]
            if subs and floe.to_rookery:
                floe = self._redirect(floe, trace)
            if floe.maxsize > 0 and floe.live >= floe.maxsize:
                return i
            entry = _Entry(item, trace, floe)
            floe.live += 1
            inbox = floe.inbox
            inbox.items.append(entry)
            if trace is not None:
                trace.pending += 1
            if inbox.waiters:
                inbox.wake()
            i += 1
        return n

    async def _send_rest(
        self, floes: Sequence[Floe], item: Any, trace: _Trace | None, i: int
    ) -> None:
        """Finish a send that ``_offer`` stopped at the full edge ``floes[i]``: wait for room.

        A blocked put is already counted for its trace (contract §5.7); if the wait is
        cancelled, the count is given back. ``PenguiFlow.emit`` inlines this loop so a
        client parked on backpressure holds one coroutine frame, not two.
        """
        n = len(floes)
        while i < n:
            floe = self._claim(floes[i], trace)
            while (fut := _room(floe)) is not None:
                try:
                    await fut
                except BaseException:
                    self._abandon(floe, fut, trace)
                    raise
            self._enqueue(floe, item, trace)
            i = self._offer(floes, item, trace, i + 1)

    def _claim(self, floe: Floe, trace: _Trace | None) -> Floe:
        """Count a put that may block, and resolve a subscription's Rookery edge."""
        if self._subs and floe.to_rookery:
            floe = self._redirect(floe, trace)
        if trace is not None:
            trace.pending += 1
        return floe

    def _abandon(self, floe: Floe, fut: asyncio.Future[None], trace: _Trace | None) -> None:
        """A blocked put was interrupted: pass on its wake-up, give back its count."""
        if fut.done() and not fut.cancelled():
            floe._wake_putter()
        else:
            with contextlib.suppress(ValueError):
                floe.putters.remove(fut)
        if trace is not None and self._release(trace):
            self._schedule_cancel_finished(trace.trace_id)

    async def _send(self, floes: Sequence[Floe], item: Any) -> None:
        tid = trace_id_of(item)
        trace = self._trace(tid) if tid is not None else None
        i = self._offer(floes, item, trace, 0)
        if i < len(floes):
            await self._send_rest(floes, item, trace, i)

    def _send_nowait(self, floes: Sequence[Floe], item: Any) -> None:
        tid = trace_id_of(item)
        trace = self._trace(tid) if tid is not None else None
        if self._subs:
            floes = [self._redirect(f, trace) if f.to_rookery else f for f in floes]
        need: dict[Floe, int] = {}
        for floe in floes:
            need[floe] = need.get(floe, 0) + 1
        for floe, count in need.items():
            if floe.maxsize > 0 and floe.live + count > floe.maxsize:
                if trace is not None and trace.pending == 0:
                    self._traces.pop(trace.trace_id, None)
                raise asyncio.QueueFull
        for floe in floes:
            if trace is not None:
                trace.pending += 1
            self._enqueue(floe, item, trace)

    # -- dequeue ------------------------------------------------------------------------

    def _take(self, inbox: _Inbox, allowed: set[Floe] | None) -> _Entry | None:
        items = inbox.items
        if allowed is None:
            while items:
                entry = items.popleft()
                if not entry.dead:
                    return entry
            return None
        for i, entry in enumerate(items):
            if not entry.dead and entry.floe in allowed:
                del items[i]
                return entry
        return None

    def _consume(self, entry: _Entry, *, schedule_events: bool = False) -> Any:
        """Take ``entry`` off its edge and complete its accounting (a fetch)."""
        floe = entry.floe
        floe.live -= 1
        if floe.putters:
            floe._wake_putter()
        trace = entry.trace
        if trace is not None:
            entry.unlink()
            if self._release(trace) and schedule_events:
                self._schedule_cancel_finished(trace.trace_id)
        return entry.item

    async def _fetch(
        self, ctx: Context, allowed: set[Floe] | None, sub: Subscription | None = None
    ) -> Any:
        inbox = ctx._inbox
        while True:
            entry = self._take(inbox, allowed)
            if entry is not None:
                trace = entry.trace
                if trace is not None and trace.cancelled:
                    self._consume(entry, schedule_events=True)
                    continue
                item = self._consume(entry)
                if trace is not None and trace.pending == 0 and trace.cancelled:
                    await self._cancel_finished(trace.trace_id)
                return item
            if sub is not None and sub.done is not None:
                raise StopAsyncIteration
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            inbox.waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    inbox.wake()
                else:
                    with contextlib.suppress(ValueError):
                        inbox.waiters.remove(fut)
                raise

    # -- workers ------------------------------------------------------------------------

    async def _worker(self, rt: _NodeRuntime, slot: _Slot) -> None:
        inbox = rt.inbox
        items = inbox.items
        waiters = inbox.waiters
        loop = asyncio.get_running_loop()
        serial = rt.concurrency == 1
        generation = self._generation
        try:
            while True:
                if self._generation != generation:
                    raise asyncio.CancelledError  # stopped, but our cancellation was eaten
                if not items:
                    fut: asyncio.Future[None] = loop.create_future()
                    waiters.append(fut)
                    try:
                        await fut
                    except BaseException:
                        if fut.done() and not fut.cancelled():
                            inbox.wake()
                        else:
                            with contextlib.suppress(ValueError):
                                waiters.remove(fut)
                        raise
                    continue
                entry = items.popleft()
                if entry.dead:
                    continue
                if serial or entry.trace is None:
                    try:
                        await self._handle(rt, slot, entry, loop)
                    except Exception:  # a bug or a broken hook: keep the worker alive
                        logger.exception("worker_error", extra={"node_name": rt.node.name})
                    continue
                # max_concurrency > 1: items of one trace run one after another, in order.
                trace = entry.trace
                backlog = rt.backlogs.get(trace)
                if backlog is not None:
                    backlog.append(entry)
                    continue
                backlog = rt.backlogs[trace] = deque()
                rt.owners[trace] = slot
                try:
                    while True:
                        try:
                            await self._handle(rt, slot, entry, loop)
                        except Exception:
                            logger.exception("worker_error", extra={"node_name": rt.node.name})
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
            if self._observed(_DEBUG):
                await self._event("node_cancelled", rt.ctx, None, None, 0, None, None, _DEBUG)
            raise

    async def _handle(
        self, rt: _NodeRuntime, slot: _Slot, entry: _Entry, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Handle one item: deadline, cancel check, attempts, routing, accounting.

        This is the per-hop hot path: one coroutine frame between the worker and the node
        function, routing done inline, events and timers only when asked for.
        """
        floe = entry.floe
        floe.live -= 1
        if floe.putters:
            floe._wake_putter()
        item = entry.item
        trace = entry.trace
        tid: str | None = None
        if trace is not None:
            entry.unlink()
            tid = trace.trace_id
        slot.busy = True
        try:
            if (type(item) is Message or isinstance(item, Message)) and (
                item.deadline_s is not None and wall_time() > item.deadline_s
            ):
                await self._deadline_skip(rt, item, trace)
                return
            if trace is not None and trace.cancelled:
                if self._observed(_INFO):
                    await self._event("trace_cancel_drop", rt.ctx, trace, tid, 0, None, None, _INFO)
                return
            ctx = rt.ctx
            func = rt.func
            validator = rt.validator
            timeout = rt.timeout
            attempt = 0
            failure: Exception | None
            while True:
                # INFO disabled implies DEBUG disabled: one check covers node_start/success.
                watched = bool(self._mws) or _enabled(_INFO)
                if watched and (self._mws or _enabled(_DEBUG)):
                    await self._event("node_start", ctx, trace, tid, attempt, 0.0, None, _DEBUG)
                started = loop.time()
                slot.current = trace
                if trace is not None:
                    trace.inflight += 1
                try:
                    if trace is not None and trace.cancelled:
                        raise TraceCancelled(tid)
                    arg = item if validator is None else validator.prepare(item)
                    if timeout is None:
                        result = await func(arg, ctx)
                    else:
                        async with asyncio.timeout(timeout):
                            result = await func(arg, ctx)
                    if validator is not None:
                        result = validator.finish(item, result)
                    if slot.cancel_for is not None:
                        raise asyncio.CancelledError  # the node swallowed our cancellation
                    if result is not None:
                        # Routing (contract §5.5), with the common case inline.
                        if type(result) is Message:
                            rtid: str | None = result.trace_id
                            special = _is_special(result.payload)
                        else:
                            rtid = trace_id_of(result)
                            special = isinstance(result, Message) and _is_special(result.payload)
                        if rtid is None:
                            rtrace = None
                        elif trace is not None and rtid == tid:
                            rtrace = trace
                        else:
                            rtrace = self._trace(rtid)
                        if not special or not await self._route_special(rt, item, result, rtrace):
                            outs = rt.outs
                            i = self._offer(outs, result, rtrace, 0)
                            if i < len(outs):
                                await self._send_rest(outs, result, rtrace, i)
                except asyncio.CancelledError:
                    if slot.cancel_for is None:
                        raise
                    self._absorb_cancel(slot)
                    failure = None
                except TraceCancelled:
                    failure = None
                except Exception as exc:
                    # A node that raises while being cancelled must not eat the
                    # cancellation: the trace's or stop()'s, whichever it was.
                    if slot.cancel_for is not None:
                        self._absorb_cancel(slot)
                        failure = None
                    else:
                        failure = exc
                    if _cancelling():
                        raise asyncio.CancelledError from exc
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:
                    # Other BaseExceptions are never retried (contract §5.6), but they must
                    # not kill the worker either: the item fails at once, with an event.
                    if slot.cancel_for is not None:
                        self._absorb_cancel(slot)
                        failure = None
                    else:
                        if _cancelling():
                            raise asyncio.CancelledError from exc
                        latency = (loop.time() - started) * 1000.0
                        await self._give_up(rt, trace, tid, attempt, latency, exc)
                        return
                else:
                    slot.current = None
                    if trace is not None:
                        trace.inflight -= 1
                    if watched or self._mws:
                        latency = (loop.time() - started) * 1000.0
                        await self._event(
                            "node_success", ctx, trace, tid, attempt, latency, None, _INFO
                        )
                    return
                finally:
                    if slot.current is not None:
                        slot.current = None
                        if trace is not None:
                            trace.inflight -= 1
                if failure is None:
                    if self._observed(_INFO):
                        await self._event(
                            "node_trace_cancelled", ctx, trace, tid, 0, None, None, _INFO
                        )
                    return
                latency = (loop.time() - started) * 1000.0
                attempt = await self._failed(rt, slot, trace, tid, attempt, failure, latency)
                if attempt < 0:
                    return
        finally:
            slot.busy = False
            if trace is not None and self._release(trace):
                await self._cancel_finished(trace.trace_id)

    async def _failed(
        self,
        rt: _NodeRuntime,
        slot: _Slot,
        trace: _Trace | None,
        tid: str | None,
        attempt: int,
        failure: Exception,
        latency: float,
    ) -> int:
        """Report a failed attempt, then back off; return the next attempt, or -1 to drop."""
        ctx = rt.ctx
        is_timeout = isinstance(failure, TimeoutError)
        level = _WARNING if is_timeout else _ERROR
        if self._observed(level):
            await self._event(
                "node_timeout" if is_timeout else "node_error",
                ctx, trace, tid, attempt, latency, {"exception": repr(failure)}, level,
            )  # fmt: skip
        if attempt >= rt.retries:
            await self._give_up(rt, trace, tid, attempt, latency, failure)
            return -1
        attempt += 1
        delay = rt.policy.backoff(attempt)
        if self._observed(_INFO):
            await self._event(
                "node_retry", ctx, trace, tid, attempt, None,
                {"sleep_s": delay, "exception": repr(failure)}, _INFO,
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
            self._absorb_cancel(slot)
        except TraceCancelled:
            pass
        else:
            return attempt
        finally:
            slot.current = None
        if self._observed(_INFO):
            await self._event("node_trace_cancelled", ctx, trace, tid, 0, None, None, _INFO)
        return -1

    async def _give_up(
        self,
        rt: _NodeRuntime,
        trace: _Trace | None,
        tid: str | None,
        attempt: int,
        latency: float,
        failure: BaseException,
    ) -> None:
        """The item is dropped: ``node_failed``, and a ``FlowError`` to Rookery if asked."""
        if self._observed(_ERROR):
            await self._event(
                "node_failed", rt.ctx, trace, tid, attempt, latency,
                {"exception": repr(failure)}, _ERROR,
            )  # fmt: skip
        if self._errors_to_rookery and self._rookery_floes:
            error = FlowError(
                trace_id=tid,
                node_name=rt.node.name,
                node_id=rt.node.node_id,
                code="NODE_TIMEOUT" if isinstance(failure, TimeoutError) else "NODE_EXCEPTION",
                attempts=attempt + 1,
                original=failure,
            )
            await self._to_rookery(rt, error, trace)

    def _absorb_cancel(self, slot: _Slot) -> None:
        """Turn our own trace cancellation of this worker back into a live worker."""
        slot.cancel_for = None
        task = slot.task
        if task is not None and task.uncancel() > 0:
            # Someone else (stop(), an outer scope) also cancelled the worker.
            raise asyncio.CancelledError

    # -- routing ------------------------------------------------------------------------

    async def _route_special(
        self, rt: _NodeRuntime, item: Any, result: Message, rtrace: _Trace | None
    ) -> bool:
        """Route a ``Message`` carrying a WM (controller) or FinalAnswer; False = normal."""
        payload = result.payload
        if isinstance(payload, WM):
            if rt.self_floe is None:
                return False  # not a controller: route normally (B7)
            await self._controller_step(rt, item, result, payload, rtrace)
            return True
        await self._to_rookery(rt, result, rtrace)
        return True

    async def _to_rookery(self, rt: _NodeRuntime | None, item: Any, trace: _Trace | None) -> None:
        floe = rt.rookery_floe if rt is not None else None
        if floe is None:
            if not self._rookery_floes:
                name = rt.node.name if rt is not None else "?"
                raise FlowRuntimeError(f"node {name!r} has a result for Rookery, but no egress")
            floe = self._rookery_floes[0]
        floes = (floe,)
        if not self._offer(floes, item, trace, 0):
            await self._send_rest(floes, item, trace, 0)

    async def _deadline_skip(self, rt: _NodeRuntime, item: Message, trace: _Trace | None) -> None:
        tid = trace.trace_id if trace is not None else None
        if self._observed(_INFO):
            await self._event(
                "deadline_skip", rt.ctx, trace, tid, 0, None, {"deadline_s": item.deadline_s},
                _INFO,
            )  # fmt: skip
        if trace is not None and trace.cancelled:
            return
        if isinstance(item.payload, FinalAnswer):
            await self._to_rookery(rt, item, trace)
            return
        if trace is not None:
            if trace.deadline_fired:
                return  # at most one "Deadline exceeded" per trace (B10)
            trace.deadline_fired = True
        answer = with_payload(item, FinalAnswer(text=DEADLINE_EXCEEDED_TEXT))
        await self._to_rookery(rt, answer, trace)

    async def _controller_step(
        self, rt: _NodeRuntime, item: Any, msg: Message, wm: WM, trace: _Trace | None
    ) -> None:
        """Contract §5.9: deadline, token and hop budgets, then loop on the self-edge."""
        if msg.deadline_s is not None and wall_time() > msg.deadline_s:
            if trace is not None:
                if trace.deadline_fired:
                    return
                trace.deadline_fired = True
            final = FinalAnswer(text=DEADLINE_EXCEEDED_TEXT)
            await self._to_rookery(rt, with_payload(msg, final), trace)
            return
        if wm.budget_tokens is not None and wm.tokens_used >= wm.budget_tokens:
            final = FinalAnswer(text=TOKEN_BUDGET_EXCEEDED_TEXT)
            await self._to_rookery(rt, with_payload(msg, final), trace)
            return
        incoming = item.payload if isinstance(item, Message) else None
        inc = incoming.hops if isinstance(incoming, WM) else None
        nxt = inc + 1 if inc is not None and wm.hops <= inc else wm.hops
        if wm.budget_hops is not None and nxt >= wm.budget_hops:
            final = FinalAnswer(text=BUDGET_EXCEEDED_TEXT)
            await self._to_rookery(rt, with_payload(msg, final), trace)
            return
        if nxt != wm.hops:
            msg = with_payload(msg, copy_with(wm, "hops", nxt))
        if wm.budget_hops is None and wm.budget_tokens is None:
            await self._to_rookery(rt, msg.model_copy(deep=True), trace)
            if trace is not None:
                trace.wm_hops = nxt
        self_floe = rt.self_floe
        assert self_floe is not None  # only nodes with a self-edge reach this step
        floes = (self_floe,)
        if not self._offer(floes, msg, trace, 0):
            await self._send_rest(floes, msg, trace, 0)


# --------------------------------------------------------------------------- building


def _cancelling() -> int:
    """Cancellation requests pending on the current task (``Task.cancelling()``)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _room(floe: Floe) -> asyncio.Future[None] | None:
    """Return a future to await until ``floe`` may have room, or None if it has room now."""
    if 0 < floe.maxsize <= floe.live:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        floe.putters.append(fut)
        return fut
    return None


def _wake_all(waiters: list[asyncio.Future[None]] | None) -> None:
    if waiters:
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


def _add_hook(hooks: list[Any], callback: Any) -> Callable[[], None]:
    hooks.append(callback)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            hooks.remove(callback)

    return remove


def _collect(adjacencies: Sequence[Adjacency]) -> tuple[list[Node], list[tuple[int, int]]]:
    """Return the nodes in order of first appearance and the deduplicated edges (indices)."""
    nodes: list[Node] = []
    index: dict[int, int] = {}  # id(node) -> position; nodes compare by identity
    edges: dict[tuple[int, int], None] = {}
    for position, adjacency in enumerate(adjacencies):
        if not (isinstance(adjacency, tuple) and len(adjacency) == 2):
            raise FlowBuildError(
                f"adjacency #{position} must be (node, successors), e.g. node.to(...); "
                f"got {adjacency!r}"
            )
        start, successors = adjacency
        if not isinstance(start, Node):
            raise FlowBuildError(f"adjacency #{position}: {start!r} is not a Node")
        src = index.get(id(start))
        if src is None:
            src = index[id(start)] = len(nodes)
            nodes.append(start)
        for succ in successors:
            if not isinstance(succ, Node):
                raise FlowBuildError(
                    f"adjacency #{position} ({start.name}): successor {succ!r} is not a Node"
                )
            dst = index.get(id(succ))
            if dst is None:
                dst = index[id(succ)] = len(nodes)
                nodes.append(succ)
            edges[(src, dst)] = None
    if len({node.name for node in nodes}) != len(nodes):
        seen: set[str] = set()
        for node in nodes:
            if node.name in seen:
                raise FlowBuildError(
                    f"two different nodes are named {node.name!r}; node names must be unique "
                    "within a flow (the registry, routers and fetch(from_=) key by name)"
                )
            seen.add(node.name)
    return nodes, list(edges)


def _check_cycles(nodes: list[Node], edges: list[tuple[int, int]]) -> None:
    """Raise CycleError naming a cycle; allowed self-loops (``allow_cycle``) are skipped."""
    count = len(nodes)
    succ: list[list[int]] = [[] for _ in range(count)]
    for src, dst in edges:
        if src == dst and nodes[src].allow_cycle:
            continue
        succ[src].append(dst)
    white, grey, black = 0, 1, 2
    color = [white] * count
    for root in range(count):
        if color[root] != white:
            continue
        path = [root]
        stack = [(root, 0)]
        color[root] = grey
        while stack:
            node, i = stack[-1]
            if i < len(succ[node]):
                stack[-1] = (node, i + 1)
                nxt = succ[node][i]
                if color[nxt] == grey:
                    cycle = [*path[path.index(nxt) :], nxt]
                    raise CycleError(
                        "Flow contains a cycle; enable allow_cycles to bypass "
                        f"(cycle: {' -> '.join(nodes[n].name for n in cycle)})"
                    )
                if color[nxt] == white:
                    color[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                color[node] = black
                stack.pop()
                path.pop()


def create(
    *adjacencies: Adjacency,
    queue_maxsize: int = DEFAULT_QUEUE_MAXSIZE,
    allow_cycles: bool = False,
    middlewares: Sequence[Middleware] | None = None,
    emit_errors_to_rookery: bool = False,
) -> PenguiFlow:
    """Build a :class:`PenguiFlow` from ``node.to(...)`` adjacency entries."""
    return PenguiFlow(
        *adjacencies,
        queue_maxsize=queue_maxsize,
        allow_cycles=allow_cycles,
        middlewares=middlewares,
        emit_errors_to_rookery=emit_errors_to_rookery,
    )


# --------------------------------------------------------------------------- playbooks


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
    trace_id = trace_id_of(parent_msg)
    if runtime is not None and trace_id is not None:
        parent_trace = runtime._traces.get(trace_id)
        if parent_trace is not None and parent_trace.cancelled:
            raise TraceCancelled(trace_id)
    flow, registry = playbook()
    flow.run(registry=registry)
    remove_watch: Callable[[], None] | None = None
    mirror: list[asyncio.Task[bool]] = []
    if runtime is not None and trace_id is not None:
        loop = asyncio.get_running_loop()

        def on_cancel(cancelled: str) -> None:
            if cancelled == trace_id and flow.is_running:
                mirror.append(loop.create_task(flow.cancel(trace_id)))

        remove_watch = runtime.on_trace_cancel(on_cancel)
    try:
        await flow.emit(parent_msg)
        async with asyncio.timeout(timeout):
            item = await flow.fetch()
        return item.payload if isinstance(item, Message) else item
    except (TraceCancelled, asyncio.CancelledError):
        if trace_id is not None and flow.is_running:
            with contextlib.suppress(Exception):
                await asyncio.shield(flow.cancel(trace_id))
        raise
    finally:
        if remove_watch is not None:
            remove_watch()
        try:
            if mirror:
                await asyncio.gather(*mirror, return_exceptions=True)
        finally:
            await flow.stop()  # waits for every subflow worker, even when cancelled
