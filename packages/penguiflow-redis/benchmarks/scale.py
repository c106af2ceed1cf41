"""Throughput and latency of a 3-node chain: in-process, and on Redis with 1 and 2 workers.

The chain is ``parse -> work -> render``; ``work`` spends 1 ms of pure-Python CPU per
request (a busy loop), so one event loop tops out near 1,000 requests/s and a second
worker process has a second core to use. A client in this process keeps ``--concurrency``
requests in flight and measures each request from send to outcome.

The overhead rows run the same chain with no CPU work, one request at a time: their p50
latency, Redis minus in-process, is what a request pays for crossing to a worker and back.

Run: ``python packages/penguiflow-redis/benchmarks/scale.py`` (starts its own
``redis-server`` on a free port, or uses ``--url``). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from penguiflow import Context, Headers, Message, ModelRegistry, Node, NodePolicy, create
from penguiflow.core import PenguiFlow
from penguiflow.redis import connect

HERE = Path(__file__).resolve().parent
CPU_S = float(os.environ.get("SCALE_CPU_S", "0.001"))


class Query(BaseModel):
    n: int


class Worked(BaseModel):
    n: int
    spins: int


class Reply(BaseModel):
    n: int
    text: str


async def parse(msg: Query, ctx: Context) -> Query:
    return msg


async def work(msg: Query, ctx: Context) -> Worked:
    spins = 0
    end = time.perf_counter() + CPU_S
    while time.perf_counter() < end:  # pure-Python CPU work, holding the event loop
        spins += 1
    return Worked(n=msg.n, spins=spins)


async def render(msg: Worked, ctx: Context) -> Reply:
    return Reply(n=msg.n, text=f"#{msg.n}")


def build() -> tuple[PenguiFlow, ModelRegistry]:
    """The benchmark's flow, as workers load it (``scale:build``)."""
    policy = NodePolicy(validate="both")
    a = Node(parse, name="parse", policy=policy)
    b = Node(work, name="work", policy=policy)
    c = Node(render, name="render", policy=policy)
    registry = ModelRegistry()
    registry.register("parse", Query, Query)
    registry.register("work", Query, Worked)
    registry.register("render", Worked, Reply)
    return create(a.to(b), b.to(c)), registry


def message(n: int) -> Message:
    return Message(payload=Query(n=n), headers=Headers(tenant="bench"))


async def measure(
    invoke: Callable[[Message], Awaitable[Any]], requests: int, concurrency: int
) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 latency (ms) of ``requests`` at ``concurrency`` in flight."""
    latencies: list[float] = []
    todo = iter(range(requests))

    async def lane() -> None:
        for n in todo:
            start = time.perf_counter()
            out = await invoke(message(n))
            latencies.append(time.perf_counter() - start)
            assert out.payload.n == n

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(lane())
    elapsed = time.perf_counter() - start
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return requests / elapsed, p50, p99


@contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; install it or pass --url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


@contextmanager
def workers(url: str, prefix: str, count: int, cpu_s: float) -> Iterator[None]:
    env = {**os.environ, "SCALE_CPU_S": str(cpu_s)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "penguiflow.redis",
                "worker",
                "scale:build",
                "--url",
                url,
                "--prefix",
                prefix,
                "--grace",
                "5",
            ],
            cwd=HERE,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)


async def in_process(requests: int, concurrency: int) -> tuple[float, float, float]:
    flow, registry = build()
    flow.run(registry=registry)
    try:
        await measure(flow.invoke, min(requests, 200), concurrency)  # warm-up
        return await measure(flow.invoke, requests, concurrency)
    finally:
        await flow.stop()


async def on_redis(
    url: str, count: int, requests: int, concurrency: int, cpu_s: float
) -> tuple[float, float, float]:
    prefix = f"bench{os.getpid()}x{count}x{int(cpu_s * 1e6)}"
    flow, registry = build()
    with workers(url, prefix, count, cpu_s):
        async with connect(flow, url, registry=registry, prefix=prefix) as client:
            # Warm-up: also waits for the workers to start.
            await measure(client.invoke, min(requests, 200), concurrency)
            return await measure(client.invoke, requests, concurrency)


MODES = (
    "in-process",
    "redis, 1 worker",
    "redis, 2 workers",
    "overhead: in-process, no CPU, 1 at a time",
    "overhead: redis, no CPU, 1 at a time",
)


async def run(url: str, requests: int, concurrency: int) -> list[tuple[str, float, float, float]]:
    global CPU_S
    rows = [
        (MODES[0], *await in_process(requests, concurrency)),
        (MODES[1], *await on_redis(url, 1, requests, concurrency, CPU_S)),
        (MODES[2], *await on_redis(url, 2, requests, concurrency, CPU_S)),
    ]
    cpu, CPU_S = CPU_S, 0.0
    try:
        sequential = max(1, requests // 4)
        rows.append((MODES[3], *await in_process(sequential, 1)))
        rows.append((MODES[4], *await on_redis(url, 1, sequential, 1, 0.0)))
    finally:
        CPU_S = cpu
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--url", default=None, help="an existing Redis (default: start one)")
    args = parser.parse_args(argv)
    with redis_server(args.url) as url:
        rows = asyncio.run(run(url, args.requests, args.concurrency))
    base_rps, base_p50 = rows[0][1], rows[3][2]
    print(f"3-node chain, {CPU_S * 1000:g} ms CPU in the middle node, "
          f"{args.requests} requests, {args.concurrency} in flight\n")  # fmt: skip
    print("| mode | requests/s | vs in-process | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for i, (mode, rps, p50, p99) in enumerate(rows):
        ratio = rps / base_rps if i < 3 else p50 / base_p50
        label = f"{ratio:.2f}x" if i < 3 else f"{ratio:.0f}x latency"
        print(f"| {mode} | {rps:,.0f} | {label} | {p50:.2f} | {p99:.2f} |")
    overhead = rows[4][2] - rows[3][2]
    print(f"\nper-request overhead of Redis (p50, one at a time): {overhead:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
