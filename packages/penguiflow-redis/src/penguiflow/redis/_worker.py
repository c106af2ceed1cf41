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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any, Final

from penguiflow.core import PenguiFlow, Request
from penguiflow.errors import (
    FlowError,
    FlowRuntimeError,
    FlowStoppedError,
    FlowTypeError,
    TraceCancelled,
)
from penguiflow.registry import ModelRegistry
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ResponseError

from ._batch import Batcher
from ._codec import Codec, encode_error, local_error
from ._keys import GROUP, Keys

__all__ = ["WorkerSettings", "run_worker"]

logger = logging.getLogger("penguiflow.redis")

# redis-py types every command's reply as a union of an awaitable and a value; the replies
# are parsed where they are read, so the connection is typed loosely here.
Connection = Any

REPLY_TTL_S: Final = 300
"""Lifetime of a reply stream after its last write (refreshed by every write and read)."""
REPLY_MAXLEN: Final = 100_000
# Replies go only to a stream its client created (and deletes when it closes): the outcome
# of a request whose client is gone is dropped instead of recreating the stream.
_REPLY: Final[dict[str, Any]] = {"maxlen": REPLY_MAXLEN, "approximate": True, "nomkstream": True}
_BLOCK_S: Final = 1.0
"""Longest blocking read; well under redis-py's default socket timeout (5 s)."""
"""Hard cap on a reply stream's length; clients delete what they read long before."""

# Hand an entry back: if it is still pending under this worker, re-add its fields as a new
# entry and acknowledge and delete the old one, atomically (so it is never both handed
# back and done).
_HAND_BACK: Final = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"""


class WorkerSettings:
    """How one worker serves: its name, concurrency and timings."""

    __slots__ = ("claim_idle_s", "concurrency", "grace_s", "name")

    def __init__(
        self,
        *,
        name: str | None = None,
        concurrency: int = 32,
        claim_idle_s: float = 15.0,
        grace_s: float = 30.0,
    ) -> None:
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


class _Held:
    """One entry this worker has taken and not yet acknowledged or handed back."""

    __slots__ = ("cancelled", "entry_id", "fields", "request", "trace_id")

    def __init__(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        self.entry_id = entry_id
        self.fields = fields
        self.trace_id = fields[b"t"].decode()
        self.cancelled = False
        self.request: Request | None = None


def _next_id(entry_id: bytes | str) -> str:
    """The smallest stream id after ``entry_id``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, seq = text.split("-")
    return f"{ms}-{int(seq) + 1}"


