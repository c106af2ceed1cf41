"""``FlowTestKit``: drive flows in tests and assert on what they did.

A kit records the ``FlowEvent``s of the flows it is attached to, through the public
middleware API (``flow.add_middleware``). It keeps no global state: two kits never see
each other's flows, so tests can run in any order and in parallel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, final, overload

from penguiflow.core import PenguiFlow
from penguiflow.errors import FlowError, FlowStoppedError, FlowTypeError, TraceCancelled
from penguiflow.types import Message, StreamChunk

from ._errors import (
    FlowTimeoutError,
    KitAssertionError,
    KitUsageError,
    UnknownTraceError,
)
from ._nodes import assert_preserves_message_envelope, simulate_error
from ._quiescence import assert_flows_quiescent

if TYPE_CHECKING:
    from penguiflow.metrics import FlowEvent

__all__ = ["FlowTestKit", "TraceRun"]

T = TypeVar("T")

TraceEnd = Literal["drained", "failed", "cancelled", "stopped"]


def _trace_id_of(item: object) -> str | None:
    tid = getattr(item, "trace_id", None)
    return tid if isinstance(tid, str) else None


def _chunk_of(item: object) -> StreamChunk | None:
    if isinstance(item, StreamChunk):
        return item
    payload = item.payload if isinstance(item, Message) else None
    return payload if isinstance(payload, StreamChunk) else None


def format_event(event: FlowEvent) -> str:
    """One line per event: ``node.event#attempt`` plus the interesting extras."""
    text = f"{event.node_name}.{event.event_type}#{event.attempt}"
    extra = event.extra
    details = []
    if "sleep_s" in extra:
        details.append(f"sleep {extra['sleep_s']}s")
    if "exception" in extra:
        details.append(str(extra["exception"]))
    if "deadline_s" in extra:
        details.append(f"deadline_s={extra['deadline_s']}")
    if details:
        text += " (" + "; ".join(details) + ")"
    return text


@final
@dataclass(frozen=True, slots=True)
class TraceRun:
    """Everything one trace delivered to Rookery, in order, and how it ended.

    Items are typed ``object``: what reaches Rookery depends on the graph. Narrow them
    with ``isinstance`` (or read ``chunks`` and ``text``, which are typed).
    """

    trace_id: str
    items: tuple[object, ...]
    """Every item of the trace that reached Rookery, exactly as delivered."""
    done: TraceEnd
    """``"drained"`` (all work finished), ``"failed"`` (a node gave up: see ``error``),
    ``"cancelled"`` or ``"stopped"``."""
    events: tuple[FlowEvent, ...]
    """The events the kit recorded for the trace while it ran."""
    error: FlowError | None = None
    """The ``FlowError`` of the first node that gave up on the trace, if any (its
    ``__cause__`` is the node's exception)."""

    @property
    def chunks(self) -> tuple[StreamChunk, ...]:
        """The stream chunks among the items (bare or in a ``Message``), in order."""
        return tuple(c for c in map(_chunk_of, self.items) if c is not None)

    @property
    def results(self) -> tuple[object, ...]:
        """The items that are not stream chunks, in order."""
        return tuple(item for item in self.items if _chunk_of(item) is None)

    @property
    def text(self) -> str:
        """The texts of all chunks, concatenated."""
        return "".join(chunk.text for chunk in self.chunks)

    @property
    def payloads(self) -> tuple[object, ...]:
        """``results`` with ``Message`` envelopes unwrapped to their payloads."""
        return tuple(r.payload if isinstance(r, Message) else r for r in self.results)


@final
class _Recorder:
    """The middleware a kit adds to one flow; inert once the kit is closed."""

    __slots__ = ("_flow", "_kit", "active")

    def __init__(self, kit: FlowTestKit, flow: PenguiFlow) -> None:
        self._kit = kit
        self._flow = flow
        self.active = True

    async def __call__(self, event: FlowEvent) -> None:
        if self.active:
            self._kit._record(self._flow, event)


