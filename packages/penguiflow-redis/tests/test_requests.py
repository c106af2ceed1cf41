"""Requests through worker subprocesses: results, chunks, loops, joins, failures, deadlines."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

import redis_flows
from penguiflow import WM, FinalAnswer, Headers, Message
from penguiflow.core import DEADLINE_EXCEEDED_TEXT, PenguiFlow
from penguiflow.errors import FlowError, FlowRuntimeError, FlowTypeError
from penguiflow.redis import RemoteError, connect
from redis_support import Workers, eventually, reading, request_keys


def message(payload: object, **kwargs: object) -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"), **kwargs)  # type: ignore[arg-type]


async def in_process(factory: Callable[[], tuple[PenguiFlow, Any]], msg: Message) -> Any:
    """What the same flow returns for ``msg`` in this process."""
    flow, registry = factory()
    flow.run(registry=registry)
    try:
        return await flow.invoke(msg, timeout=10)
    finally:
        await flow.stop()


def comparable(item: Any) -> Any:
    """An outcome without the fields that differ between two runs (trace id, time)."""
    if isinstance(item, Message):
        return item.model_copy(update={"trace_id": "", "ts": 0.0})
    return item


async def test_a_chain_returns_the_same_result_as_in_process(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("chain")
    flow, registry = redis_flows.chain()
    async with connect(flow, redis_url, registry=registry, prefix=prefix) as client:
        out = await client.invoke(message(redis_flows.Number(n=21)), timeout=20)
    assert isinstance(out, Message)
    assert out.payload == redis_flows.Answer(n=21, text="21*2=42")
    assert out.headers == Headers(tenant="t")
    local = await in_process(redis_flows.chain, message(redis_flows.Number(n=21)))
    assert comparable(out) == comparable(local)
    assert await request_keys(redis, prefix) == []


async def test_expect_types_and_checks_the_result(
    redis_url: str, prefix: str, workers: Workers
) -> None:
    workers.start("chain")
    flow, registry = redis_flows.chain()
    async with connect(flow, redis_url, registry=registry, prefix=prefix) as client:
        out = await client.invoke(message(redis_flows.Number(n=1)), timeout=20, expect=Message)
        assert out.payload == redis_flows.Answer(n=1, text="1*2=2")
        async with client.request(message(redis_flows.Number(n=2)), expect=Message) as req:
            assert (await req.result()).payload.n == 2
        with pytest.raises(FlowTypeError, match="whose payload is Answer; pass expect=Message"):
            await client.invoke(
                message(redis_flows.Number(n=3)), timeout=20, expect=redis_flows.Answer
            )


async def test_chunks_arrive_in_order_then_the_result(
    redis_url: str, prefix: str, workers: Workers
) -> None:
    workers.start("talker")
    flow, _ = redis_flows.talker()
    words = [f"w{i}" for i in range(30)]
    async with (
        connect(flow, redis_url, prefix=prefix) as client,
        client.request(message(" ".join(words))) as req,
    ):
        chunks = [chunk async for chunk in req.chunks()]
        result = await req.result()
    assert [c.text for c in chunks] == words
    assert [c.seq for c in chunks] == list(range(30))
    assert {c.stream_id for c in chunks} == {req.trace_id}
    assert [c.done for c in chunks] == [False] * 29 + [True]
    local = await in_process(redis_flows.talker, message(" ".join(words)))
    assert result == local == " ".join(words)
    assert req.state == "result"


async def test_a_controller_loop_runs_in_the_worker(
    redis_url: str, prefix: str, workers: Workers
) -> None:
    workers.start("controller")
    flow, _ = redis_flows.controller()
    async with connect(flow, redis_url, prefix=prefix) as client:
        out = await client.invoke(message(WM(query="q")), timeout=20, expect=Message)
    assert isinstance(out.payload, FinalAnswer)
    assert out.payload.text == "q: fact1, fact2, fact3"
    assert comparable(out) == comparable(
        await in_process(redis_flows.controller, message(WM(query="q")))
    )


async def test_a_join_k_fan_in_runs_in_the_worker(
    redis_url: str, prefix: str, workers: Workers
) -> None:
    workers.start("fan_in")
    flow, _ = redis_flows.fan_in()
    async with connect(flow, redis_url, prefix=prefix) as client:
        outs = [await client.invoke(message(f"q{i}"), timeout=20) for i in range(3)]
    assert outs == [f"docs:q{i} + sql:q{i} + web:q{i}" for i in range(3)]
    assert outs[0] == await in_process(redis_flows.fan_in, message("q0"))


async def test_a_node_failure_is_a_typed_flow_error(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("failing")
    flow, _ = redis_flows.failing()
    msg = message("bad input")
    async with connect(flow, redis_url, prefix=prefix) as client:
        with pytest.raises(FlowError) as caught:
            await client.invoke(msg, timeout=20)
    error = caught.value
    assert (error.code, error.node_name, error.attempts) == ("NODE_EXCEPTION", "explode", 2)
    assert error.trace_id == msg.trace_id
    assert isinstance(error.__cause__, RemoteError)
    assert error.__cause__.type_name == "ValueError"
    assert error.__cause__.text == "no good: bad input"
    assert "Traceback" not in str(error)
    assert await request_keys(redis, prefix) == []


async def test_a_deadline_is_honoured_in_the_worker(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("slow")
    # The deadline starts once the worker reads, so a slow start cannot use it up.
    await eventually(lambda: reading(redis), what="the worker to read")
    flow, _ = redis_flows.slow()
    msg = message("never answers", deadline_s=time.time() + 0.5)
    async with connect(flow, redis_url, prefix=prefix) as client:
        out = await client.invoke(msg, timeout=20, expect=Message)
    assert isinstance(out.payload, FinalAnswer)
    assert out.payload.text == DEADLINE_EXCEEDED_TEXT
    assert out.deadline_s == msg.deadline_s
    await eventually(lambda: redis.exists(f"probe:{msg.trace_id}:started"), what="the start")


async def test_a_request_needs_a_message(redis_url: str, prefix: str) -> None:
    flow, registry = redis_flows.chain()
    async with connect(flow, redis_url, registry=registry, prefix=prefix) as client:
        with pytest.raises(FlowRuntimeError, match="needs a message with a trace id"):
            await client.invoke(redis_flows.Number(n=1))
