"""The runtime: build flows with ``create``, run them, talk to them.

See ``PenguiFlow`` for the lifecycle, ``Context`` for what nodes receive, and
``call_playbook`` for subflows.
"""

from __future__ import annotations

from ._runtime import (
    BUDGET_EXCEEDED_TEXT as BUDGET_EXCEEDED_TEXT,
    DEADLINE_EXCEEDED_TEXT as DEADLINE_EXCEEDED_TEXT,
    DEFAULT_QUEUE_MAXSIZE as DEFAULT_QUEUE_MAXSIZE,
    OPEN_SEA as OPEN_SEA,
    ROOKERY as ROOKERY,
    STREAMS_PROBE as STREAMS_PROBE,
    TOKEN_BUDGET_EXCEEDED_TEXT as TOKEN_BUDGET_EXCEEDED_TEXT,
    Context as Context,
    Endpoint as Endpoint,
    Floe as Floe,
    PenguiFlow as PenguiFlow,
    PlaybookFactory as PlaybookFactory,
    Subscription as Subscription,
    call_playbook as call_playbook,
    create as create,
    trace_id_of as trace_id_of,
)
from .errors import CycleError as CycleError, TraceCancelled as TraceCancelled

__all__ = [
    "Context",
    "Floe",
    "PenguiFlow",
    "CycleError",
    "call_playbook",
    "create",
    "DEFAULT_QUEUE_MAXSIZE",
]

for _obj in (Context, Floe, PenguiFlow, Endpoint, Subscription, call_playbook, create):
    _obj.__module__ = __name__
del _obj
