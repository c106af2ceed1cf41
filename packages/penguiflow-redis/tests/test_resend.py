"""A message sent again after its caller left the first send gets its own outcome.

The common retry: ``invoke(msg, timeout=1)`` times out, then ``invoke(msg)`` sends the same
message (same trace id) while the first send is still ending in a worker. The first send's
late replies (its chunks, its "cancelled" note, its outcome) must never reach the second.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

import redis_flows
from penguiflow import Headers, Message
from penguiflow.redis import connect
from penguiflow.redis._codec import Codec
from penguiflow.types import StreamChunk
from redis_support import Workers, eventually, request_keys


def message(payload: object) -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"))


async def runs(redis: Redis, msg: Message) -> int:
    """How many times the ``nap`` node started for ``msg``'s trace (its probe)."""
    return int(await redis.get(f"probe:{msg.trace_id}:runs") or 0)


async def retry_after_timeout(redis_url: str, prefix: str, redis: Redis, factory: Any) -> None:
    flow, _ = factory()
    msg = message("60,0")  # the first run of the trace sleeps a minute; a rerun returns at once
    async with connect(flow, redis_url, prefix=prefix) as client:
        # A first request shows the workers are up, so the next one starts at once.
        warm = message("0,0")
        assert (await client.invoke(warm, timeout=30, expect=Message)).trace_id == warm.trace_id
        with pytest.raises(TimeoutError):
            await client.invoke(msg, timeout=2)
        # Sent again at once: the first send's "cancelled" note, written once its worker
        # has cancelled it, comes while this one waits. Only a rerun returns in time.
        out = await client.invoke(msg, timeout=20)
        assert isinstance(out, Message)
        assert out.trace_id == msg.trace_id
        assert out.payload == "60,0"
        assert await runs(redis, msg) == 2  # the first send ran, then this one
    await eventually(lambda: _no_keys(redis, prefix), what="the requests' keys to go")


async def _no_keys(redis: Redis, prefix: str) -> bool:
    return await request_keys(redis, prefix) == []


async def test_a_resend_after_a_timeout_gets_its_own_result(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("napping")
    await retry_after_timeout(redis_url, prefix, redis, redis_flows.napping)


async def test_a_resend_after_a_timeout_gets_its_own_result_across_split_nodes(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("relay_napping", extra=["--nodes", "fan"])
    workers.start("relay_napping", extra=["--nodes", "nap"])
    await retry_after_timeout(redis_url, prefix, redis, redis_flows.relay_napping)


async def test_late_chunks_and_outcome_of_an_earlier_send_are_dropped(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    # The test plays the worker, so it decides when each reply is written: the first
    # send's chunk and result arrive after the second send went out, before its own.
    flow, _ = redis_flows.napping()
    codec = Codec(flow, None)
    msg = message("0,0")
    async with connect(flow, redis_url, prefix=prefix) as client:
        async with client.request(msg):
            first = await _take(redis, prefix)
        async with client.request(msg) as req:
            second = await _take(redis, prefix)
            assert first[b"g"] != second[b"g"]
            for entry, text in ((first, "old"), (second, "new")):
                await _reply(redis, entry, codec, text)
            chunks = [chunk.text async for chunk in req.chunks()]
            out = await req.result()
    assert chunks == ["new"]
    assert isinstance(out, Message)
    assert out.payload == "new"


async def test_a_reply_without_a_tag_reaches_its_request_by_trace_id(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    # A worker of a version that echoes no tag answers by trace id only.
    flow, _ = redis_flows.napping()
    codec = Codec(flow, None)
    msg = message("0,0")
    async with connect(flow, redis_url, prefix=prefix) as client, client.request(msg) as req:
        entry = await _take(redis, prefix)
        del entry[b"g"]
        await _reply(redis, entry, codec, "plain")
        assert [chunk.text async for chunk in req.chunks()] == ["plain"]
        out = await req.result()
    assert isinstance(out, Message)
    assert out.payload == "plain"


async def _take(redis: Redis, prefix: str) -> dict[bytes, bytes]:
    """Take the next request entry, as a worker does."""
    found: Any = await redis.xreadgroup("workers", "test", {f"{prefix}:requests": ">"}, count=1)
    [(_stream, [(_id, fields)])] = found
    taken: dict[bytes, bytes] = fields
    return taken


async def _reply(redis: Redis, entry: dict[bytes, bytes], codec: Codec, text: str) -> None:
    """Answer an entry with one chunk and a result saying ``text``, as a worker does."""
    msg = codec.decode_message(entry)
    echo: dict[Any, Any] = {k: v for k, v in entry.items() if k in (b"t", b"g")}
    chunk = StreamChunk(stream_id=msg.trace_id, seq=0, text=text, done=True)
    result: dict[Any, Any] = codec.encode_result(msg.model_copy(update={"payload": text}))
    await redis.xadd(entry[b"r"], {**echo, "o": "chunk", "p": chunk.model_dump_json()})
    await redis.xadd(entry[b"r"], {**echo, "o": "result", **result})
