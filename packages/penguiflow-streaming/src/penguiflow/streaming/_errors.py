"""Errors of penguiflow.streaming.

They extend core's tree (``penguiflow.errors``)::

    PenguiFlowError
    └── FlowRuntimeError (RuntimeError)
        └── StreamingPathError          no edge path from the ingress to Rookery

A closed flow is reported with core's own ``FlowNotRunningError`` / ``FlowStoppedError``,
a cancelled trace with ``TraceCancelled``, a missing ASGI extra with
``MissingExtraError``.
"""

from __future__ import annotations

from penguiflow.errors import FlowRuntimeError

__all__ = ["StreamingPathError"]


class StreamingPathError(FlowRuntimeError):
    """The flow cannot stream to a client: nothing it emits can ever reach Rookery.

    Raised before anything is emitted, instead of waiting forever for output that cannot
    come. The message names the ingress nodes that were checked.
    """
