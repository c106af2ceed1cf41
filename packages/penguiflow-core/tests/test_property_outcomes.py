"""Property: every request that enters a flow ends with exactly one outcome, in bounded time.

Hypothesis builds a random graph (a chain that may stream, a fan-out joined again, a
controller loop, a playbook), then drives concurrent ``invoke`` and ``request`` calls
through it, each with its own random fault (a failure, a stray ``CancelledError``, a hang
cut by the node timeout, a slow step), deadline, caller timeout and cancel, and maybe a
``stop()`` at a random moment. Every call must end with one outcome allowed by what was
done to it, and the flow must hold nothing afterwards.

Each example runs on a fresh virtual-clock loop (``penguiflow.testing.run_virtual``), so
timeouts, deadlines and backoffs cost no real time and the runs are reproducible.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import pytest

pytest.importorskip("hypothesis")
pytest.importorskip("penguiflow.testing")

from hypothesis import HealthCheck, given, settings, strategies as st

from penguiflow.clock import wall_time
from penguiflow.core import DEADLINE_EXCEEDED_TEXT, Context, PenguiFlow, create
from penguiflow.errors import FlowError, FlowStoppedError, TraceCancelled
from penguiflow.node import Node, NodePolicy
from penguiflow.testing import run_virtual
from penguiflow.types import WM, FinalAnswer, Headers, Message

Kind: TypeAlias = Literal["chain", "fanjoin", "loop", "playbook"]
Action: TypeAlias = Literal["ok", "slow", "fail", "stray", "hang"]
FAULTS: frozenset[str] = frozenset({"fail", "stray", "hang"})
NODE_TIMEOUT_S = 1.0
ENDS_WITHIN_S = 10.0
BOUND_S = 120.0  # virtual seconds: far beyond any timeout, deadline or grace in play
LOOP_HOPS = 3
JOIN_PROBE = "test.join"


@dataclass(frozen=True)
class Graph:
    kind: Kind
    chain: tuple[str, ...] = ()  # "step" / "stream", for kind == "chain"
    concurrency: int = 1
    queue_maxsize: int = 64
    retries: int = 0

    def node_names(self) -> list[str]:
        if self.kind == "chain":
            return [f"n{i}" for i in range(len(self.chain))]
        if self.kind == "fanjoin":
            return ["src", "a", "b"]
        if self.kind == "loop":
            return ["ctl"]
        return ["pre", "play", "sub"]


@dataclass(frozen=True)
class Call:
    ident: int
    mode: Literal["invoke", "request"]
    fault_at: str | None
    fault: Action
    start: float
    deadline: float | None
    timeout: float | None
    cancel_after: float | None


@dataclass
class Record:
    call: Call
    outcome: str = "none"
    value: Any = None
    state: str | None = None
    chunks: list[tuple[str, int]] = field(default_factory=list)
    ended_at: float = 0.0
    outcomes: int = 0


# -- the flows ----------------------------------------------------------------------------


async def act(name: str, m: Message) -> None:
    action = m.meta.get("plan", {}).get(name, "ok")
    if action == "slow":
        await asyncio.sleep(0.05)
    elif action == "fail":
        raise ValueError(f"{name} failed")
    elif action == "stray":
        raise asyncio.CancelledError  # nobody cancelled this task
    elif action == "hang":
        await asyncio.sleep(1000)  # ended by the node timeout


def mk(func: Any, name: str, graph: Graph, **kw: Any) -> Node:
    policy = NodePolicy(
        validate="none",
        timeout_s=NODE_TIMEOUT_S,
        max_retries=graph.retries,
        backoff_base=0.01,
        max_concurrency=graph.concurrency,
    )
    return Node(func, name=name, policy=policy, **kw)


def step(name: str) -> Callable[[Message, Context], Any]:
    async def run(m: Message, ctx: Context) -> Message:
        await act(name, m)
        return m

    return run


def streamer(name: str, count: int = 3) -> Callable[[Message, Context], Any]:
    async def run(m: Message, ctx: Context) -> Message:
        for i in range(count):
            await ctx.emit_chunk(parent=m, text=f"{name}:{i}", done=i == count - 1)
        await act(name, m)
        return m

    return run


class Join:
    """A two-way join per trace, holding its trace open while half full."""

    def __init__(self) -> None:
        self.buckets: dict[str, Callable[[], None]] = {}

    async def run(self, m: Message, ctx: Context) -> Message | None:
        tid = m.trace_id
        release = self.buckets.pop(tid, None)
        if release is None:
            self.buckets[tid] = ctx.hold(tid)
            return None
        release()
        return m.model_copy(update={"payload": {**m.payload, "joined": True}})

    def drop(self, trace_id: str) -> None:
        release = self.buckets.pop(trace_id, None)
        if release is not None:
            release()

    def drop_all(self) -> None:
        for trace_id in list(self.buckets):
            self.drop(trace_id)


def build(graph: Graph, subflows: list[PenguiFlow]) -> PenguiFlow:
    q = graph.queue_maxsize
    if graph.kind == "chain":
        nodes = [
            mk(streamer(f"n{i}") if kind == "stream" else step(f"n{i}"), f"n{i}", graph)
            for i, kind in enumerate(graph.chain)
        ]
        adjacency = [a.to(b) for a, b in itertools.pairwise(nodes)]
        return create(*adjacency, nodes[-1].to(), queue_maxsize=q)
    if graph.kind == "fanjoin":
        join = Join()
        src, a, b = (mk(step(n), n, graph) for n in ("src", "a", "b"))
        j = mk(join.run, "join", graph)
        flow = create(src.to(a, b), a.to(j), b.to(j), j.to(), queue_maxsize=q)
        flow.on_trace_cancel(join.drop)
        flow.on_stop(join.drop_all)
        flow.register_probe(JOIN_PROBE, lambda: dict.fromkeys(join.buckets, 1))
        return flow
    if graph.kind == "loop":

        async def ctl(m: Message, ctx: Context) -> Message:
            await act("ctl", m)
            wm = m.payload
            if wm.hops >= LOOP_HOPS:
                return m.model_copy(update={"payload": FinalAnswer(text=wm.query)})
            return m

        c = mk(ctl, "ctl", graph, allow_cycle=True)
        return create(c.to(c), queue_maxsize=q)

    def playbook() -> tuple[PenguiFlow, None]:
        sub = create(mk(step("sub"), "sub", graph).to())
        subflows.append(sub)
        return sub, None

    async def play(m: Message, ctx: Context) -> Message:
        await act("play", m)
        payload = await ctx.call_playbook(playbook, ctx.message)
        return m.model_copy(update={"payload": payload})

    pre, p = mk(step("pre"), "pre", graph), mk(play, "play", graph)
    return create(pre.to(p), p.to(), queue_maxsize=q)


def message(graph: Graph, call: Call) -> Message:
    plan = {} if call.fault_at is None else {call.fault_at: call.fault}
    payload: Any = WM(query=f"done{call.ident}") if graph.kind == "loop" else {"id": call.ident}
    deadline = None if call.deadline is None else wall_time() + call.deadline
    return Message(
        payload=payload, headers=Headers(tenant="t"), meta={"plan": plan}, deadline_s=deadline
    )


# -- one example --------------------------------------------------------------------------


async def drive(flow: PenguiFlow, graph: Graph, call: Call, rec: Record) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(call.start)
    m = message(graph, call)
    cancels: list[asyncio.Task[Any]] = []

    async def cancel_later(cancel: Callable[[], Any]) -> None:
        assert call.cancel_after is not None
        await asyncio.sleep(call.cancel_after)
        if flow.is_running:
            await cancel()

    def settle(outcome: str, value: Any = None) -> None:
        rec.outcomes += 1
        rec.outcome, rec.value, rec.ended_at = outcome, value, loop.time()

    try:
        async with asyncio.timeout(BOUND_S):
            try:
                if call.mode == "invoke":
                    if call.cancel_after is not None:
                        task = loop.create_task(cancel_later(lambda: flow.cancel(m.trace_id)))
                        cancels.append(task)
                    out = await flow.invoke(m, timeout=call.timeout, expect=Message)
                else:
                    async with (
                        asyncio.timeout(call.timeout),
                        flow.request(m, expect=Message) as req,
                    ):
                        if call.cancel_after is not None:
                            cancels.append(loop.create_task(cancel_later(req.cancel)))
                        try:
                            async for chunk in req.chunks():
                                rec.chunks.append((chunk.text, chunk.seq))
                            out = await req.result()
                        finally:
                            rec.state = req.state
            except FlowError as exc:
                settle("FlowError", exc)
            except TraceCancelled as exc:
                settle("TraceCancelled", exc)
            except FlowStoppedError as exc:
                settle("FlowStoppedError", exc)
            except TimeoutError as exc:
                settle("TimeoutError", exc)
            else:
                deadline_answer = out.payload == FinalAnswer(text=DEADLINE_EXCEEDED_TEXT)
                settle("deadline" if deadline_answer else "result", out)
    except TimeoutError:
        settle("HUNG")
    finally:
        for task in cancels:
            task.cancel()
        await asyncio.gather(*cancels, return_exceptions=True)


def check_outcome(graph: Graph, rec: Record, stopped_at: float | None) -> None:
    call = rec.call
    where = f"{call} on {graph}: {rec.outcome} {rec.value!r}"
    assert rec.outcomes == 1, where
    assert rec.outcome != "HUNG", where
    # Bounded: node timeouts (1 s, one retry), the unwind grace of a left request (1 s)
    # and stop()'s grace (1 s) all fit well inside this.
    assert rec.ended_at - call.start <= ENDS_WITHIN_S, where
    faulty = call.fault in FAULTS and call.fault_at is not None
    stopped = stopped_at is not None
    allowed = {"result"}
    if faulty:
        allowed.add("FlowError")
    if call.cancel_after is not None:
        allowed.add("TraceCancelled")
    if stopped:
        allowed.add("FlowStoppedError")
    if call.timeout is not None:
        allowed.add("TimeoutError")
    if call.deadline is not None:
        allowed.add("deadline")
    if not faulty and call.deadline is not None:
        # A fault-free request's deadline only ends it through the deadline answer.
        allowed.discard("FlowError")
    assert rec.outcome in allowed, where
    if rec.outcome == "result":
        out = rec.value
        assert isinstance(out, Message), where
        if graph.kind == "loop":
            assert out.payload == FinalAnswer(text=f"done{call.ident}"), where
        else:
            assert out.payload["id"] == call.ident, where
            if graph.kind == "fanjoin":
                assert out.payload.get("joined") is True, where
        if call.mode == "request" and graph.kind == "chain":
            # The chain runs its streaming nodes one after another on the trace's stream:
            # every chunk arrives once, in order, numbered 0, 1, 2, ...
            expected = [
                f"n{i}:{k}"
                for i, kind in enumerate(graph.chain)
                if kind == "stream"
                for k in range(3)
            ]
            assert [text for text, _ in rec.chunks] == expected, where
            assert [seq for _, seq in rec.chunks] == list(range(len(expected))), where
    if rec.outcome == "FlowError":
        exc = rec.value
        assert exc.node_name, where
    if rec.state is not None and rec.outcome in _STATE:  # the handle was entered
        assert rec.state == _STATE[rec.outcome], where


_STATE = {
    "result": "result",
    "deadline": "result",
    "FlowError": "failed",
    "TraceCancelled": "cancelled",
    "FlowStoppedError": "stopped",
}


def check_quiescent(flow: PenguiFlow, where: str) -> None:
    snap = flow.inspect()
    leftovers = {
        "traces": dict(snap.traces),
        "edges": [(e.source, e.target, e.depth) for e in snap.edges if e.depth],
        "inflight": [n.name for n in snap.nodes if n.inflight],
        "resources": {k: dict(v) for k, v in snap.resources.items() if v},
        "subscriptions": snap.subscriptions,
    }
    assert snap.is_quiescent, f"{where}: {leftovers}"


async def scenario(graph: Graph, calls: list[Call], stop_at: float | None) -> None:
    subflows: list[PenguiFlow] = []
    flow = build(graph, subflows)
    flow.run()
    loop = asyncio.get_running_loop()
    records = [Record(call) for call in calls]
    stopped_at: list[float] = []

    async def stop_later() -> None:
        assert stop_at is not None
        await asyncio.sleep(stop_at)
        stopped_at.append(loop.time())
        await flow.stop()

    stopper = loop.create_task(stop_later()) if stop_at is not None else None
    try:
        await asyncio.gather(*(drive(flow, graph, r.call, r) for r in records))
        if stopper is not None:
            await stopper
        where = f"{graph}, stop_at={stop_at}, calls={calls}"
        for rec in records:
            check_outcome(graph, rec, stopped_at[0] if stopped_at else None)
        if stop_at is None:
            check_quiescent(flow, where)
        # After a stop(), the traces of its requests may keep their queued items (and their
        # stream counters): a known bug (test_every_request_ends.py, xfailed). Checked
        # here in full once it is fixed.
        await flow.stop()
        snap = flow.inspect()
        assert snap.workers == 0 and not any(n.inflight for n in snap.nodes), where
        held = {t for per_trace in snap.resources.values() for t, n in per_trace.items() if n}
        assert held <= set(snap.traces), f"{where}: {snap.resources}"  # only live traces
        for sub in subflows:
            assert not sub.is_running and sub.inspect().workers == 0, where
    finally:
        if stopper is not None and not stopper.done():
            stopper.cancel()
        await flow.stop()


# -- strategies ---------------------------------------------------------------------------


def with_one_stream(steps: list[str]) -> st.SearchStrategy[tuple[str, ...]]:
    """The chain, with at most one streaming node.

    Only one: a streaming node whose chunks feed another streaming node deadlocks on
    per-trace capacity (test_every_request_ends.py has that regression test, xfailed).
    """
    spots = st.none() | st.integers(min_value=0, max_value=len(steps) - 1)
    return spots.map(
        lambda at: tuple("stream" if i == at else kind for i, kind in enumerate(steps))
    )


graphs = st.one_of(
    st.builds(
        Graph,
        kind=st.just("chain"),
        chain=st.lists(st.just("step"), min_size=1, max_size=3).flatmap(with_one_stream),
        concurrency=st.sampled_from([1, 4]),
        queue_maxsize=st.sampled_from([1, 2, 64]),
        retries=st.sampled_from([0, 1]),
    ),
    st.builds(
        Graph,
        kind=st.sampled_from(["fanjoin", "loop", "playbook"]),
        concurrency=st.sampled_from([1, 4]),
        queue_maxsize=st.sampled_from([1, 2, 64]),
        retries=st.sampled_from([0, 1]),
    ),
)
delays = st.sampled_from([0.0, 0.01, 0.03, 0.1, 0.3, 1.5])
maybe = st.none() | delays


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Graph, list[Call], float | None]:
    graph = draw(graphs)
    names = graph.node_names()
    n = draw(st.integers(min_value=1, max_value=10))
    calls = [
        Call(
            ident=i,
            mode=draw(st.sampled_from(["invoke", "request"])),
            fault_at=draw(st.none() | st.sampled_from(names)),
            fault=draw(st.sampled_from(["ok", "slow", "fail", "stray", "hang"])),
            start=draw(st.sampled_from([0.0, 0.0, 0.02, 0.2])),
            deadline=draw(st.none() | st.none() | delays),
            timeout=draw(st.none() | st.none() | delays),
            cancel_after=draw(st.none() | st.none() | delays),
        )
        for i in range(n)
    ]
    stop_at = draw(st.none() | st.none() | delays)
    return graph, calls, stop_at


# CI: a fixed set of examples (derandomized). To hunt for new failures, run with
# PENGUIFLOW_PROPERTY_EXAMPLES=5000 for that many random examples.
HUNT = os.environ.get("PENGUIFLOW_PROPERTY_EXAMPLES")


@settings(
    max_examples=int(HUNT) if HUNT else 150,
    deadline=None,
    derandomize=not HUNT,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_every_call_ends_with_exactly_one_outcome(
    case: tuple[Graph, list[Call], float | None],
) -> None:
    graph, calls, stop_at = case
    run_virtual(scenario(graph, calls, stop_at))
