"""Workers: take requests from the stream, run each with ``flow.request``, write the outcome.

One worker process runs the whole flow in-process and serves whole requests:

1. ``XREADGROUP`` takes up to ``concurrency`` new entries (``XAUTOCLAIM`` first takes
   entries another worker has left idle for ``claim_idle_s``: it died).
2. Each entry becomes ``flow.request(message)``; its chunks are appended to the client's
   reply stream as they come.
3. The outcome, the ``XACK`` and ``XDEL`` of the entry and the deletion of the request's
   keys go in one ``MULTI``/``EXEC``: either all of them happen or none does. A worker
   killed before that leaves the entry pending, and another worker runs the request again
   (at-least-once).

While a request runs, its entry is re-claimed by its own worker every ``claim_idle_s / 3``
(``XCLAIM ... JUSTID``), so a long request is never taken over while its worker lives.

On shutdown the worker stops reading, lets in-flight requests finish for ``grace_s``,
cancels the rest and hands every entry still pending under its name back to the stream
(re-added, then acknowledged, in one script), then deletes its consumer name: nothing stays
claimed.

An entry that has been delivered ``max_deliveries`` times, and whose worker stopped each
time (it is idle again), is not delivered again: it moves to the dead-letter stream and
the client gets a ``FlowError`` with code ``DELIVERY_LIMIT``.

A lost connection never ends a worker: reading, the cancel subscription and the
maintenance loop each wait a little and try again (``_retry``); after a Redis restart
without persistence the consumer groups are created again, and requests Redis forgot are
cancelled here (nobody waits for them any more). An entry without the fields clients
write goes to the dead-letter stream.

``Worker`` holds the stream mechanics for any list of streams; ``_RequestWorker`` serves
whole requests, and ``penguiflow.redis._nodes`` serves some nodes of a flow (``--nodes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Final

from penguiflow.core import PenguiFlow, Request
from penguiflow.errors import (
    FlowBuildError,
    FlowError,
    FlowRuntimeError,
    FlowStoppedError,
    FlowTypeError,
    TraceCancelled,
)
from penguiflow.registry import ModelRegistry
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError, ResponseError

from ._batch import Batcher
from ._codec import Codec, encode_error, local_error
from ._keys import GROUP, Keys
from ._retry import Backoff, is_lost, is_no_group, room_poll
from ._scripts import BURY, CLAIM, HAND_BACK, RENEW

__all__ = [
    "CANCEL_TTL_S",
    "LIVE_TTL_S",
    "REPLY_HIGH",
    "REPLY_TTL_S",
    "REPLY_XADD",
    "Held",
    "Worker",
    "WorkerSettings",
    "ensure_group",
    "open_redis",
    "queue_marked",
    "run_worker",
    "send_reply",
    "stop_task",
]

logger = logging.getLogger("penguiflow.redis")

# redis-py types every command's reply as a union of an awaitable and a value; the replies
# are parsed where they are read, so the connection is typed loosely here.
Connection = Any

REPLY_TTL_S: Final = 300
"""Lifetime of a reply stream after its last write (refreshed by every write and read)."""
REPLY_HIGH: Final = 10_000
"""A worker sending chunks waits while the client's reply stream holds this many unread
entries (its client is behind); replies are never trimmed, so none is lost."""
LIVE_TTL_S: Final = 86_400
"""Lifetime of a request's live-entry count after its last change (a request running
longer than this across ``--nodes`` workers may end with ``NO_RESULT``)."""
CANCEL_TTL_S: Final = 600
"""How long a cancel waits for a worker to pick its request up (then it is forgotten)."""
DEAD_MAXLEN: Final = 10_000
"""The dead-letter stream keeps about this many entries (the oldest go first)."""
# Replies go only to a stream its client created (and deletes when it closes): the outcome
# of a request whose client is gone is dropped instead of recreating the stream.
REPLY_XADD: Final[dict[str, Any]] = {"nomkstream": True}
_BLOCK_S: Final = 1.0
"""Longest blocking read; well under redis-py's default socket timeout (5 s)."""


