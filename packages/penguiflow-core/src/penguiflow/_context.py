"""``Context``: what a node function receives as ``ctx``.

A context is one owner's handle on its flow: it emits on the owner's outgoing edges,
fetches from its incoming ones, streams chunks, reports events and calls playbooks. It
reaches the kernel only through a ``KernelPort``, the small set of calls the kernel hands
to each context it builds.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ._chunks import StreamCounters, chunk_envelope
from ._edges import Floe, Inbox, Owner, Ports, name_of
from .errors import FlowNotRunningError
from .node import Node
from .types import Message, StreamChunk

if TYPE_CHECKING:
    from ._edges import Entry, Trace
    from ._events import Hooks
    from ._playbook import SubflowFactory
    from .inspect import FlowSnapshot

__all__ = ["Context", "Ending", "Hold", "KernelPort", "Runtime", "wired_context"]


class Runtime(Protocol):
    """The running flow as nodes and components see it through ``ctx.runtime``.

    ``PenguiFlow`` is the implementation; this names what a node may rely on.
    """

    @property
    def is_running(self) -> bool: ...

    @property
    def queue_maxsize(self) -> int: ...

    async def emit(self, msg: Any, to: Node | Sequence[Node] | None = None) -> None: ...

    def emit_nowait(self, msg: Any, to: Node | Sequence[Node] | None = None) -> None: ...

    async def fetch(self, from_: Node | Sequence[Node] | None = None) -> Any: ...

    async def invoke(
        self, message: Any, *, timeout: float | None = None, to: Node | Sequence[Node] | None = None
    ) -> Any: ...

    async def cancel(self, trace_id: str) -> bool: ...

    async def stop(self) -> None: ...

    def inspect(self) -> FlowSnapshot: ...

    def on_trace_cancel(self, callback: Callable[[str], None]) -> Callable[[], None]: ...

    def on_trace_done(self, callback: Callable[[str], None]) -> Callable[[], None]: ...

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]: ...

    def register_probe(
        self, name: str, probe: Callable[[], Mapping[str, int]]
    ) -> Callable[[], None]: ...

    def context(self, owner: Owner) -> Context: ...

    def successors(self, node: Node) -> tuple[Owner, ...]: ...

    def predecessors(self, node: Node) -> tuple[Owner, ...]: ...


class Ending(Protocol):
    """A reader that stops once ``done`` is set (a ``Subscription``)."""

    @property
    def done(self) -> str | None: ...


class KernelPort:
    """The kernel's calls a ``Context`` (or a ``Subscription``) makes; built once per flow.

    The operations are the kernel's own methods, bound to the flow on first use and kept:
    a call through the port then costs what a method call on the flow would, and a flow
    built per call (a playbook) binds only the few it uses.

    Args:
        flow: The kernel.
        hooks: Its hooks.
        queue_maxsize: Its edges' capacity.
        streams: Its stream counters.
        traces: Its live traces.
        ops: Operation name -> the kernel's function for it, unbound, where it is not the
            kernel's method of the same name with a leading underscore (one table per
            kernel class, shared by its flows).
    """

    __slots__ = (
        "_bound",
        "_flow",
        "cancel_ended",
        "consume",
        "expire",
        "fetch",
        "hooks",
        "offer",
        "ops",
        "play",
        "queue_maxsize",
        "release",
        "running",
        "send",
        "send_nowait",
        "send_rest",
        "streams",
        "take",
        "trace",
        "traces",
        "wait_trace_capacity",
    )
    send: Callable[[Sequence[Floe], Any], Awaitable[None] | None]
    """Enqueue on the edges; returns what to await only when one is full."""
    send_nowait: Callable[[Sequence[Floe], Any], None]
    fetch: Callable[[Inbox, set[Floe] | None, Ending | None], Awaitable[Any]]
    take: Callable[[Inbox, set[Floe] | None], Entry | None]
    consume: Callable[[Entry], Any]
    """Complete a fetched entry's accounting; events of a finished cancel are scheduled."""
    wait_trace_capacity: Callable[[str, Owner], Awaitable[None]]
    play: Callable[[Any, Any, float | None], Awaitable[Any]]
    """Run a playbook under this flow (cancel mirrored): (factory, message, timeout)."""
    trace: Callable[[str], Trace]
    """The live trace of an id, started if there is none."""
    release: Callable[[Trace], bool]
    """Finish one counted item of a trace; True when a cancelled trace just ended."""
    cancel_ended: Callable[[str], None]
    """Report that a cancelled trace has ended (after ``release`` returned True)."""
    expire: Callable[[Owner, Message], Awaitable[None]]
    """Answer a trace's deadline from a component (at most once per trace)."""
    offer: Callable[[Sequence[Floe], Any, Trace | None, int], int]
    """Enqueue without waiting; returns where a full edge stopped it."""
    send_rest: Callable[[Sequence[Floe], Any, Trace | None, int], Awaitable[None]]
    """Finish a send stopped at a full edge, waiting for room."""

    def __init__(
        self,
        *,
        flow: Runtime,
        hooks: Hooks,
        queue_maxsize: int,
        streams: StreamCounters,
        traces: Mapping[str, Trace],
        ops: Mapping[str, Callable[..., Any]],
    ) -> None:
        # Weak, and the operations bound to the flow are forgotten when it stops (see
        # ``unbind``): the flow holds its port, so a strong reference back would make a
        # stopped flow a reference cycle, freed only by the garbage collector.
        self._flow: weakref.ref[Runtime] = weakref.ref(flow)
        self._bound: list[str] = []
        self.running: bool = False
        """Whether the flow runs (kept by the kernel: read per chunk, without the flow)."""
        self.hooks: Hooks = hooks
        self.queue_maxsize: int = queue_maxsize
        self.streams: StreamCounters = streams
        """The flow's stream counters: sequence numbers run per stream id, flow-wide."""
        self.traces: Mapping[str, Trace] = traces
        """The flow's live traces by id (read-only here; the kernel owns them)."""
        self.ops: Mapping[str, Callable[..., Any]] = ops

    @property
    def flow(self) -> Runtime:
        """The flow (alive while anything can still call through this port)."""
        flow = self._flow()
        if flow is None:
            raise FlowNotRunningError("this context's flow no longer exists")
        return flow

    def unbind(self) -> None:
        """Forget the bound operations; each binds again on its next use."""
        bound, self._bound = self._bound, []
        for name in bound:
            object.__delattr__(self, name)

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            # Only reached for an operation not bound yet (its slot is empty).
            if name.startswith("_"):
                raise AttributeError(name)
            flow = self.flow
            func = self.ops.get(name) or getattr(type(flow), f"_{name}", None)
            if func is None:
                raise AttributeError(name)
            bound = func.__get__(flow)
            object.__setattr__(self, name, bound)
            self._bound.append(name)
            return bound


