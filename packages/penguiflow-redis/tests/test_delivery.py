"""Many requests, two workers, a worker killed, a worker stopped: one outcome per request.

A request that kills every worker that runs it is dead-lettered after ``--max-deliveries``.

Afterwards nothing is left: no pending entry, no per-request key, no request entry beyond
what is still being worked on (the request stream is trimmed once entries are done).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from typing import Any

import pytest
from redis.asyncio import Redis

import redis_flows
from penguiflow import Headers, Message
from penguiflow.errors import FlowError
from penguiflow.redis import connect
from redis_support import Workers, consumers, eventually, request_keys


def message(payload: object) -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"))


async def settled(redis: Redis, prefix: str) -> bool:
    """No pending entry, no request entry left, no per-request key."""
    stream = f"{prefix}:requests"
    pending = await redis.xpending(stream, "workers")
    return (
        pending["pending"] == 0
        and await redis.xlen(stream) == 0
        and await request_keys(redis, prefix) == []
    )


async def pending_of(redis: Redis, prefix: str, consumer: str) -> int:
    rows = await redis.xpending_range(
        f"{prefix}:requests", "workers", min="-", max="+", count=1000, consumername=consumer
    )
    return len(rows)


def expected(n: int) -> redis_flows.Answer:
    return redis_flows.Answer(n=n, text=f"{n}*2={2 * n}")


async def test_two_workers_serve_5000_requests_one_outcome_each(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("chain", name="w1")
    workers.start("chain", name="w2")
    flow, registry = redis_flows.chain()
    async with connect(flow, redis_url, registry=registry, prefix=prefix) as client:
        outs = await asyncio.gather(
            *(
                client.invoke(message(redis_flows.Number(n=i)), timeout=60, expect=Message)
                for i in range(5000)
            )
        )
    assert [o.payload for o in outs] == [expected(i) for i in range(5000)]
    await eventually(lambda: settled(redis, prefix), what="Redis to be clean")


async def test_a_killed_worker_loses_nothing(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    # The victim runs alone until it is seen holding requests, so the kill always lands
    # while it holds some, however fast or slow this machine is; only then does the
    # survivor start, and it must take over what the victim held.
    victim = workers.start("chain", name="victim")
    flow, registry = redis_flows.chain()
    total = 3000
    async with connect(flow, redis_url, registry=registry, prefix=prefix) as client:
        calls = asyncio.gather(
            *(
                client.invoke(message(redis_flows.Number(n=i)), timeout=60, expect=Message)
                for i in range(total)
            )
        )
        held_at_kill = await eventually(
            lambda: pending_of(redis, prefix, "victim"), timeout=30, what="the victim's work"
        )
        victim.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(victim.wait, 10) == -signal.SIGKILL
        workers.start("chain", name="survivor")
        outs = await calls
    assert held_at_kill > 0
    assert [o.payload for o in outs] == [expected(i) for i in range(total)]
    await eventually(lambda: settled(redis, prefix), what="Redis to be clean")
    assert await pending_of(redis, prefix, "victim") == 0


async def test_sigterm_finishes_in_flight_requests_and_leaves_nothing_claimed(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    proc = workers.start("napping", name="leaving", grace=20)
    flow, _ = redis_flows.napping()
    async with connect(flow, redis_url, prefix=prefix) as client:
        calls = [
            asyncio.create_task(client.invoke(message("0.5,0"), expect=Message)) for _ in range(5)
        ]
        await eventually(
            lambda: _at_least(pending_of(redis, prefix, "leaving"), 5), what="5 in flight"
        )
        proc.send_signal(signal.SIGTERM)
        outs = await asyncio.gather(*calls)
    assert [o.payload for o in outs] == ["0.5,0"] * 5
    assert proc.wait(timeout=10) == 0
    assert "leaving" not in await consumers(redis, prefix)
    await eventually(lambda: settled(redis, prefix), what="Redis to be clean")


async def test_sigterm_hands_back_what_does_not_finish_in_time(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    proc = workers.start("napping", name="leaving", grace=0.2)
    flow, _ = redis_flows.napping()
    async with connect(flow, redis_url, prefix=prefix) as client:
        msgs = [message("60,0") for _ in range(3)]
        calls = [asyncio.create_task(client.invoke(m, expect=Message)) for m in msgs]
        runs = [f"probe:{m.trace_id}:runs" for m in msgs]
        await eventually(lambda: _all_exist(redis, runs), what="3 running")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
        # Nothing claimed: the three requests are back in the stream, waiting.
        assert "leaving" not in await consumers(redis, prefix)
        assert (await redis.xpending(f"{prefix}:requests", "workers"))["pending"] == 0
        assert await redis.xlen(f"{prefix}:requests") == 3
        workers.start("napping", name="next")
        outs = await asyncio.gather(*calls)
    assert [o.trace_id for o in outs] == [m.trace_id for m in msgs]
    for key in runs:  # each ran twice: once cut short, once to the end
        assert await redis.get(key) == b"2"
    await eventually(lambda: settled(redis, prefix), what="Redis to be clean")


async def _all_exist(redis: Redis, keys: list[str]) -> bool:
    return bool(await redis.exists(*keys) == len(keys))


async def _at_least(count: asyncio.Future[int] | object, n: int) -> bool:
    value = await count  # type: ignore[misc]
    return bool(value >= n)


async def test_a_request_that_kills_every_worker_is_dead_lettered(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    limit = 2
    args = ["--max-deliveries", str(limit)]
    deaths = 0
    stopping = asyncio.Event()

    async def keep_alive(proc: subprocess.Popen[bytes]) -> None:
        """Restart a worker that dies, as a process supervisor would."""
        nonlocal deaths
        while True:
            code = await asyncio.to_thread(proc.wait)
            if stopping.is_set():
                return
            assert code == 17  # the node's os._exit, nothing else
            deaths += 1
            proc = workers.start("crashing", claim_idle=0.3, extra=args)

    supervisors = [
        asyncio.create_task(keep_alive(workers.start("crashing", claim_idle=0.3, extra=args)))
        for _ in range(2)
    ]
    flow, _ = redis_flows.crashing()
    msg = message("die")
    async with connect(flow, redis_url, prefix=prefix) as client:
        began = time.monotonic()
        with pytest.raises(FlowError) as caught:
            await client.invoke(msg, timeout=30)
        took = time.monotonic() - began
        assert (await client.invoke(message("fine"), timeout=30, expect=Message)).payload == "fine"
    stopping.set()
    workers.close()
    await asyncio.gather(*supervisors)
    error = caught.value
    assert error.code == "DELIVERY_LIMIT"
    assert error.trace_id == msg.trace_id
    assert f"delivered {limit} times" in str(error) and "--max-deliveries" in str(error)
    assert deaths == limit
    assert took < 20
    dead: Any = await redis.xrange(f"{prefix}:dead")
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"t"].decode() == msg.trace_id
    assert fields[b"deliveries"] == str(limit).encode()
    assert (await redis.xpending(f"{prefix}:requests", "workers"))["pending"] == 0
    assert await request_keys(redis, prefix) == []
