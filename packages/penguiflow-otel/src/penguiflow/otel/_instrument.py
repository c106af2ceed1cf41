"""``instrument(flow)``: spans, context propagation and metrics from the public flow API.

How the pieces hang together:

* **One middleware** receives every ``FlowEvent``. Middlewares are awaited inline, in the
  task that emitted the event; for node events that is the worker task running the
  attempt. So ``node_start`` opens the attempt span and makes it the current span of
  that task (the node function, and anything it starts, sees it as the active span);
  ``node_success`` / ``node_error`` / ``node_timeout`` / ``node_trace_cancelled`` /
  ``node_cancelled``, emitted by the same task, close it. Open attempts are keyed by the
  worker task, which holds one attempt at a time.
* **The request span** of a trace opens when the request enters (``flow.emit`` /
  ``flow.emit_nowait``; see :class:`_Ingress`) or, for a trace that entered some other
  way, at its first node attempt. It closes in the ``on_trace_done`` hook (the trace has
  nothing pending any more: results fetched, or everything dropped), is marked in
  ``on_trace_cancel``, and anything still open is closed in ``on_stop``.
* **Decisions** (retries, gave-up items, deadline skips, cancellations, join timeouts and
  any custom ``ctx.report`` event carrying a trace id) become events on the request span.
  A ``deadline_skip`` that carries ``latency_ms`` also ends the attempt that the message
  deadline cut short: core reports nothing else for that attempt.
* **Metrics**: counters and the latency histogram are fed by the same middleware; the
  gauges read ``flow.inspect()`` when a reader collects (``_metrics``).

Nothing here runs for a flow that is not instrumented: core's own "build an event only
when someone listens" check is the only cost, and it is paid by nobody until
``instrument()`` adds the middleware.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Sequence
from contextvars import Token
from typing import TYPE_CHECKING, Any, Final, final

from opentelemetry import context as otel_context, trace
from opentelemetry.metrics import MeterProvider, get_meter_provider
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider

from penguiflow.types import Message

from ._metrics import FLOW, NODE, OUTCOME, Meters, meters_for
from ._propagation import TRACEPARENT, TRACESTATE, carrier_of, parent_context
from ._version import __version__

if TYPE_CHECKING:
    from penguiflow.core import PenguiFlow, PlaybookFactory
    from penguiflow.inspect import FlowSnapshot
    from penguiflow.metrics import FlowEvent
    from penguiflow.node import Node

__all__ = ["instrument", "instrument_playbook"]

TRACER_NAME: Final = "penguiflow.otel"
REQUEST_SPAN: Final = "penguiflow.request"
NODE_SPAN_PREFIX: Final = "penguiflow.node "
SNAPSHOT_TIMEOUT_S: Final = 1.0
"""How long a metric collection on another thread waits for the flow's loop."""

TRACE_ID: Final = "penguiflow.trace_id"
NODE_ID: Final = "penguiflow.node.id"
ATTEMPT: Final = "penguiflow.attempt"
DEPTH_IN: Final = "penguiflow.queue.depth_in"
DEPTH_OUT: Final = "penguiflow.queue.depth_out"
QUEUE_MAXSIZE: Final = "penguiflow.queue.maxsize"
LATENCY_MS: Final = "penguiflow.latency_ms"
ERROR_TYPE: Final = "error.type"

OK, ERROR, TIMEOUT, CANCELLED, DEADLINE = "ok", "error", "timeout", "cancelled", "deadline"
STOPPED: Final = "flow stopped"
DEADLINE_EXCEEDED: Final = "deadline exceeded"
_ATTEMPT_EVENTS: Final = frozenset({"node_retry", "node_failed"})
_ATTEMPT_BOUNDARIES: Final = frozenset(
    {
        "node_start",
        "node_success",
        "node_error",
        "node_timeout",
        "node_trace_cancelled",
        "node_cancelled",
        "node_failed",
    }
)
"""Events a worker emits only outside node code: at these its attempt context can go."""


@final
class _Request:
    """The span of one request (trace) while the trace is live."""

    __slots__ = ("cancelled", "context", "deadline", "failed", "headers", "running", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span, otel_context.Context())
        self.headers: dict[str, str] | None = None  # W3C headers, built on first use
        self.cancelled = False
        self.deadline = False  # the trace got (or will get) its deadline answer
        self.failed: str | None = None
        self.running = 0  # open attempt spans

    def w3c(self) -> dict[str, str]:
        if self.headers is None:
            self.headers = carrier_of(self.context)
        return self.headers


