"""``join_k``: collect ``k`` items of a trace, then release them as one batch.

Lifetime of a bucket (buckets never outlive their trace):

- it belongs to one flow: a join node wired into several flows keeps one set of buckets
  per flow (keyed by ``ctx.runtime``);
- it keeps its trace live (``ctx.hold``) from its first item until it is released or
  dropped, so a request waiting on the join neither ends early (``NO_RESULT`` while the
  bucket is half full) nor waits forever once the bucket is gone;
- it is released as a batch when its ``k``-th item arrives;
- it is dropped when its trace is cancelled (``flow.on_trace_cancel``), and all buckets
  of a flow are dropped when that flow stops (``flow.on_stop``);
- it is dropped as soon as the earliest ``Message.deadline_s`` among its items passes:
  a timer on the running loop, armed for ``deadline_s - penguiflow.clock.wall_time()``
  seconds (so a virtual loop clock plus ``use_wall_clock`` drives it). The trace is then
  answered with ``FinalAnswer("Deadline exceeded")`` at Rookery, like any other expiry
  (``ctx.deadline_exceeded``; at most one such answer per trace);
- with ``timeout_s``, an incomplete bucket is released that many seconds (loop clock)
  after its first item, per ``on_timeout``: ``"emit"`` sends the partial batch downstream
  through ``ctx.emit``; ``"drop"`` discards it.

A bucket is *not* dropped merely because its trace is idle: parts may arrive through
separate ``emit`` calls. A trace whose bucket is dropped without a deadline answer (a
``timeout_s`` with ``on_timeout="drop"``) ends without a result: a request handle reports
it as ``FlowError(code="NO_RESULT")``.

Live buckets are reported through ``flow.register_probe("join_k:<name>", ...)`` as
``{trace_id: items held}``, so ``flow.inspect().resources`` and quiescence checks see them.

Every drop and every timed-out release is logged on the ``penguiflow.patterns`` logger
(``join_k_timeout_emit``, ``join_k_timeout_drop``, ``join_k_deadline_drop`` at INFO;
``join_k_cancel_drop``, ``join_k_stop_drop`` at DEBUG) with ``extra`` keys ``node_name``,
``trace_id``, ``held`` and ``k``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal

from penguiflow.clock import wall_time
from penguiflow.core import declare_shape
from penguiflow.errors import FlowBuildError, FlowTypeError
from penguiflow.node import Node, NodePolicy
from penguiflow.types import Message

from ._perflow import PerFlow

if TYPE_CHECKING:
    from penguiflow.core import Context, Runtime

__all__ = ["join_k"]

logger = logging.getLogger("penguiflow.patterns")

OnTimeout = Literal["emit", "drop"]


def _unheld() -> None:
    """The release of a bucket kept by a context that is not attached to a flow."""


def aggregate(items: list[Any]) -> Any:
    """Build the batch: a copy of the first ``Message`` with the payloads, or the items."""
    first = items[0]
    if type(first) is Message or isinstance(first, Message):
        return first.with_payload(
            [
                item.payload if type(item) is Message or isinstance(item, Message) else item
                for item in items
            ]
        )
    return items


class _Timers:
    """A bucket's deadline and timeout timers, made only when one is armed."""

    __slots__ = ("deadline", "deadline_item", "deadline_timer", "timeout_timer")

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.deadline_item: Message | None = None  # the item whose deadline comes first
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.timeout_timer: asyncio.TimerHandle | None = None

    def disarm(self) -> None:
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
            self.deadline_timer = None
        if self.timeout_timer is not None:
            self.timeout_timer.cancel()
            self.timeout_timer = None


class _Bucket:
    """The items of one trace held by one join node in one flow."""

    __slots__ = ("items", "release", "timers")

    def __init__(self, item: Any, release: Callable[[], None]) -> None:
        self.items: list[Any] = [item]
        self.release = release  # ends the bucket's hold on its trace; idempotent
        # Most buckets fill without a deadline or timeout: no timer state for them.
        self.timers: _Timers | None = None

    def arm(self) -> _Timers:
        timers = self.timers
        if timers is None:
            timers = self.timers = _Timers()
        return timers

    def disarm(self) -> None:
        if self.timers is not None:
            self.timers.disarm()


