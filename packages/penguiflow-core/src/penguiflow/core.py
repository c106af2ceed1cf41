"""The runtime: build flows with ``create``, run them, talk to them.

See ``PenguiFlow`` for the lifecycle, ``Context`` for what nodes receive, and
``call_playbook`` for subflows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._chunks import STREAMS_PROBE as STREAMS_PROBE
from ._context import Context as Context, Runtime as Runtime
from ._controller import (
    BUDGET_EXCEEDED_TEXT as BUDGET_EXCEEDED_TEXT,
    DEADLINE_EXCEEDED_TEXT as DEADLINE_EXCEEDED_TEXT,
    TOKEN_BUDGET_EXCEEDED_TEXT as TOKEN_BUDGET_EXCEEDED_TEXT,
)
from ._edges import OPEN_SEA as OPEN_SEA, ROOKERY as ROOKERY, Endpoint as Endpoint, Floe as Floe
from ._playbook import Subflow as Subflow
from ._request import (
    Request as Request,
    RequestState as RequestState,
    check_result as check_result,
    no_result_error as no_result_error,
)
from ._runtime import (
    DEFAULT_QUEUE_MAXSIZE as DEFAULT_QUEUE_MAXSIZE,
    PenguiFlow as PenguiFlow,
    PlaybookFactory as PlaybookFactory,
    call_playbook as call_playbook,
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

if TYPE_CHECKING:
    from ._wiring import Adjacency
    from .middlewares import Middleware

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


def create(
    *adjacencies: Adjacency,
    queue_maxsize: int = DEFAULT_QUEUE_MAXSIZE,
    allow_cycles: bool = False,
    middlewares: Sequence[Middleware] | None = None,
    emit_errors_to_rookery: bool = False,
    retry_budget: int | None = None,
) -> PenguiFlow:
    """Build a :class:`PenguiFlow` from ``node.to(...)`` adjacency entries."""
    return PenguiFlow(
        *adjacencies,
        queue_maxsize=queue_maxsize,
        allow_cycles=allow_cycles,
        middlewares=middlewares,
        emit_errors_to_rookery=emit_errors_to_rookery,
        retry_budget=retry_budget,
    )


for _obj in (Context, Floe, PenguiFlow, Endpoint, Subscription, call_playbook, create):
    _obj.__module__ = __name__
del _obj
