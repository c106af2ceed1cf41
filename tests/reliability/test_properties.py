"""Property tests (hypothesis): random DAGs and controller graphs under random faults.

Each example builds a flow, runs it on the test kit's virtual clock (timeouts, backoff and
deadlines take no real time; a hang makes the hang guard fire at once) and compares what
happened with a pure model of the documented behaviour:

- random DAGs: random edges, retries, concurrency; a random schedule of failures (errors
  and timeouts, some recovered by retries, some not), of traces whose deadline expires
  after a given node, and of traces cancelled while one of their items is in flight.
  Checked: results per (trace, path) keep emission order; every item of a trace that is
  not cancelled ends exactly as the model says (result, ``node_failed``, ``deadline_skip``
  plus exactly one "Deadline exceeded" per trace); cancelled traces only deliver results
  the model allows, never twice, and finish exactly once; nothing is left afterwards
  (``inspect().is_quiescent``, no task after ``stop()``).
- random controller loops (``c.to(c)``, optionally behind an ingress node): hop and token
  budgets, failures per hop, deadline and cancel at a given hop. Each trace ends exactly
  once, with the terminal outcome the model predicts.

Examples are derandomized (same examples on every run) and kept at 30 per property.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from penguiflow import (
    WM,
    Context,
    FinalAnswer,
    FlowEvent,
    Headers,
    Message,
    Node,
    NodePolicy,
    create,
)
from penguiflow.clock import wall_time
from penguiflow.core import (
    BUDGET_EXCEEDED_TEXT,
    DEADLINE_EXCEEDED_TEXT,
    TOKEN_BUDGET_EXCEEDED_TEXT,
    PenguiFlow,
)
from penguiflow.testing import run_virtual

H = Headers(tenant="prop")
SETTINGS = settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
GUARD_S = 10_000  # virtual seconds: only a hang gets there, and then instantly


class Events:
    """Counts events per (type, node, trace)."""

    def __init__(self) -> None:
        self.count: Counter[tuple[str, str | None, str | None]] = Counter()
        self.log: list[FlowEvent] = []

    async def __call__(self, event: FlowEvent) -> None:
        self.count[(event.event_type, event.node_name, event.trace_id)] += 1
        self.log.append(event)

    def total(self, event_type: str, trace_id: str) -> int:
        return sum(v for (e, _, t), v in self.count.items() if e == event_type and t == trace_id)


async def settle(flow: PenguiFlow, trace_ids: list[str], events: Events) -> list[Any]:
    """Fetch every result until each trace is done; return the results in arrival order."""
    done: set[str] = set()
    all_done = asyncio.Event()

    def on_done(tid: str) -> None:
        done.add(tid)
        if done >= set(trace_ids):
            all_done.set()

    flow.on_trace_done(on_done)
    results: list[Any] = []

    async def consume() -> None:
        while True:
            results.append(await flow.fetch())

    consumer = asyncio.ensure_future(consume())
    try:
        async with asyncio.timeout(GUARD_S):
            await all_done.wait()
    finally:
        consumer.cancel()
        try:
            await consumer
        except asyncio.CancelledError:
            pass
    return results


async def teardown(flow: PenguiFlow, pending_cancels: list[asyncio.Task[bool]]) -> None:
    """Nothing left in the flow; after ``stop()`` no task but the caller's."""
    await asyncio.gather(*pending_cancels)
    snap = flow.inspect()
    assert snap.is_quiescent, snap
    await asyncio.wait_for(flow.stop(), 60)
    current = asyncio.current_task()
    assert [t.get_name() for t in asyncio.all_tasks() if t is not current] == []


# --------------------------------------------------------------------------- DAGs


