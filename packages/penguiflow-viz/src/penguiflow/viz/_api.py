"""The two public renderers; re-exported by ``penguiflow.viz``."""

from __future__ import annotations

from typing import Literal, TypeAlias

from penguiflow.core import PenguiFlow
from penguiflow.inspect import FlowSnapshot

from ._dot import RANKDIRS, render_dot
from ._mermaid import DIRECTIONS, render_mermaid
from ._model import Playbooks, build_graph

__all__ = ["Direction", "RankDir", "flow_to_dot", "flow_to_mermaid"]

Direction: TypeAlias = Literal["TD", "TB", "BT", "LR", "RL"]
"""A Mermaid flowchart direction."""
RankDir: TypeAlias = Literal["TB", "LR", "BT", "RL"]
"""A Graphviz rank direction."""


def flow_to_mermaid(
    flow: PenguiFlow,
    *,
    direction: Direction = "TD",
    snapshot: FlowSnapshot | None = None,
    playbooks: Playbooks | None = None,
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
            line. A name key annotates the node of that name.

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
    rankdir: RankDir = "TB",
    snapshot: FlowSnapshot | None = None,
    playbooks: Playbooks | None = None,
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
            line. A name key annotates the node of that name.

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
