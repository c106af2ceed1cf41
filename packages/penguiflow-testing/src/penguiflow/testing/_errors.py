"""Errors raised by the test kit.

Misuse of the kit and failed expectations are kept apart, so a test can tell "my test is
wrong" from "my flow is wrong"::

    PenguiFlowError
    └── FlowKitError                       root of every error the kit raises
        ├── KitUsageError (RuntimeError)   the kit was used wrongly: a flow that is already
        │   │                              running, a registry missing nodes, bad arguments
        │   └── UnknownTraceError (LookupError)
        │                                  a question about a trace the kit never saw
        ├── FlowTimeoutError (TimeoutError)
        │                                  run_one / run_trace waited too long; the message
        │                                  lists what was and was not seen
        └── KitAssertionError (AssertionError)
            │                              an expectation about the flow failed (node
            │                              sequence, envelope, a trace without result)
            └── QuiescenceError            work was left behind; the message lists it per
                                           trace
"""

from __future__ import annotations

from penguiflow.errors import PenguiFlowError

__all__ = [
    "FlowKitError",
    "FlowTimeoutError",
    "KitAssertionError",
    "KitUsageError",
    "QuiescenceError",
    "UnknownTraceError",
]


class FlowKitError(PenguiFlowError):
    """Root of every error raised by ``penguiflow.testing``."""

    __test__ = False


class KitUsageError(FlowKitError, RuntimeError):
    """The kit was used in a way it cannot honour; the message says what to do instead."""


class UnknownTraceError(KitUsageError, LookupError):
    """A question about a trace id the kit never saw (no event, never emitted by the kit)."""

    def __str__(self) -> str:
        # LookupError would repr() a single argument (KeyError does); keep the text plain.
        return str(self.args[0]) if self.args else ""


class FlowTimeoutError(FlowKitError, TimeoutError):
    """A kit helper waited longer than its ``timeout_s`` (loop time, so virtual time under
    the virtual clock); the message lists the events seen and what never arrived."""


class KitAssertionError(FlowKitError, AssertionError):
    """An expectation about a flow or a node did not hold."""


class QuiescenceError(KitAssertionError):
    """A flow still holds work: traces, queued items, in-flight calls, probe resources,
    open subscriptions or worker tasks. The message lists the leaks per flow and trace."""
