"""Redis trouble: dropped connections, a restart, Redis gone, a foreign entry, a late cancel.

Workers keep serving through all of it, and every request still ends with one outcome in
bounded time. Tests that stop or restart Redis run their own ``redis-server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

import penguiflow.redis._client as client_module
import redis_flows
from penguiflow import FinalAnswer, Headers, Message
from penguiflow.errors import FlowError, FlowStoppedError, TraceCancelled
from penguiflow.redis import Client, connect
from penguiflow.redis._worker import REPLY_HIGH
from penguiflow.types import StreamChunk
from redis_support import Workers, eventually, reading, request_keys, send_unread


def message(payload: object, **extra: Any) -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"), **extra)


class Server:
    """A ``redis-server`` of this test alone, which can be stopped and started again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []  # more server options, such as where to save

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no"]  # no persistence: a restart loses all
        args += self.extra
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = Redis.from_url(self.url)
        try:
            await eventually(lambda: _pings(probe), timeout=10, what="redis-server to start")
        finally:
            await probe.aclose()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def _pings(redis: Redis) -> bool:
    try:
        return bool(await redis.ping())
    except Exception:  # not up yet
        return False


@pytest.fixture
def server() -> Iterator[Server]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    own = Server(port)
    yield own
    own.stop()


async def _kill(redis: Redis, which: Callable[[dict[str, Any]], bool]) -> set[str]:
    """CLIENT KILL the connections ``which`` selects; return their ids."""
    killed = set()
    for conn in await redis.client_list():
        if which(conn):
            await redis.client_kill_filter(_id=conn["id"])
            killed.add(conn["id"])
    return killed


def _subscribed(conn: dict[str, Any]) -> bool:
    return bool(conn.get("sub", "0") != "0")


def _blocked_read(conn: dict[str, Any]) -> bool:
    return bool(conn.get("cmd") == "xreadgroup")


