"""The client: the in-process request API, with the flow running in worker processes.

``connect(flow, url, registry=...)`` checks that the flow's payloads can cross processes,
then, entered, opens two connections: one for commands, one that blocks reading this
client's reply stream and hands each entry to the request it belongs to. A request is one
``XADD`` to the request stream; its chunks and its outcome come back on the reply stream.

Each send carries a tag of its own (field ``g``), which every reply echoes: a reply goes
to the send with that tag only. The same message sent again (a retry after a timeout)
has the same trace id, and the first send may still be ending in a worker; its late
chunks, its "cancelled" note and its outcome are then dropped instead of reaching the new
send. A reply without a tag (from a worker that sends none) goes by trace id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Final, Generic, TypeVar, final, overload

from penguiflow.clock import wall_time
from penguiflow.core import (
    DEADLINE_EXCEEDED_TEXT,
    PenguiFlow,
    RequestState,
    check_result,
    trace_id_of,
)
from penguiflow.errors import FlowError, FlowRuntimeError, FlowStoppedError, TraceCancelled
from penguiflow.registry import ModelRegistry
from penguiflow.types import FinalAnswer, Message, StreamChunk
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ._batch import Batcher
from ._codec import Codec, decode_error, local_error
from ._keys import DEFAULT_PREFIX, GROUP, Keys
from ._retry import Backoff
from ._scripts import CANCEL
from ._worker import (
    CANCEL_TTL_S,
    LIVE_TTL_S,
    REPLY_TTL_S,
    ensure_group,
    open_redis,
    stop_task,
)

__all__ = ["Client", "RemoteRequest", "connect"]

logger = logging.getLogger("penguiflow.redis")

T = TypeVar("T")

DEADLINE_GRACE_S: Final = 2.0
"""How long after a message's ``deadline_s`` the client answers for a silent worker."""
LOST_AFTER_S: Final = 5.0
"""How long the client tries to reach Redis again before its pending requests fail."""
_CLEANUP_S: Final = 2.0
"""How long a cleanup command (a cancel on the way out) may wait for Redis."""
_READ_BLOCK_MS: Final = 2_000  # well under redis-py's default socket timeout (5 s)
_CONNECTIONS: Final = 32
"""Connections a client's commands share (its reader has one more of its own)."""
_PENDING: Final = object()
_Note = tuple[bytes, dict[bytes, bytes]]
_WAKE: Final[_Note] = (b"wake", {})
_STOPPED: Final[_Note] = (b"stopped", {})
# redis-py types every command's reply as a union of an awaitable and a value; the replies
# are parsed where they are read, so connections are typed loosely here.
Connection = Any


@contextlib.asynccontextmanager
async def _best_effort(what: str) -> AsyncIterator[None]:
    """Clean up through Redis if it answers soon; a Redis that is down is logged, not raised.

    Cleanup never replaces the outcome a caller is owed (a result, a ``TimeoutError``).
    """
    try:
        async with asyncio.timeout(_CLEANUP_S):
            yield
    except (RedisError, TimeoutError) as exc:
        logger.warning("penguiflow.redis client could not %s: %r", what, exc)


def _connection_lost(trace_id: str, text: str, cause: BaseException | None = None) -> FlowError:
    error = local_error(trace_id, "CONNECTION_LOST", text)
    error.__cause__ = cause
    return error


