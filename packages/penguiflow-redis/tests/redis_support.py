"""Helpers the tests share: worker subprocesses, polling with a deadline, key listing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from penguiflow.core import PenguiFlow
from penguiflow.redis._codec import Codec
from penguiflow.redis._worker import REPLY_HIGH
from penguiflow.types import Message

HERE = Path(__file__).resolve().parent


class Workers:
    """Starts worker subprocesses for one test and stops what is left at the end."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        target: str,
        *,
        claim_idle: float = 1.0,
        grace: float = 5.0,
        name: str = "",
        extra: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        args = [
            sys.executable, "-m", "penguiflow.redis", "worker", f"redis_flows:{target}",
            "--url", self.url, "--prefix", self.prefix,
            "--claim-idle", str(claim_idle), "--grace", str(grace),
        ]  # fmt: skip
        if name:
            args += ["--name", name]
        args += extra
        env = {**os.environ, "PROBE_URL": self.url, "PYTHONUNBUFFERED": "1"}
        # SHOW_WORKERS=1 pytest -s ... shows the workers' logs (hidden by default).
        stderr = None if os.environ.get("SHOW_WORKERS") else subprocess.PIPE
        proc = subprocess.Popen(args, cwd=HERE, env=env, stderr=stderr)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 15.0, what: str = "a condition"
) -> Any:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def consumers(redis: Redis, prefix: str) -> set[str]:
    """The consumer names the request stream's group knows."""
    try:
        found = await redis.xinfo_consumers(f"{prefix}:requests", "workers")
    except ResponseError:  # no stream or no group yet: no worker has started
        return set()
    return {c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in found}


async def reading(redis: Redis) -> bool:
    """Whether a worker waits on a request stream: the server lists its blocked read."""
    return any(
        c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
        for c in await redis.client_list()
    )


async def request_keys(redis: Redis, prefix: str) -> list[bytes]:
    """Every per-request or per-client key of ``prefix`` still in Redis."""
    found: list[bytes] = []
    for pattern in ("running", "cancelled", "cancelled-runs", "live", "client"):
        found += [k async for k in redis.scan_iter(match=f"{prefix}:{pattern}:*")]
    return found


async def send_unread(redis: Redis, prefix: str, flow: PenguiFlow, msg: Message) -> tuple[str, int]:
    """Send ``msg`` as a client at the wire level that never reads its replies, and wait
    until the worker holds back (its reply stream stays at the backpressure bound).

    Returns the reply stream's key and how long it was when the worker stopped sending.
    """
    reply = f"{prefix}:client:behind"
    await redis.xadd(reply, {"t": "", "o": "open"})
    await redis.incr(f"{prefix}:live:{msg.trace_id}")
    fields = {"t": msg.trace_id, "r": reply, **Codec(flow, None).encode_message(msg)}
    await redis.xadd(f"{prefix}:requests", fields)  # type: ignore[arg-type]
    last = [-1]

    async def held_back() -> bool:
        # The worker stopped sending: the length stays put twice in a row.
        length = await redis.xlen(reply)
        if length != last[0]:
            last[0] = length
            return False
        return length >= REPLY_HIGH

    await eventually(held_back, what="the worker to wait for the client")
    return reply, last[0]
