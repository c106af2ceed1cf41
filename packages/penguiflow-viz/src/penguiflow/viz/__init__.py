"""PenguiFlow visualizer: a flow's topology as Mermaid or Graphviz DOT text.

- :func:`flow_to_mermaid`: a Mermaid ``graph`` for Markdown and docs tools.
- :func:`flow_to_dot`: a Graphviz ``digraph``, e.g. for ``dot -Tsvg``.

Both are pure and need no ``run()``. They draw every node, every edge (Floe), the
synthetic OpenSea (ingress) and Rookery (egress) boundaries, and mark controller loops.
The output is deterministic (same flow, same text), so diagrams can be diffed in docs.
Names are escaped so that real renderers accept any node name; see the package README
for the exact rules.

Two opt-in extras:

- ``snapshot=flow.inspect()`` overlays live queue depths and in-flight counts, and
  highlights nodes and edges where items are waiting.
- ``playbooks={node_or_name: "label"}`` marks nodes that call a subflow.
"""

from __future__ import annotations

from collections.abc import Mapping

from penguiflow.core import PenguiFlow
from penguiflow.inspect import FlowSnapshot
from penguiflow.node import Node

from ._dot import RANKDIRS, render_dot
from ._mermaid import DIRECTIONS, render_mermaid
from ._model import build_graph
from ._version import __version__ as __version__

__all__ = ["flow_to_mermaid", "flow_to_dot"]


def flow_to_mermaid(
    flow: PenguiFlow,
    *,
    direction: str = "TD",
    snapshot: FlowSnapshot | None = None,
    playbooks: Mapping[Node | str, str] | None = None,
) -> str:
    """Render a flow as a Mermaid flowchart.

    Example::

        print(flow_to_mermaid(flow, direction="LR"))

    Args:
        flow: The flow to draw; it need not be running.
        direction: Mermaid direction: ``"TD"`` (default), ``"TB"``, ``"BT"``, ``"LR"``
            or ``"RL"``.
        snapshot: A ``flow.inspect()`` result. When given, each node's label gains a
            line ``queued Q, running R/M`` (Rookery: ``queued Q``), nodes with queued
            items get the ``backlog`` class, and edges holding items show
            ``depth/maxsize queued`` and are drawn red. Omitted: no overlay.
        playbooks: ``{node or node name: label}`` for nodes that run a subflow (for
            example through ``call_playbook``). Such a node is drawn with Mermaid's
            subroutine shape, gets the ``playbook`` class and a ``playbook: <label>``
            line. A name key annotates every node with that name.

    Returns:
        The diagram: lines joined by ``"\\n"``, no trailing newline.

    Raises:
        TypeError: ``flow`` is not a ``PenguiFlow``, or a playbook key is neither a
            ``Node`` nor a ``str``, or a playbook label is not a ``str``.
        ValueError: unknown ``direction``; the snapshot is of another flow; a playbook
            key names no node of the flow, or one node gets two different labels.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}; got {direction!r}")
    graph = build_graph(flow, snapshot=snapshot, playbooks=playbooks)
    return render_mermaid(graph, direction)


def flow_to_dot(
    flow: PenguiFlow,
    *,
    rankdir: str = "TB",
    snapshot: FlowSnapshot | None = None,
    playbooks: Mapping[Node | str, str] | None = None,
) -> str:
    """Render a flow as a Graphviz DOT digraph.

    Example::

        Path("flow.dot").write_text(flow_to_dot(flow, rankdir="LR"), encoding="utf-8")
        # then: dot -Tsvg flow.dot -o flow.svg

    Args:
        flow: The flow to draw; it need not be running.
        rankdir: Graphviz rank direction: ``"TB"`` (default), ``"LR"``, ``"BT"`` or
            ``"RL"``.
        snapshot: A ``flow.inspect()`` result. When given, each node's label gains a
            line ``queued Q, running R/M`` (Rookery: ``queued Q``), and nodes and edges
            where items wait get a red outline; such edges are labelled
            ``depth/maxsize queued``. Omitted: no overlay.
        playbooks: ``{node or node name: label}`` for nodes that run a subflow. Such a
            node gets a double border (``peripheries=2``) and a ``playbook: <label>``
            line. A name key annotates every node with that name.

    Returns:
        The digraph: lines joined by ``"\\n"``, no trailing newline. The text is UTF-8
        friendly (Graphviz's default charset).

    Raises:
        TypeError: ``flow`` is not a ``PenguiFlow``, or a playbook key is neither a
            ``Node`` nor a ``str``, or a playbook label is not a ``str``.
        ValueError: unknown ``rankdir``; the snapshot is of another flow; a playbook
            key names no node of the flow, or one node gets two different labels.
    """
    if rankdir not in RANKDIRS:
        raise ValueError(f"rankdir must be one of {', '.join(RANKDIRS)}; got {rankdir!r}")
    graph = build_graph(flow, snapshot=snapshot, playbooks=playbooks)
    return render_dot(graph, rankdir)


for _obj in (flow_to_mermaid, flow_to_dot):
    _obj.__module__ = __name__
del _obj
