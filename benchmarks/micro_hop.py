"""Pure-runtime micro benchmark: what one hop costs, without message construction or checks.

Three pass-through nodes, pre-built messages, a producer task emitting while the main task
fetches; the same topology hand-written on ``asyncio.Queue(64)``. Prints microseconds per
message (5 queue operations: emit, 3 hops, fetch) and the ratio, three times.

    python benchmarks/micro_hop.py [--bare]     # --bare: untracked int payloads, no Message
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from penguiflow import Headers, Message, Node, NodePolicy, create

N = 60_000


def payloads(bare: bool) -> list[Any]:
    headers = Headers(tenant="bench")
    return list(range(N)) if bare else [Message(payload=i, headers=headers) for i in range(N)]


async def ours(items: list[Any]) -> float:
    async def same(msg: Any, _ctx: Any) -> Any:
        return msg

    policy = NodePolicy(validate="none")
    a, b, c = (Node(same, name=name, policy=policy) for name in "abc")
    flow = create(a.to(b), b.to(c), c.to())
    flow.run()

    async def produce() -> None:
        for item in items:
            await flow.emit(item)

    started = time.perf_counter()
    producer = asyncio.create_task(produce())
    for _ in items:
        await flow.fetch()
    elapsed = time.perf_counter() - started
    await producer
    await flow.stop()
    return elapsed


async def raw(items: list[Any]) -> float:
    async def same(msg: Any) -> Any:
        return msg

    queues: list[asyncio.Queue[Any]] = [asyncio.Queue(64) for _ in range(4)]

    async def stage(inbox: asyncio.Queue[Any], out: asyncio.Queue[Any]) -> None:
        while True:
            await out.put(await same(await inbox.get()))

    workers = [asyncio.create_task(stage(queues[i], queues[i + 1])) for i in range(3)]

    async def produce() -> None:
        for item in items:
            await queues[0].put(item)

    started = time.perf_counter()
    producer = asyncio.create_task(produce())
    for _ in items:
        await queues[3].get()
    elapsed = time.perf_counter() - started
    await producer
    for worker in workers:
        worker.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    return elapsed


async def main(bare: bool) -> None:
    for _ in range(3):
        t_ours = await ours(payloads(bare))
        t_raw = await raw(payloads(bare))
        print(
            f"ours {t_ours / N * 1e6:.2f} us/msg   raw asyncio.Queue {t_raw / N * 1e6:.2f} us/msg"
            f"   ratio {t_raw / t_ours:.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main("--bare" in sys.argv[1:]))
