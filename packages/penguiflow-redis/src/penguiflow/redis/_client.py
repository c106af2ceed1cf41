"""The client: the in-process request API, with the flow running in worker processes.

``connect(flow, url, registry=...)`` checks that the flow's payloads can cross processes,
then, entered, opens two connections: one for commands, one that blocks reading this
client's reply stream and hands each entry to the request it belongs to. A request is one
``XADD`` to the request stream; its chunks and its outcome come back on the reply stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
from penguiflow.errors import FlowRuntimeError, FlowStoppedError, TraceCancelled
from penguiflow.registry import ModelRegistry
from penguiflow.types import FinalAnswer, Message, StreamChunk
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ._batch import Batcher
from ._codec import Codec, decode_error, local_error
from ._keys import DEFAULT_PREFIX, Keys
from ._worker import (
    CANCEL_TTL_S,
    LIVE_TTL_S,
    REPLY_TTL_S,
    ensure_group,
    open_redis,
    stop_task,
)

__all__ = ["Client", "RemoteRequest", "connect"]

T = TypeVar("T")

DEADLINE_GRACE_S: Final = 2.0
"""How long after a message's ``deadline_s`` the client answers for a silent worker."""
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
    ``TraceCancelled``, and ``FlowStoppedError`` when the client closes first.
    """

    __slots__ = (
        "_batch",
        "_codec",
        "_commands",
        "_id",
        "_keys",
        "_live",
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
        self._room = asyncio.Semaphore(max_pending)
        self._live: dict[str, RemoteRequest[Any]] = {}
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
        self._batch = Batcher(commands, transaction=False)
        self._reader = asyncio.create_task(self._read(), name="penguiflow.redis:replies")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client: pending requests are cancelled and end with ``FlowStoppedError``."""
        commands, reader = self._commands, self._reader
        if commands is None:
            return
        self._commands = self._reader = None
        self._batch = None
        if reader is not None:
            # Wake the reader with a note on its own stream rather than cancelling its
            # blocked read (a cancel that meets redis-py's read timeout can be lost).
            with contextlib.suppress(RedisError):
                await commands.xadd(self._replies, {"t": "", "o": "close"})
            await stop_task(reader, _READ_BLOCK_MS / 1000 + 1)
        try:
            live = [r for r in self._live.values() if r.state == "pending"]
            if live:
                async with commands.pipeline(transaction=False) as pipe:
                    for req in live:
                        self._queue_cancel(pipe, req.trace_id)
                    await pipe.execute()
            await commands.delete(self._replies)
        finally:
            for req in list(self._live.values()):
                req._notify(_STOPPED)
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
            FlowError: A node gave up, or the request ended without a result.
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

        Returns:
            True if the request was pending in this client, or queued or running in
            workers.
        """
        commands = self._connected()
        req = self._live.get(trace_id)
        pending_here = req is not None and req.state == "pending"
        async with commands.pipeline(transaction=False) as pipe:
            pipe.exists(self._keys.running(trace_id), self._keys.live(trace_id))
            self._queue_cancel(pipe, trace_id)
            running, *_ = await pipe.execute()
        if req is not None:
            req._settle(TraceCancelled(trace_id), "cancelled")
            req._notify(_WAKE)
        return pending_here or bool(running)

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

    async def _cancel_quietly(self, trace_id: str) -> None:
        """Tell workers to cancel ``trace_id``, without settling the local request."""
        commands = self._commands
        if commands is None:
            return
        async with commands.pipeline(transaction=False) as pipe:
            self._queue_cancel(pipe, trace_id)
            await pipe.execute()

    def _queue_cancel(self, pipe: Any, trace_id: str) -> None:
        pipe.set(self._keys.cancelled(trace_id), "1", ex=CANCEL_TTL_S)
        pipe.publish(self._keys.cancel_channel, trace_id)

    async def _submit(self, req: RemoteRequest[Any], message: Any) -> None:
        batch = self._batcher()
        fields = self._codec.encode_message(message)
        trace_id = req.trace_id
        await self._room.acquire()
        try:
            if trace_id in self._live:
                raise FlowRuntimeError(
                    f"trace {trace_id} already has a request in flight on this client"
                )
            self._live[trace_id] = req
            entry = {"t": trace_id, "r": self._replies, **fields}
            live = self._keys.live(trace_id)

            def send(pipe: Any) -> None:
                # The request stream's entry is the request's first live entry; workers
                # that split the flow count the ones they add and finish (see _nodes).
                pipe.incr(live)
                pipe.expire(live, LIVE_TTL_S)
                pipe.xadd(self._keys.requests, entry)

            try:
                await batch.run(send)
            except BaseException:
                del self._live[trace_id]
                raise
        except BaseException:
            self._room.release()
            raise

    def _forget(self, req: RemoteRequest[Any]) -> None:
        if self._live.get(req.trace_id) is req:
            del self._live[req.trace_id]
            self._room.release()

    async def _read(self) -> None:
        """Hand each reply entry to its request; delete what was read."""
        reader: Connection = Redis.from_url(self._url)
        commands: Connection = self._commands
        key, last = self._replies, b"0-0"
        try:
            while self._commands is not None:
                found = await reader.xread({key: last}, count=1000, block=_READ_BLOCK_MS)
                ids: list[bytes] = []
                for _stream, entries in found or ():
                    for entry_id, fields in entries:
                        ids.append(entry_id)
                        req = self._live.get(fields[b"t"].decode())
                        if req is not None:
                            req._notify((fields[b"o"], fields))
                if ids:
                    last = ids[-1]
                async with commands.pipeline(transaction=False) as pipe:
                    if ids:
                        pipe.xdel(key, *ids)
                    pipe.expire(key, REPLY_TTL_S)
                    await pipe.execute()
        finally:
            await reader.aclose()


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
        "_expect",
        "_inbox",
        "_message",
        "_next_seq",
        "_outcome",
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
            if self.state == "pending" and client._commands is not None:
                await client.cancel(self.trace_id)
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
                await self._client._cancel_quietly(trace_id)
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
                without a result (``code="NO_RESULT"``).
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