@dataclass
class DagCase:
    n: int
    edges: set[tuple[int, int]]
    retries: list[int]
    concurrency: list[int]
    traces: int
    messages: list[int]
    fails: dict[tuple[int, int, int], tuple[int, str]]  # (node, trace, seq) -> (n, kind)
    deadline_after: dict[int, int]  # trace -> node whose outputs carry an expired deadline
    cancel_at: dict[int, int]  # trace -> node where its first item hangs and is cancelled
    succ: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.succ = [sorted(j for (i, j) in self.edges if i == k) for k in range(self.n)]

    @property
    def ingress(self) -> list[int]:
        return [k for k in range(self.n) if not any(j == k for (_, j) in self.edges)]


@st.composite
def dag_cases(draw: st.DrawFn) -> DagCase:
    n = draw(st.integers(2, 5))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    edges = set(draw(st.lists(st.sampled_from(pairs), max_size=len(pairs))))
    traces = draw(st.integers(1, 4))
    messages = draw(st.lists(st.integers(1, 3), min_size=traces, max_size=traces))
    keys = st.tuples(st.integers(0, n - 1), st.integers(0, traces - 1), st.integers(0, 2))
    fails = draw(
        st.dictionaries(
            keys, st.tuples(st.integers(1, 3), st.sampled_from(["error", "timeout"])), max_size=6
        )
    )
    node_ix = st.integers(0, n - 1)
    deadline_after = draw(st.dictionaries(st.integers(0, traces - 1), node_ix, max_size=2))
    cancel_at = draw(st.dictionaries(st.integers(0, traces - 1), node_ix, max_size=2))
    for t in deadline_after:
        cancel_at.pop(t, None)
    return DagCase(
        n=n,
        edges=edges,
        retries=draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)),
        concurrency=draw(st.lists(st.integers(1, 2), min_size=n, max_size=n)),
        traces=traces,
        messages=messages,
        fails=fails,
        deadline_after=deadline_after,
        cancel_at=cancel_at,
    )


@dataclass
class DagModel:
    results: Counter[tuple[int, int, tuple[int, ...]]] = field(default_factory=Counter)
    success: Counter[tuple[int, int]] = field(default_factory=Counter)  # (node, trace)
    failed: Counter[tuple[int, int]] = field(default_factory=Counter)
    skipped: Counter[tuple[int, int]] = field(default_factory=Counter)
    deadline_answers: Counter[int] = field(default_factory=Counter)


def dag_model(case: DagCase) -> DagModel:
    """What routing, retries and deadlines should produce, ignoring cancellation."""
    model = DagModel()

    def visit(node: int, t: int, s: int, path: tuple[int, ...], expired: bool) -> None:
        if expired:
            model.skipped[(node, t)] += 1
            model.deadline_answers[t] = 1
            return
        count, _ = case.fails.get((node, t, s), (0, "error"))
        if count > case.retries[node]:
            model.failed[(node, t)] += 1
            return
        model.success[(node, t)] += 1
        if not case.succ[node]:
            model.results[(t, s, path)] += 1
        out_expired = case.deadline_after.get(t) == node
        for nxt in case.succ[node]:
            visit(nxt, t, s, (*path, nxt), out_expired)

    for t in range(case.traces):
        for s in range(case.messages[t]):
            for k in case.ingress:
                visit(k, t, s, (k,), False)
    return model