class _Worker:
    def __init__(
        self,
        flow: PenguiFlow,
        registry: ModelRegistry | None,
        redis: Connection,
        keys: Keys,
        settings: WorkerSettings,
    ) -> None:
        self._flow = flow
        self._registry = registry
        self._codec = Codec(flow, registry)
        self._redis = redis
        self._keys = keys
        self._settings = settings
        self._name = settings.name
        self._held: dict[bytes, _Held] = {}
        self._by_trace: dict[str, _Held] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = False
        self._lease_s = max(1, round(3 * settings.claim_idle_s))
        self._hand_back = redis.register_script(_HAND_BACK)
        self._batch = Batcher(redis, transaction=False)
        self._atomic = Batcher(redis, transaction=True)

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        redis, keys = self._redis, self._keys
        await ensure_group(redis, keys)
        pubsub = redis.pubsub()
        await pubsub.subscribe(keys.cancel_channel)
        self._flow.run(registry=self._registry)
        background = [
            asyncio.create_task(self._listen(pubsub), name="penguiflow.redis:cancels"),
            asyncio.create_task(self._maintain(), name="penguiflow.redis:maintain"),
        ]
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
            # The reader ends after its current blocking read (at most _BLOCK_S): a cancel
            # that meets redis-py's read timeout can be lost, so it is only the fallback.
            self._stopping = True
            self._room.set()
            await stop_task(reader, _BLOCK_S + 2)
            await self._drain()
            for task in background:
                await _cancel_and_wait(task)
            await pubsub.aclose()
            await self._flow.stop()
            await self._hand_back_all()
            await self._forget_me()
        if failed is not None:
            raise failed

    async def _drain(self) -> None:
        """Let in-flight requests finish for ``grace_s``; cancel the rest."""
        tasks = set(self._tasks)
        if not tasks:
            return
        late = tasks
        if self._settings.grace_s > 0:
            _, late = await asyncio.wait(tasks, timeout=self._settings.grace_s)
        for task in late:
            task.cancel()
        if late:
            logger.info("worker %s hands back %d request(s)", self._name, len(late))
            await asyncio.gather(*late, return_exceptions=True)

    async def _hand_back_all(self) -> None:
        """Give every entry still pending under this worker back to the stream."""
        redis, keys = self._redis, self._keys
        while True:
            pending = await redis.xpending_range(
                keys.requests, GROUP, min="-", max="+", count=100, consumername=self._name
            )
            if not pending:
                return
            for row in pending:
                entry_id = row["message_id"]
                found = await redis.xrange(keys.requests, min=entry_id, max=entry_id)
                if not found:  # trimmed away: nothing to hand back
                    await redis.xack(keys.requests, GROUP, entry_id)
                    continue
                fields = found[0][1]
                trace = fields.get(b"t", b"").decode()
                args: list[Any] = [GROUP, entry_id, self._name]
                for key, value in fields.items():
                    args += [key, value]
                await self._hand_back(keys=[keys.requests, keys.running(trace)], args=args)

    async def _forget_me(self) -> None:
        """Delete this worker's consumer name once nothing is pending under it."""
        redis, keys = self._redis, self._keys
        for consumer in await redis.xinfo_consumers(keys.requests, GROUP):
            if _text(consumer["name"]) == self._name and consumer["pending"] == 0:
                await redis.xgroup_delconsumer(keys.requests, GROUP, self._name)

    # -- taking entries -------------------------------------------------------------------

    async def _read(self) -> None:
        redis, keys, name = self._redis, self._keys, self._name
        loop = asyncio.get_running_loop()
        claim_every = self._settings.claim_idle_s / 2
        min_idle_ms = max(1, int(self._settings.claim_idle_s * 1000))
        block_ms = max(1, int(min(claim_every, _BLOCK_S) * 1000))
        next_claim = loop.time()
        while not self._stopping:
            await self._room.wait()
            if self._stopped():  # set while this task waited for room
                return
            if loop.time() >= next_claim:
                next_claim = loop.time() + claim_every
                reply = await redis.xautoclaim(
                    keys.requests,
                    GROUP,
                    name,
                    min_idle_time=min_idle_ms,
                    start_id="0-0",
                    count=self._free(),
                )
                claimed = [e for e in reply[1] if e[1] and e[0] not in self._held]
                if claimed:
                    logger.info("worker %s took over %d idle request(s)", name, len(claimed))
                self._start(claimed)
                if not self._free():
                    continue
            streams = await redis.xreadgroup(
                GROUP, name, {keys.requests: ">"}, count=self._free(), block=block_ms
            )
            for _stream, entries in streams or ():
                self._start(entries)

    def _stopped(self) -> bool:
        return self._stopping

    def _free(self) -> int:
        return self._settings.concurrency - len(self._held)

    def _start(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for entry_id, fields in entries:
            held = _Held(entry_id, fields)
            self._held[entry_id] = held
            self._by_trace.setdefault(held.trace_id, held)
            task = asyncio.create_task(self._serve(held), name=f"penguiflow.redis:{entry_id!r}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not self._free():
            self._room.clear()

    # -- serving one request --------------------------------------------------------------

    async def _serve(self, held: _Held) -> None:
        try:
            outcome = await self._outcome(held)
            if outcome is not None:
                await self._finish(held, outcome)
        except Exception:
            # Redis went away mid-request, for example: the entry stays pending and is
            # handed back at shutdown or taken over by another worker.
            logger.exception("worker %s could not finish trace %s", self._name, held.trace_id)
        finally:
            del self._held[held.entry_id]
            if self._by_trace.get(held.trace_id) is held:
                del self._by_trace[held.trace_id]
            self._room.set()

    async def _outcome(self, held: _Held) -> dict[str, Any] | None:
        """Run the request; return the fields of its outcome, or None to hand it back."""
        keys, trace = self._keys, held.trace_id

        def start(pipe: Any) -> None:
            pipe.exists(keys.cancelled(trace))
            pipe.set(keys.running(trace), self._name, ex=self._lease_s)

        marked, _ = await self._batch.run(start)
        if marked or _cancelled(held):
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

    async def _send(self, held: _Held, fields: dict[str, Any]) -> None:
        reply = held.fields[b"r"]

        def send(pipe: Any) -> None:
            pipe.xadd(reply, {"t": held.trace_id, **fields}, **_REPLY)
            pipe.expire(reply, REPLY_TTL_S)

        await self._batch.run(send)

    async def _finish(self, held: _Held, fields: dict[str, Any]) -> None:
        """Write the outcome, acknowledge the entry and drop the request's keys, at once."""
        keys, trace = self._keys, held.trace_id
        reply = held.fields[b"r"]

        def finish(pipe: Any) -> None:
            pipe.xadd(reply, {"t": trace, **fields}, **_REPLY)
            pipe.expire(reply, REPLY_TTL_S)
            pipe.xack(keys.requests, GROUP, held.entry_id)
            pipe.xdel(keys.requests, held.entry_id)
            pipe.delete(keys.running(trace), keys.cancelled(trace))

        await self._atomic.run(finish)

    # -- cancels, leases, trimming --------------------------------------------------------

    async def _listen(self, pubsub: Any) -> None:
        async for note in pubsub.listen():
            if note.get("type") != "message":
                continue
            held = self._by_trace.get(_text(note["data"]))
            if held is None:
                continue
            held.cancelled = True
            if held.request is not None:
                await held.request.cancel()

    async def _maintain(self) -> None:
        """Keep this worker's entries and keys alive; trim the request stream."""
        redis, keys = self._redis, self._keys
        every = self._settings.claim_idle_s / 3
        forget_idle_ms = int(max(60.0, 10 * self._settings.claim_idle_s) * 1000)
        rounds = 0
        while True:
            await asyncio.sleep(every)
            held = list(self._held.values())
            if held:
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.xclaim(
                        keys.requests,
                        GROUP,
                        self._name,
                        min_idle_time=0,
                        message_ids=[h.entry_id for h in held],
                        justid=True,
                    )
                    for h in held:
                        pipe.expire(keys.running(h.trace_id), self._lease_s, xx=True)
                    await pipe.execute()
            await trim_requests(redis, keys)
            rounds += 1
            if rounds % 10 == 0:
                await self._forget_dead(forget_idle_ms)

    async def _forget_dead(self, idle_ms: int) -> None:
        """Delete consumer names of workers long gone with nothing pending."""
        redis, keys = self._redis, self._keys
        for consumer in await redis.xinfo_consumers(keys.requests, GROUP):
            name = _text(consumer["name"])
            if name != self._name and consumer["pending"] == 0 and consumer["idle"] > idle_ms:
                await redis.xgroup_delconsumer(keys.requests, GROUP, name)


def open_redis(url: str, connections: int) -> Connection:
    """A client whose pool holds at most ``connections``; callers beyond wait for one."""
    pool = BlockingConnectionPool.from_url(url, max_connections=connections, timeout=None)
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


async def ensure_group(redis: Connection, keys: Keys) -> None:
    """Create the request stream and its consumer group, unless they exist."""
    try:
        await redis.xgroup_create(keys.requests, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def trim_requests(redis: Connection, keys: Keys) -> None:
    """Drop the request entries every worker is done with (older than any pending one)."""
    summary = await redis.xpending(keys.requests, GROUP)
    if summary["pending"]:
        min_id = summary["min"]
    else:
        groups = await redis.xinfo_groups(keys.requests)
        last = next((g["last-delivered-id"] for g in groups if _text(g["name"]) == GROUP), None)
        if last is None:
            return
        min_id = _next_id(last)
    await redis.xtrim(keys.requests, minid=min_id, approximate=False)


def _cancelled(held: _Held) -> bool:
    return held.cancelled


def _error(error: FlowError) -> dict[str, Any]:
    return {"o": "error", "p": encode_error(error)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _cancel_and_wait(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def stop_task(task: asyncio.Task[Any], timeout: float) -> None:
    """Wait for a task told to end; cancel it if it has not ended after ``timeout``.

    Its own failure is logged, not raised: it is stopping anyway.
    """
    await asyncio.wait([task], timeout=timeout)
    if not task.done():
        task.cancel()
        await asyncio.wait([task])
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
    redis: Connection = open_redis(url, settings.concurrency + 8)
    try:
        worker = _Worker(flow, registry, redis, keys, settings)
        await worker.run(stop)
    finally:
        await redis.aclose()
