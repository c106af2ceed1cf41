"""PenguiFlow patterns: routers, joins and bounded fan-out, as ordinary nodes.

- :func:`map_concurrent`: run an async worker over in-memory items with bounded
  concurrency; results in input order; structured (no task outlives the call).
- :func:`predicate_router`: route each item to the successors a predicate picks.
- :func:`union_router`: validate against a union and route by variant.
- :func:`join_k`: collect ``k`` items per trace into one batch; buckets never outlive
  their trace (cancel, stop, deadline, optional timeout).

The factories return plain ``Node`` objects (``NodePolicy(validate="none")``,
``allow_cycle=False``): wire them with ``create`` like any node. They keep per-flow state
keyed by the flow, so one node may serve several flows.
"""

from __future__ import annotations

from ._join import join_k as join_k
from ._map import map_concurrent as map_concurrent
from ._routers import predicate_router as predicate_router, union_router as union_router
from ._version import __version__ as __version__

__all__ = ["map_concurrent", "join_k", "predicate_router", "union_router"]

for _obj in (join_k, map_concurrent, predicate_router, union_router):
    _obj.__module__ = __name__
del _obj
