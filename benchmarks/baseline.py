"""Hand-written asyncio baselines: the same topologies as ``scenarios.py``.

One bounded ``asyncio.Queue(64)`` per node inbox, one worker task per node, no
validation (except where the scenario is about validation), no events, no per-trace
bookkeeping: the physical limit of this design. A node with several incoming edges reads
one shared inbox. Adapted from ``../shared/bench/scenarios_raw.py``.

    python benchmarks/baseline.py list
    python benchmarks/baseline.py chain_pipe [--msg plain|pydantic] [--uvloop]

``--msg plain`` (impl ``raw-asyncio``): messages are small ``__slots__`` objects.
``--msg pydantic`` (impl ``raw-pyd``): messages, WM, FinalAnswer and chunks are pydantic
models shaped like PenguiFlow's, copied with ``model_copy`` where our scenario or runtime
copies: the limit for a pydantic ``Message``.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Registry, fail, main, run_concurrent, run_invoke, run_timed
from pydantic import BaseModel, Field
from pydantic.type_adapter import TypeAdapter

QMAX = 64
REG = Registry()

# --------------------------------------------------------------------------- messages


class RHeaders:
    __slots__ = ("tenant",)

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant


class RMsg:
    __slots__ = ("headers", "meta", "payload", "trace_id")

    def __init__(self, payload: Any, headers: Any, trace_id: Any, meta: Any = None) -> None:
        self.payload = payload
        self.headers = headers
        self.trace_id = trace_id
        self.meta = meta


class RWM:
    __slots__ = ("budget_hops", "hops", "query")

    def __init__(self, query: str, hops: int = 0, budget_hops: int | None = 8) -> None:
        self.query = query
        self.hops = hops
        self.budget_hops = budget_hops


class RFinal:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class RChunk:
    __slots__ = ("done", "seq", "stream_id", "text")

    def __init__(self, stream_id: str, seq: int, text: str, done: bool) -> None:
        self.stream_id = stream_id
        self.seq = seq
        self.text = text
        self.done = done


class PHeaders(BaseModel):
    tenant: str
    topic: str | None = None
    priority: int = 0


class PMessage(BaseModel):
    payload: Any
    headers: PHeaders
    trace_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    ts: float = Field(default_factory=time.time)
    deadline_s: float | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class PWM(BaseModel):
    query: str
    facts: list[Any] = Field(default_factory=list)
    hops: int = 0
    budget_hops: int | None = 8
    tokens_used: int = 0
    budget_tokens: int | None = None
    confidence: float = 0.0


class PFinal(BaseModel):
    text: str
    citations: list[str] = Field(default_factory=list)


class PChunk(BaseModel):
    stream_id: str
    seq: int
    text: str
    done: bool = False
    meta: dict[str, Any] = Field(default_factory=dict)


class PlainOps:
    impl = "raw-asyncio"
    Final: type = RFinal
    headers = RHeaders("bench")
    _ids = itertools.count()

    def msg(self, payload: Any, trace_id: Any = None) -> RMsg:
        return RMsg(payload, self.headers, next(self._ids) if trace_id is None else trace_id)

    def with_payload(self, m: RMsg, payload: Any) -> RMsg:
        return RMsg(payload, m.headers, m.trace_id, m.meta)

    def wm_msg(self, query: str, budget: int) -> RMsg:
        return self.msg(RWM(query, 0, budget))

    def next_hop(self, m: RMsg) -> RMsg:
        wm = m.payload
        return RMsg(RWM(wm.query, wm.hops + 1, wm.budget_hops), m.headers, m.trace_id, m.meta)

    def final(self, m: RMsg, text: str) -> RMsg:
        return RMsg(RFinal(text), m.headers, m.trace_id, m.meta)

    def chunk_msg(self, parent: RMsg, seq: int, text: str, done: bool) -> RMsg:
        chunk = RChunk(parent.trace_id, seq, text, done)
        return RMsg(chunk, parent.headers, parent.trace_id, parent.meta)


class PydOps:
    impl = "raw-pyd"
    Final: type = PFinal
    headers = PHeaders(tenant="bench")

    def msg(self, payload: Any, trace_id: Any = None) -> PMessage:
        if trace_id is None:
            return PMessage(payload=payload, headers=self.headers)
        return PMessage(payload=payload, headers=self.headers, trace_id=trace_id)

    def with_payload(self, m: PMessage, payload: Any) -> PMessage:
        return m.model_copy(update={"payload": payload})

    def wm_msg(self, query: str, budget: int) -> PMessage:
        return self.msg(PWM(query=query, budget_hops=budget))

    def next_hop(self, m: PMessage) -> PMessage:
        wm = m.payload
        return m.model_copy(update={"payload": wm.model_copy(update={"hops": wm.hops + 1})})

    def final(self, m: PMessage, text: str) -> PMessage:
        return m.model_copy(update={"payload": PFinal(text=text)})

    def chunk_msg(self, parent: PMessage, seq: int, text: str, done: bool) -> PMessage:
        chunk = PChunk(stream_id=parent.trace_id, seq=seq, text=text, done=done, meta={})
        return PMessage(
            payload=chunk,
            headers=parent.headers,
            trace_id=parent.trace_id,
            deadline_s=parent.deadline_s,
            meta=dict(parent.meta),
        )


OPS: PlainOps | PydOps = PlainOps()


def use(kind: str) -> str:
    """Select the message kind (``plain`` or ``pydantic``); returns the impl label."""
    global OPS
    if kind == "pydantic":
        OPS = PydOps()
    elif kind == "plain":
        OPS = PlainOps()
    else:
        raise ValueError(f"--msg must be plain or pydantic, not {kind!r}")
    return OPS.impl


def warm_n(n: int) -> int:
    return max(20, min(300, n // 10))


def make_msg(i: int) -> Any:
    return OPS.msg(f"m{i}")


def key_payload(out: Any) -> Any:
    return out.payload


def want_echo(i: int) -> str:
    return f"m{i}"


# --------------------------------------------------------------------------- plumbing


async def stage(fn: Any, inbox: asyncio.Queue, outs: list[asyncio.Queue]) -> None:
    """One worker per node: get, call, put the result on every out edge."""
    get = inbox.get
    if len(outs) == 1:
        put = outs[0].put
        while True:
            msg = await get()
            res = await fn(msg)
            if res is not None:
                await put(res)
    while True:
        msg = await get()
        res = await fn(msg)
        if res is not None:
            for q in outs:
                await q.put(res)


class RawFlow:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task] = []
        self.inbox: asyncio.Queue = asyncio.Queue(QMAX)
        self.outbox: asyncio.Queue = asyncio.Queue(QMAX)

    def start(self, coro: Any) -> None:
        self.tasks.append(asyncio.create_task(coro))

    async def emit(self, msg: Any) -> None:
        await self.inbox.put(msg)

    async def fetch(self) -> Any:
        return await self.outbox.get()

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _run(flow: RawFlow, make: Any, n: int, window: int | None, key: Any, want: Any) -> dict:
    try:
        done, secs = await run_timed(
            flow.emit, flow.fetch, make, n, window, key, want, warm=warm_n(n)
        )
    finally:
        await flow.stop()
    return {"seconds": secs, "n": done, "batch": n}


# --------------------------------------------------------------------------- chain


async def ident(msg: Any) -> Any:
    return msg


def build_chain(fns: tuple[Any, Any, Any] = (ident, ident, ident)) -> RawFlow:
    f = RawFlow()
    q1: asyncio.Queue = asyncio.Queue(QMAX)
    q2: asyncio.Queue = asyncio.Queue(QMAX)
    f.start(stage(fns[0], f.inbox, [q1]))
    f.start(stage(fns[1], q1, [q2]))
    f.start(stage(fns[2], q2, [f.outbox]))
    return f


@REG.add("chain_seq", "msgs", "3-node chain, one at a time")
async def chain_seq(n: int) -> dict:
    return await _run(build_chain(), make_msg, n, 1, key_payload, want_echo)


@REG.add("chain_pipe", "msgs", "3-node chain, pipelined")
async def chain_pipe(n: int) -> dict:
    return await _run(build_chain(), make_msg, n, None, key_payload, want_echo)


# No events in the baseline: chain_pipe_mw is compared with the plain chain.
REG.add("chain_pipe_mw", "msgs", "alias of chain_pipe (no events here)")(chain_pipe)


# --------------------------------------------------------------------------- validated


class VIn(BaseModel):
    text: str
    n: int


class VTriaged(BaseModel):
    text: str
    n: int
    topic: str


class VDocs(BaseModel):
    topic: str
    docs: list[str]


class VOut(BaseModel):
    prompt: str


async def triage(msg: VIn) -> VTriaged:
    return VTriaged(text=msg.text, n=msg.n, topic="metrics" if msg.n & 1 else "general")


async def retrieve(msg: VTriaged) -> VDocs:
    return VDocs(topic=msg.topic, docs=[msg.text, msg.topic])


async def pack(msg: VDocs) -> VOut:
    return VOut(prompt=f"[{msg.topic}] {len(msg.docs)} {msg.docs[0]}")


def validated(fn: Any, in_model: Any, out_model: Any) -> Any:
    ain = TypeAdapter(in_model).validate_python
    aout = TypeAdapter(out_model).validate_python

    async def wrapper(msg: Any) -> Any:
        res = await fn(ain(msg))
        return None if res is None else aout(res)

    return wrapper


def enveloped(fn: Any, in_model: Any, out_model: Any) -> Any:
    """Typed node inside an envelope: unwrap, validate in, call, validate out, re-wrap."""
    ain = TypeAdapter(in_model).validate_python
    aout = TypeAdapter(out_model).validate_python

    async def wrapper(msg: Any) -> Any:
        res = await fn(ain(msg.payload))
        return None if res is None else OPS.with_payload(msg, aout(res))

    return wrapper


def make_vin(i: int) -> VIn:
    return VIn(text=f"q{i}", n=i)


def make_vin_msg(i: int) -> Any:
    return OPS.msg(VIn(text=f"q{i}", n=i))


def want_prompt(i: int) -> str:
    return f"[{'metrics' if i & 1 else 'general'}] 2 q{i}"


def key_prompt(out: Any) -> Any:
    if type(out) is not VOut:
        fail(f"expected VOut, got {type(out).__name__}")
    return out.prompt


def key_env_prompt(out: Any) -> Any:
    return key_prompt(out.payload)


@REG.add("chain_validated_pipe", "msgs", "typed chain, TypeAdapter in+out per node")
async def chain_validated_pipe(n: int) -> dict:
    flow = build_chain(
        (
            validated(triage, VIn, VTriaged),
            validated(retrieve, VTriaged, VDocs),
            validated(pack, VDocs, VOut),
        )
    )
    return await _run(flow, make_vin, n, None, key_prompt, want_prompt)


@REG.add("quickstart_pipe", "msgs", "typed chain inside envelopes (unwrap/validate/re-wrap)")
async def quickstart_pipe(n: int) -> dict:
    flow = build_chain(
        (
            enveloped(triage, VIn, VTriaged),
            enveloped(retrieve, VTriaged, VDocs),
            enveloped(pack, VDocs, VOut),
        )
    )
    return await _run(flow, make_vin_msg, n, None, key_env_prompt, want_prompt)


# --------------------------------------------------------------------------- fan-out / join


def want_join(i: int) -> str:
    return f"m{i}::A,m{i}::B"


@REG.add("fanout_join_pipe", "msgs", "fan -> (a, b) -> join(2) -> summarize")
async def fanout_join_pipe(n: int) -> dict:
    f = RawFlow()
    qa: asyncio.Queue = asyncio.Queue(QMAX)
    qb: asyncio.Queue = asyncio.Queue(QMAX)
    qj: asyncio.Queue = asyncio.Queue(QMAX)  # join inbox shared by a->join and b->join
    qs: asyncio.Queue = asyncio.Queue(QMAX)
    ops = OPS

    async def work_a(msg: Any) -> Any:
        return ops.with_payload(msg, msg.payload + "::A")

    async def work_b(msg: Any) -> Any:
        return ops.with_payload(msg, msg.payload + "::B")

    buckets: dict[Any, list] = {}

    async def join(msg: Any) -> Any:
        bucket = buckets.setdefault(msg.trace_id, [])
        bucket.append(msg)
        if len(bucket) < 2:
            return None
        del buckets[msg.trace_id]
        return ops.with_payload(bucket[0], [m.payload for m in bucket])

    async def summarize(msg: Any) -> Any:
        return ops.with_payload(msg, ",".join(sorted(msg.payload)))

    f.start(stage(ident, f.inbox, [qa, qb]))
    f.start(stage(work_a, qa, [qj]))
    f.start(stage(work_b, qb, [qj]))
    f.start(stage(join, qj, [qs]))
    f.start(stage(summarize, qs, [f.outbox]))
    return await _run(f, make_msg, n, None, key_payload, want_join)


# --------------------------------------------------------------------------- controller

HOPS = 20


def make_wm(i: int) -> Any:
    return OPS.wm_msg(f"q{i}", HOPS + 10)


def want_query(i: int) -> str:
    return f"q{i}"


def key_final_msg(out: Any) -> Any:
    return out.payload.text


async def _controller(n_hops: int, window: int) -> dict:
    traces = max(1, n_hops // HOPS)
    f = RawFlow()
    ops = OPS

    async def worker() -> None:
        inbox = f.inbox  # ingress and the self-loop share the controller inbox
        out = f.outbox
        while True:
            msg = await inbox.get()
            wm = msg.payload
            if wm.hops >= HOPS - 1:
                await out.put(ops.final(msg, wm.query))
            else:
                await inbox.put(ops.next_hop(msg))

    f.start(worker())
    try:
        done, secs = await run_timed(
            f.emit, f.fetch, make_wm, traces, window, key_final_msg, want_query,
            warm=max(5, traces // 10),
        )  # fmt: skip
    finally:
        await f.stop()
    return {"seconds": secs, "n": done * HOPS, "batch": traces * HOPS}


@REG.add("controller_seq", "hops", "self-looping controller, 20 hops/trace, 1 in flight")
async def controller_seq(n: int) -> dict:
    return await _controller(n, 1)


@REG.add("controller_w16", "hops", "same controller, 16 traces in flight")
async def controller_w16(n: int) -> dict:
    return await _controller(n, 16)


# Ours sends the final hop with ctx.emit to an egress node; physically the same loop.
REG.add("controller_emit_w16", "hops", "alias of controller_w16")(controller_w16)


# --------------------------------------------------------------------------- streaming

CHUNKS = 200


def make_stream_msg(i: int) -> Any:
    return OPS.msg(f"m{i}", f"s{i}")


def want_stream(i: int) -> str:
    return f"s{i}"


def key_stream_end(out: Any) -> Any:
    chunk = out.payload
    if not (chunk.done and chunk.seq == CHUNKS - 1 and chunk.stream_id == out.trace_id):
        fail(f"bad end of stream {out!r}")
    return out.trace_id


@REG.add("streaming", "chunks", "node emits 200 chunks/trace to a sink")
async def streaming(n: int) -> dict:
    traces = max(1, n // CHUNKS)
    f = RawFlow()
    qs: asyncio.Queue = asyncio.Queue(QMAX)
    ops = OPS
    state = [0, 0, 0]  # next seq, chunks seen, errors

    async def streamer() -> None:
        inbox = f.inbox
        put = qs.put
        last = CHUNKS - 1
        while True:
            msg = await inbox.get()
            for j in range(CHUNKS):
                await put(ops.chunk_msg(msg, j, f"t{j}", j == last))

    async def sink(msg: Any) -> Any:
        chunk = msg.payload
        state[1] += 1
        if chunk.seq != state[0]:
            state[2] += 1
        if chunk.done:
            state[0] = 0
            return msg
        state[0] += 1
        return None

    f.start(streamer())
    f.start(stage(sink, qs, [f.outbox]))
    try:
        done, secs = await run_timed(
            f.emit, f.fetch, make_stream_msg, traces, 1, key_stream_end, want_stream, warm=3
        )
    finally:
        await f.stop()
    if state[2] or state[1] != (done + 3) * CHUNKS:
        fail(f"sink saw {state[1]} chunks ({state[2]} out of order) for {done + 3} streams")
    return {"seconds": secs, "n": done * CHUNKS, "batch": traces * CHUNKS}


# --------------------------------------------------------------------------- playbook


async def call_subflow(msg: Any) -> Any:
    """Build, run and tear down a fresh 2-node subflow for one message."""
    ops = OPS

    async def retrieve(m: Any) -> Any:
        return ops.with_payload(m, [f"doc-{m.payload}-{i}" for i in range(3)])

    async def compress(m: Any) -> Any:
        return ops.with_payload(m, ",".join(m.payload))

    q0: asyncio.Queue = asyncio.Queue(QMAX)
    q1: asyncio.Queue = asyncio.Queue(QMAX)
    q2: asyncio.Queue = asyncio.Queue(QMAX)
    t1 = asyncio.create_task(stage(retrieve, q0, [q1]))
    t2 = asyncio.create_task(stage(compress, q1, [q2]))
    try:
        await q0.put(msg)
        res = await q2.get()
        return res.payload
    finally:
        t1.cancel()
        t2.cancel()
        await asyncio.gather(t1, t2, return_exceptions=True)


def want_playbook(i: int) -> str:
    return f"doc-m{i}-0,doc-m{i}-1,doc-m{i}-2"


@REG.add("playbook", "calls", "node runs a fresh 2-node subflow per message")
async def playbook(n: int) -> dict:
    f = RawFlow()
    ops = OPS

    async def controller(msg: Any) -> Any:
        return ops.with_payload(msg, await call_subflow(msg))

    f.start(stage(controller, f.inbox, [f.outbox]))
    return await _run(f, make_msg, n, 1, key_payload, want_playbook)


# --------------------------------------------------------------------------- concurrency


async def _concurrency(n: int) -> dict:
    flow = build_chain()
    try:
        return await run_concurrent(flow.emit, flow.fetch, make_msg, n, key_payload, want_echo)
    finally:
        await flow.stop()


@REG.add("concurrency_1k", "traces", "1,000 traces emitted at once into the chain")
async def concurrency_1k(n: int) -> dict:
    return await _concurrency(n)


@REG.add("concurrency_10k", "traces", "10,000 traces emitted at once into the chain")
async def concurrency_10k(n: int) -> dict:
    return await _concurrency(n)


# --------------------------------------------------------------------------- retry


@REG.add("retry0", "msgs", "node fails once per message, then succeeds; backoff 0")
async def retry0(n: int) -> dict:
    f = RawFlow()
    failed: set = set()

    async def flaky(msg: Any) -> Any:
        key = msg.payload
        if key not in failed:
            failed.add(key)
            raise RuntimeError("synthetic failure")
        failed.discard(key)
        return msg

    async def worker() -> None:
        inbox, out = f.inbox, f.outbox
        while True:
            msg = await inbox.get()
            attempt = 0
            while True:
                try:
                    async with asyncio.timeout(1.0):
                        res = await flaky(msg)
                    break
                except Exception:
                    if attempt >= 1:
                        res = None
                        break
                    attempt += 1
                    await asyncio.sleep(0.0)
            if res is not None:
                await out.put(res)

    f.start(worker())
    res = await _run(f, make_msg, n, 1, key_payload, want_echo)
    if failed:
        fail(f"{len(failed)} messages failed without being retried")
    return res


# --------------------------------------------------------------------------- requests


@REG.add("invoke_1k", "calls", "1,000 concurrent requests, one future each, resolved at egress")
async def invoke_1k(n: int) -> dict:
    f = build_chain()
    waiting: dict[Any, asyncio.Future] = {}
    loop = asyncio.get_running_loop()

    async def egress() -> None:
        get = f.outbox.get
        pop = waiting.pop
        while True:
            out = await get()
            fut = pop(out.trace_id, None)
            if fut is not None and not fut.done():
                fut.set_result(out)

    async def invoke(msg: Any) -> Any:
        fut = loop.create_future()
        tid = msg.trace_id
        waiting[tid] = fut
        try:
            await f.inbox.put(msg)
            return await fut
        finally:
            waiting.pop(tid, None)

    f.start(egress())
    try:
        done, secs = await run_invoke(invoke, make_msg, n, key_payload, want_echo, warm=warm_n(n))
        if waiting:
            fail(f"{len(waiting)} request(s) still waiting after every call returned")
    finally:
        await f.stop()
    return {"seconds": secs, "n": done, "batch": n}


if __name__ == "__main__":
    argv = sys.argv[1:]
    kind = "plain"
    if "--msg" in argv:
        i = argv.index("--msg")
        kind = argv[i + 1]
        del argv[i : i + 2]
    sys.exit(main(REG, use(kind), argv))