class WorkerSettings:
    """How one worker serves: its name, concurrency and timings."""

    __slots__ = (
        "claim_idle_s",
        "concurrency",
        "grace_s",
        "max_deliveries",
        "name",
        "nodes",
        "stream_maxlen",
    )

    def __init__(
        self,
        *,
        name: str | None = None,
        concurrency: int = 32,
        claim_idle_s: float = 15.0,
        grace_s: float = 30.0,
        max_deliveries: int = 5,
        nodes: tuple[str, ...] | None = None,
        stream_maxlen: int = 1000,
    ) -> None:
        if max_deliveries < 1:
            raise FlowBuildError(f"max_deliveries must be at least 1, got {max_deliveries}")
        if stream_maxlen < 1:
            raise FlowBuildError(f"stream_maxlen must be at least 1, got {stream_maxlen}")
        if nodes is not None and not nodes:
            raise FlowBuildError("--nodes names no node; give at least one (a,b) or omit it")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if not claim_idle_s > 0:
            raise ValueError(f"claim_idle_s must be positive, got {claim_idle_s}")
        if grace_s < 0:
            raise ValueError(f"grace_s must be zero or positive, got {grace_s}")
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.concurrency = concurrency
        self.claim_idle_s = claim_idle_s
        self.grace_s = grace_s
        self.max_deliveries = max_deliveries
        self.nodes = nodes
        self.stream_maxlen = stream_maxlen


