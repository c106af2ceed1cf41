"""Per-flow state of pattern nodes, and the routing-table shared by the routers.

A pattern node is an ordinary ``Node`` and may be wired into several flows at once. What
it learns about a flow (its resolved successors, its join buckets) therefore lives *per
flow*, keyed by ``ctx.runtime``:

- the state is created on the first message the node handles in that flow;
- it is released (``close()``) when that flow stops, through ``flow.on_stop``, so a
  stopped flow is not kept alive by a node that outlives it, and a restarted flow starts
  from fresh state;
- a lookup is one dict access keyed by the context the node was called with (each
  context belongs to one flow): nothing is allocated per message.

Routers also check their wiring when the flow is built: core calls each node function's
``CHECK_HOOK`` attribute from ``create()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from penguiflow.core import CHECK_HOOK
from penguiflow.errors import FlowBuildError, FlowNotRunningError, FlowTypeError
from penguiflow.node import Node

if TYPE_CHECKING:
    from penguiflow.core import Context, Runtime

__all__ = [
    "FlowState",
    "PerFlow",
    "RoutingError",
    "Successors",
    "attach_check",
    "owner_node",
]


class RoutingError(FlowBuildError, KeyError):
    """A router names a successor the flow does not wire.

    It is a ``FlowBuildError`` (hence a ``ValueError``): a wiring mistake. It is also a
    ``KeyError``, the type earlier PenguiFlow versions raised for ``No successor named '<name>'``.
    """

    def __str__(self) -> str:
        # KeyError quotes its argument; show the message as written.
        return str(self.args[0]) if self.args else ""


class FlowState(Protocol):
    """What a node keeps about one flow."""

    def close(self) -> None:
        """Release everything held for the flow (timers, buckets, hooks)."""


S = TypeVar("S", bound=FlowState)


def owner_node(ctx: Context) -> Node:
    """Return the node that owns ``ctx``.

    Raises:
        FlowTypeError: ``ctx`` belongs to an endpoint, not a node (a ``TypeError``).
    """
    owner = ctx.owner
    if not isinstance(owner, Node):
        raise FlowTypeError(
            f"a pattern node was called with the context of {owner!r}; call it with its "
            "own node's context (Context(node) or the one the flow passes in)"
        )
    return owner


class PerFlow(Generic[S]):
    """One state object per flow, created on first use, released when the flow stops.

    Args:
        make: Builds the state for ``(flow, node)``; ``flow`` is ``None`` for a context
            that is not attached to a flow (``Node.invoke`` with ``Context(node)``).
    """

    __slots__ = ("_by_context", "_contexts", "_detached", "_make", "_states", "_unhooks")

    def __init__(self, make: Callable[[Runtime | None, Node], S]) -> None:
        self._make = make
        self._states: dict[Runtime, S] = {}
        self._unhooks: dict[Runtime, Callable[[], None]] = {}
        self._detached: dict[Node, S] = {}
        # The hot lookup: a flow's contexts (one per worker) map straight to its state,
        # so a call does not go through ``ctx.runtime``. Forgotten when the flow stops.
        self._by_context: dict[Context, S] = {}
        self._contexts: dict[Runtime, list[Context]] = {}

    def get(self, ctx: Context) -> S:
        """Return the state of ``ctx``'s flow, creating it on first use."""
        state = self._by_context.get(ctx)
        if state is not None:
            return state
        flow = ctx.runtime
        if flow is None:
            return self._bind(None, owner_node(ctx))
        state = self._states.get(flow)
        if state is None:
            state = self._bind(flow, owner_node(ctx))
        self._by_context[ctx] = state
        self._contexts.setdefault(flow, []).append(ctx)
        return state

    def peek(self, flow: Runtime) -> S | None:
        """Return the state kept for ``flow``, if any (for tests and introspection)."""
        return self._states.get(flow)

    def _bind(self, flow: Runtime | None, node: Node) -> S:
        if flow is None:
            state = self._detached.get(node)
            if state is None:
                state = self._detached[node] = self._make(None, node)
            return state
        state = self._make(flow, node)  # may raise: nothing is kept then
        self._states[flow] = state
        self._unhooks[flow] = flow.on_stop(lambda: self._release(flow))
        return state

    def _release(self, flow: Runtime) -> None:
        for ctx in self._contexts.pop(flow, ()):
            self._by_context.pop(ctx, None)
        state = self._states.pop(flow, None)
        unhook = self._unhooks.pop(flow, None)
        if unhook is not None:
            unhook()
        if state is not None:
            state.close()


class Successors:
    """A router's successors in one flow, resolved once: name -> node.

    Args:
        flow: The flow.
        node: The router node.
        kind: ``"predicate_router"`` or ``"union_router"``, for error messages.
    """

    __slots__ = ("by_name", "kind", "members", "router")

    def __init__(self, flow: Runtime | None, node: Node, kind: str) -> None:
        if flow is None:
            raise FlowNotRunningError(
                f"Context is not attached to a running flow ({kind} '{node.name}' needs "
                "its successors)"
            )
        by_name: dict[str, Node] = {}
        for target in flow.successors(node):
            if isinstance(target, Node):
                by_name.setdefault(target.name, target)  # first match wins
        self.by_name = by_name
        self.members = frozenset(by_name.values())
        self.router = node.name
        self.kind = kind

    def close(self) -> None:
        """Nothing to release: the table holds only nodes."""

    def describe(self) -> str:
        """Return the successor names for error messages."""
        if not self.by_name:
            return "it has no successors"
        return "successors: " + ", ".join(repr(n) for n in self.by_name)

    def unknown(self, name: object) -> RoutingError:
        """Build the error for a name that matches no successor."""
        return RoutingError(
            f"No successor named '{name}' for {self.kind} '{self.router}' ({self.describe()})"
        )

    def resolve(self, target: Any) -> Node:
        """Return the successor for a name or a node.

        Raises:
            RoutingError: No successor has that name, or the node is not a successor.
            TypeError: ``target`` is neither a ``str`` nor a ``Node``.
        """
        if isinstance(target, str):
            node = self.by_name.get(target)
            if node is None:
                raise self.unknown(target)
            return node
        if isinstance(target, Node):
            if target not in self.members:
                raise RoutingError(
                    f"Unknown target {target.name} for {self.router}: not a successor of "
                    f"{self.kind} '{self.router}' ({self.describe()})"
                )
            return target
        raise TypeError(
            f"Targets must be Node or str ({self.kind} '{self.router}' got "
            f"{type(target).__name__}: {target!r})"
        )


def attach_check(func: Callable[..., Any], check: Callable[[Runtime, Node], None]) -> None:
    """Expose ``check`` as ``func.__penguiflow_check__`` (see ``CHECK_HOOK``)."""
    func.__dict__[CHECK_HOOK] = check