@final
class _Attempt:
    """The span of one node attempt, current in its worker task until it ends."""

    __slots__ = ("node", "node_id", "request", "span", "started", "token")

    def __init__(
        self,
        span: trace.Span,
        token: Token[otel_context.Context],
        request: _Request | None,
        node: str,
        node_id: str | None,
        started: float,
    ) -> None:
        self.span = span
        self.token = token
        self.request = request
        self.node = node
        self.node_id = node_id
        self.started = started  # loop time, the clock core measures latency_ms with


def _exception_type(text: str) -> str:
    """``"ValueError('boom')"`` -> ``"ValueError"`` (events carry the repr, not the object)."""
    head, paren, _ = text.partition("(")
    return head if paren and head.replace(".", "").replace("_", "").isalnum() else "Exception"


def _primitive(value: Any) -> bool:
    return isinstance(value, str | bool | int | float)


@final
class _Instrumentation:
    """Everything ``instrument()`` attached to one flow; ``detach()`` removes it all."""

    def __init__(
        self,
        flow: PenguiFlow,
        tracer: trace.Tracer,
        meters: Meters | None,
        flow_name: str,
    ) -> None:
        self.flow = flow
        self.flow_name = flow_name
        self._tracer = tracer
        self._meters = meters
        self._requests: dict[str, _Request] = {}
        self._attempts: dict[asyncio.Task[Any], _Attempt] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        # Whether ``_loop`` is known to be the loop the flow runs on now: set by the first
        # event after instrument() or stop(), since a flow may run() again on another loop.
        self._loop_seen = False
        self._removers: list[Callable[[], None]] = []
        self._middleware = self._on_event
        self._attached = False
        self._ingress = _Ingress(self)
        self._handlers: dict[str, Callable[[FlowEvent], None]] = {
            "node_start": self._node_start,
            "node_success": self._node_success,
            "node_error": self._node_error,
            "node_timeout": self._node_error,
            "node_trace_cancelled": self._node_cancelled,
            "node_cancelled": self._node_stopped,
            "node_retry": self._node_retry,
            "node_failed": self._node_failed,
            "deadline_skip": self._deadline_skip,
            "trace_cancel_finish": _ignore,  # the trace is already done (and its span ended)
        }

    # -- attach / detach --------------------------------------------------------------

    def attach(self) -> None:
        flow = self.flow
        self._capture_loop()
        flow.add_middleware(self._middleware)
        self._removers = [
            flow.on_trace_cancel(self._on_cancel),
            flow.on_trace_done(self._on_done),
            flow.on_stop(self._on_stop),
        ]
        self._ingress.install()
        if self._meters is not None:
            self._meters.add(self)
        self._attached = True

    def detach(self) -> None:
        """Remove every hook; end the spans still open. Idempotent."""
        if not self._attached:
            return
        self._attached = False
        flow = self.flow
        flow.remove_middleware(self._middleware)
        for remove in self._removers:
            remove()
        self._removers = []
        self._ingress.uninstall()
        if self._meters is not None:
            self._meters.discard(self)
        self._end_all("uninstrumented", leaving=True)

    # -- the middleware -----------------------------------------------------------------

    async def _on_event(self, event: FlowEvent) -> None:
        if not self._loop_seen:
            self._loop_seen = self._capture_loop()
        handler = self._handlers.get(event.event_type)
        if handler is not None:
            handler(event)
        elif event.trace_id is not None:
            self._note(event)

    def _node_start(self, event: FlowEvent) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - core emits node events from worker tasks
            return
        stale = self._attempts.pop(task, None)
        if stale is not None:  # pragma: no cover - every attempt has a closing event
            self._finish(stale, "unknown", None, None)
        tid = event.trace_id
        parent: otel_context.Context | None = None
        request: _Request | None = None
        attributes: dict[str, Any] = {
            FLOW: self.flow_name,
            NODE: event.node_name or "",
            NODE_ID: event.node_id or "",
            ATTEMPT: event.attempt + 1,
            DEPTH_IN: event.queue_depth_in,
            DEPTH_OUT: event.queue_depth_out,
            QUEUE_MAXSIZE: event.queue_maxsize,
        }
        if tid is not None:
            attributes[TRACE_ID] = tid
            request = self._requests.get(tid)
            if request is None:  # entered without flow.emit (or before instrument())
                request = self._open_request(tid, otel_context.Context())
            parent = request.context
        span = self._tracer.start_span(
            NODE_SPAN_PREFIX + (event.node_name or ""),
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        started = asyncio.get_running_loop().time()
        self._attempts[task] = _Attempt(
            span, token, request, event.node_name or "", event.node_id, started
        )
        if request is not None:
            request.running += 1

    def _node_success(self, event: FlowEvent) -> None:
        self._end_attempt(event, OK, None)

    def _node_error(self, event: FlowEvent) -> None:
        outcome = TIMEOUT if event.event_type == "node_timeout" else ERROR
        self._end_attempt(event, outcome, str(event.extra.get("exception", "")))

    def _node_cancelled(self, event: FlowEvent) -> None:
        self._end_attempt(event, CANCELLED, None)

    def _node_stopped(self, event: FlowEvent) -> None:
        self._end_attempt(event, CANCELLED, None, description=STOPPED)

    def _node_retry(self, event: FlowEvent) -> None:
        if self._meters is not None:
            self._meters.retries.add(1, {FLOW: self.flow_name, NODE: event.node_name or ""})
        self._note(event)

    def _node_failed(self, event: FlowEvent) -> None:
        # A BaseException that is not an Exception gives up without a node_error first.
        exception = str(event.extra.get("exception", ""))
        self._end_attempt(event, ERROR, exception)
        if self._meters is not None:
            self._meters.failures.add(1, {FLOW: self.flow_name, NODE: event.node_name or ""})
        if event.trace_id is not None:
            request = self._requests.get(event.trace_id)
            if request is not None and request.failed is None:
                request.failed = (
                    f"node {event.node_name!r} gave up after {event.attempt + 1} attempt(s)"
                )
        self._note(event)

    def _deadline_skip(self, event: FlowEvent) -> None:
        tid = event.trace_id
        request = self._requests.get(tid) if tid is not None else None
        if request is None:
            return
        request.deadline = True
        self._note(event)
        task = asyncio.current_task()
        attempt = self._attempts.get(task) if task is not None else None
        if (
            task is None
            or attempt is None
            or attempt.request is not request
            or attempt.node_id != event.node_id
            # Core gives the latency only when the deadline cut a running attempt short;
            # a node that asks for the deadline answer itself (through its context) is
            # still running, and its attempt goes on.
            or event.latency_ms is None
        ):
            return
        del self._attempts[task]
        self._finish(attempt, DEADLINE, None, event.latency_ms)

    def _note(self, event: FlowEvent) -> None:
        """Record a decision as an event on the request span of its trace."""
        request = self._requests.get(event.trace_id) if event.trace_id is not None else None
        if request is None:
            return
        attributes: dict[str, Any] = {}
        if event.node_name is not None:
            attributes[NODE] = event.node_name
        if event.event_type in _ATTEMPT_EVENTS:
            attributes[ATTEMPT] = event.attempt + 1
        for key, value in event.extra.items():
            if _primitive(value):
                attributes["exception.message" if key == "exception" else f"penguiflow.{key}"] = (
                    value
                )
        request.span.add_event(event.event_type, attributes)

    # -- attempts -----------------------------------------------------------------------

    def _end_attempt(
        self,
        event: FlowEvent,
        outcome: str,
        exception: str | None,
        *,
        description: str | None = None,
    ) -> None:
        task = asyncio.current_task()
        attempt = self._attempts.pop(task, None) if task is not None else None
        if attempt is None:
            return
        self._finish(attempt, outcome, exception, event.latency_ms, description=description)

    def _finish(
        self,
        attempt: _Attempt,
        outcome: str,
        exception: str | None,
        latency_ms: float | None,
        *,
        description: str | None = None,
        detach: bool = True,
    ) -> None:
        """Record the attempt's duration (one histogram point per attempt), then close it.

        Core measures ``latency_ms`` for attempts that return or raise; one that is
        cancelled, cut short by its deadline or still open at stop() is measured here,
        from the span's start, on the same loop clock.
        """
        if latency_ms is None and self._loop is not None:
            latency_ms = max(0.0, (self._loop.time() - attempt.started) * 1000.0)
        if latency_ms is not None:
            attempt.span.set_attribute(LATENCY_MS, latency_ms)
            if self._meters is not None:
                self._meters.duration.record(
                    latency_ms / 1000.0,
                    {FLOW: self.flow_name, NODE: attempt.node, OUTCOME: outcome},
                )
        self._close(attempt, outcome, exception, description=description, detach=detach)

    def _close(
        self,
        attempt: _Attempt,
        outcome: str,
        exception: str | None,
        *,
        description: str | None = None,
        detach: bool = True,
    ) -> None:
        if attempt.request is not None:
            attempt.request.running -= 1
        span = attempt.span
        span.set_attribute(OUTCOME, outcome)
        if outcome in (ERROR, TIMEOUT):
            kind = "TimeoutError" if outcome == TIMEOUT else _exception_type(exception or "")
            span.set_attribute(ERROR_TYPE, kind)
            span.add_event(
                "exception", {"exception.type": kind, "exception.message": exception or ""}
            )
            span.set_status(Status(StatusCode.ERROR, exception or outcome))
        elif outcome == CANCELLED:
            span.set_attribute(ERROR_TYPE, CANCELLED)
            span.set_status(Status(StatusCode.ERROR, description or CANCELLED))
        elif outcome == DEADLINE:
            span.set_attribute(ERROR_TYPE, DEADLINE)
            span.set_status(Status(StatusCode.ERROR, DEADLINE_EXCEEDED))
        span.end()
        if detach:
            otel_context.detach(attempt.token)

    # -- requests -----------------------------------------------------------------------

    def _open_request(self, trace_id: str, parent: otel_context.Context) -> _Request:
        span = self._tracer.start_span(
            REQUEST_SPAN,
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={FLOW: self.flow_name, TRACE_ID: trace_id},
        )
        request = self._requests[trace_id] = _Request(span)
        return request

    def _end_request(self, request: _Request, stopped: str | None = None) -> None:
        span = request.span
        if request.cancelled:
            span.set_attribute(OUTCOME, CANCELLED)
            span.set_status(Status(StatusCode.ERROR, CANCELLED))
        elif stopped is not None:
            span.set_attribute(OUTCOME, stopped)
            span.set_status(Status(StatusCode.ERROR, stopped))
        elif request.deadline:
            span.set_attribute(OUTCOME, DEADLINE)
            span.set_status(Status(StatusCode.ERROR, DEADLINE_EXCEEDED))
        elif request.failed is not None:
            span.set_attribute(OUTCOME, ERROR)
            span.set_status(Status(StatusCode.ERROR, request.failed))
        else:
            span.set_attribute(OUTCOME, OK)
        span.end()

    def ingress(self, msg: Any) -> tuple[Any, str | None]:
        """Open the request span of ``msg`` if it is new; return the item to enqueue.

        A ``Message`` is replaced by a copy whose ``meta`` carries the request's W3C
        context, so everything downstream (results, playbooks, other processes) can
        continue the trace; the caller's object and its ``meta`` dict are left alone.
        Returns the item and the trace id whose span this call opened (else None).
        """
        tid = getattr(msg, "trace_id", None)
        if not isinstance(tid, str):
            return msg, None
        is_message = isinstance(msg, Message)
        request = self._requests.get(tid)
        opened = None
        if request is None:
            parent = parent_context(msg.meta if is_message else None)
            request = self._open_request(tid, parent)
            opened = tid
        if is_message:
            headers = request.w3c()
            meta = msg.meta
            if meta.get(TRACEPARENT) != headers.get(TRACEPARENT):
                meta = dict(meta)
                meta.pop(TRACESTATE, None)
                meta.update(headers)
                msg = msg.model_copy(update={"meta": meta})
        return msg, opened

    def ingress_failed(self, trace_id: str) -> None:
        """The emit that opened ``trace_id``'s span raised: end it unless the trace lives.

        A stopped flow keeps the traces of its queued items, but nothing of them runs
        until the next run(), which opens their spans again: only a running flow keeps
        the span open.
        """
        request = self._requests.get(trace_id)
        if request is None:
            return
        flow = self.flow
        if flow.is_running and trace_id in flow.inspect().traces:
            return
        del self._requests[trace_id]
        self._end_request(request, stopped="not enqueued")

    # -- hooks --------------------------------------------------------------------------

    def _on_cancel(self, trace_id: str) -> None:
        request = self._requests.get(trace_id)
        if request is not None:
            request.cancelled = True

    def _on_done(self, trace_id: str) -> None:
        request = self._requests.pop(trace_id, None)
        if request is not None:
            # Done while an attempt is still open: stop() is tearing the worker down and
            # the item is dropped (the worker reports node_cancelled right after this).
            self._end_request(request, stopped=STOPPED if request.running else None)

    def _on_stop(self) -> None:
        self._end_all(STOPPED)
        # The loop stays known (the next run() is most likely on the same loop), but the
        # next event checks it again.
        self._loop_seen = False

    def _end_all(self, why: str, *, leaving: bool = False) -> None:
        # A context token can only be reset from the worker task that set it, and this
        # runs elsewhere. After stop() the workers are gone, and their contexts with them.
        # When uninstrumenting, the workers live on: ``_Restore`` resets each token from
        # its own worker, at that worker's next attempt boundary.
        attempts, self._attempts = self._attempts, {}
        live: dict[asyncio.Task[Any], Token[otel_context.Context]] = {}
        for task, attempt in attempts.items():
            self._finish(attempt, CANCELLED, None, None, description=why, detach=False)
            if leaving and not task.done():
                live[task] = attempt.token
        if live:
            _Restore(self.flow, live).install()
        requests, self._requests = self._requests, {}
        for request in requests.values():
            self._end_request(request, stopped=why)

    # -- metrics ------------------------------------------------------------------------

    def _capture_loop(self) -> bool:
        """Remember the running loop (the flow's, when called from its events)."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._thread = threading.get_ident()
        return True

    def snapshot(self) -> FlowSnapshot | None:
        """``flow.inspect()``, taken on the flow's own loop thread.

        None when that cannot be done safely: the flow's loop is not known yet (the flow
        was instrumented off its loop and has reported no event since), has closed, or
        is not running. The loop's structures are never read from another thread.
        """
        flow = self.flow
        if not flow.is_running:
            return None
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        if self._thread == threading.get_ident():
            return flow.inspect()
        if not loop.is_running():
            return None
        done: concurrent.futures.Future[FlowSnapshot] = concurrent.futures.Future()

        def take() -> None:
            try:
                done.set_result(flow.inspect())
            except Exception as exc:  # pragma: no cover - inspect() does not raise
                done.set_exception(exc)

        try:
            loop.call_soon_threadsafe(take)
            return done.result(timeout=SNAPSHOT_TIMEOUT_S)
        except (RuntimeError, concurrent.futures.TimeoutError):
            return None  # the loop closed, or is too busy: skip this collection


def _ignore(event: FlowEvent) -> None:
    return None


@final
class _Restore:
    """Resets, from each worker, the attempt context uninstrument could not reset.

    A context token can only be reset in the context that set it: the worker's. So after
    uninstrument this small middleware stays on the flow until every such worker has
    reached its next attempt boundary (the end of its attempt, or the start of the next
    one, always outside node code), resets the token there, and then removes itself. A
    stop() removes it too: the workers and their contexts are gone.
    """

    __slots__ = ("flow", "remove_stop_hook", "tokens")

    def __init__(
        self, flow: PenguiFlow, tokens: dict[asyncio.Task[Any], Token[otel_context.Context]]
    ) -> None:
        self.flow = flow
        self.tokens = tokens
        self.remove_stop_hook: Callable[[], None] | None = None

    def install(self) -> None:
        self.flow.add_middleware(self)
        self.remove_stop_hook = self.flow.on_stop(self.uninstall)

    def uninstall(self) -> None:
        self.tokens.clear()
        self.flow.remove_middleware(self)
        if self.remove_stop_hook is not None:
            self.remove_stop_hook()
            self.remove_stop_hook = None

    async def __call__(self, event: FlowEvent) -> None:
        if event.event_type not in _ATTEMPT_BOUNDARIES:
            return
        task = asyncio.current_task()
        token = self.tokens.pop(task, None) if task is not None else None
        if token is not None:
            otel_context.detach(token)
        if not self.tokens or all(t.done() for t in self.tokens):
            self.uninstall()


@final
class _Ingress:
    """Reads and writes the W3C context of requests as they enter the flow.

    The public API has no hook that sees an item when a trace starts, so this wraps the
    flow's own ``emit`` and ``emit_nowait`` (as instance attributes, removed again by
    uninstrument). Items that enter some other way still get a request span, opened at
    their first node attempt, but cannot continue an incoming ``traceparent``.
    """

    __slots__ = ("_emit", "_emit_nowait", "inst")

    def __init__(self, inst: _Instrumentation) -> None:
        self.inst = inst
        flow = inst.flow
        self._emit: Callable[[Any, Any], Awaitable[None]] = flow.emit
        self._emit_nowait: Callable[[Any, Any], None] = flow.emit_nowait

    @staticmethod
    def of(flow: PenguiFlow) -> _Ingress | None:
        """The ingress installed on ``flow``, if any."""
        owner = getattr(vars(flow).get("emit"), "__self__", None)
        return owner if isinstance(owner, _Ingress) else None

    def install(self) -> None:
        attrs = vars(self.inst.flow)
        attrs["emit"] = self.emit
        attrs["emit_nowait"] = self.emit_nowait

    def uninstall(self) -> None:
        attrs = vars(self.inst.flow)
        if getattr(attrs.get("emit"), "__self__", None) is self:
            del attrs["emit"]
        if getattr(attrs.get("emit_nowait"), "__self__", None) is self:
            del attrs["emit_nowait"]

    async def emit(self, msg: Any, to: Node | Sequence[Node] | None = None) -> None:
        """``PenguiFlow.emit``, opening the request span and carrying its context."""
        item, opened = self.inst.ingress(msg)
        try:
            await self._emit(item, to)
        except BaseException:
            if opened is not None:
                self.inst.ingress_failed(opened)
            raise

    def emit_nowait(self, msg: Any, to: Node | Sequence[Node] | None = None) -> None:
        """``PenguiFlow.emit_nowait``, opening the request span and carrying its context."""
        item, opened = self.inst.ingress(msg)
        try:
            self._emit_nowait(item, to)
        except BaseException:
            if opened is not None:
                self.inst.ingress_failed(opened)
            raise


def instrument(
    flow: PenguiFlow,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    flow_name: str = "penguiflow",
) -> Callable[[], None]:
    """Record ``flow``'s requests and node attempts as OpenTelemetry spans and metrics.

    Works before or after ``flow.run()``. It attaches one middleware and the
    ``on_trace_cancel`` / ``on_trace_done`` / ``on_stop`` hooks, and reads
    ``flow.inspect()`` when a metric reader collects. See the package README for the
    span tree, the attributes and the instruments.

    Args:
        flow: The flow to observe.
        tracer_provider: Where spans go; defaults to the global tracer provider.
        meter_provider: Where metrics go; defaults to the global meter provider.
        flow_name: The ``penguiflow.flow`` attribute of every span and metric point. Give
            each instrumented flow its own name when one process runs several.

    Returns:
        A function that detaches everything again (idempotent). Spans still open at
        that moment end with the outcome ``"uninstrumented"``.

    Raises:
        RuntimeError: The flow is already instrumented.
    """
    return _instrument(flow, tracer_provider, meter_provider, flow_name, metrics=True)


def _instrument(
    flow: PenguiFlow,
    tracer_provider: TracerProvider | None,
    meter_provider: MeterProvider | None,
    flow_name: str,
    *,
    metrics: bool,
) -> Callable[[], None]:
    if _Ingress.of(flow) is not None:
        raise RuntimeError(
            "this flow is already instrumented; call the function instrument() returned "
            "before instrumenting it again"
        )
    tracer = trace.get_tracer(TRACER_NAME, __version__, tracer_provider=tracer_provider)
    meters = meters_for(meter_provider or get_meter_provider()) if metrics else None
    inst = _Instrumentation(flow, tracer, meters, flow_name)
    inst.attach()
    return inst.detach


def instrument_playbook(
    playbook: PlaybookFactory,
    *,
    tracer_provider: TracerProvider | None = None,
    flow_name: str = "penguiflow.playbook",
) -> PlaybookFactory:
    """Wrap a playbook factory so that every subflow it builds records spans.

    ``call_playbook`` builds a fresh subflow per call, from inside the calling node; the
    subflow's request span then nests under that node's attempt span. Subflows are
    traced only (no metrics): they live for one call.

    Args:
        playbook: The factory given to ``call_playbook`` / ``ctx.call_playbook``.
        tracer_provider: Where spans go; defaults to the global tracer provider.
        flow_name: The ``penguiflow.flow`` attribute of the subflow's spans.

    Returns:
        A factory with the same result, its flow instrumented.
    """

    def traced() -> Any:
        flow, registry = playbook()
        _instrument(flow, tracer_provider, None, flow_name, metrics=False)
        return flow, registry

    traced.__name__ = getattr(playbook, "__name__", "playbook")
    traced.__doc__ = getattr(playbook, "__doc__", None)
    return traced