async def run_dag(case: DagCase) -> None:
    events = Events()
    attempts: Counter[tuple[int, str, int, tuple[int, ...]]] = Counter()
    tids: list[str] = [f"trace{t:02d}" + "0" * 25 for t in range(case.traces)]
    index = {tid: t for t, tid in enumerate(tids)}
    cancels: list[asyncio.Task[bool]] = []
    hung: Counter[str] = Counter()
    cancelled_seen: Counter[str] = Counter()
    flow: PenguiFlow

    def body(k: int) -> Any:
        async def fn(m: Message, ctx: Context) -> Message:
            s, path = m.payload
            t = index[m.trace_id]
            if case.cancel_at.get(t) == k and not hung[m.trace_id]:
                hung[m.trace_id] += 1
                cancels.append(asyncio.ensure_future(flow.cancel(m.trace_id)))
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled_seen[m.trace_id] += 1
                    raise
            key = (k, m.trace_id, s, path)  # the incoming path names the item
            attempts[key] += 1
            count, kind = case.fails.get((k, t, s), (0, "error"))
            if attempts[key] <= count:
                if kind == "timeout":
                    await asyncio.sleep(5)  # timeout_s=1: the runtime interrupts this
                raise ValueError(f"scheduled failure {key}")
            deadline = wall_time() - 1 if case.deadline_after.get(t) == k else m.deadline_s
            return m.model_copy(update={"payload": (s, (*path, k)), "deadline_s": deadline})

        return fn

    nodes = [
        Node(
            body(k),
            name=f"n{k}",
            policy=NodePolicy(
                timeout_s=1,
                max_retries=case.retries[k],
                backoff_base=0.1,
                max_concurrency=case.concurrency[k],
            ),
        )
        for k in range(case.n)
    ]
    flow = create(
        *(nodes[k].to(*(nodes[j] for j in case.succ[k])) for k in range(case.n)),
        queue_maxsize=0,
        middlewares=[events],
    )
    flow.run()
    for t, tid in enumerate(tids):
        for s in range(case.messages[t]):
            # Each node appends itself to the path: a result names every node it crossed.
            await flow.emit(Message(payload=(s, ()), headers=H, trace_id=tid))
    results = await settle(flow, tids, events)
    await teardown(flow, cancels)

    model = dag_model(case)
    normal: Counter[tuple[int, int, tuple[int, ...]]] = Counter()
    answers: Counter[int] = Counter()
    order: dict[tuple[int, tuple[int, ...]], list[int]] = defaultdict(list)
    for r in results:
        t = index[r.trace_id]
        if isinstance(r.payload, FinalAnswer):
            assert r.payload.text == DEADLINE_EXCEEDED_TEXT
            answers[t] += 1
            continue
        s, path = r.payload
        normal[(t, s, path)] += 1
        order[(t, path)].append(s)
    for seqs in order.values():
        assert seqs == sorted(seqs), seqs  # per-trace order on every path
    for t, tid in enumerate(tids):
        expected = Counter({k: v for k, v in model.results.items() if k[0] == t})
        got = Counter({k: v for k, v in normal.items() if k[0] == t})
        if t in case.cancel_at and hung[tid]:
            # Cancelled mid-flight: only allowed results, never twice; finished once.
            assert got <= expected and set(got.values()) <= {1}
            assert answers[t] == 0
            assert cancelled_seen[tid] == 1
            assert events.total("trace_cancel_start", tid) == 1
            assert events.total("trace_cancel_finish", tid) == 1
            continue
        assert got == expected, (t, got, expected)
        assert answers[t] == model.deadline_answers[t]
        for k in range(case.n):
            name = f"n{k}"
            assert events.count[("node_success", name, tid)] == model.success[(k, t)]
            assert events.count[("node_failed", name, tid)] == model.failed[(k, t)]
            assert events.count[("deadline_skip", name, tid)] == model.skipped[(k, t)]
        assert events.total("trace_cancel_start", tid) == 0


@SETTINGS
@given(dag_cases())
def test_random_dags_end_every_item_exactly_once(case: DagCase) -> None:
    run_virtual(run_dag(case))


# --------------------------------------------------------------------------- controllers


@dataclass
class LoopTrace:
    budget_hops: int
    budget_tokens: int | None
    fails: dict[int, int]  # hop -> failing attempts
    deadline_hop: int | None
    cancel_hop: int | None


@dataclass
class LoopCase:
    pre: bool
    retries: int
    traces: list[LoopTrace]


@st.composite
def loop_cases(draw: st.DrawFn) -> LoopCase:
    retries = draw(st.integers(0, 2))
    traces = []
    for _ in range(draw(st.integers(1, 4))):
        budget = draw(st.integers(1, 6))
        hop = st.integers(0, budget)
        deadline = draw(st.none() | hop)
        cancel = None if deadline is not None else draw(st.none() | hop)
        traces.append(
            LoopTrace(
                budget_hops=budget,
                budget_tokens=draw(st.none() | st.integers(1, 6)),
                fails=draw(st.dictionaries(hop, st.integers(1, 3), max_size=3)),
                deadline_hop=deadline,
                cancel_hop=cancel,
            )
        )
    return LoopCase(pre=draw(st.booleans()), retries=retries, traces=traces)


