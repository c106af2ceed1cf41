"""Edges: the flow's endpoints, ``Floe`` (a bounded edge), inboxes, the entries queued on
them, the per-trace index over those entries, and each owner's ports.

Every edge has its own bound, but the entries of all edges that end at one consumer sit
in that consumer's single FIFO ``Inbox``. A worker therefore waits on one future and
never races several queues, and FIFO order per edge is kept.

Every queued entry of a tracked item is also linked into its ``Trace``, so cancelling one
trace costs O(items of the trace), never O(total queue length).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import FrozenInstanceError
from typing import Any, Final, TypeAlias

from ._parking import ParkingLot
from .errors import FlowRuntimeError, FlowStoppedError, UnknownNodeError
from .node import Node

__all__ = [
    "OPEN_SEA",
    "ROOKERY",
    "Endpoint",
    "Entry",
    "Floe",
    "FloeQueue",
    "Inbox",
    "Owner",
    "Ports",
    "Trace",
    "entries",
    "name_of",
    "purge",
    "reset_stopped",
    "wake_stopped",
]


class Endpoint:
    """A synthetic boundary of a flow: ``OPEN_SEA`` (ingress) or ``ROOKERY`` (egress).

    A frozen value: endpoints compare and hash by name.
    """

    # A hand-written value class rather than a dataclass: generating a dataclass costs
    # about half a millisecond of ``import penguiflow``.
    __slots__ = ("_name",)
    _name: str

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    @property
    def name(self) -> str:
        """``"OpenSea"`` or ``"Rookery"``."""
        return self._name

    def __setattr__(self, attr: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {attr!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Endpoint:
            return NotImplemented
        return self._name == other._name

    def __hash__(self) -> int:
        return hash(self._name)

    def __repr__(self) -> str:
        return f"Endpoint(name={self._name!r})"

    def __reduce__(self) -> tuple[type[Endpoint], tuple[str]]:
        return (Endpoint, (self._name,))


OPEN_SEA: Final = Endpoint("OpenSea")
ROOKERY: Final = Endpoint("Rookery")

Owner: TypeAlias = Node | Endpoint


def name_of(owner: object) -> str:
    """The name of a node or endpoint, for messages."""
    if isinstance(owner, Node | Endpoint):
        return owner.name
    return getattr(owner, "name", None) or repr(owner)


class Trace:
    """Per-trace bookkeeping; the kernel discards it the moment ``pending`` reaches 0."""

    __slots__ = (
        "cancelled",
        "deadline_fired",
        "ended",
        "head",
        "inflight",
        "last_node",
        "pending",
        "retries",
        "trace_id",
        "waiters",
        "wm_hops",
    )

    def __init__(self, trace_id: str) -> None:
        self.trace_id: str = trace_id
        self.pending: int = 0
        """Items of the trace queued, blocked on a full edge, or being handled."""
        self.inflight: int = 0
        """Node invocations running for the trace."""
        self.cancelled: bool = False
        self.deadline_fired: bool = False
        """A deadline answer was already sent: a trace gets at most one."""
        self.head: Entry | None = None
        """Newest queued entry of the trace; the others follow through ``Entry.next``."""
        self.retries: int = 0
        """Retries spent on the trace so far, across all nodes (for the retry budget)."""
        self.last_node: str | None = None
        """The node that last handled an item of the trace without passing anything on."""
        self.wm_hops: int | None = None
        """Hop count of the WM a controller last copied to Rookery (dedup on re-emit)."""
        self.ended: ParkingLot | None = None
        """Callers of ``flow.wait_ended`` (made on demand)."""
        self.waiters: ParkingLot | None = None
        """Streaming producers waiting for the trace's chunk capacity (made on demand)."""


class Entry:
    """One queued item on an edge. ``dead`` entries were purged by a cancel and are skipped.

    Entries of one trace form a doubly linked list (``prev``/``next``) headed at
    ``Trace.head``, so a cancel finds them in O(items of the trace) and a consumer unlinks
    one in O(1), without a per-trace container.
    """

    __slots__ = ("dead", "floe", "item", "next", "prev", "trace")

    def __init__(self, item: Any, trace: Trace | None, floe: Floe) -> None:
        self.item: Any = item
        self.trace: Trace | None = trace
        self.floe: Floe = floe
        self.dead: bool = False
        self.prev: Entry | None = None
        self.next: Entry | None = None
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


def entries(trace: Trace) -> list[Entry]:
    """The queued entries of ``trace``, newest first."""
    found = []
    entry = trace.head
    while entry is not None:
        found.append(entry)
        entry = entry.next
    return found


def purge(trace: Trace) -> int:
    """Drop every queued entry of ``trace``; return how many were dropped.

    Each item is released at once and its edge gets its room back. The entry itself is
    marked dead in place (consumers skip it), and an inbox that has become mostly dead
    entries is compacted, so dropped work never lingers in memory: the cost stays
    O(items of the trace), amortized.
    """
    purged = 0
    touched: list[Inbox] = []
    for entry in entries(trace):
        if entry.dead:
            continue
        entry.dead = True
        entry.item = None
        floe = entry.floe
        floe.live -= 1
        if floe.putters:
            floe.putters.unpark()
        inbox = floe.inbox
        inbox.dead += 1
        if inbox not in touched:
            touched.append(inbox)
        purged += 1
    trace.head = None
    for inbox in touched:
        items = inbox.items
        if inbox.dead > 16 and inbox.dead * 2 > len(items):
            live = [entry for entry in items if not entry.dead]
            items.clear()
            items.extend(live)
            inbox.dead = 0
    return purged