class _JoinState:
    """Everything one join node holds for one flow (or for a detached context)."""

    __slots__ = (
        "buckets",
        "ctx",
        "k",
        "name",
        "on_timeout",
        "reports",
        "tasks",
        "timeout_s",
        "unhooks",
    )

    def __init__(
        self,
        flow: Runtime | None,
        node: Node,
        k: int,
        timeout_s: float | None,
        on_timeout: OnTimeout,
    ) -> None:
        self.name = node.name
        self.k = k
        self.timeout_s = timeout_s
        self.on_timeout = on_timeout
        self.buckets: dict[str, _Bucket] = {}
        # Partial batches waiting for room and deadline answers being sent: each task
        # keeps its trace held until it finishes (see ``_finished``).
        self.tasks: dict[asyncio.Task[None], tuple[str, Callable[[], None]]] = {}
        self.reports: set[asyncio.Task[None]] = set()  # FlowEvents of drops, in flight
        self.ctx: Context | None = None
        self.unhooks: tuple[Callable[[], None], ...] = ()
        if flow is not None:
            self.ctx = flow.context(node)
            self.unhooks = (
                flow.on_trace_cancel(self.cancel_trace),
                flow.register_probe(f"join_k:{self.name}", self.probe),
            )

    # -- hooks -----------------------------------------------------------------------

    def probe(self) -> dict[str, int]:
        """Items held per trace."""
        return {tid: len(bucket.items) for tid, bucket in self.buckets.items()}

    def cancel_trace(self, trace_id: str) -> None:
        """Drop the trace's bucket and abort a partial batch still being emitted."""
        bucket = self.buckets.pop(trace_id, None)
        if bucket is not None:
            bucket.disarm()
            bucket.release()
            self._log(logging.DEBUG, "join_k_cancel_drop", trace_id, len(bucket.items))
        if self.tasks:
            for task, (tid, _release) in list(self.tasks.items()):
                if tid == trace_id:
                    task.cancel()

    def close(self) -> None:
        """The flow stopped: drop every bucket, abort pending emits, unhook."""
        buckets, self.buckets = self.buckets, {}
        for tid, bucket in buckets.items():
            bucket.disarm()
            bucket.release()
            self._log(logging.DEBUG, "join_k_stop_drop", tid, len(bucket.items))
        tasks, self.tasks = self.tasks, {}
        for task, (_tid, release) in tasks.items():
            task.cancel()
            release()
        unhooks, self.unhooks = self.unhooks, ()
        for unhook in unhooks:
            unhook()

    # -- items -------------------------------------------------------------------------

    def add(self, trace_id: str, item: Any) -> Any:
        """Add ``item``; return the batch when the bucket is full, else ``None``.

        A new bucket holds its trace (``ctx.hold``) until it is released or dropped; the
        item being handled still counts for the trace meanwhile, so the trace never looks
        ended in between.
        """
        buckets = self.buckets
        bucket = buckets.get(trace_id)
        if bucket is None:
            if self.k == 1:
                return aggregate([item])
            ctx = self.ctx
            release = _unheld if ctx is None else ctx.hold(trace_id)
            bucket = buckets[trace_id] = _Bucket(item, release)
            if self.timeout_s is not None:
                loop = asyncio.get_running_loop()
                bucket.arm().timeout_timer = loop.call_later(
                    self.timeout_s, self._timed_out, trace_id, bucket
                )
        else:
            items = bucket.items
            items.append(item)
            if len(items) >= self.k:
                del buckets[trace_id]
                if bucket.timers is not None:
                    bucket.timers.disarm()
                bucket.release()  # the batch is returned while this item still counts
                return aggregate(items)
        if type(item) is Message or isinstance(item, Message):
            deadline = item.deadline_s
            if deadline is not None:
                timers = bucket.arm()
                if timers.deadline is None or deadline < timers.deadline:
                    self._arm_deadline(trace_id, bucket, timers, item, deadline)
        return None

    def _arm_deadline(
        self, trace_id: str, bucket: _Bucket, timers: _Timers, item: Message, deadline: float
    ) -> None:
        timers.deadline = deadline
        timers.deadline_item = item
        if timers.deadline_timer is not None:
            timers.deadline_timer.cancel()
        delay = max(0.0, deadline - wall_time())
        loop = asyncio.get_running_loop()
        timers.deadline_timer = loop.call_later(delay, self._expired, trace_id, bucket)

    def _take(self, trace_id: str, bucket: _Bucket) -> bool:
        """Remove ``bucket`` if it is still the live bucket of ``trace_id``."""
        if self.buckets.get(trace_id) is not bucket:
            return False
        del self.buckets[trace_id]
        bucket.disarm()
        return True

    def _expired(self, trace_id: str, bucket: _Bucket) -> None:
        timers = bucket.arm()
        timers.deadline_timer = None
        if not self._take(trace_id, bucket):
            return
        self._log(logging.INFO, "join_k_deadline_drop", trace_id, len(bucket.items))
        ctx, item = self.ctx, timers.deadline_item
        if ctx is None or item is None:
            bucket.release()
            return
        # The trace stays held until its "Deadline exceeded" answer is at Rookery, so
        # whoever waits for the trace gets that answer, not an early end.
        self._spawn(ctx.deadline_exceeded(item), trace_id, bucket.release)

    def _spawn(
        self, work: Coroutine[Any, Any, None], trace_id: str, release: Callable[[], None]
    ) -> None:
        """Run ``work`` in a task that keeps ``trace_id`` held until it finishes."""
        task = asyncio.get_running_loop().create_task(
            work, name=f"penguiflow.patterns:join_k:{self.name}"
        )
        self.tasks[task] = (trace_id, release)
        task.add_done_callback(self._finished)

    def _timed_out(self, trace_id: str, bucket: _Bucket) -> None:
        bucket.arm().timeout_timer = None
        if not self._take(trace_id, bucket):
            return
        held = len(bucket.items)
        if self.on_timeout == "drop":
            self._log(logging.INFO, "join_k_timeout_drop", trace_id, held)
            bucket.release()
            return
        ctx = self.ctx
        if ctx is None:
            logger.warning(
                "join_k '%s': partial batch of trace %s dropped: context not attached to a flow",
                self.name,
                trace_id,
            )
            return
        batch = aggregate(bucket.items)
        try:
            ctx.emit_nowait(batch)
        except asyncio.QueueFull:
            self._spawn(self._emit_later(ctx, batch, trace_id, held), trace_id, bucket.release)
            return
        except Exception:
            logger.exception(
                "join_k '%s': partial batch of trace %s could not be emitted", self.name, trace_id
            )
            bucket.release()
            return
        bucket.release()  # after the batch is counted for the trace
        self._log(logging.INFO, "join_k_timeout_emit", trace_id, held)

    async def _emit_later(self, ctx: Context, batch: Any, trace_id: str, held: int) -> None:
        """Emit a partial batch that found a full edge: wait for capacity (backpressure)."""
        # Logged here, not when the task is created: ``ctx.emit`` counts the batch for its
        # trace before it first suspends, so once this is observable the trace is live and
        # ``flow.cancel(trace_id)`` reaches the task through ``cancel_trace``.
        self._log(logging.INFO, "join_k_timeout_emit", trace_id, held)
        await ctx.emit(batch)

    def _finished(self, task: asyncio.Task[None]) -> None:
        held = self.tasks.pop(task, None)
        if held is not None:
            held[1]()  # release the trace (after stop, close() already did)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error(
                "join_k '%s': a timed-out bucket could not be delivered",
                self.name,
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    def _log(self, level: int, event: str, trace_id: str, held: int) -> None:
        """Log a release or drop, and report it as a ``FlowEvent`` to the flow's middlewares."""
        if logger.isEnabledFor(level):
            logger.log(
                level,
                event,
                extra={"node_name": self.name, "trace_id": trace_id, "held": held, "k": self.k},
            )
        ctx = self.ctx
        flow = ctx.runtime if ctx is not None else None
        if ctx is None or flow is None or not flow.is_running:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(
            ctx.report(event, trace_id=trace_id, extra={"held": held, "k": self.k}, level=level)
        )
        self.reports.add(task)
        task.add_done_callback(self.reports.discard)