class Held:
    """One entry this worker has taken and not yet acknowledged or handed back.

    ``tag`` names the send of the request the entry belongs to (``""`` for an entry from a
    client that sends none): every reply echoes it, so the client gives the reply to that
    send only, never to a later send of the same message.
    """

    __slots__ = ("cancelled", "ended", "entry_id", "fields", "request", "stream", "tag", "trace_id")

    def __init__(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        self.stream = stream
        self.entry_id = entry_id
        self.fields = fields
        self.trace_id = fields[b"t"].decode()
        self.tag = fields.get(b"g", b"").decode()
        self.cancelled = False
        self.ended = asyncio.Event()
        self.request: Request[object] | None = None


def _next_id(entry_id: bytes | str) -> str:
    """The smallest stream id after ``entry_id``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, seq = text.split("-")
    return f"{ms}-{int(seq) + 1}"


class Worker:
    """The stream mechanics of a worker: read, claim, bury, lease, hand back, trim.

    Subclasses say which streams to serve (``streams``), how to serve one entry
    (``_serve_entry``), how to cancel the send an entry they hold belongs to
    (``_cancel_held``), and start and stop the flow that runs the nodes (``_start_flow``,
    ``_stop_flow``).
    """

    def __init__(
        self,
        flow: PenguiFlow,
        registry: ModelRegistry | None,
        redis: Connection,
        keys: Keys,
        settings: WorkerSettings,
        streams: list[str],
    ) -> None:
        self._flow = flow
        self._registry = registry
        self._codec = Codec(flow, registry)
        self._redis = redis
        self._keys = keys
        self._settings = settings
        self._streams = streams
        self._name = settings.name
        self._held: dict[bytes, Held] = {}
        # Entries held per stream: each stream has its own ``concurrency`` slots, so
        # entries blocked sending downstream never keep this worker from taking the
        # downstream entries that would unblock them.
        self._count: dict[str, int] = dict.fromkeys(streams, 0)
        # Held entries per trace, in the order taken: a re-sent request (same trace id) can
        # arrive while its earlier send still runs here.
        self._by_trace: dict[str, list[Held]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = False
        self._halt = asyncio.Event()  # ends the maintenance loop (after the drain)
        self._pubsub: Any = None  # the cancel channel's subscription, while it is open
        self._lease_s = max(1, round(3 * settings.claim_idle_s))
        self._hand_back = redis.register_script(HAND_BACK)
        self._bury = redis.register_script(BURY)
        self._claim = redis.register_script(CLAIM)
        self._renew = redis.register_script(RENEW)
        self._batch = Batcher(redis, transaction=False)
        self._atomic = Batcher(redis, transaction=True)

    # -- what subclasses provide ----------------------------------------------------------

    def _start_flow(self) -> None:
        raise NotImplementedError

    async def _stop_flow(self) -> None:
        raise NotImplementedError

    async def _serve_entry(self, held: Held) -> None:
        raise NotImplementedError

    async def _cancel_held(self, held: Held) -> None:
        raise NotImplementedError

    def _node_of(self, stream: str) -> str:
        """The node a stream's entries go to ("" for the request stream)."""
        prefix = self._keys.node("")
        return stream[len(prefix) :] if stream.startswith(prefix) else ""

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        redis, keys = self._redis, self._keys
        for stream in self._streams:
            await ensure_group(redis, stream)
        # Subscribed before the flow starts, so no cancel of a request it takes is missed.
        self._pubsub = redis.pubsub()
        await self._pubsub.subscribe(keys.cancel_channel)
        self._start_flow()
        listener = asyncio.create_task(self._listen(), name="penguiflow.redis:cancels")
        maintainer = asyncio.create_task(self._maintain(), name="penguiflow.redis:maintain")
        background = [listener, maintainer]
        reader = asyncio.create_task(self._read(), name="penguiflow.redis:read")
        stopping = asyncio.create_task(stop.wait())
        failed: BaseException | None = None
        try:
            done, _ = await asyncio.wait(
                [stopping, reader, *background], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not stopping and not task.cancelled():
                    failed = task.exception()
        finally:
            stopping.cancel()
            # The reader is cancelled at once; entries a cut-short read gave this worker
            # are pending under its name and handed back below. A cancel that meets
            # redis-py's read timeout can be lost: then the reader ends after its current
            # blocking read (at most _BLOCK_S), seeing the flag.
            self._stopping = True
            self._room.set()
            reader.cancel()
            await stop_task(reader, _BLOCK_S + 2)
            await self._drain()
            # Leases are renewed until here. A cancel that lands in a Redis read can be
            # lost, so the maintenance loop ends on a flag, and the listener's connection
            # is closed under it if the cancel does not end it.
            self._halt.set()
            listener.cancel()
            for task in background:
                await stop_task(task, _BLOCK_S + 2)
            await self._close_pubsub()
            await self._stop_flow()
            for stream in self._streams:
                try:
                    await self._hand_back_all(stream)
                    await self._forget_me(stream)
                except RedisError as exc:
                    # Redis is unreachable: what this worker holds stays pending under its
                    # name, and another worker takes it over after claim_idle_s.
                    logger.warning(
                        "worker %s could not hand back its entries of %s: %r",
                        self._name,
                        stream,
                        exc,
                    )
        if failed is not None:
            raise failed

    async def _ride_out(self, exc: RedisError, what: str, backoff: Backoff) -> None:
        """Wait out a lost connection, or create a lost consumer group again; raise the rest.

        A Redis restarted without persistence has no stream and no group: they are created
        again, and requests sent since are served (the group reads from the start).
        """
        if is_no_group(exc):
            logger.warning(
                "worker %s: the streams' consumer group is gone (Redis restarted?); "
                "creating it again",
                self._name,
            )
            try:
                for stream in self._streams:
                    await ensure_group(self._redis, stream)
            except RedisError as again:
                if not is_lost(again):
                    raise
        elif not is_lost(exc):
            raise exc
        elif not backoff.failing:
            logger.warning(
                "worker %s lost its Redis connection while %s (%s); retrying",
                self._name,
                what,
                exc,
            )
        await backoff.wait()

    async def _drain(self) -> None:
        """Let in-flight entries finish for ``grace_s``; cancel the rest."""
        tasks = set(self._tasks)
        if not tasks:
            return
        late = tasks
        if self._settings.grace_s > 0:
            _, late = await asyncio.wait(tasks, timeout=self._settings.grace_s)
        for task in late:
            task.cancel()
        if late:
            logger.info("worker %s hands back %d entries", self._name, len(late))
            await asyncio.gather(*late, return_exceptions=True)

    async def _hand_back_all(self, stream: str) -> None:
        """Give every entry still pending under this worker back to the stream."""
        redis, keys = self._redis, self._keys
        while True:
            pending = await redis.xpending_range(
                stream, GROUP, min="-", max="+", count=100, consumername=self._name
            )
            if not pending:
                return
            for row in pending:
                entry_id = row["message_id"]
                found = await redis.xrange(stream, min=entry_id, max=entry_id)
                if not found:  # trimmed away: nothing to hand back
                    await redis.xack(stream, GROUP, entry_id)
                    continue
                fields = found[0][1]
                trace = fields.get(b"t", b"").decode()
                args: list[Any] = [GROUP, entry_id, self._name]
                for key, value in fields.items():
                    args += [key, value]
                await self._hand_back(keys=[stream, keys.running(trace)], args=args)

    async def _forget_me(self, stream: str) -> None:
        """Delete this worker's consumer name once nothing is pending under it."""
        redis = self._redis
        for consumer in await redis.xinfo_consumers(stream, GROUP):
            if _text(consumer["name"]) == self._name and consumer["pending"] == 0:
                await redis.xgroup_delconsumer(stream, GROUP, self._name)

    # -- taking entries -------------------------------------------------------------------

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        claim_every = self._settings.claim_idle_s / 2
        next_claim = loop.time()
        backoff = Backoff()
        while not self._stopping:
            await self._room.wait()
            if self._stopped():  # set while this task waited for room
                return
            try:
                if loop.time() >= next_claim:
                    next_claim = loop.time() + claim_every
                    await self._claim_idle()
                await self._read_new()
            except RedisError as exc:
                await self._ride_out(exc, "reading its streams", backoff)
            else:
                backoff.reset()

    async def _claim_idle(self) -> None:
        """Bury entries delivered too often; take over idle ones (their worker died)."""
        name = self._name
        min_idle_ms = max(1, int(self._settings.claim_idle_s * 1000))
        for stream in self._open():
            await self._bury_idle(stream, min_idle_ms)
            args = [GROUP, name, min_idle_ms, self._free(stream), self._settings.max_deliveries]
            reply = await self._claim(keys=[stream], args=args)
            claimed = [
                (entry_id, _fields(flat))
                for entry_id, flat in reply or ()
                if flat and entry_id not in self._held
            ]
            if claimed:
                logger.info("worker %s took over %d idle entries", name, len(claimed))
            await self._take(stream, claimed)

    async def _read_new(self) -> None:
        open_streams = self._open()
        if not open_streams:
            return
        block_s = min(self._settings.claim_idle_s / 2, _BLOCK_S)
        found = await self._redis.xreadgroup(
            GROUP,
            self._name,
            dict.fromkeys(open_streams, ">"),
            count=min(self._free(s) for s in open_streams),
            block=max(1, int(block_s * 1000)),
        )
        for stream, entries in found or ():
            await self._take(_text(stream), entries)

    async def _take(self, stream: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Start serving the entries; move those no client could have written aside."""
        good = []
        for entry_id, fields in entries:
            problem = _malformed(fields)
            if problem is None:
                good.append((entry_id, fields))
            else:
                await self._reject(stream, entry_id, fields, problem)
        self._start(stream, good)

    async def _reject(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], problem: str
    ) -> None:
        """Move an entry this worker cannot serve to the dead-letter stream, at once."""
        dead = self._keys.dead
        flat: dict[Any, Any] = dict(fields)
        flat.update({"stream": stream, "entry": entry_id, "rejected": problem})

        def reject(pipe: Any) -> None:
            pipe.xadd(dead, flat, maxlen=DEAD_MAXLEN, approximate=True)
            pipe.xack(stream, GROUP, entry_id)
            pipe.xdel(stream, entry_id)

        await self._atomic.run(reject)
        logger.warning(
            "worker %s moved entry %s of %s to %s: %s (only penguiflow.redis clients and "
            "workers may write to this stream)",
            self._name,
            _text(entry_id),
            stream,
            dead,
            problem,
        )

    def _stopped(self) -> bool:
        return self._stopping

    def _free(self, stream: str) -> int:
        return self._settings.concurrency - self._count[stream]

    def _open(self) -> list[str]:
        """The streams with a free slot; when there is none, the reader waits for room."""
        found = [s for s in self._streams if self._free(s) > 0]
        if not found:
            self._room.clear()
        return found

    def _start(self, stream: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for entry_id, fields in entries:
            held = Held(stream, entry_id, fields)
            self._held[entry_id] = held
            self._count[stream] += 1
            self._by_trace.setdefault(held.trace_id, []).append(held)
            task = asyncio.create_task(self._serve(held), name=f"penguiflow.redis:{entry_id!r}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._open()

    async def _serve(self, held: Held) -> None:
        try:
            await self._serve_entry(held)
        except Exception:
            # Redis went away mid-request, for example: the entry stays pending and is
            # handed back at shutdown or taken over by another worker.
            logger.exception("worker %s could not finish trace %s", self._name, held.trace_id)
        finally:
            del self._held[held.entry_id]
            self._count[held.stream] -= 1
            same = self._by_trace[held.trace_id]
            same.remove(held)
            if not same:
                del self._by_trace[held.trace_id]
            held.ended.set()
            self._room.set()

    # -- entries delivered too often ------------------------------------------------------

    async def _bury_idle(self, stream: str, min_idle_ms: int) -> None:
        """Move idle entries delivered ``max_deliveries`` times to the dead-letter stream."""
        limit = self._settings.max_deliveries
        rows = await self._redis.xpending_range(
            stream, GROUP, min="-", max="+", count=100, idle=min_idle_ms
        )
        for row in rows:
            if row["times_delivered"] >= limit and row["message_id"] not in self._held:
                await self._bury_one(stream, row, min_idle_ms)

    async def _bury_one(self, stream: str, row: dict[str, Any], min_idle_ms: int) -> None:
        redis, keys = self._redis, self._keys
        entry_id = row["message_id"]
        found = await redis.xrange(stream, min=entry_id, max=entry_id)
        if not found:
            return  # deleted meanwhile; the next claim drops it from the pending list
        fields = found[0][1]
        trace = fields.get(b"t", b"").decode()
        tag = fields.get(b"g", b"").decode()
        reply = fields.get(b"r", b"").decode() or keys.client("none")
        deliveries, worker = row["times_delivered"], _text(row["consumer"])
        node = self._node_of(stream)
        what = f"the item for node {node!r}" if node else "the request"
        text = (
            f"trace {trace}: {what} was delivered {deliveries} times and each time the worker "
            f"running it stopped before finishing (last: worker {worker}); it was moved to the "
            f"dead-letter stream {keys.dead}. Fix what brings the worker down (a crash, "
            "os._exit, running out of memory), or raise --max-deliveries"
        )
        error = FlowError(
            trace_id=trace,
            node_name=node,
            node_id="",
            code="DELIVERY_LIMIT",
            attempts=deliveries,
            original=None,
            message=text,
        )
        buried = await self._bury(
            keys=[
                stream,
                keys.dead,
                reply,
                keys.live(trace),
                keys.running(trace),
                keys.cancelled(trace),
                keys.cancelled_runs(trace),
            ],
            args=[
                GROUP,
                entry_id,
                self._name,
                min_idle_ms,
                encode_error(error),
                DEAD_MAXLEN,
                trace,
                deliveries,
                worker,
                REPLY_TTL_S,
                CANCEL_TTL_S,
                keys.cancel_channel,
                tag,
            ],
        )
        if buried:
            logger.warning(
                "worker %s moved %s of trace %s to %s after %d deliveries",
                self._name,
                what,
                trace,
                keys.dead,
                deliveries,
            )

    # -- cancels, leases, trimming --------------------------------------------------------

    async def _listen(self) -> None:
        """Cancel what the cancel channel names; resubscribe after a lost connection.

        A note names a trace; of the entries of it this worker holds, those whose send is
        marked cancelled are cancelled (a cancel of one send leaves a later send of the
        same message running).
        """
        backoff = Backoff()
        while True:
            try:
                if self._pubsub is None:
                    self._pubsub = self._redis.pubsub()
                    await self._pubsub.subscribe(self._keys.cancel_channel)
                    # Cancels published while the connection was down never arrive: the
                    # cancelled keys of the requests this worker holds still say so.
                    await self._cancel_marked()
                    backoff.reset()
                async for note in self._pubsub.listen():
                    if note.get("type") != "message":
                        continue
                    held = self._by_trace.get(_text(note["data"]))
                    if held:
                        await self._cancel_marked(list(held))
            except RedisError as exc:
                await self._close_pubsub()
                await self._ride_out(exc, "listening for cancels", backoff)

    async def _cancel_marked(self, held: list[Held] | None = None) -> None:
        """Cancel the held entries (all of them by default) whose send is marked cancelled."""
        if held is None:
            held = [h for same in self._by_trace.values() for h in same]
        if not held:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for h in held:
                queue_marked(pipe, self._keys, h)
            replies = await pipe.execute()
        for i, h in enumerate(held):
            if any(replies[2 * i : 2 * i + 2]):
                await self._cancel_held(h)

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except RedisError as exc:  # the connection is gone already
                logger.debug("closing the cancel subscription: %r", exc)

    def _lease_keys(self, held: Held) -> list[tuple[str, int]]:
        """Per-request keys (and lifetimes) this worker keeps alive while it holds ``held``."""
        return [(self._keys.running(held.trace_id), self._lease_s)]

    async def _maintain(self) -> None:
        """Keep this worker's entries and keys alive; trim the streams."""
        every = self._settings.claim_idle_s / 3
        forget_idle_ms = int(max(60.0, 10 * self._settings.claim_idle_s) * 1000)
        rounds = 0
        backoff = Backoff()
        while not self._halt.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await self._halt.wait()
            if self._halt.is_set():
                return
            try:
                await self._maintain_once(rounds, forget_idle_ms)
            except RedisError as exc:
                await self._ride_out(exc, "renewing its leases", backoff)
            else:
                backoff.reset()
            rounds += 1

    async def _maintain_once(self, rounds: int, forget_idle_ms: int) -> None:
        redis = self._redis
        held = list(self._held.values())
        if held:
            claimed: set[bytes] = set()
            leases = [(h, key, ttl) for h in held for key, ttl in self._lease_keys(h)]
            async with redis.pipeline(transaction=False) as pipe:
                for stream in self._streams:
                    ids = [h.entry_id for h in held if h.stream == stream]
                    if ids:
                        pipe.xclaim(
                            stream,
                            GROUP,
                            self._name,
                            min_idle_time=0,
                            message_ids=ids,
                            justid=True,
                        )
                for _, key, ttl in leases:
                    pipe.expire(key, ttl, xx=True)
                replies = await pipe.execute()
            for reply in replies[: len(replies) - len(leases)]:
                claimed.update(reply)
            await self._drop_lost(held, claimed)
            renewed = replies[len(replies) - len(leases) :]
            for (h, key, ttl), kept in zip(leases, renewed, strict=True):
                if not kept and h.entry_id in claimed and key == self._keys.running(h.trace_id):
                    # It expired while Redis was out of reach: a cancel checks it to know
                    # the request still runs.
                    await self._renew(
                        keys=[h.stream, key], args=[GROUP, h.entry_id, self._name, self._name, ttl]
                    )
        for stream in self._streams:
            await trim_stream(redis, stream)
        if rounds % 10 == 9:
            for stream in self._streams:
                await self._forget_dead(stream, forget_idle_ms)

    async def _drop_lost(self, held: list[Held], claimed: set[bytes]) -> None:
        """Cancel what runs for entries Redis no longer has (it restarted, or was flushed).

        Only this worker acknowledges what it holds, so a held entry its lease renewal
        could not claim is gone: no client waits for its outcome any more.
        """
        for h in held:
            if h.entry_id not in claimed and self._held.get(h.entry_id) is h:
                logger.warning(
                    "worker %s: entry %s of trace %s is gone from Redis; cancelling it",
                    self._name,
                    _text(h.entry_id),
                    h.trace_id,
                )
                await self._cancel_held(h)

    async def _forget_dead(self, stream: str, idle_ms: int) -> None:
        """Delete consumer names of workers long gone with nothing pending."""
        redis = self._redis
        for consumer in await redis.xinfo_consumers(stream, GROUP):
            name = _text(consumer["name"])
            if name != self._name and consumer["pending"] == 0 and consumer["idle"] > idle_ms:
                await redis.xgroup_delconsumer(stream, GROUP, name)


class _RequestWorker(Worker):
    """Serves whole requests: every node of a request runs in this process."""

    def _start_flow(self) -> None:
        self._flow.run(registry=self._registry)

    async def _stop_flow(self) -> None:
        await self._flow.stop()

    async def _cancel_held(self, held: Held) -> None:
        held.cancelled = True
        if held.request is not None:
            await held.request.cancel()

    async def _serve_entry(self, held: Held) -> None:
        # A trace runs once at a time in a flow: an earlier send of the same message still
        # running here (left by its caller, and being cancelled) ends first.
        same = self._by_trace[held.trace_id]
        for earlier in same[: same.index(held)]:
            await earlier.ended.wait()
        outcome = await self._outcome(held)
        if outcome is not None:
            await self._finish(held, outcome)

    async def _outcome(self, held: Held) -> dict[str, Any] | None:
        """Run the request; return the fields of its outcome, or None to hand it back."""
        keys, trace = self._keys, held.trace_id

        def start(pipe: Any) -> None:
            queue_marked(pipe, keys, held)
            pipe.set(keys.running(trace), self._name, ex=self._lease_s)

        *marked, _ = await self._batch.run(start)
        if any(marked) or _cancelled(held):
            return {"o": "cancelled"}
        try:
            message = self._codec.decode_message(held.fields)
        except (ValueError, KeyError) as exc:
            text = f"cannot rebuild the request: {exc}"
            return _error(local_error(trace, "INVALID_REQUEST", text))
        try:
            async with self._flow.request(message) as req:
                held.request = req
                if _cancelled(held):  # the cancel came while the message was entering
                    await req.cancel()
                while (chunk := await req.next_chunk()) is not None:
                    await self._send(held, {"o": "chunk", "p": chunk.model_dump_json()})
                try:
                    item = await req.result()
                except FlowError as exc:
                    return _error(exc)
                except TraceCancelled:
                    return {"o": "cancelled"}
        except FlowStoppedError:
            return None
        except FlowRuntimeError as exc:
            return _error(local_error(trace, "INVALID_REQUEST", str(exc)))
        finally:
            held.request = None
        try:
            return {"o": "result", **self._codec.encode_result(item)}
        except FlowTypeError as exc:
            return _error(local_error(trace, "UNSERIALIZABLE", f"the result {exc}"))

    async def _send(self, held: Held, fields: dict[str, Any]) -> None:
        reply, entry = held.fields[b"r"], {"t": held.trace_id, "g": held.tag, **fields}
        await send_reply(self._batch, reply, entry, lambda: held.cancelled)

    async def _finish(self, held: Held, fields: dict[str, Any]) -> None:
        """Write the outcome, acknowledge the entry and drop the request's keys, at once."""
        keys, trace = self._keys, held.trace_id
        reply = held.fields[b"r"]

        def finish(pipe: Any) -> None:
            pipe.xadd(reply, {"t": trace, "g": held.tag, **fields}, **REPLY_XADD)
            pipe.expire(reply, REPLY_TTL_S)
            pipe.xack(held.stream, GROUP, held.entry_id)
            pipe.xdel(held.stream, held.entry_id)
            pipe.delete(keys.running(trace), keys.cancelled(trace), keys.live(trace))
            if held.tag:
                pipe.srem(keys.cancelled_runs(trace), held.tag)

        await self._atomic.run(finish)


async def send_reply(
    batch: Batcher, reply: bytes, fields: dict[str, Any], give_up: Callable[[], bool]
) -> None:
    """Append a chunk to a client's reply stream; wait while the client is behind.

    The wait holds the node that emits the chunks, as a full in-process edge would, until
    the client has read below ``REPLY_HIGH``, its stream is gone, or ``give_up()``.
    """

    def send(pipe: Any) -> None:
        pipe.xadd(reply, fields, **REPLY_XADD)
        pipe.expire(reply, REPLY_TTL_S)
        pipe.xlen(reply)

    *_, length = await batch.run(send)
    backoff = room_poll()
    while length >= REPLY_HIGH and not give_up():
        await backoff.wait()
        (length,) = await batch.run(lambda pipe: pipe.xlen(reply))


def queue_marked(pipe: Any, keys: Keys, held: Held) -> None:
    """Queue the two checks of whether ``held``'s send is cancelled; either true says so.

    A cancel marks every send of the trace (its ``cancelled`` key), or one send (its tag
    among the trace's cancelled runs).
    """
    pipe.exists(keys.cancelled(held.trace_id))
    pipe.sismember(keys.cancelled_runs(held.trace_id), held.tag)


def open_redis(url: str, connections: int) -> Connection:
    """A client whose pool holds at most ``connections``; callers beyond wait for one."""
    pool = BlockingConnectionPool.from_url(url, max_connections=connections, timeout=None)
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


async def ensure_group(redis: Connection, stream: str) -> None:
    """Create a stream and its consumer group, unless they exist."""
    try:
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def trim_stream(redis: Connection, stream: str) -> None:
    """Drop the entries every worker is done with (older than any pending one)."""
    summary = await redis.xpending(stream, GROUP)
    if summary["pending"]:
        min_id = summary["min"]
    else:
        groups = await redis.xinfo_groups(stream)
        last = next((g["last-delivered-id"] for g in groups if _text(g["name"]) == GROUP), None)
        if last is None:
            return
        min_id = _next_id(last)
    await redis.xtrim(stream, minid=min_id, approximate=False)


def _malformed(fields: dict[bytes, bytes]) -> str | None:
    """Why an entry cannot be served, or None; every entry a client or worker writes passes."""
    for name in (b"t", b"r", b"g"):
        value = fields.get(name)
        if not value:
            if name == b"g":  # the send's tag; clients before it was added send none
                continue
            return f"it has no {name.decode()!r} field"
        try:
            value.decode()
        except UnicodeDecodeError:
            return f"its {name.decode()!r} field is not UTF-8 text"
    return None


def _cancelled(held: Held) -> bool:
    return held.cancelled


def _error(error: FlowError) -> dict[str, Any]:
    return {"o": "error", "p": encode_error(error)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    """An entry's fields as a script returns them (name, value, ...), as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def stop_task(task: asyncio.Task[Any], timeout: float) -> None:
    """Wait for a task told to end; cancel it if it has not ended after ``timeout``.

    A cancel that lands in a Redis read can be lost; a task still running ``timeout``
    after its cancel is left behind (closing its connection ends it). Its own failure is
    logged, not raised: it is stopping anyway.
    """
    await asyncio.wait([task], timeout=timeout)
    if not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=timeout)
        if not task.done():
            logger.warning("%s did not stop; closing its connection", task.get_name())
            return
    if not task.cancelled() and task.exception() is not None:
        logger.warning("%s ended with %r", task.get_name(), task.exception())


async def run_worker(
    flow: PenguiFlow,
    url: str,
    *,
    registry: ModelRegistry | None,
    prefix: str,
    settings: WorkerSettings,
    stop: asyncio.Event,
) -> None:
    """Serve ``flow`` from Redis until ``stop`` is set; see ``penguiflow.redis.serve``."""
    keys = Keys(prefix)
    worker_type: Any = _RequestWorker
    streams = [keys.requests]
    placement = None
    if settings.nodes is not None:
        from ._nodes import NodeWorker, Placement

        placement = Placement(flow, settings.nodes, keys)
        if not placement.everything:
            worker_type, streams = NodeWorker, placement.streams
    redis: Connection = open_redis(url, settings.concurrency + 8)
    try:
        worker = worker_type(flow, registry, redis, keys, settings, streams)
        if placement is not None and not placement.everything:
            worker.place(placement)
        await worker.run(stop)
    finally:
        await redis.aclose()
