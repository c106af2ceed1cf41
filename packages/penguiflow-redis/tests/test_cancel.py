"""Cancels cross processes: the node in the worker sees CancelledError."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

import redis_flows
from penguiflow import Headers, Message
from penguiflow.errors import TraceCancelled
from penguiflow.redis import connect
from redis_support import Workers, eventually, request_keys


def message(payload: object) -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"))


async def test_cancel_reaches_the_node_in_the_worker(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    proc = workers.start("slow")
    flow, _ = redis_flows.slow()
    async with (
        connect(flow, redis_url, prefix=prefix) as client,
        connect(flow, redis_url, prefix=prefix) as other,
        client.request(message("wait")) as req,
    ):
        probe = f"probe:{req.trace_id}"
        started = await eventually(lambda: redis.get(f"{probe}:started"), what="the node")
        assert int(started) == proc.pid
        # Cancelled from another client: this one learns it from the worker.
        assert await other.cancel(req.trace_id) is True
        with pytest.raises(TraceCancelled):
            await req.result()
        assert req.state == "cancelled"
        cancelled = await eventually(lambda: redis.get(f"{probe}:cancelled"), what="the cancel")
        assert int(cancelled) == proc.pid
    await eventually(lambda: _no_keys(redis, prefix), what="the request's keys to go")


async def _no_keys(redis: Redis, prefix: str) -> bool:
    return await request_keys(redis, prefix) == []


async def test_timeout_cancels_then_raises(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("slow")
    flow, _ = redis_flows.slow()
    msg = message("wait")
    async with connect(flow, redis_url, prefix=prefix) as client:
        probe = f"probe:{msg.trace_id}"
        invoke = asyncio.create_task(client.invoke(msg, timeout=30))
        await eventually(lambda: redis.exists(f"{probe}:started"), what="the node")
        invoke.cancel()  # the caller gives up: same path as a timeout, without waiting
        with pytest.raises(asyncio.CancelledError):
            await invoke
        await eventually(lambda: redis.exists(f"{probe}:cancelled"), what="the cancel")
        with pytest.raises(TimeoutError):
            await client.invoke(message("wait"), timeout=0.3)
    await eventually(lambda: _no_keys(redis, prefix), what="the request's keys to go")


async def test_a_request_cancelled_before_any_worker_takes_it_is_skipped(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    flow, _ = redis_flows.slow()
    msg = message("wait")
    async with connect(flow, redis_url, prefix=prefix) as client:
        async with client.request(msg) as req:
            assert await req.cancel() is True
            with pytest.raises(TraceCancelled):
                await req.result()
        workers.start("slow")  # takes the request, sees the cancel, skips it
        await eventually(lambda: _no_keys_but_client(redis, prefix), what="the skip")
    assert not await redis.exists(f"probe:{msg.trace_id}:started")


async def _no_keys_but_client(redis: Redis, prefix: str) -> bool:
    keys = await request_keys(redis, prefix)
    pending = await redis.xpending(f"{prefix}:requests", "workers")
    length = await redis.xlen(f"{prefix}:requests")
    return all(b":client:" in k for k in keys) and pending["pending"] == 0 and length == 0
