"""Scale a PenguiFlow flow out to worker processes, with requests carried by Redis Streams.

- :func:`connect`: ``async with connect(flow, url, registry=registry) as client:`` gives
  ``client.invoke``, ``client.request`` and ``client.cancel``, with the semantics and the
  exceptions of the flow's own request API.
- :func:`serve`: run a worker in the current event loop; ``python -m penguiflow.redis
  worker MODULE:ATTR --url ...`` runs one as a process.

By default every request runs whole in one worker process; workers started with
``--nodes`` (``serve(..., nodes=...)``) run only some nodes, and items cross to the others
through one Redis stream per node. Delivery is at-least-once: work whose worker dies is run
again by another worker, and the client still delivers exactly one outcome. Work that
brings down every worker that runs it is dead-lettered after ``max_deliveries``.
"""

from __future__ import annotations

from ._client import Client as Client, RemoteRequest as RemoteRequest, connect as connect
from ._codec import RemoteError as RemoteError
from ._keys import DEFAULT_PREFIX as DEFAULT_PREFIX
from ._serve import serve as serve
from ._version import __version__ as __version__

__all__ = ["DEFAULT_PREFIX", "Client", "RemoteError", "RemoteRequest", "connect", "serve"]

for _obj in (Client, RemoteError, RemoteRequest, connect, serve):
    _obj.__module__ = __name__
del _obj
