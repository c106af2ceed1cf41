"""Node-level helpers: flaky nodes on demand, a stub context, the envelope check."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, final

from penguiflow.core import Endpoint, call_playbook
from penguiflow.node import Node
from penguiflow.types import Headers, Message, StreamChunk

from ._errors import FlowTimeoutError, KitAssertionError, KitUsageError

__all__ = [
    "EnvelopeCheck",
    "SimulatedErrorNode",
    "StubContext",
    "assert_preserves_message_envelope",
    "simulate_error",
]


class SimulatedErrorNode(Protocol):
    """The node function :func:`simulate_error` returns (an ``async def`` with counters)."""

    __name__: str
    node_name: str
    """The name given to ``simulate_error``; also the function's ``__name__``."""
    code: str
    """The error code put into every failure message."""
    fail_times: int
    """How many calls fail before the node succeeds."""
    attempts: int
    """How many times the function was called (failures included)."""
    failures: int
    """How many of those calls raised."""

    async def __call__(self, message: Any, ctx: Any, /) -> Any:
        """Fail ``fail_times`` times, then succeed."""


def simulate_error(
    node_name: str,
    code: str,
    fail_times: int = 1,
    result: Any = None,
    result_factory: Callable[[Any], Any] | None = None,
    exception_type: type[BaseException] = RuntimeError,
) -> SimulatedErrorNode:
    """Build a node function that fails ``fail_times`` times, then succeeds.

    Each failure raises ``exception_type(f"{node_name}: simulated {code} ...")``; the
    exception also gets a ``code`` attribute when the type allows it. Raise
    ``TimeoutError`` to exercise the runtime's timeout path (``node_timeout`` events).
    Use it as ``Node(simulate_error("fetch", "E_UPSTREAM", fail_times=2),
    policy=NodePolicy(max_retries=2))``: the function is named ``node_name``, so the node
    is too.

    Args:
        node_name: The function's ``__name__`` (hence the default node name).
        code: An error code included in every failure message.
        fail_times: How many calls fail before the first success (0: never fails).
        result: What a successful call returns. When neither ``result`` nor
            ``result_factory`` is given, the incoming message is returned unchanged.
        result_factory: Builds the result from the incoming message (sync or async).
        exception_type: The exception class to raise; called with one message string.

    Returns:
        An ``async def (message, ctx)`` function with ``attempts`` and ``failures``
        counters.

    Raises:
        KitUsageError: Both ``result`` and ``result_factory`` given, a negative
            ``fail_times``, or an ``exception_type`` that is not an exception class.
    """
    if not isinstance(fail_times, int) or isinstance(fail_times, bool) or fail_times < 0:
        raise KitUsageError(f"simulate_error: fail_times must be an int >= 0, got {fail_times!r}")
    if result is not None and result_factory is not None:
        raise KitUsageError("simulate_error: give either result or result_factory, not both")
    if not (isinstance(exception_type, type) and issubclass(exception_type, BaseException)):
        raise KitUsageError(
            f"simulate_error: exception_type must be an exception class, got {exception_type!r}"
        )

    async def simulated(message: Any, ctx: Any, /) -> Any:
        state = simulated_node
        state.attempts += 1
        if state.failures < state.fail_times:
            state.failures += 1
            exc = exception_type(
                f"{node_name}: simulated {code} (failure {state.failures} of {state.fail_times})"
            )
            try:
                exc.code = code  # type: ignore[attr-defined]
            except AttributeError:  # pragma: no cover - exotic exception types
                pass
            raise exc
        if result_factory is not None:
            value = result_factory(message)
            if inspect.isawaitable(value):
                value = await value
            return value
        if result is not None:
            return result
        return message

    simulated.__name__ = node_name
    simulated.__qualname__ = f"simulate_error.<{node_name}>"
    simulated_node: SimulatedErrorNode = simulated  # type: ignore[assignment]
    simulated_node.node_name = node_name
    simulated_node.code = code
    simulated_node.fail_times = fail_times
    simulated_node.attempts = 0
    simulated_node.failures = 0
    return simulated_node


