"""``FlowGraph``: what a built flow shows before and while it runs.

Its topology (nodes, edges, contexts), the hooks and probes that observe it, and its
``inspect()`` snapshot. The kernel (``PenguiFlow``) builds the graph and runs it; this
base class holds the read-only and registration side, which needs no event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ._chunks import StreamCounters
from ._context import Context, KernelPort
from ._edges import Endpoint, Floe, Owner, Ports, Trace, name_of
from ._events import Hooks
from ._parking import ParkingLot
from ._slots import NodeRuntime
from ._subscription import Outcome, Subscription, View
from ._validation import AdapterSource
from .errors import FlowRuntimeError, UnknownNodeError
from .node import Node

if TYPE_CHECKING:
    from .inspect import FlowSnapshot
    from .middlewares import Middleware

__all__ = ["FlowGraph"]


class FlowGraph:
    """The wired graph of a flow: topology, observation hooks and snapshots."""

    # Set by the kernel when it builds the flow.
    _nodes: tuple[Node, ...]
    _floes: tuple[Floe, ...]
    _endpoint_contexts: dict[Endpoint, Context]
    _runtimes: list[NodeRuntime]
    _runtime_of: dict[Owner, NodeRuntime]
    _hooks: Hooks
    _traces: dict[str, Trace]
    _subs: dict[str, View]
    _port: KernelPort
    _streams: StreamCounters
    _client_streams: StreamCounters
    _tasks: list[asyncio.Task[None]]
    _running: bool
    _stopped: bool
    _queue_maxsize: int
    _registry: AdapterSource | None
    _retry_budget: int | None
    _errors_to_rookery: bool

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
        return tuple(floe.target for floe in self._ports_of(node).outs)

    def predecessors(self, node: Node) -> tuple[Owner, ...]:
        """The sources of ``node``'s incoming edges (``OPEN_SEA`` for an ingress node)."""
        return tuple(floe.source for floe in self._ports_of(node).ins)

    def context(self, owner: Owner) -> Context:
        """The context of a node of this flow, or of ``OPEN_SEA`` / ``ROOKERY``."""
        if isinstance(owner, Endpoint) and owner in self._endpoint_contexts:
            return self._endpoint_contexts[owner]
        return self._node(owner).ctx

    def _node(self, owner: object) -> NodeRuntime:
        """The runtime record of a node of this flow; the error names a stranger."""
        try:
            return self._runtime_of[owner]  # type: ignore[index]  # anything may be asked
        except (KeyError, TypeError):
            raise UnknownNodeError(
                f"{name_of(owner)} is not a node of this flow (nodes: "
                + ", ".join(repr(n.name) for n in self._nodes)
                + ")"
            ) from None

    def _ports_of(self, node: Node) -> Ports:
        return self._node(node).ports

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

    @property
    def middlewares(self) -> tuple[Middleware, ...]:
        """The middlewares now attached, in the order they receive events."""
        return self._hooks.middlewares

    @property
    def retry_budget(self) -> int | None:
        """Retries one request may spend across all nodes (``create(retry_budget=...)``)."""
        return self._retry_budget

    @property
    def emit_errors_to_rookery(self) -> bool:
        """Whether a node giving up delivers a ``FlowError`` to Rookery for every trace."""
        return self._errors_to_rookery

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<PenguiFlow {len(self._nodes)} nodes, {len(self._floes)} floes, {state}>"

    # -- per-trace views ----------------------------------------------------------------

    def subscribe(self, trace_id: str, *, errors: bool = False) -> Subscription:
        """Divert the Rookery output of one trace into a bounded, per-trace iterator.

        Use it as ``async with flow.subscribe(msg.trace_id) as results:``; iteration ends
        when the trace is done, cancelled, or the flow stops (``results.done``). With
        ``errors=True`` a node giving up on the trace delivers a ``FlowError`` to it (as
        ``create(..., emit_errors_to_rookery=True)`` does for every trace).

        Raises:
            FlowRuntimeError: The trace already has a subscription.
        """
        self._unviewed(trace_id)
        sub = Subscription(
            self._port, self._subs, trace_id, seen=trace_id in self._traces, errors=errors
        )
        self._subs[trace_id] = sub
        return sub

    def _watch(self, trace_id: str) -> Outcome:
        """The ``Outcome`` view ``invoke`` waits on (same rules as ``subscribe``)."""
        if trace_id in self._subs:
            self._unviewed(trace_id)  # raises
        view = Outcome(self._subs, trace_id, trace_id in self._traces, asyncio.get_running_loop())
        self._subs[trace_id] = view
        return view

    def _unviewed(self, trace_id: str) -> None:
        if trace_id in self._subs:
            raise FlowRuntimeError(
                f"trace {trace_id} already has a subscription; close it (aclose()) first"
            )

    # -- hooks and probes ---------------------------------------------------------------

    def add_middleware(self, mw: Middleware) -> None:
        """Append a middleware; it receives every later event, even while running."""
        self._hooks.add_middleware(mw)

    def remove_middleware(self, mw: Middleware) -> bool:
        """Remove a middleware (its first registration); return False if it was not there."""
        return self._hooks.remove_middleware(mw)

    def on_trace_cancel(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(trace_id)`` when a cancel of that trace starts."""
        return self._hooks.on_cancel(callback)

    def on_trace_done(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(trace_id)`` when a trace's pending count reaches 0."""
        return self._hooks.on_done(callback)

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` on every ``stop()``, after the workers are gone."""
        return self._hooks.on_stop(callback)

    def register_probe(
        self, name: str, probe: Callable[[], Mapping[str, int]]
    ) -> Callable[[], None]:
        """Report per-trace state held outside core (shown in ``inspect().resources``)."""
        return self._hooks.add_probe(name, probe)

    # -- introspection ------------------------------------------------------------------

    def inspect(self) -> FlowSnapshot:
        """Return a read-only snapshot of nodes, edges, live traces and probes."""
        # Loaded on first use: snapshots are for tools and tests, not ``import penguiflow``.
        from ._snapshot import snapshot

        return snapshot(
            running=self._running,
            queue_maxsize=self._queue_maxsize,
            runtimes=self._runtimes,
            floes=self._floes,
            traces=self._traces,
            streams=self._streams.open_streams(self._client_streams),
            probes=self._hooks,
            workers=sum(1 for t in self._tasks if not t.done()),
            subscriptions=len(self._subs),
        )

    async def wait_ended(self, trace_id: str, *, timeout: float | None = None) -> bool:
        """Wait until nothing of the trace is queued, running or held; False on timeout."""
        trace = self._traces.get(trace_id)
        if trace is None or self._stopped:
            return True
        if trace.ended is None:
            trace.ended = ParkingLot()
        return await trace.ended.wait(timeout)