class _Room:
    """Slots for the requests a client keeps in flight; closing it ends every wait."""

    __slots__ = ("_closed", "_free", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._closed = False

    async def take(self) -> bool:
        """Take a slot, waiting while there is none; False once the client has closed."""
        if self._closed:
            return False
        if self._free and not self._waiters:
            self._free -= 1
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.give()  # given a slot, then cancelled: the slot goes to the next one
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self._free += 1

    def close(self) -> None:
        self._closed = True
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(False)


def connect(
    flow: PenguiFlow,
    url: str,
    *,
    registry: ModelRegistry | None = None,
    prefix: str = DEFAULT_PREFIX,
    max_pending: int = 1000,
) -> Client:
    """A client for ``flow`` served by workers through the Redis at ``url``.

    Use it as ``async with connect(flow, url, registry=registry) as client:``. The flow is
    not run in this process: it tells the client which payload models to expect. Give
    the same ``registry`` the workers use, so payloads come back as the same models.

    Args:
        flow: The flow definition the workers serve.
        url: ``redis://host:port/db``.
        registry: The models of the flow's nodes; without it, payloads cross as plain
            JSON values.
        prefix: The key prefix of this flow; each flow sharing a Redis needs its own.
        max_pending: Requests this client keeps in flight at once; more wait for room.

    Raises:
        FlowTypeError: A model of an ingress or egress node cannot cross processes as
            JSON (the message names the node and the model).
        ValueError: An empty prefix or ``max_pending < 1``.
    """
    if max_pending < 1:
        raise ValueError(f"max_pending must be at least 1, got {max_pending}")
    return Client(Codec(flow, registry), url, Keys(prefix), max_pending)


@final
class Client:
    """Requests to a flow served by workers; made by ``connect()``, used as ``async with``.

    ``invoke``, ``request`` and ``cancel`` behave like the flow's own, and raise the same
    exceptions: ``FlowError`` (rebuilt from the worker's code, node, attempts and text;
    the node's exception type and text are its ``__cause__``, a ``RemoteError``),
    ``TraceCancelled``, and ``FlowStoppedError`` when the client closes first. One more:
    ``FlowError`` with code ``"CONNECTION_LOST"`` when Redis cannot be reached for
    ``LOST_AFTER_S`` (5 s) or restarted and lost the request's replies; the client keeps
    working for new requests once Redis is back, and then cancels what may still run of
    the requests it ended so (a failed ``cancel`` is sent again then too).
    """

    __slots__ = (
        "_batch",
        "_cancel_script",
        "_codec",
        "_commands",
        "_id",
        "_keys",
        "_live",
        "_owed",
        "_reader",
        "_replies",
        "_room",
        "_url",
    )

    def __init__(self, codec: Codec, url: str, keys: Keys, max_pending: int) -> None:
        self._codec = codec
        self._url = url
        self._keys = keys
        self._id = os.urandom(8).hex()
        self._replies = keys.client(self._id)
        self._room = _Room(max_pending)
        self._live: dict[str, RemoteRequest[Any]] = {}
        # Cancels of sends this client gave up on while Redis was out of reach; sent once
        # it answers again, so what still runs of them in workers stops.
        self._owed: list[dict[str, Any]] = []
        self._commands: Connection | None = None
        self._batch: Batcher | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Client:
        if self._commands is not None:
            raise FlowRuntimeError("this client is already connected")
        commands: Connection = open_redis(self._url, _CONNECTIONS)
        try:
            await ensure_group(commands, self._keys.requests)
            # Create the reply stream; workers only ever append to an existing one.
            async with commands.pipeline(transaction=True) as pipe:
                pipe.xadd(self._replies, {"t": "", "o": "open"})
                pipe.expire(self._replies, REPLY_TTL_S)
                await pipe.execute()
        except BaseException:
            await commands.aclose()
            raise
        self._commands = commands
        self._cancel_script = commands.register_script(CANCEL)
        self._batch = Batcher(commands, transaction=False)
        self._reader = asyncio.create_task(self._read(), name="penguiflow.redis:replies")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client: pending requests are cancelled and end with ``FlowStoppedError``.

        Requests still waiting for room (``max_pending``) end with ``FlowStoppedError`` too,
        and are never sent. A Redis that is down does not make it raise.
        """
        commands, reader = self._commands, self._reader
        if commands is None:
            return
        self._commands = self._reader = None
        self._batch = None
        self._room.close()
        if reader is not None:
            # Wake the reader with a note on its own stream rather than cancelling its
            # blocked read (a cancel that meets redis-py's read timeout can be lost).
            async with _best_effort("wake its reply reader"):
                await commands.xadd(self._replies, {"t": "", "o": "close"})
            await stop_task(reader, _READ_BLOCK_MS / 1000 + 1)
        try:
            live = [r for r in self._live.values() if r.state == "pending"]
            async with _best_effort("cancel its pending requests"):
                if live or self._owed:
                    async with commands.pipeline(transaction=False) as pipe:
                        for req in live:
                            await self._queue_cancel(pipe, req)
                        for args in self._owed:
                            await self._cancel_script(**args, client=pipe)
                        await pipe.execute()
                    self._owed.clear()
                await commands.delete(self._replies)
        finally:
            for req in list(self._live.values()):
                req._notify(_STOPPED)
            with contextlib.suppress(RedisError):
                await commands.aclose()

    # -- the request API ------------------------------------------------------------------

    @overload
    def request(self, message: Any, *, expect: None = None) -> RemoteRequest[object]: ...

    @overload
    def request(self, message: Any, *, expect: type[T]) -> RemoteRequest[T]: ...

    def request(self, message: Any, *, expect: type[Any] | None = None) -> RemoteRequest[Any]:
        """A handle on one request, as ``flow.request(message)`` gives in-process.

        ``async with client.request(message) as req:`` sends the message; then ``async for
        chunk in req.chunks()``, ``await req.result()`` and ``await req.cancel()`` work as
        on ``penguiflow.core.Request``. Leaving the block before the outcome cancels it.
        With ``expect=Model``, ``result()`` is typed ``Model`` and checks it.

        Raises:
            FlowRuntimeError: ``message`` has no trace id (wrap the payload in a
                ``Message``).
        """
        return RemoteRequest(self, message, expect)

    @overload
    async def invoke(
        self, message: Any, *, timeout: float | None = None, expect: None = None
    ) -> object: ...

    @overload
    async def invoke(self, message: Any, *, timeout: float | None = None, expect: type[T]) -> T: ...

    async def invoke(
        self, message: Any, *, timeout: float | None = None, expect: type[Any] | None = None
    ) -> Any:
        """Send one request and wait for its outcome, as ``flow.invoke`` does.

        ``timeout`` covers sending too; when it passes, the request is cancelled, then
        ``TimeoutError`` is raised. The result is typed ``object``; with ``expect=Model``
        it is typed ``Model`` and checked when it arrives.

        Raises:
            FlowError: A node gave up, or the request ended without a result, or its
                outcome cannot reach this client (``code="CONNECTION_LOST"``).
            FlowTypeError: ``expect`` was given and the result is not one.
            TraceCancelled: The request was cancelled (from any client).
            FlowStoppedError: The client closed first.
            TimeoutError: ``timeout`` passed.
        """
        if timeout is None:
            async with self.request(message, expect=expect) as req:
                return await req.result()
        async with asyncio.timeout(timeout), self.request(message, expect=expect) as req:
            return await req.result()

    async def cancel(self, trace_id: str) -> bool:
        """Cancel a request, whichever client sent it and whichever worker runs it.

        Every worker holding work of the request cancels it in its flow (its nodes see
        ``CancelledError``); work of it still queued is skipped when a worker takes it.

        A request sent by this client that no worker has taken yet is removed from the
        request stream at once: it never runs. A request that has already ended is left
        alone, so the same message can be sent again.

        Returns:
            True if the request was pending in this client, or queued or running in
            workers.

        Raises:
            FlowError: ``code="CONNECTION_LOST"``: Redis could not be reached, so workers
                were not told (a request of this client still ends, cancelled).
        """
        self._connected()
        req = self._live.get(trace_id)
        pending_here = req is not None and req.state == "pending"
        if req is not None:
            req._settle(TraceCancelled(trace_id), "cancelled")
            req._notify(_WAKE)
        try:
            found = await self._cancel_script(**self._cancel_args(trace_id, req))
        except RedisError as exc:
            if pending_here and req is not None:
                self._owed.append(self._cancel_args(trace_id, req))
            text = f"could not reach Redis to tell the workers to cancel it ({exc})"
            raise _connection_lost(trace_id, text, exc) from exc
        return pending_here or bool(found)

    # -- internals ------------------------------------------------------------------------

    def _connected(self) -> Connection:
        if self._commands is None:
            raise FlowRuntimeError(
                "this client is not connected; use it inside `async with connect(...)`"
            )
        return self._commands

    def _batcher(self) -> Batcher:
        if self._batch is None:
            raise FlowRuntimeError(
                "this client is not connected; use it inside `async with connect(...)`"
            )
        return self._batch

    async def _cancel_quietly(self, req: RemoteRequest[Any]) -> None:
        """Tell workers to cancel ``req``, without settling it; best effort."""
        if self._commands is None:
            return
        async with _best_effort(f"cancel trace {req.trace_id}"):
            await self._cancel_script(**self._cancel_args(req.trace_id, req))

    def _cancel_args(self, trace_id: str, req: RemoteRequest[Any] | None) -> dict[str, Any]:
        keys = self._keys
        entry_id = b"" if req is None or req._entry_id is None else req._entry_id
        # A request of this client cancels its own send only, so a later send of the same
        # message is not cancelled with it; any other cancel reaches every send of the trace.
        tag = "" if req is None else req._tag.decode()
        return {
            "keys": [
                keys.requests,
                keys.live(trace_id),
                keys.running(trace_id),
                keys.cancelled(trace_id),
                keys.cancelled_runs(trace_id),
            ],
            "args": [GROUP, entry_id, CANCEL_TTL_S, keys.cancel_channel, trace_id, tag],
        }

    async def _queue_cancel(self, pipe: Any, req: RemoteRequest[Any]) -> None:
        # On a pipeline, the script is only queued; awaiting it does not wait for Redis.
        await self._cancel_script(**self._cancel_args(req.trace_id, req), client=pipe)

    async def _submit(self, req: RemoteRequest[Any], message: Any) -> None:
        self._batcher()  # not connected: say so before waiting for room
        fields = self._codec.encode_message(message)
        trace_id = req.trace_id
        if not await self._room.take():
            raise FlowStoppedError(f"the client closed before trace {trace_id} was sent")
        try:
            batch = self._batch
            if batch is None:  # closed while this request waited for room
                raise FlowStoppedError(f"the client closed before trace {trace_id} was sent")
            if trace_id in self._live:
                raise FlowRuntimeError(
                    f"trace {trace_id} already has a request in flight on this client"
                )
            self._live[trace_id] = req
            req._tag = os.urandom(8).hex().encode()
            entry = {"t": trace_id, "r": self._replies, "g": req._tag, **fields}
            live = self._keys.live(trace_id)

            def send(pipe: Any) -> None:
                # The request stream's entry is the request's first live entry; workers
                # that split the flow count the ones they add and finish (see _nodes).
                pipe.incr(live)
                pipe.expire(live, LIVE_TTL_S)
                pipe.xadd(self._keys.requests, entry)

            try:
                replies = await batch.run(send)
            except BaseException as exc:
                del self._live[trace_id]
                if isinstance(exc, RedisError | ConnectionError):
                    text = f"could not send the request: Redis did not take it ({exc})"
                    raise _connection_lost(trace_id, text, exc) from exc
                raise
            req._entry_id = replies[-1]
        except BaseException:
            self._room.give()
            raise

    def _forget(self, req: RemoteRequest[Any]) -> None:
        if self._live.get(req.trace_id) is req:
            del self._live[req.trace_id]
            self._room.give()

    def _fail_pending(self, text: str) -> None:
        """End every pending request with a ``CONNECTION_LOST`` error saying ``text``."""
        for req in list(self._live.values()):
            if req.state == "pending":
                self._lose(req, text)

    def _lose(self, req: RemoteRequest[Any], text: str) -> None:
        """End ``req`` with ``CONNECTION_LOST``; its cancel goes out once Redis answers."""
        req._settle(_connection_lost(req.trace_id, text), "failed")
        req._notify(_WAKE)
        self._owed.append(self._cancel_args(req.trace_id, req))

    async def _send_owed(self, commands: Connection) -> None:
        """Send the cancels owed since Redis was out of reach; kept if it fails again."""
        owed = list(self._owed)
        async with commands.pipeline(transaction=False) as pipe:
            for args in owed:
                await self._cancel_script(**args, client=pipe)
            await pipe.execute()
        del self._owed[: len(owed)]

    async def _read(self) -> None:
        """Hand each reply entry to its request; delete what was read.

        A lost connection is tried again, from the last entry read. If Redis cannot be
        reached for ``LOST_AFTER_S``, or this client's reply stream is gone (Redis
        restarted: the replies on it are lost), the pending requests end with a
        ``FlowError`` of code ``CONNECTION_LOST``; the client keeps serving new ones.
        Once Redis answers again, their cancels (and those ``cancel`` could not send)
        go out, so workers stop what still runs of them.
        """
        reader: Connection = Redis.from_url(self._url)
        commands: Connection = self._commands
        key, last = self._replies, b"0-0"
        done: list[bytes] = []  # read, not yet deleted
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        lost_at: float | None = None
        try:
            while self._commands is not None:
                try:
                    if not await self._tidy(commands, done):
                        done, last = [], b"0-0"
                        await self._replies_lost(commands)
                    done = []
                    if self._owed:
                        await self._send_owed(commands)
                    found = await reader.xread({key: last}, count=1000, block=_READ_BLOCK_MS)
                    for _stream, entries in found or ():
                        for entry_id, fields in entries:
                            done.append(entry_id)
                            req = self._live.get(fields.get(b"t", b"").decode())
                            # A reply of an earlier send of the trace is dropped.
                            if req is not None and fields.get(b"g", b"") in (b"", req._tag):
                                req._notify((fields.get(b"o", b""), fields))
                    if done:
                        last = done[-1]
                except RedisError as exc:
                    now = loop.time()
                    if lost_at is None:
                        lost_at = now
                        logger.warning(
                            "penguiflow.redis client lost its connection to Redis (%s); "
                            "reconnecting",
                            exc,
                        )
                    elif now - lost_at >= LOST_AFTER_S:
                        lost_at = now  # requests sent from now on get their own delay
                        self._fail_pending(
                            f"the client could not reach Redis for {LOST_AFTER_S:g} s ({exc}); "
                            "the request may still run in a worker, but its outcome cannot "
                            "reach this client"
                        )
                    await backoff.wait()
                else:
                    lost_at = None
                    backoff.reset()
        finally:
            with contextlib.suppress(RedisError):
                await reader.aclose()

    async def _tidy(self, commands: Connection, done: list[bytes]) -> bool:
        """Delete the entries read; keep the stream alive. False if the stream is gone."""
        async with commands.pipeline(transaction=False) as pipe:
            if done:
                pipe.xdel(self._replies, *done)
            pipe.expire(self._replies, REPLY_TTL_S)
            replies = await pipe.execute()
        return bool(replies[-1])

    async def _replies_lost(self, commands: Connection) -> None:
        """The reply stream is gone: open a new one, fail the requests that waited on it."""
        logger.warning(
            "penguiflow.redis client: its reply stream %s is gone (Redis restarted?); "
            "its pending requests fail with CONNECTION_LOST",
            self._replies,
        )
        waiting = [r for r in self._live.values() if r.state == "pending"]
        await ensure_group(commands, self._keys.requests)
        async with commands.pipeline(transaction=True) as pipe:
            pipe.xadd(self._replies, {"t": "", "o": "open"})
            pipe.expire(self._replies, REPLY_TTL_S)
            await pipe.execute()
        text = "Redis lost the request's replies (it restarted, or was flushed)"
        for req in waiting:
            self._lose(req, text)


@final
class RemoteRequest(Generic[T]):
    """A handle on one request served by workers; made by ``client.request(message)``.

    The same surface as ``penguiflow.core.Request``: ``trace_id``, ``state``,
    ``next_chunk()``, ``chunks()``, ``result()`` and ``cancel()``. If a worker dies and
    another runs the request again, chunks already delivered are not repeated (they are
    matched on their stream id and sequence number) and exactly one outcome is delivered.

    A message with ``deadline_s`` ends at the latest shortly after its deadline: if no
    worker has answered ``DEADLINE_GRACE_S`` (2 s) after it, the client cancels the
    request and returns the same deadline answer a worker gives (the message with a
    ``FinalAnswer("Deadline exceeded")`` payload).
    """

    __slots__ = (
        "_client",
        "_entry_id",
        "_expect",
        "_inbox",
        "_message",
        "_next_seq",
        "_outcome",
        "_tag",
        "state",
        "trace_id",
    )

    def __init__(self, client: Client, message: Any, expect: type[T] | None = None) -> None:
        trace_id = trace_id_of(message)
        if trace_id is None:
            raise FlowRuntimeError(
                f"a request needs a message with a trace id; got {type(message).__name__}. "
                "Wrap the payload: Message(payload=..., headers=Headers(tenant=...))"
            )
        self._client = client
        self._message = message
        self._expect = expect
        self._inbox: asyncio.Queue[_Note] = asyncio.Queue()
        self._next_seq: dict[str, int] = {}
        self._outcome: Any = _PENDING
        self._entry_id: bytes | None = None  # the request stream entry, once sent
        self._tag = b""  # this send's own tag, once sent; replies to it echo it
        self.trace_id: str = trace_id
        """The request's trace id (to log it, or to ``client.cancel`` it from elsewhere)."""
        self.state: RequestState = "pending"
        """``"pending"`` until the outcome is known, then how the request ended."""

    async def __aenter__(self) -> RemoteRequest[T]:
        await self._client._submit(self, self._message)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        client = self._client
        try:
            if self.state == "pending":
                await client._cancel_quietly(self)
        finally:
            client._forget(self)
            if self.state == "pending":
                self._settle(TraceCancelled(self.trace_id), "cancelled")

    def _settle(self, outcome: Any, state: RequestState) -> None:
        if self._outcome is _PENDING:
            self._outcome = outcome
            self.state = state

    def _notify(self, note: _Note) -> None:
        self._inbox.put_nowait(note)

    async def _next(self) -> StreamChunk | None:
        """Read the next note; return a chunk, or None (the outcome may now be settled)."""
        trace_id = self.trace_id
        message = self._message
        deadline = message.deadline_s if isinstance(message, Message) else None
        if deadline is None:
            kind, fields = await self._inbox.get()
        else:
            left = deadline + DEADLINE_GRACE_S - wall_time()
            try:
                async with asyncio.timeout(max(left, 0.0)):
                    kind, fields = await self._inbox.get()
            except TimeoutError:
                # No worker answered by the deadline (none serves the next node, or all
                # are gone): answer as a worker would, and cancel what may still run.
                answer = message.model_copy(
                    update={"payload": FinalAnswer(text=DEADLINE_EXCEEDED_TEXT)}
                )
                self._settle(answer, "result")
                await self._client._cancel_quietly(self)
                return None
        if kind == b"chunk":
            chunk = StreamChunk.model_validate_json(fields[b"p"])
            expected = self._next_seq.get(chunk.stream_id, 0)
            if chunk.seq < expected:  # a repeat from a request run again after a crash
                return None
            self._next_seq[chunk.stream_id] = chunk.seq + 1
            return chunk
        if kind == b"result":
            try:
                item = self._client._codec.decode_result(fields)
            except (ValueError, KeyError) as exc:
                text = f"cannot rebuild the result: {exc}"
                self._settle(local_error(trace_id, "UNSERIALIZABLE", text), "failed")
            else:
                self._settle(item, "result")
        elif kind == b"error":
            self._settle(decode_error(trace_id, fields[b"p"]), "failed")
        elif kind == b"cancelled":
            self._settle(TraceCancelled(trace_id), "cancelled")
        elif kind == b"stopped":
            error = FlowStoppedError(f"the client closed before trace {trace_id} ended")
            self._settle(error, "stopped")
        return None

    async def next_chunk(self) -> StreamChunk | None:
        """The next stream chunk, or ``None`` once the outcome is known.

        Safe to cancel: a cancelled call loses nothing, and the next call carries on.
        """
        while self._outcome is _PENDING:
            chunk = await self._next()
            if chunk is not None and self._outcome is _PENDING:
                return chunk
        return None

    async def chunks(self) -> AsyncIterator[StreamChunk]:
        """Yield the request's stream chunks as they arrive (in order per stream)."""
        while (chunk := await self.next_chunk()) is not None:
            yield chunk

    async def result(self) -> T:
        """Wait for the outcome: return the result, or raise why there is none.

        Raises:
            FlowError: A node gave up (``node_name``, ``code``, ``attempts``; the node's
                exception type and text are the ``__cause__``), or the request ended
                without a result (``code="NO_RESULT"``), or its outcome cannot reach this
                client (``code="CONNECTION_LOST"``: Redis is unreachable, or restarted).
            FlowTypeError: ``expect`` was given and the result is not one.
            TraceCancelled: The request was cancelled.
            FlowStoppedError: The client closed first.
        """
        while self._outcome is _PENDING:
            await self._next()
        outcome = self._outcome
        if self.state != "result":
            raise outcome
        expect = self._expect
        if expect is None:
            result: T = outcome
            return result
        return check_result(outcome, expect, self.trace_id)

    async def cancel(self) -> bool:
        """Cancel the request; ``result()`` then raises ``TraceCancelled``.

        Returns:
            True if the request was still pending.
        """
        if self._client._commands is None:
            return False
        return await self._client.cancel(self.trace_id)