@final
class FlowTestKit:
    """A harness for flow tests: run, collect, record, assert.

    Every method that runs a flow attaches the kit to it first (``attach``); a flow run
    by hand can be attached explicitly. The kit then records every ``FlowEvent`` of that
    flow, per trace.

    Example:
        ```python
        kit = FlowTestKit()
        out = await kit.run_one(flow, Message(payload=q, headers=Headers(tenant="t")))
        kit.assert_node_sequence(out.trace_id, ["parse", "answer"])
        kit.assert_quiescent()
        ```
    """

    __test__ = False

    simulate_error = staticmethod(simulate_error)
    assert_preserves_message_envelope = staticmethod(assert_preserves_message_envelope)

    def __init__(self) -> None:
        self._recorders: dict[PenguiFlow, _Recorder] = {}
        self._events: list[tuple[PenguiFlow, FlowEvent]] = []
        self._by_trace: dict[str, list[tuple[PenguiFlow, FlowEvent]]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<FlowTestKit flows={len(self._recorders)} traces={len(self._by_trace)} "
            f"events={len(self._events)}>"
        )

    # -- attaching and recording ----------------------------------------------------------

    def attach(self, flow: PenguiFlow) -> PenguiFlow:
        """Record the events of ``flow`` from now on (idempotent).

        Args:
            flow: The flow to observe.

        Returns:
            ``flow``, for chaining.

        Raises:
            KitUsageError: ``flow`` is not a ``PenguiFlow``, or the kit is closed.
        """
        if not isinstance(flow, PenguiFlow):
            raise KitUsageError(f"expected a PenguiFlow, got {type(flow).__name__}: {flow!r}")
        if self._closed:
            raise KitUsageError("this FlowTestKit is closed; create a new one")
        if flow not in self._recorders:
            recorder = _Recorder(self, flow)
            flow.add_middleware(recorder)
            self._recorders[flow] = recorder
        return flow

    def close(self) -> None:
        """Stop recording. Core has no way to remove a middleware, so the kit's recorders
        stay on their flows but become no-ops. Recorded data stays readable."""
        self._closed = True
        for recorder in self._recorders.values():
            recorder.active = False

    @property
    def flows(self) -> tuple[PenguiFlow, ...]:
        """The flows this kit is attached to, in order of attachment."""
        return tuple(self._recorders)

    @property
    def events(self) -> tuple[FlowEvent, ...]:
        """Every event recorded, from all attached flows, in arrival order."""
        return tuple(event for _, event in self._events)

    @property
    def trace_ids(self) -> tuple[str, ...]:
        """The trace ids the kit has seen, in order of first sight."""
        return tuple(self._by_trace)

    def _record(self, flow: PenguiFlow, event: FlowEvent) -> None:
        entry = (flow, event)
        self._events.append(entry)
        if event.trace_id is not None:
            self._by_trace.setdefault(event.trace_id, []).append(entry)

    def _note_trace(self, trace_id: str) -> None:
        self._by_trace.setdefault(trace_id, [])

    def _require_trace(self, trace: str | object) -> str:
        trace_id = trace if isinstance(trace, str) else _trace_id_of(trace)
        if trace_id is None:
            raise KitUsageError(f"expected a trace id or a Message, got {trace!r}")
        if trace_id not in self._by_trace:
            known = list(self._by_trace)
            shown = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "")
            hint = (
                "the kit is attached to no flow: use kit.run_one()/run_trace() or "
                "kit.attach(flow) before running it"
                if not self._recorders
                else f"known traces: [{shown}]"
            )
            raise UnknownTraceError(
                f"the kit never saw trace {trace_id!r} (no event recorded for it and no kit "
                f"helper emitted it); {hint}"
            )
        return trace_id

    # -- reading what was recorded ------------------------------------------------------

    def get_recorded_events(
        self, trace_id: str | object, *, flow: PenguiFlow | None = None
    ) -> tuple[FlowEvent, ...]:
        """Return the events of one trace, in arrival order (an immutable tuple).

        Args:
            trace_id: The trace id (or a ``Message`` carrying it).
            flow: Only events of this flow (a trace id can travel through several).

        Raises:
            UnknownTraceError: The kit never saw that trace.
        """
        tid = self._require_trace(trace_id)
        return tuple(ev for fl, ev in self._by_trace[tid] if flow is None or fl is flow)

    def node_sequence(
        self, trace_id: str | object, *, flow: PenguiFlow | None = None
    ) -> tuple[str, ...]:
        """The names of the nodes that started work for the trace, in order.

        Only first attempts count (``node_start`` with ``attempt == 0``): retries of an
        invocation are collapsed into it, while a node invoked again (a controller loop)
        appears again.

        Raises:
            UnknownTraceError: The kit never saw that trace.
        """
        return tuple(
            str(ev.node_name)
            for ev in self.get_recorded_events(trace_id, flow=flow)
            if ev.event_type == "node_start" and ev.attempt == 0
        )

    def assert_node_sequence(
        self,
        trace_id: str | object,
        expected_names: Sequence[str],
        *,
        flow: PenguiFlow | None = None,
    ) -> None:
        """Assert the order in which nodes started for a trace (retries collapsed).

        Args:
            trace_id: The trace id (or a ``Message`` carrying it).
            expected_names: The node names, in order.
            flow: Only consider this flow.

        Raises:
            KitAssertionError: The order differs; the message shows expected and actual
                and the recorded events.
            UnknownTraceError: The kit never saw that trace.
            KitUsageError: ``expected_names`` is a single string.
        """
        if isinstance(expected_names, str):
            raise KitUsageError(
                f"expected_names must be a sequence of node names, not the string "
                f"{expected_names!r}; write [{expected_names!r}]"
            )
        expected = [str(name) for name in expected_names]
        actual = list(self.node_sequence(trace_id, flow=flow))
        if actual == expected:
            return
        tid = self._require_trace(trace_id)
        index = next(
            (i for i, (a, e) in enumerate(zip(actual, expected, strict=False)) if a != e),
            min(len(actual), len(expected)),
        )
        got = repr(actual[index]) if index < len(actual) else "nothing more"
        want = repr(expected[index]) if index < len(expected) else "nothing more"
        events = self.get_recorded_events(tid, flow=flow)
        raise KitAssertionError(
            f"node sequence mismatch for trace {tid}:\n"
            f"  expected: {expected}\n"
            f"  actual:   {actual}\n"
            f"  first difference at position {index}: expected {want}, got {got}\n"
            f"  events: {_format_events(events)}"
        )

    def assert_quiescent(
        self, flow: PenguiFlow | None = None, *, require_stopped: bool = False
    ) -> None:
        """Assert that ``flow`` (default: every attached flow) holds no work any more.

        Checks, through ``flow.inspect()``: live traces (pending, queued, in flight),
        items on edges, in-flight invocations, open ``subscribe()`` views, resources
        reported by probes (join buckets…) and worker tasks alive after ``stop()``.

        Args:
            flow: One flow to check (attached or not); default: all attached flows.
            require_stopped: Also fail for a flow that is still running.

        Raises:
            QuiescenceError: The message lists each leak per flow and per trace.
        """
        flows: Iterable[PenguiFlow] = self.flows if flow is None else (flow,)
        assert_flows_quiescent(flows, require_stopped=require_stopped)

    # -- driving flows ------------------------------------------------------------------

    def _prepare(
        self, helper: str, flow: PenguiFlow, registry: Any, timeout_s: float, *, start: bool
    ) -> None:
        if not isinstance(flow, PenguiFlow):
            raise KitUsageError(f"{helper}() expects a PenguiFlow, got {type(flow).__name__}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
            raise KitUsageError(f"{helper}(): timeout_s must be a number, got {timeout_s!r}")
        if not timeout_s > 0:
            raise KitUsageError(f"{helper}(): timeout_s must be > 0, got {timeout_s!r}")
        if start and flow.is_running:
            raise KitUsageError(
                f"{helper}() starts and stops the flow itself, but {flow!r} is already "
                "running: stop it first (await flow.stop()), or use collect_trace() to "
                "drive a running flow"
            )
        if not start and not flow.is_running:
            raise KitUsageError(
                f"{helper}() drives a running flow, but {flow!r} is not running: call "
                "flow.run() first, or use run_trace() which starts and stops it"
            )
        if registry is not None:
            _check_registry(helper, flow, registry)
        self.attach(flow)

    @overload
    async def run_one(
        self,
        flow: PenguiFlow,
        message: Any,
        registry: Any = None,
        timeout_s: float = 1.0,
        *,
        expect: None = None,
    ) -> object: ...

    @overload
    async def run_one(
        self,
        flow: PenguiFlow,
        message: Any,
        registry: Any = None,
        timeout_s: float = 1.0,
        *,
        expect: type[T],
    ) -> T: ...

    async def run_one(
        self,
        flow: PenguiFlow,
        message: Any,
        registry: Any = None,
        timeout_s: float = 1.0,
        *,
        expect: type[Any] | None = None,
    ) -> Any:
        """Start ``flow``, emit ``message``, return the trace's result, stop the flow.

        With a ``Message`` (anything with a ``trace_id``), the message is sent as a request
        (``flow.request``) and the result is the outcome ``flow.invoke`` would return: the
        first item *of that trace* to reach Rookery that is not a stream chunk (chunks
        are skipped; ``run_trace`` shows them). A node that gives up, a trace that ends
        without a result, a cancel or a stop is reported as a ``KitAssertionError`` whose
        ``__cause__`` is the request's error (a ``FlowError`` naming the node, whose own
        ``__cause__`` is the node's exception). With a bare payload, the result is the
        first item at Rookery. If the trace still has work when the result arrives (a
        fan-out, a loop), that work is cancelled so nothing is left behind. The flow is
        always stopped, also on error or timeout.

        Args:
            flow: A flow that is not running.
            message: What to emit.
            registry: Passed to ``flow.run``; checked first for missing nodes.
            timeout_s: Limit in loop seconds (virtual seconds under the virtual clock,
                where a generous value costs nothing).
            expect: The class the result must be an instance of (``Message``, say). The
                result is then typed as that class; without it, ``object``.

        Returns:
            The result, exactly as delivered.

        Raises:
            KitUsageError: The flow is running, the registry misses nodes, bad timeout.
            FlowTimeoutError: No result in time; the message lists the events seen.
            KitAssertionError: A node gave up, or the trace finished (or was cancelled or
                stopped) without a result; the message names the node and lists the
                events.
            FlowTypeError: ``expect`` was given and the result is not an instance of it;
                the message names both types and the trace id.
        """
        self._prepare("run_one", flow, registry, timeout_s, start=True)
        trace_id = _trace_id_of(message)
        flow.run(registry=registry)
        try:
            if trace_id is None:
                result = await self._fetch_one(flow, message, timeout_s)
                if expect is not None and not isinstance(result, expect):
                    actual = type(result).__qualname__
                    raise FlowTypeError(
                        f"run_one: expected a result of type {expect.__qualname__}, got "
                        f"{actual} for the untracked item {message!r:.80}: the flow's exit "
                        f"node returned {actual}; pass expect={actual} or fix the node"
                    )
            else:
                result = await self._request_one(flow, message, trace_id, timeout_s, expect)
        except BaseException as failure:
            await _wind_down("run_one", flow, trace_id, timeout_s, failure)
            raise
        await _wind_down("run_one", flow, trace_id, timeout_s, None)
        return result

    async def _request_one(
        self,
        flow: PenguiFlow,
        message: Any,
        trace_id: str,
        timeout_s: float,
        expect: type[Any] | None,
    ) -> Any:
        self._note_trace(trace_id)
        start = len(self._by_trace[trace_id])
        scope = asyncio.timeout(timeout_s)
        report = ""
        try:
            async with scope, flow.request(message, expect=expect) as req:
                try:
                    return await req.result()
                except asyncio.CancelledError:
                    if scope.expired():
                        # Described now, before leaving the request cancels what is left.
                        report = self._timeout_report(
                            "run_one", flow, trace_id, timeout_s, [], start
                        )
                    raise
        except TimeoutError:
            if not scope.expired():
                raise
            raise FlowTimeoutError(
                report or self._timeout_report("run_one", flow, trace_id, timeout_s, [], start)
            ) from None
        except (FlowError, TraceCancelled, FlowStoppedError) as error:
            events = tuple(ev for fl, ev in self._by_trace[trace_id][start:] if fl is flow)
            raise KitAssertionError(
                f"run_one: trace {trace_id} {_failure(error)} without delivering any "
                f"result to Rookery\n  events: {_format_events(events)}"
            ) from error

    async def run_trace(
        self,
        flow: PenguiFlow,
        message: Any,
        registry: Any = None,
        timeout_s: float = 1.0,
    ) -> TraceRun:
        """Start ``flow``, emit ``message``, collect its whole trace, stop the flow.

        Collects every item of the message's trace that reaches Rookery (results and
        stream chunks, in order) until the trace is done, via ``flow.subscribe(trace_id,
        errors=True)``: a node that gives up shows as ``TraceRun.error``.

        Args:
            flow: A flow that is not running.
            message: A ``Message`` (or anything with a ``trace_id``).
            registry: Passed to ``flow.run``; checked first for missing nodes.
            timeout_s: Limit in loop seconds for the whole trace.

        Returns:
            The items, how the trace ended and its events.

        Raises:
            KitUsageError: Bad input (see ``run_one``), or a message without trace id.
            FlowTimeoutError: The trace did not finish in time.
        """
        self._prepare("run_trace", flow, registry, timeout_s, start=True)
        trace_id = _require_trace_id("run_trace", message)
        flow.run(registry=registry)
        try:
            run = await self._collect("run_trace", flow, message, trace_id, timeout_s)
        except BaseException as failure:
            await _wind_down("run_trace", flow, trace_id, timeout_s, failure)
            raise
        await _wind_down("run_trace", flow, trace_id, timeout_s, None)
        return run

    async def collect_trace(
        self, flow: PenguiFlow, message: Any, timeout_s: float = 1.0
    ) -> TraceRun:
        """Emit ``message`` into a *running* flow and collect its trace until it is done.

        The flow keeps running afterwards, and nothing is cancelled on timeout.

        Args:
            flow: A running flow.
            message: A ``Message`` (or anything with a ``trace_id``).
            timeout_s: Limit in loop seconds.

        Returns:
            The items, how the trace ended and its events.

        Raises:
            KitUsageError: The flow is not running, or a message without trace id.
            FlowTimeoutError: The trace did not finish in time.
        """
        self._prepare("collect_trace", flow, None, timeout_s, start=False)
        trace_id = _require_trace_id("collect_trace", message)
        return await self._collect("collect_trace", flow, message, trace_id, timeout_s)

    async def _collect(
        self,
        helper: str,
        flow: PenguiFlow,
        message: Any,
        trace_id: str,
        timeout_s: float,
    ) -> TraceRun:
        self._note_trace(trace_id)
        start = len(self._by_trace[trace_id])
        items: list[Any] = []
        error: FlowError | None = None
        done: TraceEnd = "drained"
        scope = asyncio.timeout(timeout_s)
        try:
            # A per-trace view with errors: every item of the trace, not only its first
            # result (a request handle ends at its outcome), and a node that gives up
            # arrives as its FlowError.
            async with scope, flow.subscribe(trace_id, errors=True) as results:
                await flow.emit(message)
                async for item in results:
                    if isinstance(item, FlowError):
                        error = error or item
                    else:
                        items.append(item)
                ended = results.done
                if ended in ("drained", "cancelled", "stopped"):
                    done = ended
                if error is not None and done == "drained":
                    done = "failed"
        except TimeoutError:
            if not scope.expired():
                raise
            raise FlowTimeoutError(
                self._timeout_report(helper, flow, trace_id, timeout_s, items, start)
            ) from None
        events = tuple(ev for fl, ev in self._by_trace[trace_id][start:] if fl is flow)
        return TraceRun(
            trace_id=trace_id, items=tuple(items), done=done, events=events, error=error
        )

    async def _fetch_one(self, flow: PenguiFlow, message: Any, timeout_s: float) -> Any:
        scope = asyncio.timeout(timeout_s)
        try:
            async with scope:
                await flow.emit(message)
                return await flow.fetch()
        except TimeoutError:
            if not scope.expired():
                raise
            raise FlowTimeoutError(
                f"run_one timed out after {timeout_s}s (loop time): no item reached Rookery "
                f"for the untracked item {message!r:.80}\n"
                f"  events recorded meanwhile: {_format_events(self.events)}\n"
                + _snapshot_report(flow, None)
            ) from None

    def _timeout_report(
        self,
        helper: str,
        flow: PenguiFlow,
        trace_id: str,
        timeout_s: float,
        items: list[Any],
        start: int,
    ) -> str:
        events = [ev for fl, ev in self._by_trace.get(trace_id, [])[start:] if fl is flow]
        kinds = {ev.event_type for ev in events}
        if items:
            seen = f"{len(items)} item(s) of the trace reached Rookery, but it never finished"
        else:
            seen = "no item of the trace reached Rookery"
        missing = []
        if not events:
            missing.append("no event at all for this trace (is any node reached?)")
        elif "node_success" not in kinds:
            missing.append("no node_success")
        return (
            f"{helper} timed out after {timeout_s}s (loop time) waiting for trace "
            f"{trace_id}: {seen}"
            + (f"; {', '.join(missing)}" if missing else "")
            + f"\n  events seen: {_format_events(events)}\n"
            + _snapshot_report(flow, trace_id)
        )


def _format_events(events: Sequence[FlowEvent]) -> str:
    if not events:
        return "(none)"
    return "[" + ", ".join(format_event(ev) for ev in events) + "]"


def _failure(error: BaseException) -> str:
    """How a request ended without a result, in words."""
    if isinstance(error, TraceCancelled):
        return "was cancelled"
    if isinstance(error, FlowStoppedError):
        return "was interrupted by flow.stop()"
    if isinstance(error, FlowError):
        if error.code == "NO_RESULT":
            where = f" at node {error.node_name!r}" if error.node_name else ""
            return f"finished{where}"
        tries = "attempt" if error.attempts == 1 else "attempts"
        return (
            f"failed: node {error.node_name!r} gave up ({error.code} after {error.attempts} "
            f"{tries})"
        )
    return "ended"


def _snapshot_report(flow: PenguiFlow, trace_id: str | None) -> str:
    snap = flow.inspect()
    parts = []
    if trace_id is not None:
        trace = snap.traces.get(trace_id)
        if trace is None:
            parts.append("the trace holds no work in the flow")
        else:
            parts.append(
                f"the trace still has pending={trace.pending} queued={trace.queued} "
                f"inflight={trace.inflight}" + (" (cancelled)" if trace.cancelled else "")
            )
    busy = [n.name for n in snap.nodes if n.inflight]
    if busy:
        parts.append("nodes in flight: " + ", ".join(busy))
    queued = [
        f"{getattr(e.source, 'name', e.source)}->{getattr(e.target, 'name', e.target)}: {e.depth}"
        for e in snap.edges
        if e.depth
    ]
    if queued:
        parts.append("queued: " + ", ".join(queued))
    return "  flow state: " + ("; ".join(parts) if parts else "idle")


def _require_trace_id(helper: str, message: Any) -> str:
    trace_id = _trace_id_of(message)
    if trace_id is None:
        raise KitUsageError(
            f"{helper}() follows one trace, so it needs a Message (or an item with a "
            f"trace_id); got a bare {type(message).__name__}. Use run_one() for bare payloads"
        )
    return trace_id


def _check_registry(helper: str, flow: PenguiFlow, registry: Any) -> None:
    adapters: Callable[[str], Any] | None = getattr(registry, "adapters", None)
    if not callable(adapters):
        raise KitUsageError(
            f"{helper}(): registry must provide adapters(node_name) (a ModelRegistry), "
            f"got {type(registry).__name__}"
        )
    missing: list[str] = []
    for node in flow.nodes:
        if node.policy.validate == "none":
            continue
        try:
            adapters(node.name)
        except KeyError:
            missing.append(f"{node.name!r} (validate={node.policy.validate!r})")
    if missing:
        raise KitUsageError(
            f"{helper}(): the registry has no entry for these nodes, which validate: "
            + ", ".join(sorted(set(missing)))
            + ". Register them with registry.register(name, InModel, OutModel), or give "
            "them NodePolicy(validate='none')"
        )


async def _wind_down(
    helper: str,
    flow: PenguiFlow,
    trace_id: str | None,
    timeout_s: float,
    failure: BaseException | None,
) -> None:
    """Cancel what is left of ``trace_id`` (if anything), then stop the flow, bounded.

    A node that swallows cancellation would keep an unbounded ``stop()`` waiting forever
    (and spinning, under the virtual clock), so the stop gets ``timeout_s`` too. A worker
    it gave up on is reported: as a note on ``failure`` when the helper is failing
    already (that error stays the one raised), else as a ``FlowTimeoutError``.
    """
    try:
        if trace_id is not None and flow.is_running and trace_id in flow.inspect().traces:
            await flow.cancel(trace_id)
    finally:
        busy = [n.name for n in flow.inspect().nodes if n.inflight]
        await flow.stop(timeout=timeout_s)
    stuck = flow.inspect().workers
    if not stuck:
        return
    nodes = ", ".join(repr(name) for name in busy) if busy else "(none reported in flight)"
    report = (
        f"{helper}: flow.stop() gave up after {timeout_s}s (loop time) on {stuck} worker "
        f"task(s) still running: a node catches CancelledError without re-raising it. "
        f"Nodes in flight when the flow was stopped: {nodes}"
    )
    if failure is None:
        raise FlowTimeoutError(report)
    failure.add_note(report)
