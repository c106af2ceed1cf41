"""The flows the tests serve from worker subprocesses (``redis_flows:NAME``).

Each factory returns ``(flow, registry)``. Nodes that the tests watch from outside write
to Redis keys under ``probe:`` (``PROBE_URL`` in the environment), so a test can wait for
"the node started" or "the node saw CancelledError" without sleeping.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel
from redis.asyncio import Redis

from penguiflow import WM, Context, FinalAnswer, Message, ModelRegistry, Node, NodePolicy, create
from penguiflow.core import PenguiFlow
from penguiflow.metrics import FlowEvent
from penguiflow.patterns import join_k


class Number(BaseModel):
    n: int


class Doubled(BaseModel):
    n: int
    doubled: int


class Answer(BaseModel):
    n: int
    text: str


async def parse(msg: Number, ctx: Context) -> Number:
    return Number(n=msg.n)


async def double(msg: Number, ctx: Context) -> Doubled:
    return Doubled(n=msg.n, doubled=2 * msg.n)


async def render(msg: Doubled, ctx: Context) -> Answer:
    return Answer(n=msg.n, text=f"{msg.n}*2={msg.doubled}")


def chain() -> tuple[PenguiFlow, ModelRegistry]:
    """parse -> double -> render, every node validating."""
    policy = NodePolicy(validate="both")
    a = Node(parse, name="parse", policy=policy)
    b = Node(double, name="double", policy=policy)
    c = Node(render, name="render", policy=policy)
    registry = ModelRegistry()
    registry.register("parse", Number, Number)
    registry.register("double", Number, Doubled)
    registry.register("render", Doubled, Answer)
    return create(a.to(b), b.to(c)), registry


_probe: Redis | None = None


def probe() -> Redis:
    """A connection to the tests' Redis, for the nodes' "I got here" marks."""
    global _probe
    if _probe is None:
        _probe = Redis.from_url(os.environ["PROBE_URL"])
    return _probe


async def wait_forever(msg: Message, ctx: Context) -> Message:
    """Mark the start, then wait; on cancellation mark that too."""
    key = f"probe:{msg.trace_id}"
    await probe().set(f"{key}:started", os.getpid(), ex=60)
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await asyncio.shield(probe().set(f"{key}:cancelled", os.getpid(), ex=60))
        raise
    return msg


async def nap(msg: Message, ctx: Context) -> Message:
    """Sleep: ``payload`` is ``"FIRST,LATER"``, the seconds of the first run and of reruns."""
    key = f"probe:{msg.trace_id}:runs"
    runs = await probe().incr(key)
    await probe().expire(key, 60)
    first, later = (float(x) for x in str(msg.payload).split(","))
    await asyncio.sleep(first if runs == 1 else later)
    return msg


def slow() -> tuple[PenguiFlow, None]:
    """One node that waits until cancelled."""
    return create(Node(wait_forever, name="wait_forever").to()), None


def napping() -> tuple[PenguiFlow, None]:
    """One node that sleeps as long as the payload says."""
    node = Node(nap, name="nap", policy=NodePolicy(max_concurrency=8))
    return create(node.to()), None


def relay_napping() -> tuple[PenguiFlow, None]:
    """fan -> nap: ``napping`` behind a first node, to place the two in different workers."""
    first = Node(fan, name="fan")
    node = Node(nap, name="nap", policy=NodePolicy(max_concurrency=8))
    return create(first.to(node), node.to()), None


async def speak(msg: Message, ctx: Context) -> str:
    """Stream one chunk per word, then return the sentence."""
    words = str(msg.payload).split()
    for i, word in enumerate(words):
        await ctx.emit_chunk(parent=msg, text=word, done=i == len(words) - 1)
    return " ".join(words)


def talker() -> tuple[PenguiFlow, None]:
    return create(Node(speak, name="speak").to()), None


async def think(msg: Message, ctx: Context) -> Message:
    """A controller: one fact per hop, then a FinalAnswer."""
    wm: WM = msg.payload
    if len(wm.facts) >= 3:
        answer = FinalAnswer(text=f"{wm.query}: " + ", ".join(wm.facts))
        return msg.model_copy(update={"payload": answer})
    facts = [*wm.facts, f"fact{len(wm.facts) + 1}"]
    return msg.model_copy(update={"payload": wm.model_copy(update={"facts": facts})})


def controller() -> tuple[PenguiFlow, None]:
    node = Node(think, name="think", allow_cycle=True)
    return create(node.to(node)), None


async def fan(msg: Message, ctx: Context) -> Message:
    return msg


def _retriever(source: str) -> Node:
    async def retrieve(msg: Message, ctx: Context) -> Message:
        return msg.model_copy(update={"payload": f"{source}:{msg.payload}"})

    return Node(retrieve, name=source)


async def summarize(msg: Message, ctx: Context) -> str:
    return " + ".join(sorted(msg.payload))


def fan_in() -> tuple[PenguiFlow, None]:
    """fan -> (docs, web, sql) -> join_k(3) -> summarize."""
    fan_node = Node(fan, name="fan")
    sources = [_retriever(name) for name in ("docs", "web", "sql")]
    join = join_k("join", 3)
    summary = Node(summarize, name="summarize")
    flow = create(
        fan_node.to(*sources), *(s.to(join) for s in sources), join.to(summary), summary.to()
    )
    return flow, None


async def explode(msg: Message, ctx: Context) -> Message:
    raise ValueError(f"no good: {msg.payload}")


def failing() -> tuple[PenguiFlow, None]:
    node = Node(explode, name="explode", policy=NodePolicy(max_retries=1, backoff_base=0.01))
    return create(node.to()), None


async def hop_a(msg: Message, ctx: Context) -> Message:
    return msg.model_copy(update={"payload": f"{msg.payload}|a"})


async def hop_b(msg: Message, ctx: Context) -> Message:
    """``wait...`` waits until cancelled, ``fail...`` raises, ``die...`` ends the process."""
    text = str(msg.payload)
    if text.startswith("die"):
        os._exit(17)
    if text.startswith("wait"):
        await wait_forever(msg, ctx)
    if text.startswith("fail"):
        raise ValueError(f"no good: {text}")
    return msg.model_copy(update={"payload": f"{text}|b"})


async def hop_c(msg: Message, ctx: Context) -> Message:
    """``speak ...`` streams one chunk per word first."""
    words = str(msg.payload).split()
    if words[0] == "speak":
        for i, word in enumerate(words):
            await ctx.emit_chunk(parent=msg, text=word, done=i == len(words) - 1)
    return msg.model_copy(update={"payload": f"{msg.payload}|c"})


def hops() -> tuple[PenguiFlow, None]:
    """hop_a -> hop_b -> hop_c, on envelopes; hop_b waits or fails on demand."""
    a = Node(hop_a, name="hop_a")
    b = Node(hop_b, name="hop_b", policy=NodePolicy(max_concurrency=4))
    c = Node(hop_c, name="hop_c")
    return create(a.to(b), b.to(c), c.to()), None


async def record_success(event: FlowEvent) -> None:
    """A middleware: each node_success, as ``node@pid``, under ``probe:events:<trace>``."""
    if event.event_type == "node_success":
        await probe().rpush(f"probe:events:{event.trace_id}", f"{event.node_name}@{os.getpid()}")


def watched_hops() -> tuple[PenguiFlow, None]:
    """``hops`` with a middleware, a retry budget and errors delivered to Rookery."""
    a = Node(hop_a, name="hop_a")
    b = Node(hop_b, name="hop_b")
    c = Node(hop_c, name="hop_c")
    flow = create(
        a.to(b),
        b.to(c),
        c.to(),
        middlewares=[record_success],
        retry_budget=2,
        emit_errors_to_rookery=True,
    )
    return flow, None


async def crash(msg: Message, ctx: Context) -> Message:
    """Bring the worker process down on ``"die"``, as a segfault or an OOM kill would."""
    if msg.payload == "die":
        os._exit(17)
    return msg


def crashing() -> tuple[PenguiFlow, None]:
    return create(Node(crash, name="crash").to()), None


def _side(side: str) -> Node:
    async def answer(msg: Message, ctx: Context) -> Message:
        return msg.model_copy(update={"payload": f"{msg.payload}|{side}"})

    return Node(answer, name=side)


def two_entries() -> tuple[PenguiFlow, None]:
    """Two entry nodes, each an exit: every request goes to both."""
    return create(_side("left").to(), _side("right").to()), None
