"""W3C trace context in ``Message.meta``: read it when a request enters, write it onward.

The carrier is the message's ``meta`` dict itself, under the W3C header names
``"traceparent"`` (and ``"tracestate"`` when there is one). The W3C propagator is used
directly, not the globally configured one: the envelope's format is fixed, whatever
propagators the application set up for HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from opentelemetry import context as otel_context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["TRACEPARENT", "TRACESTATE", "carrier_of", "parent_context"]

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
_W3C: Final = TraceContextTextMapPropagator()


def parent_context(meta: Mapping[str, Any] | None) -> otel_context.Context:
    """Return the context a new request span should start in.

    Precedence:

    1. ``meta["traceparent"]`` when it holds a valid W3C trace context: the request
       continues that (usually remote) trace. If the caller's active span belongs to the
       very same trace, that span is the closer ancestor and is used instead; this is
       what nests a playbook's request under the node that called it.
    2. Otherwise the caller's current context (its active span, if any).
    """
    current = otel_context.get_current()
    if meta:
        raw = meta.get(TRACEPARENT)
        if isinstance(raw, str):
            carrier = {TRACEPARENT: raw}
            state = meta.get(TRACESTATE)
            if isinstance(state, str):
                carrier[TRACESTATE] = state
            extracted = _W3C.extract(carrier, context=otel_context.Context())
            remote = trace.get_current_span(extracted).get_span_context()
            if remote.is_valid:
                mine = trace.get_current_span(current).get_span_context()
                if mine.is_valid and mine.trace_id == remote.trace_id:
                    return current
                return extracted
    return current


def carrier_of(ctx: otel_context.Context) -> dict[str, str]:
    """Return the W3C headers (``traceparent``, maybe ``tracestate``) for ``ctx``."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=ctx)
    return carrier
