"""Errors of penguiflow.streaming, and the error a client receives.

The exceptions extend core's tree (``penguiflow.errors``)::

    PenguiFlowError
    ├── FlowRuntimeError (RuntimeError)
    │   ├── StreamingPathError          no edge path from the ingress to Rookery
    │   └── StreamingUsageError         a stream or writer used in the wrong state
    └── StreamingArgumentError          a value of the wrong type or shape
        (TypeError, ValueError)         (not a Message, not a StreamChunk, a bad name)

A closed flow is reported with core's own ``FlowNotRunningError`` / ``FlowStoppedError``,
a cancelled trace with ``TraceCancelled``, a node that gave up with ``FlowError``, a
missing ASGI extra with ``MissingExtraError``.

:class:`ErrorEvent` is what a *client* is told when a stream fails: a stable code, the
node or component at fault, and a short message. It never carries a traceback or the
text of the exception that a node raised (that text may hold secrets or internals).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from typing import Any, final

from penguiflow.errors import (
    FlowError,
    FlowNotRunningError,
    FlowRuntimeError,
    FlowStoppedError,
    PenguiFlowError,
    TraceCancelled,
)

__all__ = [
    "ErrorCode",
    "ErrorEvent",
    "StreamingArgumentError",
    "StreamingPathError",
    "StreamingUsageError",
    "error_event",
]

logger = logging.getLogger("penguiflow.streaming")


class StreamingPathError(FlowRuntimeError):
    """The flow cannot stream to a client: nothing it emits can ever reach Rookery.

    Raised before anything is emitted, instead of waiting forever for output that cannot
    come. The message names the ingress nodes that were checked.
    """


class StreamingUsageError(FlowRuntimeError):
    """A stream or a writer was used in a state that does not allow it.

    For example a stream started twice, read before it was started, or a
    ``StreamWriter`` written after its ``done`` chunk. The message names the object and
    says what to do instead.
    """


class StreamingArgumentError(PenguiFlowError, TypeError, ValueError):
    """A streaming function got a value of the wrong type or shape.

    It is both a ``TypeError`` and a ``ValueError``, so existing ``except`` clauses for
    either keep working. The message names the function and the value expected.
    """


class ErrorCode(enum.StrEnum):
    """The stable codes of :class:`ErrorEvent` (clients may switch on them)."""

    NODE_EXCEPTION = "NODE_EXCEPTION"
    """A node raised and gave up (retries exhausted or not retryable)."""
    NODE_TIMEOUT = "NODE_TIMEOUT"
    """A node exceeded its timeout and gave up."""
    NO_RESULT = "NO_RESULT"
    """The request ended with no output at all: a node dropped it (a router with no
    matching route, a join that dropped its bucket, a node that returned nothing)."""
    TRACE_CANCELLED = "TRACE_CANCELLED"
    """The request's trace was cancelled by someone other than this client."""
    FLOW_STOPPED = "FLOW_STOPPED"
    """The flow stopped while the request was streaming."""
    FLOW_NOT_RUNNING = "FLOW_NOT_RUNNING"
    """The flow was not running when the request arrived."""
    IDLE_TIMEOUT = "IDLE_TIMEOUT"
    """Nothing arrived from the flow within the stream's ``idle_timeout``."""
    BAD_REQUEST = "BAD_REQUEST"
    """The request could not be turned into a flow message."""
    BUSY = "BUSY"
    """A WebSocket request arrived while another one was streaming."""
    INTERNAL = "INTERNAL"
    """Anything else; the details are logged on the server, never sent."""


@final
@dataclasses.dataclass(frozen=True, slots=True)
class ErrorEvent:
    """Why a stream failed, as a client may see it.

    ``node`` is set when a node is at fault; ``component`` always names the part at
    fault (the node's name, or ``"flow"``, ``"stream"``, ``"request"``, ``"server"``).
    """

    code: str
    """A stable code, one of :class:`ErrorCode` (or a code core adds later)."""
    message: str
    """A short, human-readable explanation, free of exception text and tracebacks."""
    component: str
    """The node's name, or the component at fault."""
    node: str | None = None
    """The node that gave up, when a node is at fault."""
    trace_id: str | None = None
    """The request's trace."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object sent to clients (``trace_id``, ``code``, ``node``, ...)."""
        return {
            "trace_id": self.trace_id,
            "code": self.code,
            "node": self.node,
            "component": self.component,
            "message": self.message,
        }


def error_event(error: BaseException, trace_id: str | None = None) -> ErrorEvent:
    """Describe ``error`` for a client, without leaking its text or traceback.

    Errors other than PenguiFlow's own become ``INTERNAL``; they are logged here with
    their traceback, on the server.
    """
    if isinstance(error, FlowError) and error.code == ErrorCode.NO_RESULT:
        where = f"node {error.node_name!r}" if error.node_name else "the flow"
        return ErrorEvent(
            code=ErrorCode.NO_RESULT,
            message=f"{where} ended the request without a result",
            component=error.node_name or "flow",
            node=error.node_name or None,
            trace_id=trace_id if trace_id is not None else error.trace_id,
        )
    if isinstance(error, FlowError):
        code = error.code
        what = "timed out" if code == ErrorCode.NODE_TIMEOUT else "failed"
        tries = "attempt" if error.attempts == 1 else "attempts"
        return ErrorEvent(
            code=code,
            message=f"node {error.node_name!r} {what} after {error.attempts} {tries}",
            component=error.node_name,
            node=error.node_name,
            trace_id=trace_id if trace_id is not None else error.trace_id,
        )
    if isinstance(error, TraceCancelled):
        return ErrorEvent(
            ErrorCode.TRACE_CANCELLED, "the request was cancelled", "flow", trace_id=trace_id
        )
    if isinstance(error, FlowNotRunningError):
        return ErrorEvent(
            ErrorCode.FLOW_NOT_RUNNING, "the flow is not running", "flow", trace_id=trace_id
        )
    if isinstance(error, FlowStoppedError):
        return ErrorEvent(
            ErrorCode.FLOW_STOPPED,
            "the flow stopped before the request finished",
            "flow",
            trace_id=trace_id,
        )
    if isinstance(error, TimeoutError):
        return ErrorEvent(
            ErrorCode.IDLE_TIMEOUT,
            "no output from the flow within the idle timeout",
            "stream",
            trace_id=trace_id,
        )
    logger.error("stream of trace %s failed", trace_id, exc_info=error)
    return ErrorEvent(ErrorCode.INTERNAL, "internal server error", "server", trace_id=trace_id)
