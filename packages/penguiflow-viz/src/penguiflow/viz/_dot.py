"""Graphviz DOT output, with names escaped so that any node name renders."""

from __future__ import annotations

from typing import Final

from ._escape import dot_id, dot_text
from ._model import BACKLOG, CONTROLLER_LOOP, PLAYBOOK, Graph, VisualEdge, VisualNode

__all__ = ["RANKDIRS", "render_dot"]

RANKDIRS: Final = ("TB", "LR", "BT", "RL")

ENDPOINT_ATTRS: Final = ', shape=oval, style="filled", fillcolor="#e0f2fe"'
CONTROLLER_ATTRS: Final = ', style="rounded,filled", fillcolor="#fef3c7"'
PLAYBOOK_ATTRS: Final = ", peripheries=2"
BACKLOG_ATTRS: Final = ', color="#b91c1c", penwidth=2'
INDENT: Final = "    "


def _node_line(node: VisualNode) -> str:
    parts = [dot_text(node.label)]
    if node.playbook is not None:
        parts.append(dot_text(f"playbook: {node.playbook}" if node.playbook else "playbook"))
    if node.load is not None:
        parts.append(node.load.text())
    attrs = ""
    if node.is_endpoint:
        attrs += ENDPOINT_ATTRS
    elif CONTROLLER_LOOP in node.classes:
        attrs += CONTROLLER_ATTRS
    if PLAYBOOK in node.classes:
        attrs += PLAYBOOK_ATTRS
    if BACKLOG in node.classes:
        attrs += BACKLOG_ATTRS
    label = "\\n".join(parts)  # a DOT line break inside the quoted label
    return f'{INDENT}{dot_id(node.ident)} [label="{label}"{attrs}]'


def _edge_line(edge: VisualEdge) -> str:
    line = f"{INDENT}{dot_id(edge.source)} -> {dot_id(edge.target)}"
    text = edge.text()
    if text is None:
        return line
    attrs = BACKLOG_ATTRS if edge.backlog else ""
    return f'{line} [label="{dot_text(text)}"{attrs}]'


def render_dot(graph: Graph, rankdir: str) -> str:
    """Render the graph model as a DOT digraph.

    Args:
        graph: The model from ``build_graph``.
        rankdir: A validated Graphviz rank direction.

    Returns:
        Lines joined by ``"\\n"`` with no trailing newline.
    """
    lines = [
        "digraph PenguiFlow {",
        f"{INDENT}rankdir={rankdir}",
        f"{INDENT}node [shape=box, style=rounded]",
    ]
    lines.extend(_node_line(node) for node in graph.nodes)
    lines.extend(_edge_line(edge) for edge in graph.edges)
    lines.append("}")
    return "\n".join(lines)
