"""PenguiFlow and OpenTelemetry: spans, W3C context in the envelope, and metrics.

- :func:`instrument`: ``uninstrument = instrument(flow)`` records one span per request
  (trace) with one child span per node attempt, turns retries, deadline skips,
  cancellations and join timeouts into span events, continues an incoming
  ``Message.meta["traceparent"]`` and writes the request's context onward, and reports
  gauges, counters and a latency histogram. Call ``uninstrument()`` to detach.
- :func:`instrument_playbook`: wraps a playbook factory so that its subflows record spans
  that nest under the calling node's span.

Only ``opentelemetry-api`` is required; install and configure the SDK (or any other
implementation) to export. With no provider configured, the API's no-op providers make
every call cheap. A flow that is not instrumented pays nothing at all.
"""

from __future__ import annotations

from ._instrument import instrument as instrument, instrument_playbook as instrument_playbook
from ._version import __version__ as __version__

__all__ = ["instrument", "instrument_playbook"]

for _obj in (instrument, instrument_playbook):
    _obj.__module__ = __name__
del _obj
