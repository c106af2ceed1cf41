"""Everything that watches a flow, in one object: middlewares, hooks, probes, events.

``Hooks`` is to a flow what trio's ``Instruments`` is to a run: the kernel asks it
``observed(level)`` before building anything, so a flow nobody watches pays one boolean
test per event site and builds no ``FlowEvent``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from .clock import wall_time
from .errors import FlowTypeError
from .metrics import NO_EXTRA, EventDraft, FlowEvent

if TYPE_CHECKING:
    from ._edges import Ports, Trace
    from .middlewares import Middleware

__all__ = ["DEBUG", "ERROR", "INFO", "WARNING", "Hooks", "enabled", "known", "logger"]

logger = logging.getLogger("penguiflow.core")
# A library logs, the application decides where to: without logging configured, the
# events do not spill onto stderr through logging's last-resort handler.
logging.getLogger("penguiflow").addHandler(logging.NullHandler())
enabled = logger.isEnabledFor
# ``enabled``'s own answers by level, for the per-hop check, where a call costs a frame:
# logging clears this dict in place whenever any level changes, so an answer found here is
# current, and a miss falls back to ``enabled`` (which fills it). Empty and unused where
# logging keeps no such cache.
_answers = getattr(logger, "_cache", None)
known: dict[int, bool] = _answers if isinstance(_answers, dict) else {}
new_draft = object.__new__  # an empty ``EventDraft``, without calling its class
DEBUG, INFO, WARNING, ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR

_H = TypeVar("_H")
Probe = Callable[[], Mapping[str, int]]


def _add(hooks: list[_H], callback: _H) -> Callable[[], None]:
    hooks.append(callback)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            hooks.remove(callback)

    return remove


class Hooks:
    """A flow's middlewares, trace-cancel/trace-done/stop hooks and resource probes.

    Args:
        middlewares: Async callables receiving every ``FlowEvent``.
        queue_maxsize: The flow's edge capacity, reported in every event.
        traces: The kernel's live traces by id, to describe a trace named only by id.
    """

    __slots__ = (
        "background",
        "cancel",
        "done",
        "middlewares",
        "probes",
        "queue_maxsize",
        "stop",
        "traces",
    )

    def __init__(
        self,
        middlewares: tuple[Middleware, ...],
        queue_maxsize: int,
        traces: Mapping[str, Trace],
    ) -> None:
        for mw in middlewares:
            _check_middleware(mw)
        # A tuple, replaced (never mutated) on add/remove: events iterate it without a copy.
        self.middlewares: tuple[Middleware, ...] = middlewares
        # Lists once someone registers: most flows (every playbook's) never do.
        self.cancel: Sequence[Callable[[str], None]] = ()
        self.done: Sequence[Callable[[str], None]] = ()
        self.stop: Sequence[Callable[[], None]] = ()
        self.probes: dict[str, Probe] = {}
        self.queue_maxsize: int = queue_maxsize
        self.traces: Mapping[str, Trace] = traces
        self.background: set[asyncio.Task[None]] | None = None
        """Event deliveries started where nothing could await them."""

    # -- registration -------------------------------------------------------------------

    def add_middleware(self, mw: Middleware) -> None:
        _check_middleware(mw)
        self.middlewares = (*self.middlewares, mw)

    def remove_middleware(self, mw: Middleware) -> bool:
        mws = list(self.middlewares)
        try:
            mws.remove(mw)
        except ValueError:
            return False
        self.middlewares = tuple(mws)
        return True

    def on_cancel(self, callback: Callable[[str], None]) -> Callable[[], None]:
        if not isinstance(self.cancel, list):
            self.cancel = []
        return _add(self.cancel, callback)

    def on_done(self, callback: Callable[[str], None]) -> Callable[[], None]:
        if not isinstance(self.done, list):
            self.done = []
        return _add(self.done, callback)

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        if not isinstance(self.stop, list):
            self.stop = []
        return _add(self.stop, callback)

    def add_probe(self, name: str, probe: Probe) -> Callable[[], None]:
        self.probes[name] = probe

        def remove() -> None:
            if self.probes.get(name) is probe:
                del self.probes[name]

        return remove

    # -- calling ------------------------------------------------------------------------

    def call(self, hooks: Sequence[Callable[..., None]], *args: Any) -> None:
        """Call every hook of a list; a failing hook is logged and never stops the others."""
        for hook in tuple(hooks):
            try:
                hook(*args)
            except BaseException as exc:
                _contain(exc, "hook_error")

    def read_probes(self) -> dict[str, Mapping[str, int]]:
        """Each probe's non-zero counts; a failing probe is logged and left out."""
        resources: dict[str, Mapping[str, int]] = {}
        for name, probe in self.probes.items():
            try:
                resources[name] = {k: v for k, v in dict(probe()).items() if v}
            except Exception:
                logger.exception("probe_error")
        return resources

    def observed(self, level: int) -> bool:
        """Would an event at ``level`` reach anyone (a middleware or the logger)?"""
        return bool(self.middlewares) or enabled(level)

    async def emit(
        self,
        kind: str,
        *,
        ports: Ports,
        level: int,
        trace: Trace | None = None,
        trace_id: str | None = None,
        attempt: int = 0,
        latency_ms: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Build one ``FlowEvent`` at ``ports``' owner, log it, and pass it to middlewares.

        Call it only after ``observed(level)``: building the event is the expensive part.
        """
        if trace is None and trace_id is not None:
            trace = self.traces.get(trace_id)
        ins, outs = ports.ins, ports.outs
        # Built as a draft and sealed (see ``EventDraft``): the same ``FlowEvent`` as the
        # constructor makes, at a third of the cost.
        event: Any = new_draft(EventDraft)
        if trace is not None:
            event.trace_pending = trace.pending
            event.trace_inflight = trace.inflight
            event.trace_cancelled = trace.cancelled
        else:
            event.trace_pending = 0 if trace_id is not None else None
            event.trace_inflight = 0
            event.trace_cancelled = False
        event.event_type = kind
        event.ts = wall_time()
        event.node_name, event.node_id = ports.ident
        event.trace_id = trace_id
        event.attempt = attempt
        event.latency_ms = latency_ms
        event.queue_depth_in = ins[0].live if len(ins) == 1 else sum(f.live for f in ins)
        event.queue_depth_out = outs[0].live if len(outs) == 1 else sum(f.live for f in outs)
        event.outgoing_edges = len(outs)
        event.queue_maxsize = self.queue_maxsize
        event.extra = MappingProxyType(dict(extra)) if extra else NO_EXTRA
        event.__class__ = FlowEvent
        on = known.get(level)
        if on is None:
            on = enabled(level)
        if on:
            try:
                logger.log(level, kind, extra=event.to_payload())
            except Exception:
                logger.log(level, kind)
        for mw in self.middlewares:
            try:
                await mw(event)
            except BaseException as exc:
                _contain(exc, "middleware_error")

    async def cancel_finished(self, ports: Ports, trace_id: str) -> None:
        """A cancelled trace has nothing left: ``trace_cancel_finish``."""
        if self.observed(INFO):
            await self.emit("trace_cancel_finish", ports=ports, level=INFO, trace_id=trace_id)

    def schedule_cancel_finished(self, ports: Ports, trace_id: str) -> None:
        """``cancel_finished`` from code that cannot await (a task keeps it alive)."""
        if self.observed(INFO):
            task = asyncio.get_running_loop().create_task(self.cancel_finished(ports, trace_id))
            if self.background is None:
                self.background = set()
            self.background.add(task)
            task.add_done_callback(self.background.discard)


def _contain(exc: BaseException, what: str) -> None:
    """Log what an observer raised, so it never breaks the flow it observes.

    Only what is not the observer's to stop goes on: ``KeyboardInterrupt``,
    ``SystemExit``, and a cancellation of the task running it (``stop()`` or a trace
    cancel), which the runtime handles.
    """
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        raise exc
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise exc
    logger.error(what, exc_info=exc)


def _check_middleware(mw: object) -> None:
    if not callable(mw):
        raise FlowTypeError(
            f"middleware {mw!r} is not callable; a middleware is an async function "
            "taking one FlowEvent, e.g. `async def mw(event): ...`"
        )