def join_k(
    name: str,
    k: int,
    *,
    timeout_s: float | None = None,
    on_timeout: OnTimeout = "emit",
) -> Node:
    """Build a node that joins ``k`` items per trace into one batch.

    Each item is added to its trace's bucket. While the bucket holds fewer than ``k``
    items the node returns ``None``. On the ``k``-th item the bucket is removed and the
    node returns the batch, which is routed like any result: a copy of the first item
    (same trace id, headers, meta, deadline) with ``payload=[payload_1, ..., payload_k]``
    when that item is a ``Message``, otherwise the list of the items. Items count in the
    order the node handles them; a later item of the trace starts a new bucket.

    Buckets are per flow, and never outlive their trace: see the module documentation
    for cancellation, ``stop()``, deadlines, ``timeout_s`` and the ``join_k:<name>``
    probe.

    Args:
        name: The node's name.
        k: Items per batch.
        timeout_s: Seconds (event-loop clock) an incomplete bucket may wait after its first
            item; ``None`` (the default) waits until the trace is cancelled, its deadline
            passes or the flow stops.
        on_timeout: What a timed-out bucket becomes: ``"emit"`` sends the partial batch
            (same shape, fewer payloads) to every successor with ``ctx.emit``; ``"drop"``
            discards it. Both are logged.

    Returns:
        A ``Node`` with ``NodePolicy(validate="none")``.

    Raises:
        FlowBuildError: ``k < 1`` (``"k must be positive"``), ``timeout_s <= 0`` or an
            unknown ``on_timeout`` (a ``ValueError``).
        FlowTypeError: ``name`` is not a string or ``k`` is not an ``int`` (a
            ``TypeError``).

    At run time, an item without a ``trace_id`` raises
    ``ValueError("join_k requires messages with trace_id")`` inside the node.
    """
    if not isinstance(name, str) or not name:
        raise FlowTypeError(f"join_k: name must be a non-empty str, got {name!r}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise FlowTypeError(f"join_k '{name}': k must be an int, got {k!r}")
    if k < 1:
        raise FlowBuildError(
            f"join_k '{name}': k must be positive, got {k}; k is how many items of a "
            "trace make one batch"
        )
    if timeout_s is not None and not timeout_s > 0:
        raise FlowBuildError(
            f"join_k '{name}': timeout_s must be positive or None, got {timeout_s!r}"
        )
    if on_timeout not in ("emit", "drop"):
        raise FlowBuildError(
            f"join_k '{name}': on_timeout must be 'emit' or 'drop', got {on_timeout!r}"
        )

    states: PerFlow[_JoinState] = PerFlow(
        lambda flow, node: _JoinState(flow, node, k, timeout_s, on_timeout)
    )

    async def join(item: Any, ctx: Context) -> Any:
        if type(item) is Message:
            trace_id: object = item.trace_id
        else:
            trace_id = getattr(item, "trace_id", None)
        if not isinstance(trace_id, str):
            raise ValueError("join_k requires messages with trace_id")
        return states.get(ctx).add(trace_id, item)

    join.__name__ = join.__qualname__ = name
    node = Node(join, name=name, policy=NodePolicy(validate="none"), allow_cycle=False)
    declare_shape(node, _batch_of)  # the wiring check: k items of T become one list[T]
    return node


def _batch_of(incoming: object, successor: Node) -> object:
    return list[incoming]  # type: ignore[valid-type]