class Inbox:
    """The single FIFO a consumer reads: entries of all its incoming edges."""

    __slots__ = ("dead", "items", "waiters")

    def __init__(self) -> None:
        self.items: deque[Entry] = deque()
        self.dead: int = 0
        """Purged entries still in ``items`` (consumers skip them)."""
        self.waiters: ParkingLot = ParkingLot()
        """Consumers parked until an entry arrives."""


class FloeQueue:
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
        inbox: The consumer's inbox (a new one when omitted).
    """

    __slots__ = ("inbox", "live", "loop", "maxsize", "putters", "source", "target", "to_rookery")

    def __init__(
        self, source: Owner, target: Owner, *, maxsize: int, inbox: Inbox | None = None
    ) -> None:
        self.source: Owner = source
        self.target: Owner = target
        self.maxsize: int = maxsize
        self.live: int = 0
        """Items queued on this edge now."""
        self.putters: ParkingLot = ParkingLot()
        """Producers parked until the edge has room."""
        self.inbox: Inbox = Inbox() if inbox is None else inbox
        self.to_rookery: bool = target is ROOKERY
        self.loop: bool = source is target and isinstance(source, Node)
        """A node's edge to itself (a controller loop)."""

    @property
    def queue(self) -> FloeQueue:
        """A read-only view with ``qsize()``, ``maxsize``, ``empty()`` and ``full()``."""
        return FloeQueue(self)

    def __repr__(self) -> str:
        return f"Floe({name_of(self.source)} -> {name_of(self.target)}, {self.live}/{self.maxsize})"


class Ports:
    """One owner's side of the wiring: its edges in and out, and its inbox.

    Built by the wiring step; the kernel and the owner's ``Context`` share it.
    """

    __slots__ = ("by_target", "ident", "inbox", "ins", "outs", "owner")

    def __init__(self, owner: Owner) -> None:
        self.owner: Owner = owner
        # (node_name, node_id) as events report them; endpoints use their name for both.
        self.ident: tuple[str, str] = (
            owner.name,
            owner.node_id if isinstance(owner, Node) else owner.name,
        )
        self.ins: list[Floe] = []
        self.outs: list[Floe] = []
        self.by_target: dict[Owner, Floe] = {}
        self.inbox: Inbox = Inbox()

    def targets(self, to: Owner | Sequence[Owner] | None) -> list[Floe]:
        """The outgoing edges towards ``to`` (all of them for ``None``)."""
        if to is None:
            return self.outs
        if isinstance(to, Node | Endpoint):
            to = (to,)
        floes = []
        by_target = self.by_target
        for target in to:
            floe = by_target.get(target) if isinstance(target, Node | Endpoint) else None
            if floe is None:
                raise UnknownNodeError(self._unknown(target, self.outs, "target"))
            floes.append(floe)
        return floes

    def sources(self, from_: Owner | Sequence[Owner] | None) -> set[Floe] | None:
        """The incoming edges from ``from_`` (``None``: any edge)."""
        if not self.ins:
            raise FlowRuntimeError(
                f"context has no incoming floes to fetch from ({name_of(self.owner)} has no "
                "incoming edges; fetch from the context of a node that has predecessors)"
            )
        if from_ is None:
            return None
        if isinstance(from_, Node | Endpoint):
            from_ = (from_,)
        allowed: set[Floe] = set()
        for source in from_:
            match = [floe for floe in self.ins if floe.source == source]
            if not match:
                raise UnknownNodeError(self._unknown(source, self.ins, "source"))
            allowed.update(match)
        return allowed

    def _unknown(self, owner: object, floes: list[Floe], side: str) -> str:
        # Keeps the "Unknown target <name> for <owner>" wording callers match on, then
        # says in plain words what is allowed instead.
        me = self.owner
        names = ", ".join(repr(name_of(getattr(floe, side))) for floe in floes) or "none"
        if me == OPEN_SEA:
            hint = f"is not an entry node of this flow (entry nodes: {names})"
        elif me == ROOKERY:
            hint = f"is not an exit node of this flow (exit nodes: {names})"
        elif side == "target":
            hint = f"is not a successor of node {me.name!r} (successors: {names})"
        else:
            hint = f"is not a predecessor of node {me.name!r} (predecessors: {names})"
        target = name_of(owner)
        return f"Unknown target {target} for {me.name}: node {target!r} {hint}"


def _stopped() -> FlowStoppedError:
    return FlowStoppedError("the flow was stopped; call run() before using it again")


def wake_stopped(rookery: Ports, opensea: Ports, traces: Iterable[Trace]) -> None:
    """The flow stopped: wake everyone blocked on it from outside with ``FlowStoppedError``.

    Callers of ``fetch`` (Rookery's inbox), of ``emit`` (full ingress edges) and of
    ``emit_chunk`` (a trace's chunk capacity); callers of ``wait_ended`` just return.
    """

    if rookery.inbox.waiters:
        rookery.inbox.waiters.unpark_all(_stopped)
    for floe in opensea.outs:
        if floe.putters:
            floe.putters.unpark_all(_stopped)
    for trace in traces:
        if trace.waiters is not None:
            trace.waiters.unpark_all(_stopped)
            trace.waiters = None
        if trace.ended is not None:
            trace.ended.unpark_all()


def reset_stopped(traces: Iterable[Trace]) -> None:
    """The flow stopped: traces left on its edges start the next run uncancelled and with
    fresh loop and deadline state."""
    for trace in traces:
        trace.cancelled = False
        trace.wm_hops = None
        trace.deadline_fired = False
