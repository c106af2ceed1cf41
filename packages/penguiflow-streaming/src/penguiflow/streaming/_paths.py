"""Static checks done before a stream starts: is the flow running, can output arrive?"""

from __future__ import annotations

from collections.abc import Sequence

from penguiflow.core import OPEN_SEA, ROOKERY, PenguiFlow
from penguiflow.errors import FlowNotRunningError
from penguiflow.node import Node
from penguiflow.types import Message

from ._errors import StreamingArgumentError, StreamingPathError

__all__ = ["check_running", "check_streaming_path", "require_message"]


def require_message(message: object, func: str) -> Message:
    """Return ``message`` if it is a ``Message``; a bare payload has no trace to follow."""
    if not isinstance(message, Message):
        raise StreamingArgumentError(
            f"{func}() needs a penguiflow.types.Message (its trace_id identifies the "
            f"stream), got {type(message).__name__}; wrap the payload: "
            "Message(payload=..., headers=Headers(tenant=...))"
        )
    return message


def check_running(flow: PenguiFlow, func: str) -> None:
    """Raise ``FlowNotRunningError`` unless ``flow`` is running (a stream would hang)."""
    if not flow.is_running:
        raise FlowNotRunningError(
            f"{func}(): the flow is not running; call flow.run() first "
            "(and do not stop it while streaming)"
        )


def check_streaming_path(flow: PenguiFlow, to: Node | Sequence[Node] | None, func: str) -> None:
    """Raise ``StreamingPathError`` unless Rookery is reachable from the entry nodes.

    The entry nodes are ``to`` when given (each must be an ingress node, as for
    ``flow.emit``), else every ingress node. Reachability follows the flow's edges.

    Raises:
        StreamingPathError: No ingress node, or no path from the entry nodes to Rookery.
        KeyError: A node of ``to`` is not an ingress node.
    """
    ingress = [f.target for f in flow.floes if f.source == OPEN_SEA]
    if not ingress:
        raise StreamingPathError(
            f"{func}(): the flow has no ingress node (every node has a predecessor), "
            "so nothing can be emitted into it"
        )
    if to is None:
        starts: list[Node] = [n for n in ingress if isinstance(n, Node)]
    else:
        starts = [to] if isinstance(to, Node) else list(to)
        for node in starts:
            if node not in ingress:
                raise KeyError(f"Unknown target {getattr(node, 'name', node)} for OpenSea")
    seen: set[Node] = set()
    stack = list(starts)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for succ in flow.successors(node):
            if succ == ROOKERY:
                return
            if isinstance(succ, Node):
                stack.append(succ)
    names = ", ".join(n.name for n in starts)
    raise StreamingPathError(
        f"{func}(): no path from {names} to Rookery; no egress node is reachable, so no "
        "chunk or result could ever reach a client"
    )