class Hold:
    """A component's hold on a trace (``ctx.hold``): calling it releases the hold, once.

    The hold counts as one item of the trace from its creation to its release, so the
    trace does not end in between. One small object per hold, not a closure: a join
    holds every trace that passes through it, and short-lived garbage there costs
    collections.
    """

    __slots__ = ("_kernel", "_trace")

    def __init__(self, kernel: KernelPort, trace: Trace) -> None:
        self._kernel: KernelPort | None = kernel
        self._trace = trace
        trace.pending += 1

    def __call__(self) -> None:
        kernel = self._kernel
        if kernel is not None:
            self._kernel = None
            trace = self._trace
            if kernel.release(trace):
                kernel.cancel_ended(trace.trace_id)


class Context:
    """What a node function receives as ``ctx``: emit, stream, fetch, call playbooks.

    The runtime creates one context per node and one for each of OpenSea and Rookery.
    A context built by hand (``Context(node)``) has no runtime; it is useful to call
    ``Node.invoke`` directly, and its ``emit`` raises.
    """

    __slots__ = ("_kernel", "_node_name", "_outs", "_ports", "_streams", "attempt", "message")

    def __init__(self, owner: Owner, runtime: Runtime | None = None) -> None:
        self._streams: StreamCounters | None = None
        if runtime is None:
            self._ports = Ports(owner)
            self._kernel: KernelPort | None = None
        else:
            wired = runtime.context(owner)
            self._ports = wired._ports
            self._kernel = wired._kernel
            self._streams = wired._streams
        self._outs = self._ports.outs
        self._node_name = owner.name if isinstance(owner, Node) else None
        self.message: Any = None
        """The envelope (or bare item) the current invocation was handed, exactly as it
        arrived, even when the node function receives only its validated payload; use it
        to stream (``parent=ctx.message``), call a playbook under the same trace, or read
        headers and meta. ``None`` outside an invocation."""
        self.attempt: int = 1
        """The attempt of the invocation in progress, starting at 1 (retries count up).

        Read it inside the node function; outside an invocation it reads 1. Only a retry
        writes it, so a first attempt costs nothing to number."""

    def __repr__(self) -> str:
        return f"Context({name_of(self._ports.owner)})"

    @property
    def owner(self) -> Owner:
        """The node or endpoint this context belongs to."""
        return self._ports.owner

    @property
    def idempotency_key(self) -> str:
        """A key for making the current invocation's side effects idempotent.

        The same across the retries of one item at this node, and across a redelivery of
        the same request to another process; different for other items and other
        nodes. Derived from the trace id, the node's name and the item's content, and
        computed only when read.
        """
        import hashlib  # read rarely: keep it off ``import penguiflow``

        item = self.message
        if isinstance(item, Message):
            content = item.model_dump_json(include={"payload", "headers", "trace_id"})
            trace_id = item.trace_id
        else:
            content = repr(item)
            trace_id = ""
        digest = hashlib.sha256(
            f"{trace_id}\x1f{self._ports.owner.name}\x1f{content}".encode()
        ).hexdigest()
        return digest[:32]

    @property
    def runtime(self) -> Runtime | None:
        """The flow this context belongs to, or ``None`` for a detached context."""
        kernel = self._kernel
        return None if kernel is None else kernel.flow

    # -- topology ---------------------------------------------------------------

    def outgoing_count(self) -> int:
        """Number of outgoing edges."""
        return len(self._outs)

    def queue_depth_in(self) -> int:
        """Items queued on the incoming edges."""
        return sum(floe.live for floe in self._ports.ins)

    def queue_depth_out(self) -> int:
        """Items queued on the outgoing edges."""
        return sum(floe.live for floe in self._outs)

    def _attached(self) -> KernelPort:
        kernel = self._kernel
        if kernel is None:
            raise FlowNotRunningError(
                "Context is not attached to a running flow; contexts built by hand "
                "(Context(node)) can call Node.invoke but cannot emit or fetch"
            )
        return kernel

    # -- emitting ----------------------------------------------------------------

    async def emit(self, msg: Any, to: Owner | Sequence[Owner] | None = None) -> None:
        """Send ``msg`` on the outgoing edges (all of them, or those towards ``to``).

        Waits while a destination edge is full (backpressure).

        Raises:
            UnknownNodeError: A target is not an outgoing neighbour (a ``KeyError``).
            FlowNotRunningError: The context is detached.
        """
        kernel = self._attached()
        blocked = kernel.send(self._outs if to is None else self._ports.targets(to), msg)
        if blocked is not None:
            await blocked

    def emit_nowait(self, msg: Any, to: Owner | Sequence[Owner] | None = None) -> None:
        """Like ``emit``, but raise ``asyncio.QueueFull`` instead of waiting.

        Every target is checked before anything is enqueued, so a failed call enqueues
        nothing.
        """
        kernel = self._attached()
        kernel.send_nowait(self._outs if to is None else self._ports.targets(to), msg)

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

        Sequence numbers run per ``stream_id`` of a trace across the whole flow, so two
        nodes writing the same stream of a request never repeat one, and another request
        using the same ``stream_id`` numbers its own from 0; ``chunk.node`` names the
        emitting node.

        Follow-up chunks wait for per-trace capacity: the producer stays at most about one
        queue's worth ahead of the unconsumed output of its trace, so a slow reader slows
        its own producer and nobody else's.
        """
        kernel = self._attached()
        trace_id = parent.trace_id
        sid = stream_id or trace_id
        streams = self._streams or kernel.streams
        seq, first = streams.advance(trace_id, sid, seq)
        chunk, envelope = chunk_envelope(parent, sid, seq, text, done, meta, self._node_name)
        maxsize = kernel.queue_maxsize
        if not first and maxsize > 0:
            # Room for the trace (the common case) is seen here, without a coroutine.
            trace = kernel.hooks.traces.get(trace_id)
            if (trace is not None and trace.pending - 1 >= maxsize) or not kernel.running:
                await kernel.wait_trace_capacity(trace_id, self._ports.owner)
        blocked = kernel.send(self._outs if to is None else self._ports.targets(to), envelope)
        if blocked is not None:
            await blocked
        if done:
            streams.close(trace_id, sid)
        return chunk

    # -- fetching ------------------------------------------------------------------

    async def fetch(self, from_: Owner | Sequence[Owner] | None = None) -> Any:
        """Return the next item from the incoming edges (optionally only from ``from_``)."""
        kernel = self._attached()
        ports = self._ports
        return await kernel.fetch(ports.inbox, ports.sources(from_), None)

    async def fetch_any(self, from_: Owner | Sequence[Owner] | None = None) -> Any:
        """Return whichever incoming item is available first (same as ``fetch``)."""
        return await self.fetch(from_)

    def fetch_nowait(self, from_: Owner | Sequence[Owner] | None = None) -> Any:
        """Return an item available now, or raise ``asyncio.QueueEmpty``."""
        kernel = self._attached()
        ports = self._ports
        entry = kernel.take(ports.inbox, ports.sources(from_))
        if entry is None:
            raise asyncio.QueueEmpty("no messages available")
        return kernel.consume(entry)

    def hold(self, trace_id: str) -> Callable[[], None]:
        """Keep ``trace_id`` live while a component holds its items outside the edges.

        A join bucket, for example, holds items between arrivals; while held, the trace
        has not ended, so whoever waits for its outcome keeps waiting. Call the returned
        function once the items are released, emitted or dropped; calling it again does
        nothing. Release on ``flow.on_trace_cancel`` and ``flow.on_stop`` too.
        """
        kernel = self._kernel  # ``_attached()``, inline: a join holds every trace
        if kernel is None:
            kernel = self._attached()
        return Hold(kernel, kernel.traces.get(trace_id) or kernel.trace(trace_id))

    async def deadline_exceeded(self, message: Message) -> None:
        """Answer ``message``'s trace with ``FinalAnswer("Deadline exceeded")`` at Rookery.

        For components that hold work past its ``deadline_s`` (a join bucket that expires):
        the trace gets the same answer as when a node finds an expired message, and at
        most one per trace.
        """
        await self._attached().expire(self._ports.owner, message)

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
        hooks = self._attached().hooks
        if hooks.observed(level):
            await hooks.emit(
                event_type, ports=self._ports, level=level, trace_id=trace_id, extra=extra
            )

    async def call_playbook(
        self, playbook: SubflowFactory, parent_msg: Any, *, timeout: float | None = None
    ) -> Any:
        """Run ``playbook`` as a subflow for ``parent_msg``; see :func:`call_playbook`.

        Cancelling the trace in this flow cancels it in the subflow too.
        """
        kernel = self._kernel
        if kernel is None:
            from ._playbook import run_playbook

            return await run_playbook(playbook, parent_msg, timeout)
        return await kernel.play(playbook, parent_msg, timeout)


def wired_context(
    ports: Ports, kernel: KernelPort, streams: StreamCounters | None = None
) -> Context:
    """The context of a wired owner; the kernel builds one per node and endpoint.

    Nodes share the flow's stream counters (``kernel.streams``); ``streams`` gives an
    owner counters of its own (OpenSea: streams a client feeds chunk by chunk).
    """
    ctx = Context.__new__(Context)
    ctx._ports = ports
    ctx._kernel = kernel
    ctx._streams = kernel.streams if streams is None else streams
    ctx._outs = ports.outs
    owner = ports.owner
    ctx._node_name = owner.name if isinstance(owner, Node) else None
    ctx.message = None
    ctx.attempt = 1
    return ctx
