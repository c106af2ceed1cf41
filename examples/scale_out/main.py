"""One flow, two worker processes, one client, all through Redis.

``python examples/scale_out/main.py`` starts a ``redis-server`` on a free port (or uses
``REDIS_URL``), starts two workers that serve ``main:build`` (this file), and runs a
client that sends 40 requests, streams one answer chunk by chunk, and cancels a request
that would never end. The nodes are the same as in-process; only where ``invoke`` comes
from changes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from penguiflow import Context, Headers, Message, ModelRegistry, Node, NodePolicy, create
from penguiflow.core import PenguiFlow
from penguiflow.errors import TraceCancelled
from penguiflow.redis import connect

HERE = Path(__file__).resolve().parent
PREFIX = "scale_out"


class Question(BaseModel):
    text: str
    wait: bool = False


class Topic(BaseModel):
    text: str
    topic: str


class Answer(BaseModel):
    topic: str
    answer: str
    worker_pid: int


async def triage(msg: Question, ctx: Context) -> Topic:
    if msg.wait:
        await asyncio.Event().wait()  # a request that never ends on its own
    return Topic(text=msg.text, topic="metrics" if "metric" in msg.text else "general")


async def answer(msg: Topic, ctx: Context) -> Answer:
    return Answer(topic=msg.topic, answer=f"[{msg.topic}] {msg.text}", worker_pid=os.getpid())


async def speak(msg: Answer, ctx: Context) -> Answer:
    """Stream the answer word by word (chunks go to the client), then return it."""
    words = msg.answer.split()
    for i, word in enumerate(words):
        await ctx.emit_chunk(parent=ctx.message, text=word, done=i == len(words) - 1)
    return msg


def build() -> tuple[PenguiFlow, ModelRegistry]:
    """The flow: what the workers serve and what the client connects to."""
    policy = NodePolicy(validate="both")
    a = Node(triage, name="triage", policy=NodePolicy(validate="both", max_concurrency=8))
    b = Node(answer, name="answer", policy=policy)
    c = Node(speak, name="speak", policy=policy)
    registry = ModelRegistry()
    registry.register("triage", Question, Topic)
    registry.register("answer", Topic, Answer)
    registry.register("speak", Answer, Answer)
    return create(a.to(b), b.to(c)), registry


async def wait_ready(url: str) -> None:
    """Wait (up to 10 s) until the Redis server just started answers."""
    redis = Redis.from_url(url)
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    await redis.ping()
                    return
                except RedisConnectionError:
                    await asyncio.sleep(0.02)  # still starting
    finally:
        await redis.aclose()


@asynccontextmanager
async def redis_and_workers() -> AsyncIterator[str]:
    """A Redis (started here unless REDIS_URL is set) and two workers serving build()."""
    procs: list[subprocess.Popen[bytes]] = []
    url = os.environ.get("REDIS_URL")
    if url is None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed: install it, or set REDIS_URL")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        url = f"redis://127.0.0.1:{port}/0"
        await wait_ready(url)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "penguiflow.redis",
                "worker",
                "main:build",
                "--url",
                url,
                "--prefix",
                PREFIX,
                "--name",
                f"worker-{i}",
            ],
            cwd=HERE,
            stderr=subprocess.DEVNULL,
        )
        for i in (1, 2)
    ]
    try:
        yield url
    finally:
        for proc in workers:  # SIGTERM: finish or hand back, then leave
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait(timeout=30)
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def ask(text: str, *, wait: bool = False) -> Message:
    return Message(payload=Question(text=text, wait=wait), headers=Headers(tenant="acme"))


async def main() -> dict[str, Any]:
    flow, registry = build()
    async with (
        redis_and_workers() as url,
        connect(flow, url, registry=registry, prefix=PREFIX) as client,
    ):
        # 1. Many requests at once; the two workers share them.
        outs = await asyncio.gather(
            *(client.invoke(ask(f"show metric {i}"), timeout=60, expect=Message) for i in range(40))
        )
        pids = {out.payload.worker_pid for out in outs}
        print(f"40 answers, first: {outs[0].payload.answer!r}")

        # 2. Chunks stream back in order while the request runs in a worker.
        async with client.request(ask("penguins swim in cold water"), expect=Message) as req:
            words = [chunk.text async for chunk in req.chunks()]
            streamed = await req.result()
        print(f"streamed: {' '.join(words)} -> {streamed.payload.answer!r}")

        # 3. A cancel reaches the worker running the request.
        async with client.request(ask("never ends", wait=True)) as stuck:
            await client.cancel(stuck.trace_id)
            try:
                await stuck.result()
            except TraceCancelled:
                print(f"cancelled: {stuck.state}")
    return {"answers": outs, "worker_pids": pids, "words": words, "stuck": stuck.state}


if __name__ == "__main__":
    asyncio.run(main())
