"""Mermaid flowchart output, with names escaped so that any node name renders."""

from __future__ import annotations

from typing import Final

from ._escape import MERMAID_BREAK, mermaid_text, protect_mermaid_line
from ._model import BACKLOG, CONTROLLER_LOOP, ENDPOINT, PLAYBOOK, Graph, VisualNode

__all__ = ["DIRECTIONS", "render_mermaid"]

DIRECTIONS: Final = ("TB", "TD", "BT", "RL", "LR")

CLASS_STYLES: Final = {
    BACKLOG: "stroke:#b91c1c,stroke-width:3px",
    CONTROLLER_LOOP: "fill:#fef3c7,stroke:#b45309,stroke-width:1px",
    ENDPOINT: "fill:#e0f2fe,stroke:#0369a1,stroke-width:1px",
    PLAYBOOK: "fill:#ede9fe,stroke:#6d28d9,stroke-width:1px",
}
BACKLOG_LINK_STYLE: Final = "stroke:#b91c1c,stroke-width:2px"
INDENT: Final = "    "


def _node_line(node: VisualNode) -> str:
    parts = [mermaid_text(node.label)]
    if node.playbook is not None:
        parts.append(mermaid_text(f"playbook: {node.playbook}" if node.playbook else "playbook"))
    if node.load is not None:
        parts.append(node.load.text())
    label = MERMAID_BREAK.join(parts)
    # A playbook node uses Mermaid's "subroutine" shape: a call into another flow.
    shape = '[["{}"]]' if node.playbook is not None else '["{}"]'
    return protect_mermaid_line(f"{INDENT}{node.ident}{shape.format(label)}")


def render_mermaid(graph: Graph, direction: str) -> str:
    """Render the graph model as Mermaid flowchart text.

    Args:
        graph: The model from ``build_graph``.
        direction: A validated Mermaid direction.

    Returns:
        Lines joined by ``"\\n"`` with no trailing newline.
    """
    lines = [f"graph {direction}"]
    lines.extend(_node_line(node) for node in graph.nodes)
    lines.extend(f"{INDENT}classDef {cls} {CLASS_STYLES[cls]}" for cls in graph.classes)
    # Mermaid's ``class`` statement takes exactly one class name, so a node with several
    # classes gets one line per class.
    lines.extend(
        f"{INDENT}class {node.ident} {cls}" for node in graph.nodes for cls in node.classes
    )
    for edge in graph.edges:
        text = edge.text()
        arrow = "-->" if text is None else f"-->|{text}|"
        lines.append(f"{INDENT}{edge.source} {arrow} {edge.target}")
    backed_up = [str(i) for i, edge in enumerate(graph.edges) if edge.backlog]
    if backed_up:
        lines.append(f"{INDENT}linkStyle {','.join(backed_up)} {BACKLOG_LINK_STYLE}")
    return "\n".join(lines)
