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

from ._api import flow_to_dot as flow_to_dot, flow_to_mermaid as flow_to_mermaid
from ._version import __version__ as __version__

__all__ = ["flow_to_mermaid", "flow_to_dot"]

for _obj in (flow_to_mermaid, flow_to_dot):
    _obj.__module__ = __name__
del _obj
