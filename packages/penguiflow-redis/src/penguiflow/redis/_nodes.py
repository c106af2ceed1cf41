"""Node-level placement (``--nodes a,b``): this process serves some nodes of the flow.

From the flow's public topology the worker builds a *fragment*: an in-process flow made of

- the served nodes themselves (the same ``Node`` objects, policies and registry), wired to
  each other as in the flow;
- for every edge from a served node to a node served elsewhere, a forwarding node with the
  target's name that appends the item to the target's stream, ``{prefix}:node:{name}``
  (waiting while that stream is full), and emits nothing;
- for a served node fed both from here and from elsewhere, an entry node that passes the
  items arriving from Redis on to it.

Items arriving from Redis are emitted into the fragment (``emit(item, to=...)``); what
reaches the fragment's Rookery is the request's result and goes to the client.

All the entries of one send of a trace that this worker holds form one *session*: one
subscription on the fragment for the trace, fed by each entry as it arrives. Each entry
keeps the trace live (``ctx.hold``) until it is emitted, so the trace cannot end between
two entries. When the trace ends in the fragment (its subscription drains), the session's
entries are acknowledged, in one script that also counts them done in
``{prefix}:live:{trace}``: the number of entries of the request not yet done anywhere.
Every forward adds one. The worker whose acknowledgement brings it to zero knows the
request ended everywhere and, if no result was sent, tells the client it ended without one
(``NO_RESULT``), as in-process.

Entries carry the tag of their send onward, and every reply echoes it. An entry of a later
send of the same trace (the message sent again after its caller left the first) waits
here for the earlier send's session to end: a trace runs once at a time in the fragment.

Placement rules, checked when the worker starts (``Placement``):

- a node on a loop (a cycle of several nodes) is served with every node of the loop; a
  controller's self-loop stays in its process;
- a node with more than one incoming edge (a join, such as ``join_k``) is served with
  every node that leads to it, so the items of one request meet in one process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from penguiflow.core import (
    OPEN_SEA,
    Context,
    PenguiFlow,
    Subscription,
    create,
    no_result_error,
    trace_id_of,
)
from penguiflow.errors import FlowBuildError, FlowError, FlowRuntimeError, FlowTypeError
from penguiflow.metrics import FlowEvent
from penguiflow.middlewares import Middleware
from penguiflow.node import Node, NodePolicy
from penguiflow.types import Message, StreamChunk

from ._codec import encode_error, local_error
from ._keys import GROUP, Keys
from ._retry import room_poll
from ._scripts import FINISH, FORWARD
from ._worker import (
    LIVE_TTL_S,
    REPLY_TTL_S,
    REPLY_XADD,
    Held,
    Worker,
    queue_marked,
    send_reply,
)

__all__ = ["NodeWorker", "Placement"]

logger = logging.getLogger("penguiflow.redis")


class Placement:
    """Which nodes of a flow this worker serves, checked against the placement rules.

    Raises:
        FlowBuildError: A name is not a node of the flow, or the placement splits a loop
            or a join (the message names the node and the nodes to add).
    """

    __slots__ = ("everything", "flow", "ingress", "keys", "remote_fed", "served", "streams")

    def __init__(self, flow: PenguiFlow, names: Sequence[str], keys: Keys) -> None:
        by_name = {node.name: node for node in flow.nodes}
        listing = ", ".join(by_name)
        for name in names:
            if name not in by_name:
                raise FlowBuildError(
                    f"--nodes: {name!r} is not a node of this flow; its nodes are: {listing}"
                )
        wanted = set(names)
        served = [node for node in flow.nodes if node.name in wanted]
        self.flow = flow
        self.keys = keys
        self.served: tuple[Node, ...] = tuple(served)
        self.everything = len(served) == len(flow.nodes)
        _check(flow, set(served))
        here = set(served)
        # Served nodes that take the flow's requests, and those fed from other processes:
        # by a predecessor served elsewhere, or (an entry node) by a worker that took a
        # request and serves only the flow's other entry nodes.
        entries = [n for n in flow.nodes if OPEN_SEA in flow.predecessors(n)]
        self.ingress = [n for n in entries if n in here]
        split_entry = len(self.ingress) < len(entries)
        self.remote_fed = [
            n
            for n in served
            if (split_entry and n in self.ingress)
            or any(p is not OPEN_SEA and p is not n and p not in here for p in flow.predecessors(n))
        ]
        streams = [keys.requests] if self.ingress else []
        streams += [keys.node(n.name) for n in self.remote_fed]
        self.streams = streams


def _reach(flow: PenguiFlow, start: Node, forward: bool) -> set[Node]:
    """The nodes reachable from ``start`` along edges (or against them)."""
    seen: set[Node] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        near = flow.successors(node) if forward else flow.predecessors(node)
        for other in near:
            if isinstance(other, Node) and other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def _check(flow: PenguiFlow, served: set[Node]) -> None:
    """Refuse placements that split a loop or a join across processes."""
    for node in flow.nodes:
        if node not in served:
            continue
        after = _reach(flow, node, forward=True)
        before = _reach(flow, node, forward=False)
        loop = [m for m in flow.nodes if m is not node and m in after and m in before]
        missing = [m.name for m in loop if m not in served]
        if missing:
            raise FlowBuildError(
                f"--nodes: node {node.name!r} is on a loop with "
                + ", ".join(repr(m) for m in missing)
                + ", which this worker does not serve; a loop runs in one process, so serve "
                f"its nodes together: --nodes {_names(flow, served, missing)}"
            )
        feeders = {p for p in flow.predecessors(node) if p is not node}
        if len(feeders) > 1:
            missing = [m.name for m in flow.nodes if m in before and m not in served]
            if missing:
                raise FlowBuildError(
                    f"--nodes: node {node.name!r} gathers items from {len(feeders)} incoming "
                    "edges (a join); the items of one request must meet in one process, so "
                    "serve it together with every node that leads to it: --nodes "
                    f"{_names(flow, served, missing)}"
                )


def _names(flow: PenguiFlow, served: set[Node], extra: list[str]) -> str:
    wanted = {n.name for n in served} | set(extra)
    return ",".join(n.name for n in flow.nodes if n.name in wanted)


class _Session:
    """The entries of one send of a trace this worker holds, and its view on the fragment."""

    __slots__ = ("cancelled", "closed", "entries", "open", "reply", "sub", "tag", "trace_id")

    def __init__(self, trace_id: str, tag: str, reply: bytes, sub: Subscription) -> None:
        self.trace_id = trace_id
        self.tag = tag
        self.reply = reply
        self.sub = sub
        self.entries: list[Held] = []
        self.open = True
        self.cancelled = False
        self.closed = asyncio.Event()

    def joinable(self) -> bool:
        """True while an entry may still join: the trace has not ended in the fragment.

        The subscription ends the moment the trace ends, before the session's task wakes
        up to close it; an entry arriving in between starts a new session.
        """
        return self.open and self.sub.done is None


class NodeWorker(Worker):
    """Serves the nodes of a ``Placement``: runs its fragment, forwards the rest."""

    _placement: Placement
    _fragment: PenguiFlow
    _targets: dict[str, list[Node]]
    _forward_on_request: list[str]

    def place(self, placement: Placement) -> None:
        """Build the fragment for ``placement`` (before ``run``)."""
        self._placement = placement
        self._sessions: dict[str, _Session] = {}
        self._forward_script = self._redis.register_script(FORWARD)
        self._finish_script = self._redis.register_script(FINISH)
        flow, keys = placement.flow, placement.keys
        here = set(placement.served)
        proxies: dict[Node, Node] = {}

        def proxy(target: Node) -> Node:
            if target not in proxies:
                proxies[target] = Node(
                    self._forwarder(target.name),
                    name=target.name,
                    # One at a time, so items leave in the order they came (as on an edge).
                    policy=NodePolicy(validate="none"),
                )
            return proxies[target]

        adjacencies: list[tuple[Node, tuple[Node, ...]]] = []
        entry_of: dict[Node, Node] = {}
        for node in placement.served:
            successors = [
                (s if s in here else proxy(s)) for s in flow.successors(node) if isinstance(s, Node)
            ]
            adjacencies.append(node.to(*successors))
        for node in placement.served:
            local = [p for p in flow.predecessors(node) if p is not node and p in here]
            if node in placement.remote_fed and local:
                relay = Node(
                    _relay, name=f"{node.name} (from Redis)", policy=NodePolicy(validate="none")
                )
                adjacencies.append(relay.to(node))
                entry_of[node] = relay
            else:
                entry_of[node] = node
        adjacencies += [p.to() for p in proxies.values()]
        # The flow's middlewares see the events of the nodes this worker runs, not those of
        # the forwarding and relay nodes, which stand in for nodes that run elsewhere.
        stand_ins = {p.node_id for p in proxies.values()}
        stand_ins |= {n.node_id for n in entry_of.values() if n not in here}

        def only_served(mw: Middleware) -> Middleware:
            async def middleware(event: FlowEvent) -> None:
                if event.node_id not in stand_ins:
                    await mw(event)

            return middleware

        self._fragment = create(
            *adjacencies,
            queue_maxsize=flow.queue_maxsize,
            allow_cycles=True,
            middlewares=[only_served(mw) for mw in flow.middlewares],
            retry_budget=flow.retry_budget,
            emit_errors_to_rookery=flow.emit_errors_to_rookery,
        )
        self._targets = {keys.requests: [entry_of[n] for n in placement.ingress]}
        for node in placement.remote_fed:
            self._targets[keys.node(node.name)] = [entry_of[node]]
        served_names = {n.name for n in placement.served}
        self._forward_on_request = [
            n.name
            for n in flow.nodes
            if OPEN_SEA in flow.predecessors(n) and n.name not in served_names
        ]

    # -- the fragment ---------------------------------------------------------------------

    def _start_flow(self) -> None:
        self._fragment.run(registry=self._registry)

    async def _stop_flow(self) -> None:
        await self._fragment.stop()

    async def _cancel_held(self, held: Held) -> None:
        session = self._sessions.get(held.trace_id)
        if session is None or session.tag != held.tag:
            return
        # A chunk send waiting for the client to read gives up too: nobody waits for the
        # rest of this send's chunks.
        session.cancelled = True
        if self._fragment.is_running:
            await self._fragment.cancel(held.trace_id)

    def _lease_keys(self, held: Held) -> list[tuple[str, int]]:
        return [(self._keys.live(held.trace_id), LIVE_TTL_S)]

    def _forwarder(self, target: str) -> Any:
        async def forward(item: Any, ctx: Context) -> None:
            await self._forward(target, item)

        forward.__qualname__ = forward.__name__ = f"forward_to_{target}"
        return forward

    async def _forward(self, target: str, item: Any) -> None:
        """Append ``item`` to node ``target``'s stream, waiting while it is full."""
        trace = trace_id_of(item)
        session = None if trace is None else self._sessions.get(trace)
        if trace is None or session is None:
            raise FlowRuntimeError(
                f"node {target!r} runs in another process, and the item sent to it carries "
                f"no trace id ({type(item).__name__}); send Message envelopes between nodes "
                "placed in different processes"
            )
        try:
            encoded = self._codec.encode_result(item)
        except FlowTypeError as exc:
            raise FlowTypeError(f"the item sent to node {target!r}: {exc}") from exc
        await self._append(target, {"t": trace, "r": session.reply, "g": session.tag, **encoded})

    async def _append(self, target: str, fields: dict[str, Any]) -> None:
        keys = self._keys
        args: list[Any] = [self._settings.stream_maxlen, LIVE_TTL_S]
        for key, value in fields.items():
            args += [key, value]
        stream_keys = [keys.node(target), keys.live(_text(fields["t"]))]
        backoff = room_poll()
        while not await self._forward_script(keys=stream_keys, args=args):
            # The stream is full: its workers are behind (or there are none yet). Wait,
            # as an in-process edge would; a cancel of the trace interrupts the wait.
            await backoff.wait()

    # -- sessions -------------------------------------------------------------------------

    async def _serve_entry(self, held: Held) -> None:
        trace = held.trace_id
        while (old := self._sessions.get(trace)) is not None and not (
            old.joinable() and old.tag == held.tag
        ):
            # The trace's last session is closing, or belongs to an earlier send of it.
            await old.closed.wait()
        session = self._sessions.get(trace)
        if session is None:
            sub = self._fragment.subscribe(trace, errors=True)
            session = _Session(trace, held.tag, held.fields[b"r"], sub)
            self._sessions[trace] = session
            task = asyncio.create_task(self._drive(session), name=f"penguiflow.redis:{trace}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        session.entries.append(held)
        # Keep the trace live until the entry is in the fragment: it cannot end meanwhile.
        release = self._fragment.context(OPEN_SEA).hold(trace)
        try:
            await self._feed(session, held)
        finally:
            release()
        await session.closed.wait()

    async def _feed(self, session: _Session, held: Held) -> None:
        """Emit one entry's item into the fragment (and forward a request's other parts)."""
        trace = held.trace_id
        if any(await self._batch.run(lambda pipe: queue_marked(pipe, self._keys, held))):
            await self._fragment.cancel(trace)  # cancelled while the entry waited: skip it
            return
        if held.stream == self._keys.requests:
            for name in self._forward_on_request:
                fields = {k.decode(): v for k, v in held.fields.items()}
                await self._append(name, {**fields, "m": "1"})
        try:
            if held.stream == self._keys.requests:
                item: Any = self._codec.decode_message(held.fields)
            else:
                item = self._codec.decode_result(held.fields)
        except (ValueError, KeyError) as exc:
            error = local_error(trace, "INVALID_REQUEST", f"cannot rebuild an item: {exc}")
            await self._send(session, {"o": "error", "p": encode_error(error)})
            return
        await self._fragment.emit(item, to=self._targets[held.stream])

    async def _drive(self, session: _Session) -> None:
        """Send the trace's chunks and first outcome to the client; finish at its end."""
        trace, sub = session.trace_id, session.sub
        answered = lost = False
        try:
            while True:
                try:
                    item = await sub.get()
                except StopAsyncIteration:
                    break
                if isinstance(item, Message) and isinstance(item.payload, StreamChunk):
                    chunk = item.payload.model_dump_json()
                    await self._send(session, {"o": "chunk", "p": chunk})
                elif not answered:
                    answered = True
                    await self._send(session, self._outcome_fields(trace, item))
        except Exception:
            # The client could not be told (Redis went away): acknowledge nothing, so the
            # entries run again, here or in another worker.
            logger.exception("worker %s lost trace %s", self._name, trace)
            lost = True
            if self._fragment.is_running:
                await self._fragment.cancel(trace)
        finally:
            session.open = False
            await sub.aclose()
            if self._sessions.get(trace) is session:
                del self._sessions[trace]
            end = sub.done
            try:
                if not lost and end in ("drained", "cancelled"):
                    note = "cancelled" if end == "cancelled" else ""
                    await self._finish(session, note, sub.last_node)
            except Exception:
                # Redis went away, for example: the entries stay pending and are handed
                # back at shutdown or taken over by another worker.
                logger.exception("worker %s could not finish trace %s", self._name, trace)
            finally:
                session.closed.set()

    def _outcome_fields(self, trace: str, item: Any) -> dict[str, Any]:
        if isinstance(item, FlowError):
            return {"o": "error", "p": encode_error(item)}
        try:
            return {"o": "result", **self._codec.encode_result(item)}
        except FlowTypeError as exc:
            error = local_error(trace, "UNSERIALIZABLE", f"the result {exc}")
            return {"o": "error", "p": encode_error(error)}

    async def _send(self, session: _Session, fields: dict[str, Any]) -> None:
        reply, entry = session.reply, {"t": session.trace_id, "g": session.tag, **fields}
        if fields["o"] == "chunk":
            await send_reply(
                self._batch, reply, entry, lambda: self._stopped() or session.cancelled
            )
            return

        def send(pipe: Any) -> None:
            pipe.xadd(reply, entry, **REPLY_XADD)
            pipe.expire(reply, REPLY_TTL_S)

        await self._batch.run(send)

    async def _finish(self, session: _Session, note: str, last_node: str | None) -> None:
        keys, trace = self._keys, session.trace_id
        entries = session.entries
        await self._finish_script(
            keys=[keys.live(trace), keys.cancelled(trace), session.reply]
            + [keys.cancelled_runs(trace)]
            + [h.stream for h in entries],
            args=[
                GROUP,
                len(entries),
                note,
                encode_error(no_result_error(trace, last_node)),
                trace,
                REPLY_TTL_S,
                session.tag,
            ]
            + [h.entry_id for h in entries],
        )


async def _relay(item: Any, ctx: Context) -> Any:
    """Pass an item arriving from Redis on to the node it is for."""
    return item


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
