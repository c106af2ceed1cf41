"""PenguiFlow's exception tree.

Every error PenguiFlow raises on purpose derives from :class:`PenguiFlowError`, and also
from the builtin type that earlier PenguiFlow versions raised (``ValueError``, ``RuntimeError``,
``ImportError``), so ``except ValueError`` keeps working for callers who never heard of
PenguiFlow::

    PenguiFlowError
    ├── FlowBuildError (ValueError)        a graph, node or policy that cannot be built
    │   ├── CycleError (RuntimeError)      a cycle without allow_cycle / allow_cycles
    │   └── FlowTypeError (TypeError)      a sync node function, a middleware that is
    │                                      not callable, a policy of the wrong type; a
    │                                      request result that is not its expect= class
    ├── FlowRuntimeError (RuntimeError)    misuse of a flow at run time
    │   ├── FlowNotRunningError            cancel() on a stopped flow, a detached context
    │   └── FlowStoppedError               emit() after stop(), before the next run()
    ├── UnknownNodeError (KeyError)        emit/fetch naming a node that is not a
    │                                      neighbour; the message lists the valid ones
    ├── TraceCancelled (Exception)         raised inside the runtime for a cancelled trace
    └── FlowError (Exception)              delivered (not raised) to Rookery when a node
                                           gives up on an item, with emit_errors_to_rookery
    MissingExtraError (ImportError)        an add-on name used without its distribution

``TraceCancelled`` is deliberately *not* a ``CancelledError``: node code sees
``asyncio.CancelledError`` at its current ``await``, as any asyncio code does when it
is cancelled; the runtime turns that into a ``TraceCancelled`` outcome for the item.
"""

from __future__ import annotations

__all__ = [
    "CycleError",
    "FlowError",
    "FlowBuildError",
    "FlowNotRunningError",
    "FlowRuntimeError",
    "FlowStoppedError",
    "FlowTypeError",
    "MissingExtraError",
    "PenguiFlowError",
    "TraceCancelled",
    "UnknownNodeError",
]


class PenguiFlowError(Exception):
    """Root of every error PenguiFlow raises on purpose."""


class FlowBuildError(PenguiFlowError, ValueError):
    """A node, policy or graph that cannot be built; the message names the culprit."""


class CycleError(FlowBuildError, RuntimeError):
    """The graph has a cycle that no ``allow_cycle`` / ``allow_cycles`` permits."""


class FlowTypeError(FlowBuildError, TypeError):
    """Something of the wrong kind was given where a flow is built (e.g. a sync function).

    Also raised by ``flow.invoke(..., expect=X)`` and ``Request.result()`` when the
    request's result is not an ``X``: the flow does not produce what the caller was
    written for. The message names both types and the trace id.
    """


class UnknownNodeError(PenguiFlowError, KeyError):
    """``emit``/``fetch`` named a node that is not a neighbour; the message lists the valid ones."""

    def __str__(self) -> str:
        # KeyError's own __str__ quotes its argument; this one is a sentence.
        return str(self.args[0]) if self.args else ""


class FlowRuntimeError(PenguiFlowError, RuntimeError):
    """A flow was used in a way its current state does not allow."""


class FlowNotRunningError(FlowRuntimeError):
    """The operation needs a running flow (or a context attached to one)."""


class FlowStoppedError(FlowRuntimeError):
    """The flow was stopped; call ``run()`` again before emitting."""


class TraceCancelled(PenguiFlowError):
    """Work of a cancelled trace was aborted.

    Args:
        trace_id: The cancelled trace, or ``None`` for an untracked item.
    """

    def __init__(self, trace_id: str | None) -> None:
        super().__init__(f"trace cancelled: {trace_id}")
        self.trace_id = trace_id

    def __reduce__(self) -> tuple[type[TraceCancelled], tuple[str | None]]:
        return (type(self), (self.trace_id,))


class FlowError(PenguiFlowError):
    """A request ended without a result: a node gave up on it, or it was dropped.

    ``flow.invoke`` and ``Request.result()`` raise it; the node's own exception is the
    ``__cause__``, so the traceback shows the failing line. A trace with a per-trace view
    (``flow.request``, ``flow.subscribe``) always gets it delivered; the shared
    ``fetch()`` path gets it with ``create(..., emit_errors_to_rookery=True)``.

    Attributes:
        trace_id: The failed item's trace, or ``None`` for an untracked item.
        node_name: The node (or component) that gave up or dropped the item; empty when
            the item never reached a node.
        node_id: That node's ``node_id`` (empty when unknown).
        code: ``"NODE_EXCEPTION"``, ``"NODE_TIMEOUT"``, ``"RETRY_BUDGET"`` (the request's
            retry budget was spent) or ``"NO_RESULT"`` (the trace ended without a result).
        attempts: How many attempts were made (0 for ``"NO_RESULT"``).
        original: The exception of the last attempt, if any.
    """

    def __init__(
        self,
        *,
        trace_id: str | None,
        node_name: str,
        node_id: str,
        code: str,
        attempts: int,
        original: BaseException | None,
        message: str | None = None,
    ) -> None:
        super().__init__(
            message
            or f"node {node_name!r} failed ({code}) after {attempts} attempt(s): {original!r}"
        )
        self.__cause__ = original
        self.trace_id = trace_id
        self.node_name = node_name
        self.node_id = node_id
        self.code = code
        self.attempts = attempts
        self.original = original


class MissingExtraError(ImportError):
    """A name of an optional PenguiFlow distribution was used, but it is not installed."""