async def test_a_worker_survives_its_connections_being_dropped(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    proc = workers.start("slow")
    await eventually(lambda: reading(redis), what="the worker to read")
    killed = await _kill(redis, lambda c: _blocked_read(c) or _subscribed(c))
    assert len(killed) == 2  # its blocked read and its cancel subscription

    async def back() -> bool:
        conns = [c for c in await redis.client_list() if c["id"] not in killed]
        return any(map(_blocked_read, conns)) and any(map(_subscribed, conns))

    await eventually(back, what="the worker to read and subscribe again")
    assert proc.poll() is None
    flow, _ = redis_flows.slow()
    async with (
        connect(flow, redis_url, prefix=prefix) as client,
        client.request(message("wait")) as req,
    ):
        probe = f"probe:{req.trace_id}"
        await eventually(lambda: redis.exists(f"{probe}:started"), what="the node")
        assert await req.cancel() is True
        with pytest.raises(TraceCancelled):
            await req.result()
        # Only the new subscription can have told the node.
        await eventually(lambda: redis.exists(f"{probe}:cancelled"), what="the cancel")
    assert proc.poll() is None


async def test_a_client_whose_reply_reader_is_dropped_still_gets_the_outcome(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("hops")
    flow, _ = redis_flows.hops()
    async with connect(flow, redis_url, prefix=prefix) as client:
        async with client.request(message("wait")) as req:
            probe = f"probe:{req.trace_id}"
            await eventually(lambda: redis.exists(f"{probe}:started"), what="the node")
            # Only the client's reply reader blocks in XREAD.
            assert len(await _kill(redis, lambda c: c.get("cmd") == "xread")) == 1
            assert await client.invoke(message("go"), timeout=10) is not None
            assert await req.cancel() is True
        with pytest.raises(TraceCancelled):
            await req.result()


async def test_a_redis_restart_fails_pending_requests_and_everything_carries_on(
    server: Server, prefix: str
) -> None:
    await server.start()
    pool = Workers(server.url, prefix)
    try:
        proc = pool.start("hops")
        flow, _ = redis_flows.hops()
        redis = Redis.from_url(server.url)
        try:
            await eventually(lambda: reading(redis), what="the worker to read")
            async with connect(flow, server.url, prefix=prefix) as client:
                req = client.request(message("wait"))
                async with req:
                    probe = f"probe:{req.trace_id}:started"
                    await eventually(lambda: redis.exists(probe), what="the node")
                    server.stop()
                    await server.start()  # empty: no persistence
                    with pytest.raises(FlowError) as caught:
                        async with asyncio.timeout(10):
                            await req.result()
                assert caught.value.code == "CONNECTION_LOST"
                assert req.trace_id in str(caught.value)
                # The worker created its consumer group again; the client its reply stream.
                out = await _send_again_once(client, message("go"))
                assert isinstance(out, Message)
                assert out.payload == "go|a|b|c"
            assert proc.poll() is None
            # The worker cancelled the request Redis forgot: it has nothing left to let
            # finish, so it stops well within its 5 s grace.
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 4) == 0
        finally:
            await redis.aclose()
    finally:
        pool.close()


async def test_a_request_lost_while_redis_was_away_is_cancelled_once_it_is_back(
    server: Server, prefix: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(client_module, "LOST_AFTER_S", 1.0)
    # Redis saves its data when it shuts down and loads it when it starts again: the
    # request is still held by the worker when Redis is back.
    server.extra = ["--dir", str(tmp_path), "--dbfilename", "saved.rdb"]
    await server.start()
    pool = Workers(server.url, prefix)
    try:
        pool.start("slow")
        flow, _ = redis_flows.slow()
        redis = Redis.from_url(server.url)
        try:
            await eventually(lambda: reading(redis), what="the worker to read")
            async with connect(flow, server.url, prefix=prefix) as client:
                req = client.request(message("wait"))
                async with req:
                    probe = f"probe:{req.trace_id}:started"
                    await eventually(lambda: redis.exists(probe), what="the node")
                    with contextlib.suppress(RedisError):  # it closes the connection
                        await redis.shutdown(save=True)
                    assert server.proc is not None
                    await asyncio.to_thread(server.proc.wait, 10)
                    with pytest.raises(FlowError) as caught:
                        async with asyncio.timeout(10):
                            await req.result()
                    assert caught.value.code == "CONNECTION_LOST"
                await server.start()
                back = Redis.from_url(server.url)
                try:

                    async def let_go() -> bool:
                        pending = await back.xpending(f"{prefix}:requests", "workers")
                        keys = await request_keys(back, prefix)
                        return not pending["pending"] and not [
                            k for k in keys if req.trace_id.encode() in k
                        ]

                    # The client sent the cancel it owed: the worker stopped the request
                    # and its entry and keys are gone.
                    await eventually(let_go, what="the worker to drop the lost request")
                finally:
                    await back.aclose()
        finally:
            await redis.aclose()
    finally:
        pool.close()


async def _send_again_once(client: Client, msg: Message) -> object:
    """Invoke; once more if the first try met a connection Redis closed when it restarted
    (each pooled connection fails one command before it is replaced)."""
    try:
        return await client.invoke(msg, timeout=10)
    except FlowError as exc:
        assert exc.code == "CONNECTION_LOST"
        return await client.invoke(msg, timeout=10)


async def test_requests_end_in_bounded_time_when_redis_goes_away(
    server: Server, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # How long the client tries to reconnect before failing what waits (5 s by default).
    monkeypatch.setattr(client_module, "LOST_AFTER_S", 3.0)
    await server.start()
    flow, _ = redis_flows.slow()
    redis = Redis.from_url(server.url)
    client = connect(flow, server.url, prefix=prefix)
    await client.__aenter__()
    try:
        # No worker: every request waits in the stream.
        timed = asyncio.create_task(client.invoke(message("wait"), timeout=1.5))
        deadline = message("wait", deadline_s=time.time() + 0.5)
        late = asyncio.create_task(client.invoke(deadline))
        waiting = asyncio.create_task(client.invoke(message("wait")))
        await eventually(lambda: _length(redis, f"{prefix}:requests", 3), what="the requests")
        await redis.aclose()
        server.stop()
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # not the cleanup's connection error
            await timed
        answer = await late  # the client's own deadline answer
        assert isinstance(answer, Message)
        assert answer.payload == FinalAnswer(text="Deadline exceeded")
        with pytest.raises(FlowError) as caught:
            await waiting
        assert caught.value.code == "CONNECTION_LOST"
        assert time.monotonic() - started < 8
        with pytest.raises(FlowError) as refused:
            await client.invoke(message("wait"), timeout=10)
        assert refused.value.code == "CONNECTION_LOST"
    finally:
        async with asyncio.timeout(10):
            await client.aclose()  # does not raise with Redis gone


async def _length(redis: Redis, stream: str, n: int) -> bool:
    return bool(await redis.xlen(stream) == n)


async def test_closing_the_client_ends_requests_waiting_for_room(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    flow, _ = redis_flows.slow()
    stream = f"{prefix}:requests"
    async with connect(flow, redis_url, prefix=prefix, max_pending=1) as client:
        first = asyncio.create_task(client.invoke(message("wait")))
        second = asyncio.create_task(client.invoke(message("wait")))  # waits for room
        await eventually(lambda: _length(redis, stream, 1), what="the first request")
        assert not second.done()
    async with asyncio.timeout(5):
        for task in (first, second):
            with pytest.raises(FlowStoppedError):
                await task
    # The first was removed from the stream (no worker had taken it); the second never sent.
    assert await redis.xlen(stream) == 0
    assert await request_keys(redis, prefix) == []


async def test_a_request_that_timed_out_in_the_queue_is_removed_and_never_runs(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    flow, _ = redis_flows.slow()
    msg = message("wait")
    async with connect(flow, redis_url, prefix=prefix) as client:
        with pytest.raises(TimeoutError):
            await client.invoke(msg, timeout=0.3)
        # Removed with its keys when it was cancelled, not left for its cancel to expire.
        assert await redis.xlen(f"{prefix}:requests") == 0
        assert [k for k in await request_keys(redis, prefix) if b":client:" not in k] == []
        # A worker started now takes the next request, and never sees the first.
        workers.start("slow")
        async with client.request(message("wait")) as later:
            probe = f"probe:{later.trace_id}:started"
            await eventually(lambda: redis.exists(probe), what="the next request to run")
    assert not await redis.exists(f"probe:{msg.trace_id}:started")


async def test_leaving_a_request_after_its_last_chunk_leaves_no_cancel_behind(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("talker")
    flow, _ = redis_flows.talker()
    msg = message("hello big world")
    async with connect(flow, redis_url, prefix=prefix) as client:
        async with client.request(msg) as req:
            async for chunk in req.chunks():
                if chunk.done:
                    break
            live = f"{prefix}:live:{req.trace_id}"
            await eventually(lambda: _gone(redis, live), what="the worker to finish")
        # Left before reading the result: a cancel of a request that has ended.
        assert await redis.exists(f"{prefix}:cancelled:{req.trace_id}") == 0
        # The same message again runs, as in-process.
        assert await client.invoke(msg, timeout=10) == "hello big world"


async def _gone(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_a_foreign_entry_is_dead_lettered_and_the_worker_carries_on(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    proc = workers.start("hops")
    await eventually(lambda: reading(redis), what="the worker to read")
    foreign = await redis.xadd(f"{prefix}:requests", {"hello": "world"})
    dead = await eventually(lambda: redis.xrange(f"{prefix}:dead"), what="the dead letter")
    fields = dead[0][1]
    assert fields[b"hello"] == b"world"
    assert fields[b"entry"] == foreign
    assert b"'t'" in fields[b"rejected"]
    assert proc.poll() is None
    flow, _ = redis_flows.hops()
    async with connect(flow, redis_url, prefix=prefix) as client:
        out = await client.invoke(message("go"), timeout=10)
        assert isinstance(out, Message)
        assert out.payload == "go|a|b|c"
    pending = await redis.xpending(f"{prefix}:requests", "workers")
    assert pending["pending"] == 0


async def test_a_client_that_falls_behind_slows_the_worker_down_and_loses_nothing(
    prefix: str, workers: Workers, redis: Redis
) -> None:
    # A client at the wire level that reads its replies only when the test says so: a
    # client whose event loop is busy elsewhere.
    workers.start("talker")
    flow, _ = redis_flows.talker()
    n = REPLY_HIGH + 200
    msg = message(" ".join(str(i) for i in range(n)))
    reply, held = await send_unread(redis, prefix, flow, msg)
    assert held <= REPLY_HIGH + 2  # the open note and at most one chunk beyond
    newest: Any = await redis.xrevrange(reply, count=1)
    assert newest[0][1][b"o"] == b"chunk"  # the outcome has not been sent yet
    seqs: list[int] = []
    outcome = b""
    start: Any = "0-0"
    while not outcome:
        found: Any = await redis.xread({reply: start}, count=1000, block=5000)
        assert found, "the worker did not carry on once the client read"
        for entry_id, entry in found[0][1]:
            start = entry_id
            if entry[b"o"] == b"chunk":
                seqs.append(StreamChunk.model_validate_json(entry[b"p"]).seq)
            elif entry[b"o"] != b"open":
                outcome = entry[b"o"]
        await redis.xdel(reply, *(e for e, _ in found[0][1]))
    assert outcome == b"result"
    assert seqs == list(range(n))  # every chunk, in order
    await redis.delete(reply)
