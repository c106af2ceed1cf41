"""Node-level placement: nodes of one flow in different worker processes (``--nodes``).

Items cross between the processes through each node's Redis stream; the client does not
know the placement. Afterwards nothing is left: no pending entry, no entry in any stream,
no per-request key.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

import redis_flows
from penguiflow import Headers, Message, Node, create
from penguiflow.core import DEADLINE_EXCEEDED_TEXT
from penguiflow.errors import FlowBuildError, FlowError, TraceCancelled
from penguiflow.redis import RemoteError, connect
from penguiflow.redis._keys import Keys
from penguiflow.redis._nodes import Placement
from penguiflow.redis._worker import REPLY_HIGH
from penguiflow.types import FinalAnswer
from redis_support import Workers, eventually, request_keys, send_unread

HERE = Path(__file__).resolve().parent


def message(payload: object, **kwargs: object) -> Message:
    return Message(payload=payload, headers=Headers(tenant="t"), **kwargs)  # type: ignore[arg-type]


def nodes(*names: str, maxlen: int = 1000) -> list[str]:
    return ["--nodes", ",".join(names), "--stream-maxlen", str(maxlen)]


async def settled(redis: Redis, prefix: str, streams: list[str]) -> bool:
    """No pending entry and no entry in any stream, no per-request key."""
    for name in ["requests", *(f"node:{s}" for s in streams)]:
        stream = f"{prefix}:{name}"
        if (await redis.xpending(stream, "workers"))["pending"] or await redis.xlen(stream):
            return False
    return await request_keys(redis, prefix) == []


async def pending_of(redis: Redis, stream: str, consumer: str) -> int:
    rows = await redis.xpending_range(
        stream, "workers", min="-", max="+", count=1000, consumername=consumer
    )
    return len(rows)


def expected(n: int) -> redis_flows.Answer:
    return redis_flows.Answer(n=n, text=f"{n}*2={2 * n}")


async def test_a_split_chain_survives_a_killed_worker_and_keeps_streams_bounded(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    bound = 20
    workers.start("chain", name="ends", extra=nodes("parse", "render", maxlen=bound))
    victim = workers.start("chain", name="victim", extra=nodes("double", maxlen=bound))
    workers.start("chain", name="survivor", extra=nodes("double", maxlen=bound))
    flow, registry = redis_flows.chain()
    total, done = 400, 0
    longest = 0
    held_at_kill = 0
    killed = asyncio.Event()
    finished = asyncio.Event()

    async def watch_lengths() -> None:  # measures the bound while the requests run
        nonlocal longest
        while not finished.is_set():
            for name in ("double", "render"):
                longest = max(longest, await redis.xlen(f"{prefix}:node:{name}"))

    async def one(i: int) -> redis_flows.Answer:
        nonlocal done, held_at_kill
        out = await client.invoke(message(redis_flows.Number(n=i)), timeout=60)
        done += 1
        if done == total // 4:
            stream = f"{prefix}:node:double"
            held = await eventually(lambda: pending_of(redis, stream, "victim"), what="work")
            victim.send_signal(signal.SIGKILL)
            held_at_kill = held
            killed.set()
        assert isinstance(out, Message)
        answer: redis_flows.Answer = out.payload
        return answer

    watcher = asyncio.create_task(watch_lengths())
    async with connect(flow, redis_url, registry=registry, prefix=prefix) as client:
        outs = await asyncio.gather(*(one(i) for i in range(total)))
    finished.set()
    await watcher
    assert killed.is_set() and victim.wait(timeout=10) == -signal.SIGKILL
    assert held_at_kill > 0
    assert outs == [expected(i) for i in range(total)]
    assert 0 < longest <= bound
    await eventually(lambda: settled(redis, prefix, ["double", "render"]), what="Redis to be clean")


async def test_a_cancel_reaches_the_node_in_the_other_process(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("hops", extra=nodes("hop_a", "hop_c"))
    middle = workers.start("hops", extra=nodes("hop_b"))
    flow, _ = redis_flows.hops()
    async with (
        connect(flow, redis_url, prefix=prefix) as client,
        connect(flow, redis_url, prefix=prefix) as other,
        client.request(message("wait")) as req,
    ):
        probe = f"probe:{req.trace_id}"
        started = await eventually(lambda: redis.get(f"{probe}:started"), what="hop_b")
        assert int(started) == middle.pid
        assert await other.cancel(req.trace_id) is True
        with pytest.raises(TraceCancelled):
            await req.result()
        cancelled = await eventually(lambda: redis.get(f"{probe}:cancelled"), what="the cancel")
        assert int(cancelled) == middle.pid
    await eventually(lambda: settled(redis, prefix, ["hop_b"]), what="Redis to be clean")


async def test_middlewares_see_the_events_of_the_nodes_each_worker_runs(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    ends = workers.start("watched_hops", extra=nodes("hop_a", "hop_c"))
    middle = workers.start("watched_hops", extra=nodes("hop_b"))
    flow, _ = redis_flows.watched_hops()
    msg = message("x")
    async with connect(flow, redis_url, prefix=prefix) as client:
        out = await client.invoke(msg, timeout=20, expect=Message)
    assert out.payload == "x|a|b|c"
    key = f"probe:events:{msg.trace_id}"
    await eventually(lambda: redis.llen(key), what="the events")  # written before the ack
    items = await redis.lrange(key, 0, -1)
    seen = sorted(i.decode() if isinstance(i, bytes) else i for i in items)
    # One success per node, from the process that ran it: none from the stand-ins that
    # forward an item to the node's stream.
    assert seen == sorted([f"hop_a@{ends.pid}", f"hop_b@{middle.pid}", f"hop_c@{ends.pid}"])
    await eventually(lambda: settled(redis, prefix, ["hop_b"]), what="Redis to be clean")


async def test_failures_results_and_deadlines_cross_the_hop(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("hops", extra=nodes("hop_a", "hop_c"))
    workers.start("hops", extra=nodes("hop_b"))
    flow, _ = redis_flows.hops()
    async with connect(flow, redis_url, prefix=prefix) as client:
        out = await client.invoke(message("x"), timeout=20, expect=Message)
        assert out.payload == "x|a|b|c"
        with pytest.raises(FlowError) as caught:
            await client.invoke(message("fail"), timeout=20)
        error = caught.value
        assert (error.code, error.node_name) == ("NODE_EXCEPTION", "hop_b")
        assert isinstance(error.__cause__, RemoteError)
        assert error.__cause__.text == "no good: fail|a"
        words = [f"w{i}" for i in range(20)]
        async with client.request(message(" ".join(["speak", *words]))) as req:
            chunks = [chunk async for chunk in req.chunks()]
            assert [c.text for c in chunks] == ["speak", *words[:-1], "w19|a|b"]
            assert [c.seq for c in chunks] == list(range(21))
            spoken = await req.result()
        assert isinstance(spoken, Message) and spoken.payload.endswith("w19|a|b|c")
        msg = message("wait", deadline_s=time.time() + 0.5)
        late = await client.invoke(msg, timeout=20, expect=Message)
    assert isinstance(late.payload, FinalAnswer)
    assert late.payload.text == DEADLINE_EXCEEDED_TEXT
    assert await redis.exists(f"probe:{msg.trace_id}:started")  # it reached hop_b
    await eventually(lambda: settled(redis, prefix, ["hop_b"]), what="Redis to be clean")


async def test_sigterm_hands_items_back_to_the_node_stream(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("hops", extra=nodes("hop_a", "hop_c"))
    leaving = workers.start("hops", name="leaving", grace=0.2, extra=nodes("hop_b"))
    flow, _ = redis_flows.hops()
    stream = f"{prefix}:node:hop_b"
    async with (
        connect(flow, redis_url, prefix=prefix) as client,
        client.request(message("wait")) as req,
    ):
        started = f"probe:{req.trace_id}:started"
        await eventually(lambda: redis.get(started), what="hop_b")
        await redis.delete(started)
        leaving.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(leaving.wait, 10) == 0
        assert await pending_of(redis, stream, "leaving") == 0
        assert await redis.xlen(stream) == 1  # handed back, waiting for the next worker
        following = workers.start("hops", extra=nodes("hop_b"))
        assert int(await eventually(lambda: redis.get(started), what="the next")) == (following.pid)
        await req.cancel()
        with pytest.raises(TraceCancelled):
            await req.result()
    await eventually(lambda: settled(redis, prefix, ["hop_b"]), what="Redis to be clean")


async def test_an_item_that_kills_its_node_worker_is_dead_lettered_naming_the_node(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    limit = ["--max-deliveries", "1"]
    workers.start("hops", extra=nodes("hop_a", "hop_c"))
    first = workers.start("hops", claim_idle=0.3, extra=[*nodes("hop_b"), *limit])
    second = workers.start("hops", claim_idle=0.3, extra=[*nodes("hop_b"), *limit])
    flow, _ = redis_flows.hops()
    async with connect(flow, redis_url, prefix=prefix) as client:
        with pytest.raises(FlowError) as caught:
            await client.invoke(message("die"), timeout=20)
    assert (caught.value.code, caught.value.node_name) == ("DELIVERY_LIMIT", "hop_b")
    assert "the item for node 'hop_b' was delivered 1 times" in str(caught.value)
    assert sorted(p.poll() is None for p in (first, second)) == [False, True]
    assert await redis.xlen(f"{prefix}:dead") == 1
    await eventually(lambda: settled(redis, prefix, ["hop_b"]), what="Redis to be clean")


async def test_a_request_whose_next_node_has_no_worker_ends_by_its_timeout_or_deadline(
    redis_url: str, prefix: str, workers: Workers
) -> None:
    workers.start("hops", extra=nodes("hop_a", "hop_c"))  # nobody serves hop_b
    flow, _ = redis_flows.hops()
    async with connect(flow, redis_url, prefix=prefix) as client:
        with pytest.raises(TimeoutError):
            await client.invoke(message("x"), timeout=0.5)
        msg = message("x", deadline_s=time.time() + 0.2)
        began = time.monotonic()
        out = await client.invoke(msg, expect=Message)
    assert isinstance(out.payload, FinalAnswer)
    assert out.payload.text == DEADLINE_EXCEEDED_TEXT
    assert time.monotonic() - began < 5


async def test_a_join_is_placed_with_everything_that_leads_to_it(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("fan_in", extra=nodes("fan", "docs", "web", "sql", "join"))
    workers.start("fan_in", extra=nodes("summarize"))
    flow, _ = redis_flows.fan_in()
    async with connect(flow, redis_url, prefix=prefix) as client:
        outs = await asyncio.gather(
            *(client.invoke(message(f"q{i}"), timeout=20) for i in range(20))
        )
    assert outs == [f"docs:q{i} + sql:q{i} + web:q{i}" for i in range(20)]
    await eventually(lambda: settled(redis, prefix, ["summarize"]), what="Redis to be clean")


async def test_entry_nodes_in_different_processes_share_each_request(
    redis_url: str, prefix: str, workers: Workers, redis: Redis
) -> None:
    workers.start("two_entries", extra=nodes("left"))
    workers.start("two_entries", extra=nodes("right"))
    flow, _ = redis_flows.two_entries()
    async with connect(flow, redis_url, prefix=prefix) as client:
        outs = await asyncio.gather(
            *(client.invoke(message(f"q{i}"), timeout=20, expect=Message) for i in range(40))
        )
    assert all(o.payload in (f"q{i}|left", f"q{i}|right") for i, o in enumerate(outs))
    await eventually(lambda: settled(redis, prefix, ["left", "right"]), what="Redis to be clean")


def test_placements_that_split_a_join_or_a_loop_are_refused() -> None:
    keys = Keys("p")
    flow, _ = redis_flows.fan_in()
    with pytest.raises(FlowBuildError, match=r"node 'join' gathers items from 3 incoming") as e:
        Placement(flow, ["join", "summarize"], keys)
    assert "--nodes fan,docs,web,sql,join,summarize" in str(e.value)
    with pytest.raises(FlowBuildError, match=r"'nope' is not a node of this flow; its nodes"):
        Placement(flow, ["fan", "nope"], keys)
    entry, ping, pong = (Node(redis_flows.fan, name=n) for n in ("entry", "ping", "pong"))
    loop = create(entry.to(ping), ping.to(pong), pong.to(ping), allow_cycles=True)
    with pytest.raises(FlowBuildError, match=r"node 'ping' is on a loop with 'pong'"):
        Placement(loop, ["entry", "ping"], keys)
    chain, _ = redis_flows.chain()
    placed = Placement(chain, ["parse", "render"], keys)
    assert placed.streams == ["p:requests", "p:node:render"]
    assert Placement(chain, ["parse", "double", "render"], keys).everything
    two_entries = create(ping.to(), pong.to())
    assert Placement(two_entries, ["ping"], keys).streams == ["p:requests", "p:node:ping"]


def test_the_command_line_refuses_an_unknown_node() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "penguiflow.redis", "worker", "redis_flows:chain",
         "--url", "redis://127.0.0.1:1/0", "--nodes", "parse,dubble"],
        cwd=HERE, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "'dubble' is not a node of this flow; its nodes are: parse, double, render" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr


async def test_a_cancel_ends_a_send_waiting_for_a_client_that_is_behind(
    prefix: str, workers: Workers, redis: Redis
) -> None:
    # A client at the wire level that never reads its replies: hop_c's chunks fill its
    # reply stream, and the worker waits for it to read, until the request is cancelled.
    workers.start("hops", extra=nodes("hop_a", "hop_b"))
    workers.start("hops", extra=nodes("hop_c"))
    flow, _ = redis_flows.hops()
    msg = message("speak " + " ".join(str(i) for i in range(REPLY_HIGH + 200)))
    reply, _ = await send_unread(redis, prefix, flow, msg)
    # What a client's cancel of an untagged send does: mark the trace, tell the workers.
    await redis.set(f"{prefix}:cancelled:{msg.trace_id}", "1", ex=60)
    await redis.publish(f"{prefix}:cancel", msg.trace_id)

    async def let_go() -> bool:
        pending = await redis.xpending(f"{prefix}:node:hop_c", "workers")
        return not pending["pending"] and not await redis.exists(f"{prefix}:live:{msg.trace_id}")

    await eventually(let_go, what="the worker to give the cancelled request up")
    # The cancelled note, then the no-result error (which a client that has its outcome
    # ignores): the request ended everywhere.
    newest: Any = await redis.xrevrange(reply, count=2)
    assert [f[b"o"] for _, f in newest] == [b"error", b"cancelled"]
    await redis.delete(reply)