@final
class StubContext:
    """A stand-in for ``Context`` when calling one node function directly.

    It records what the node emits (``emitted``, as ``(item, target)`` pairs) and the
    stream chunks it produces (``chunks``), instead of routing them. ``emit_chunk``
    builds chunks and envelopes exactly like the runtime (sequence numbers per stream,
    a ``Message`` envelope carrying the parent's headers, trace id, deadline and a copy
    of its meta) but never waits for capacity. Any target is accepted.

    Args:
        owner: The node (or endpoint) the context pretends to belong to.
    """

    __test__ = False

    def __init__(self, owner: Node | Endpoint | None = None) -> None:
        self.owner = owner
        self.emitted: list[tuple[Any, Any]] = []
        """Every item emitted (``emit``, ``emit_nowait``, chunk envelopes), with its ``to``."""
        self.chunks: list[StreamChunk] = []
        """Every ``StreamChunk`` produced by ``emit_chunk``, in order."""
        self._seq: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<StubContext owner={getattr(self.owner, 'name', self.owner)!r}>"

    @property
    def runtime(self) -> None:
        """Always ``None``: a stub context belongs to no flow."""
        return None

    @property
    def items(self) -> list[Any]:
        """The emitted items without their targets."""
        return [item for item, _ in self.emitted]

    def outgoing_count(self) -> int:
        """Always 0: the stub has no edges."""
        return 0

    def queue_depth_in(self) -> int:
        """Always 0."""
        return 0

    def queue_depth_out(self) -> int:
        """Always 0."""
        return 0

    async def emit(self, msg: Any, to: Any = None) -> None:
        """Record ``msg`` (and its target)."""
        self.emitted.append((msg, to))

    def emit_nowait(self, msg: Any, to: Any = None) -> None:
        """Record ``msg`` (and its target)."""
        self.emitted.append((msg, to))

    async def emit_chunk(
        self,
        *,
        parent: Message,
        text: str,
        stream_id: str | None = None,
        seq: int | None = None,
        done: bool = False,
        meta: Mapping[str, Any] | None = None,
        to: Any = None,
    ) -> StreamChunk:
        """Build and record a chunk like ``Context.emit_chunk`` (without backpressure)."""
        sid = stream_id or parent.trace_id
        if seq is None:
            seq = self._seq.get(sid, -1) + 1
        self._seq[sid] = seq
        chunk = StreamChunk(stream_id=sid, seq=seq, text=text, done=done, meta=dict(meta or {}))
        envelope = Message(
            payload=chunk,
            headers=parent.headers,
            trace_id=parent.trace_id,
            deadline_s=parent.deadline_s,
            meta=dict(parent.meta),
        )
        self.chunks.append(chunk)
        self.emitted.append((envelope, to))
        if done:
            self._seq.pop(sid, None)
        return chunk

    async def fetch(self, from_: Any = None) -> Any:
        """A stub has no incoming edges.

        Raises:
            RuntimeError: Always.
        """
        raise RuntimeError("context has no incoming floes to fetch from")

    async def fetch_any(self, from_: Any = None) -> Any:
        """A stub has no incoming edges.

        Raises:
            RuntimeError: Always.
        """
        raise RuntimeError("context has no incoming floes to fetch from")

    async def call_playbook(
        self, playbook: Any, parent_msg: Message, *, timeout: float | None = None
    ) -> Any:
        """Run a playbook like ``Context.call_playbook``, with no parent runtime."""
        return await call_playbook(playbook, parent_msg, timeout=timeout)


@dataclass(frozen=True, slots=True)
class EnvelopeCheck:
    """What :func:`assert_preserves_message_envelope` saw."""

    message: Message
    """The message the node was called with."""
    result: Message | None
    """What the node returned (a ``Message``, checked, or ``None``)."""
    outputs: tuple[Message, ...]
    """Everything checked: the result (when not ``None``), then each emitted item."""
    chunks: tuple[StreamChunk, ...]
    """Chunks produced through the stub's ``emit_chunk``."""


def _default_message() -> Message:
    return Message(
        payload={"penguiflow.testing": "envelope probe"},
        headers=Headers(tenant="penguiflow-testing", topic="envelope-check", priority=7),
        meta={"penguiflow.testing": "envelope"},
    )


