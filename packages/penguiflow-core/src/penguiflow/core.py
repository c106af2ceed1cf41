"""The runtime: build flows with ``create``, run them, talk to them.

See ``PenguiFlow`` for the lifecycle, ``Context`` for what nodes receive, and
``call_playbook`` for subflows.
"""

from __future__ import annotations

from ._chunks import STREAMS_PROBE as STREAMS_PROBE
from ._context import Context as Context, Runtime as Runtime
from ._controller import (
    BUDGET_EXCEEDED_TEXT as BUDGET_EXCEEDED_TEXT,
    DEADLINE_EXCEEDED_TEXT as DEADLINE_EXCEEDED_TEXT,
    TOKEN_BUDGET_EXCEEDED_TEXT as TOKEN_BUDGET_EXCEEDED_TEXT,
)
from ._edges import OPEN_SEA as OPEN_SEA, ROOKERY as ROOKERY, Endpoint as Endpoint, Floe as Floe
from ._playbook import Subflow as Subflow
from ._request import Request as Request, RequestState as RequestState
from ._runtime import (
    DEFAULT_QUEUE_MAXSIZE as DEFAULT_QUEUE_MAXSIZE,
    PenguiFlow as PenguiFlow,
    PlaybookFactory as PlaybookFactory,
    call_playbook as call_playbook,
    create as create,
)
from ._subscription import Subscription as Subscription, SubscriptionEnd as SubscriptionEnd
from ._trace import trace_id_of as trace_id_of
from ._wiring import (
    CHECK_HOOK as CHECK_HOOK,
    SHAPE_HOOK as SHAPE_HOOK,
    Shape as Shape,
    WiringMode as WiringMode,
    declare_shape as declare_shape,
)
from .errors import CycleError as CycleError, TraceCancelled as TraceCancelled

# Exactly the names earlier PenguiFlow versions exported; the others above are public
# too (documented in docs/core-public-api.md) and imported by name.
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
