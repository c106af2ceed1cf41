"""Our scenarios, written only against PenguiFlow's public API.

    python benchmarks/scenarios.py list
    python benchmarks/scenarios.py chain_pipe [--uvloop] [--min-time 0] [--profile 25]

Each run prints one JSON line. ``baseline.py`` holds the same topologies hand-written on
``asyncio.Queue``; ``run.py`` runs both and prints the comparison.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    Registry,
    fail,
    main,
    run_concurrent,
    run_invoke,
    run_timed,
)
from pydantic import BaseModel

from penguiflow import (
    WM,
    FinalAnswer,
    FlowEvent,
    Headers,
    Message,
    ModelRegistry,
    Node,
    NodePolicy,
    create,
)

try:
    from penguiflow.patterns import join_k
except ImportError as exc:  # penguiflow-patterns not installed (yet)
    join_k = None
    JOIN_K_MISSING = f"penguiflow.patterns.join_k is not importable ({exc}); skipped"
else:
    JOIN_K_MISSING = ""

IMPL = "ours"


def quiet_logs() -> int:
    """Silence the ``penguiflow`` loggers; returns the previous level (to restore it).

    Events at INFO/DEBUG (ERROR for retries) are built only when the logger is enabled or
    a middleware listens. As in the shared bench we silence the logger, so we time the
    runtime and not stderr; ``chain_pipe_mw`` measures the events path with a middleware.
    """
    log = logging.getLogger("penguiflow")
    level = log.level
    log.setLevel(logging.CRITICAL)
    return level


REG = Registry()
HEADERS = Headers(tenant="bench")
NONE = NodePolicy(validate="none")


def warm_n(n: int) -> int:
    return max(20, min(300, n // 10))


def make_msg(i: int) -> Message:
    return Message(payload=f"m{i}", headers=HEADERS)


def key_payload(out: Any) -> Any:
    return out.payload


def want_echo(i: int) -> str:
    return f"m{i}"


async def _run(flow: Any, make: Any, n: int, window: int | None, key: Any, want: Any) -> dict:
    try:
        done, secs = await run_timed(
            flow.emit, flow.fetch, make, n, window, key, want, warm=warm_n(n)
        )
    finally:
        await flow.stop()
    return {"seconds": secs, "n": done, "batch": n}


# --------------------------------------------------------------------------- chain


def build_chain(validate: str = "none", middlewares: list[Any] | None = None) -> Any:
    async def a(msg: Any, ctx: Any) -> Any:
        return msg

    async def b(msg: Any, ctx: Any) -> Any:
        return msg

    async def c(msg: Any, ctx: Any) -> Any:
        return msg

    pol = NodePolicy(validate=validate)
    na = Node(a, name="a", policy=pol)
    nb = Node(b, name="b", policy=pol)
    nc = Node(c, name="c", policy=pol)
    flow = create(na.to(nb), nb.to(nc), nc.to(), middlewares=middlewares)
    flow.run()
    return flow


@REG.add("chain_seq", "msgs", "3 pass-through nodes, validate=none, emit one / fetch one")
async def chain_seq(n: int) -> dict:
    return await _run(build_chain(), make_msg, n, 1, key_payload, want_echo)


@REG.add("chain_pipe", "msgs", "3 pass-through nodes, validate=none, pipelined")
async def chain_pipe(n: int) -> dict:
    return await _run(build_chain(), make_msg, n, None, key_payload, want_echo)


@REG.add("chain_pipe_mw", "msgs", "chain_pipe with one no-op FlowEvent middleware attached")
async def chain_pipe_mw(n: int) -> dict:
    seen = [0]

    async def noop(event: FlowEvent) -> None:
        seen[0] += 1

    res = await _run(build_chain(middlewares=[noop]), make_msg, n, None, key_payload, want_echo)
    if seen[0] < 3 * res["n"]:  # at least node_start + node_success per hop
        fail(f"middleware saw only {seen[0]} events for {res['n']} msgs x 3 hops")
    return res


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


def build_chain_validated() -> Any:
    # The README quickstart shape: typed models per hop, every node registered,
    # validate="both". The prompt carries the query text so each result is unique.
    async def triage(msg: VIn, ctx: Any) -> VTriaged:
        return VTriaged(text=msg.text, n=msg.n, topic="metrics" if msg.n & 1 else "general")

    async def retrieve(msg: VTriaged, ctx: Any) -> VDocs:
        return VDocs(topic=msg.topic, docs=[msg.text, msg.topic])

    async def pack(msg: VDocs, ctx: Any) -> VOut:
        return VOut(prompt=f"[{msg.topic}] {len(msg.docs)} {msg.docs[0]}")

    pol = NodePolicy(validate="both")
    n1 = Node(triage, name="triage", policy=pol)
    n2 = Node(retrieve, name="retrieve", policy=pol)
    n3 = Node(pack, name="pack", policy=pol)
    registry = ModelRegistry()
    registry.register("triage", VIn, VTriaged)
    registry.register("retrieve", VTriaged, VDocs)
    registry.register("pack", VDocs, VOut)
    flow = create(n1.to(n2), n2.to(n3), n3.to())
    flow.run(registry=registry)
    return flow


def make_vin(i: int) -> VIn:
    return VIn(text=f"q{i}", n=i)


def want_prompt(i: int) -> str:
    return f"[{'metrics' if i & 1 else 'general'}] 2 q{i}"


def key_prompt(out: Any) -> Any:
    if type(out) is not VOut:
        fail(f"expected VOut, got {type(out).__name__}")
    return out.prompt


@REG.add("chain_validated_pipe", "msgs", "typed 3-node chain, ModelRegistry, validate=both")
async def chain_validated_pipe(n: int) -> dict:
    return await _run(build_chain_validated(), make_vin, n, None, key_prompt, want_prompt)


def make_vin_msg(i: int) -> Message:
    return Message(payload=VIn(text=f"q{i}", n=i), headers=HEADERS)


def key_env_prompt(out: Any) -> Any:
    # The envelope goes in, typed nodes see bare models, the envelope comes back out
    # carrying the last payload.
    if type(out) is not Message:
        fail(f"expected the Message envelope back, got {type(out).__name__}")
    return key_prompt(out.payload)


@REG.add("quickstart_pipe", "msgs", "Message(payload=VIn) through the typed chain")
async def quickstart_pipe(n: int) -> dict:
    return await _run(build_chain_validated(), make_vin_msg, n, None, key_env_prompt, want_prompt)


# --------------------------------------------------------------------------- fan-out / join


def build_fanout() -> Any:
    assert join_k is not None

    async def fan(msg: Any, ctx: Any) -> Any:
        return msg

    async def work_a(msg: Any, ctx: Any) -> Any:
        return msg.model_copy(update={"payload": msg.payload + "::A"})

    async def work_b(msg: Any, ctx: Any) -> Any:
        return msg.model_copy(update={"payload": msg.payload + "::B"})

    async def summarize(msg: Any, ctx: Any) -> Any:
        return msg.model_copy(update={"payload": ",".join(sorted(msg.payload))})

    n_fan = Node(fan, name="fan", policy=NONE)
    n_a = Node(work_a, name="work_a", policy=NONE)
    n_b = Node(work_b, name="work_b", policy=NONE)
    n_join = join_k("join", 2)
    n_sum = Node(summarize, name="summarize", policy=NONE)
    flow = create(n_fan.to(n_a, n_b), n_a.to(n_join), n_b.to(n_join), n_join.to(n_sum), n_sum.to())
    flow.run()
    return flow


def want_join(i: int) -> str:
    return f"m{i}::A,m{i}::B"


@REG.add("fanout_join_pipe", "msgs", "fan -> (work_a, work_b) -> join_k(2) -> summarize")
async def fanout_join_pipe(n: int) -> dict:
    if join_k is None:
        return {"skipped": JOIN_K_MISSING}
    return await _run(build_fanout(), make_msg, n, None, key_payload, want_join)


# --------------------------------------------------------------------------- controller

HOPS = 20


def make_wm(i: int) -> Message:
    return Message(payload=WM(query=f"q{i}", budget_hops=HOPS + 10), headers=HEADERS)


def want_query(i: int) -> str:
    return f"q{i}"


def key_final_msg(out: Any) -> Any:
    # A returned Message(FinalAnswer) reaches Rookery as the envelope.
    return out.payload.text


def key_final(out: Any) -> Any:
    if type(out) is not FinalAnswer:
        fail(f"expected FinalAnswer, got {type(out).__name__}")
    return out.text


def build_controller() -> Any:
    async def ctrl(msg: Any, ctx: Any) -> Any:
        wm = msg.payload
        if wm.hops >= HOPS - 1:
            return msg.model_copy(update={"payload": FinalAnswer(text=wm.query)})
        return msg  # the runtime advances WM.hops and loops back

    c = Node(ctrl, name="c", allow_cycle=True, policy=NONE)
    flow = create(c.to(c))
    flow.run()
    return flow


async def _controller(flow: Any, n_hops: int, window: int, key: Any) -> dict:
    traces = max(1, n_hops // HOPS)
    try:
        done, secs = await run_timed(
            flow.emit, flow.fetch, make_wm, traces, window, key, want_query,
            warm=max(5, traces // 10),
        )  # fmt: skip
    finally:
        await flow.stop()
    return {"seconds": secs, "n": done * HOPS, "batch": traces * HOPS}


@REG.add("controller_seq", "hops", "self-looping controller, 20 hops/trace, 1 trace in flight")
async def controller_seq(n: int) -> dict:
    return await _controller(build_controller(), n, 1, key_final_msg)


@REG.add("controller_w16", "hops", "same controller, 16 traces in flight")
async def controller_w16(n: int) -> dict:
    return await _controller(build_controller(), n, 16, key_final_msg)


def build_controller_emit() -> Any:
    async def done(msg: Any, ctx: Any) -> Any:
        return msg.payload

    d = Node(done, name="done", policy=NONE)

    async def ctrl(msg: Any, ctx: Any) -> Any:
        wm = msg.payload
        if wm.hops >= HOPS - 1:
            await ctx.emit(msg.model_copy(update={"payload": FinalAnswer(text=wm.query)}), to=d)
            return None
        return msg

    c = Node(ctrl, name="c", allow_cycle=True, policy=NONE)
    flow = create(c.to(c, d), d.to())
    flow.run()
    return flow


@REG.add("controller_emit_w16", "hops", "controller loop, final hop via ctx.emit(to=done)")
async def controller_emit_w16(n: int) -> dict:
    return await _controller(build_controller_emit(), n, 16, key_final)


# --------------------------------------------------------------------------- streaming

CHUNKS = 200


def make_stream_msg(i: int) -> Message:
    # A known trace id per request, so that each result names the stream it ends.
    return Message(payload=f"m{i}", headers=HEADERS, trace_id=f"s{i}")


def want_stream(i: int) -> str:
    return f"s{i}"


def key_stream_end(out: Any) -> Any:
    chunk = out.payload
    if not (chunk.done and chunk.seq == CHUNKS - 1 and chunk.stream_id == out.trace_id):
        fail(f"bad end of stream {out!r}")
    return out.trace_id


@REG.add("streaming", "chunks", "node emits 200 chunks/trace via ctx.emit_chunk to a sink")
async def streaming(n: int) -> dict:
    traces = max(1, n // CHUNKS)
    # The sink checks that every chunk arrives, in order (one trace in flight).
    state = [0, 0, 0]  # next seq, chunks seen, errors

    async def streamer(msg: Any, ctx: Any) -> None:
        last = CHUNKS - 1
        for j in range(CHUNKS):
            await ctx.emit_chunk(parent=msg, text=f"t{j}", done=j == last)

    async def sink(msg: Any, ctx: Any) -> Any:
        chunk = msg.payload
        state[1] += 1
        if chunk.seq != state[0]:
            state[2] += 1
        if chunk.done:
            state[0] = 0
            return msg
        state[0] += 1
        return None

    s = Node(streamer, name="streamer", policy=NONE)
    k = Node(sink, name="sink", policy=NONE)
    flow = create(s.to(k), k.to())
    flow.run()
    try:
        done, secs = await run_timed(
            flow.emit, flow.fetch, make_stream_msg, traces, 1, key_stream_end, want_stream,
            warm=3,
        )  # fmt: skip
    finally:
        await flow.stop()
    if state[2] or state[1] != (done + 3) * CHUNKS:
        fail(f"sink saw {state[1]} chunks ({state[2]} out of order) for {done + 3} streams")
    return {"seconds": secs, "n": done * CHUNKS, "batch": traces * CHUNKS}


# --------------------------------------------------------------------------- playbook


def build_playbook() -> tuple[Any, None]:
    async def retrieve(msg: Any, ctx: Any) -> Any:
        return msg.model_copy(update={"payload": [f"doc-{msg.payload}-{i}" for i in range(3)]})

    async def compress(msg: Any, ctx: Any) -> Any:
        return msg.model_copy(update={"payload": ",".join(msg.payload)})

    r = Node(retrieve, name="pb_retrieve", policy=NONE)
    c = Node(compress, name="pb_compress", policy=NONE)
    return create(r.to(c), c.to()), None


def want_playbook(i: int) -> str:
    return f"doc-m{i}-0,doc-m{i}-1,doc-m{i}-2"


@REG.add("playbook", "calls", "node calls ctx.call_playbook on a fresh 2-node subflow")
async def playbook(n: int) -> dict:
    async def controller(msg: Any, ctx: Any) -> Any:
        summary = await ctx.call_playbook(build_playbook, msg)
        return msg.model_copy(update={"payload": summary})

    c = Node(controller, name="controller", policy=NONE)
    flow = create(c.to())
    flow.run()
    return await _run(flow, make_msg, n, 1, key_payload, want_playbook)


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
    failed: set[str] = set()

    async def flaky(msg: Any, ctx: Any) -> Any:
        key = msg.payload
        if key not in failed:
            failed.add(key)
            raise RuntimeError("synthetic failure")
        failed.discard(key)
        return msg

    policy = NodePolicy(
        validate="none", timeout_s=1.0, max_retries=1, backoff_base=0.0, backoff_mult=1.0
    )
    flow = create(Node(flaky, name="flaky", policy=policy).to())
    flow.run()
    res = await _run(flow, make_msg, n, 1, key_payload, want_echo)
    if failed:
        fail(f"{len(failed)} messages failed without being retried")
    return res


# --------------------------------------------------------------------------- requests


@REG.add("invoke_1k", "calls", "1,000 concurrent flow.invoke calls through the chain")
async def invoke_1k(n: int) -> dict:
    flow = build_chain()
    try:
        done, secs = await run_invoke(
            flow.invoke, make_msg, n, key_payload, want_echo, warm=warm_n(n)
        )
        left = flow.inspect().traces
        if left:  # untimed: every request ended and released its trace
            fail(f"{len(left)} trace(s) still live after every invoke returned")
    finally:
        await flow.stop()
    return {"seconds": secs, "n": done, "batch": n}


if __name__ == "__main__":
    quiet_logs()
    sys.exit(main(REG, IMPL))