async def assert_preserves_message_envelope(
    node: Node | Callable[[Any, Any], Awaitable[Any]],
    message: Message | None = None,
    ctx: Any = None,
    *,
    registry: Any = None,
    timeout_s: float = 1.0,
) -> EnvelopeCheck:
    """Call one node and check that its output keeps the envelope of its input.

    Every output (the returned value when not ``None``, and every item the node emits
    through the context, stream chunk envelopes included) must be a ``Message`` with the
    same ``headers`` and ``trace_id`` as ``message``. A node that returns a bare payload
    loses the envelope: downstream nodes, cancellation and tracing can no longer tell
    which request it belongs to.

    Args:
        node: A ``Node`` (called through ``Node.invoke``) or a bare ``async def (msg,
            ctx)``.
        message: The input; default: a ``Message`` with distinctive headers and meta.
        ctx: The context to pass; default: a fresh :class:`StubContext` whose records
            are also checked.
        registry: Passed to ``Node.invoke`` to exercise validation.
        timeout_s: Limit for the node call in loop seconds (virtual seconds under the
            virtual clock).

    Returns:
        What was called and seen, for further assertions.

    Raises:
        KitAssertionError: The node produced nothing, or an output lost the envelope.
            The message names the output and the field that changed.
        FlowTimeoutError: The node did not return within ``timeout_s``.
        KitUsageError: ``message`` is not a ``Message``, or a bad ``timeout_s``.
    """
    if message is None:
        message = _default_message()
    if not isinstance(message, Message):
        raise KitUsageError(
            f"assert_preserves_message_envelope needs a Message to check, got "
            f"{type(message).__name__}"
        )
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not timeout_s > 0:
        raise KitUsageError(
            f"assert_preserves_message_envelope: timeout_s must be a number > 0, got {timeout_s!r}"
        )
    stub = StubContext(node if isinstance(node, Node) else None) if ctx is None else ctx
    headers = message.headers.model_copy(deep=True)
    trace_id = message.trace_id
    name = node.name if isinstance(node, Node) else getattr(node, "__name__", repr(node))
    emitted: Sequence[tuple[Any, Any]] = getattr(stub, "emitted", ())
    scope = asyncio.timeout(timeout_s)
    try:
        async with scope:
            if isinstance(node, Node):
                result = await node.invoke(message, stub, registry=registry)
            else:
                result = await node(message, stub)
    except TimeoutError:
        if not scope.expired():
            raise
        expired = True
    else:
        # A node that swallowed the timeout's cancellation and returned late is reported
        # the same way: what it returned was not produced in time.
        expired = scope.expired()
    if expired:
        raise FlowTimeoutError(
            f"assert_preserves_message_envelope: node {name!r} did not return within "
            f"{timeout_s}s (loop time); it emitted {len(emitted)} item(s) meanwhile"
        ) from None
    outputs: list[tuple[str, Any]] = []
    if result is not None:
        outputs.append(("returned value", result))
    for index, (item, _target) in enumerate(emitted):
        outputs.append((f"emitted item #{index}", item))
    chunks = tuple(getattr(stub, "chunks", ()))
    if not outputs:
        raise KitAssertionError(
            f"node {name!r} returned None and emitted nothing, so there is no envelope to "
            "check; pass a message it produces output for"
        )
    problems: list[str] = []
    checked: list[Message] = []
    for label, item in outputs:
        if not isinstance(item, Message):
            problems.append(
                f"{label} is a bare {type(item).__name__} ({item!r:.80}), not a Message: "
                "headers and trace_id were dropped; return "
                "message.model_copy(update={'payload': ...}) instead"
            )
            continue
        checked.append(item)
        if item.trace_id != trace_id:
            problems.append(f"{label}: trace_id changed from {trace_id!r} to {item.trace_id!r}")
        if item.headers != headers:
            problems.append(
                f"{label}: headers changed from {headers.model_dump()} to "
                f"{item.headers.model_dump()}"
            )
    if problems:
        raise KitAssertionError(
            f"node {name!r} does not preserve the message envelope:\n  - " + "\n  - ".join(problems)
        )
    return EnvelopeCheck(
        message=message,
        result=result if isinstance(result, Message) else None,  # else it was a problem
        outputs=tuple(checked),
        chunks=chunks,
    )