def loop_model(case: LoopCase, trace: LoopTrace) -> tuple[str, int]:
    """The terminal outcome of one trace and the controller's successful invocations."""
    hops, ok = 0, 0
    while True:
        if trace.cancel_hop == hops:
            return "cancelled", ok
        if trace.fails.get(hops, 0) > case.retries:
            return "failed", ok
        ok += 1
        if trace.deadline_hop == hops:
            return DEADLINE_EXCEEDED_TEXT, ok
        if trace.budget_tokens is not None and hops + 1 >= trace.budget_tokens:
            return TOKEN_BUDGET_EXCEEDED_TEXT, ok
        if hops + 1 >= trace.budget_hops:
            return BUDGET_EXCEEDED_TEXT, ok
        hops += 1


async def run_loop(case: LoopCase) -> None:
    events = Events()
    tids = [f"loop{t:02d}" + "0" * 26 for t in range(len(case.traces))]
    index = {tid: t for t, tid in enumerate(tids)}
    attempts: Counter[tuple[str, int]] = Counter()
    cancels: list[asyncio.Task[bool]] = []
    interrupted: Counter[str] = Counter()
    flow: PenguiFlow

    async def controller(m: Message, ctx: Context) -> Message:
        trace = case.traces[index[m.trace_id]]
        wm = m.payload
        if trace.cancel_hop == wm.hops:
            cancels.append(asyncio.ensure_future(flow.cancel(m.trace_id)))
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                interrupted[m.trace_id] += 1
                raise
        attempts[(m.trace_id, wm.hops)] += 1
        if attempts[(m.trace_id, wm.hops)] <= trace.fails.get(wm.hops, 0):
            raise ValueError("scheduled failure")
        out = wm.model_copy(update={"tokens_used": wm.hops + 1})
        deadline = wall_time() - 1 if trace.deadline_hop == wm.hops else None
        return m.model_copy(update={"payload": out, "deadline_s": deadline})

    async def pre(m: Message, ctx: Context) -> Message:
        return m

    c = Node(
        controller,
        name="controller",
        allow_cycle=True,
        policy=NodePolicy(max_retries=case.retries, backoff_base=0.1),
    )
    if case.pre:
        p = Node(pre, name="pre")
        flow = create(p.to(c), c.to(c), middlewares=[events])
    else:
        flow = create(c.to(c), middlewares=[events])
    flow.run()
    for t, trace in enumerate(case.traces):
        wm = WM(query=str(t), budget_hops=trace.budget_hops, budget_tokens=trace.budget_tokens)
        await flow.emit(Message(payload=wm, headers=H, trace_id=tids[t]))
    results = await settle(flow, tids, events)
    await teardown(flow, cancels)

    by_trace: dict[str, list[Any]] = defaultdict(list)
    for r in results:
        by_trace[r.trace_id].append(r)
    for t, trace in enumerate(case.traces):
        tid = tids[t]
        outcome, ok = loop_model(case, trace)
        got = by_trace[tid]
        assert events.count[("node_success", "controller", tid)] == ok
        terminal = len(got) + events.total("node_failed", tid)
        terminal += events.total("trace_cancel_finish", tid)
        assert terminal == 1, (outcome, got, events.count)  # exactly one ending per trace
        if outcome == "cancelled":
            assert interrupted[tid] == 1 and events.total("trace_cancel_finish", tid) == 1
        elif outcome == "failed":
            assert events.total("node_failed", tid) == 1
        else:
            assert isinstance(got[0].payload, FinalAnswer)
            assert got[0].payload.text == outcome


@SETTINGS
@given(loop_cases())
def test_random_controller_loops_end_exactly_once(case: LoopCase) -> None:
    run_virtual(run_loop(case))
