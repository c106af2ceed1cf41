"""Deterministic test helpers for PenguiFlow flows.

- :class:`FlowTestKit` runs flows (``run_one``, ``run_trace``, ``collect_trace``),
  records their events per trace through the public middleware API, and asserts on them
  (``assert_node_sequence``, ``get_recorded_events``, ``assert_quiescent``).
- :class:`Recorder` is a plain middleware that keeps every event and lets a test await
  one (``await recorder.wait("node_failed", node="fetch")``) instead of sleeping.
- :func:`simulate_error` builds flaky nodes; :class:`StubContext` and
  :func:`assert_preserves_message_envelope` test one node in isolation.
- :class:`VirtualEventLoop` / :class:`VirtualClock` / :func:`run_virtual` make every
  timer (retry backoff, node timeouts, deadlines, playbook timeouts) fire instantly and
  deterministically.
- The pytest plugin (``penguiflow.testing.pytest_plugin``, registered as ``penguiflow``)
  provides the ``flow_kit`` and ``virtual_clock`` fixtures and the opt-in
  ``penguiflow_quiescent`` marker / ``--penguiflow-quiescent`` option.
"""

from __future__ import annotations

from ._clock import (
    VirtualClock as VirtualClock,
    VirtualEventLoop as VirtualEventLoop,
    run_virtual as run_virtual,
)
from ._errors import (
    FlowKitError as FlowKitError,
    FlowTimeoutError as FlowTimeoutError,
    KitAssertionError as KitAssertionError,
    KitUsageError as KitUsageError,
    QuiescenceError as QuiescenceError,
    UnknownTraceError as UnknownTraceError,
)
from ._kit import FlowTestKit as FlowTestKit, TraceRun as TraceRun, format_event as format_event
from ._nodes import (
    EnvelopeCheck as EnvelopeCheck,
    SimulatedErrorNode as SimulatedErrorNode,
    StubContext as StubContext,
    assert_preserves_message_envelope as assert_preserves_message_envelope,
    simulate_error as simulate_error,
)
from ._quiescence import (
    assert_flows_quiescent as assert_flows_quiescent,
    describe_leaks as describe_leaks,
)
from ._recorder import Recorder as Recorder
from ._version import __version__ as __version__

__all__ = [
    "EnvelopeCheck",
    "FlowKitError",
    "FlowTestKit",
    "FlowTimeoutError",
    "KitAssertionError",
    "KitUsageError",
    "QuiescenceError",
    "Recorder",
    "SimulatedErrorNode",
    "StubContext",
    "TraceRun",
    "UnknownTraceError",
    "VirtualClock",
    "VirtualEventLoop",
    "__version__",
    "assert_flows_quiescent",
    "assert_preserves_message_envelope",
    "describe_leaks",
    "format_event",
    "run_virtual",
    "simulate_error",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) or callable(_obj):
        try:
            _obj.__module__ = __name__
        except (AttributeError, TypeError):  # pragma: no cover - builtins
            pass
del _name, _obj
