"""The Redis names one flow uses, all under its key prefix.

``{prefix}:requests`` is the request stream (consumer group ``workers``): the entry of
the flow, where clients write. ``{prefix}:node:{name}`` is the stream of one node served
by ``--nodes`` workers (same group name), where items cross from the process that ran the
node before it. ``{prefix}:dead`` is the bounded dead-letter stream.
``{prefix}:client:{id}`` is one client's reply stream. ``{prefix}:running:{trace}``,
``{prefix}:live:{trace}``, ``{prefix}:cancelled:{trace}`` (every send of the request is
cancelled) and ``{prefix}:cancelled-runs:{trace}`` (the tags of the sends that are; a
client tags each send) are per-request keys with a bounded lifetime, deleted when the
request ends. ``{prefix}:cancel`` is the pub/sub channel that carries cancels.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_PREFIX", "GROUP", "Keys"]

DEFAULT_PREFIX: Final = "penguiflow"
"""The key prefix used when none is given; give each flow sharing a Redis its own."""
GROUP: Final = "workers"
"""The consumer group of the request stream."""


class Keys:
    """The key names of one prefix."""

    __slots__ = ("cancel_channel", "dead", "prefix", "requests")

    def __init__(self, prefix: str) -> None:
        if not prefix or not isinstance(prefix, str):
            raise ValueError(f"the key prefix must be a non-empty str, got {prefix!r}")
        self.prefix: str = prefix
        self.requests: str = f"{prefix}:requests"
        self.cancel_channel: str = f"{prefix}:cancel"
        self.dead: str = f"{prefix}:dead"

    def node(self, name: str) -> str:
        """The stream of items waiting for node ``name`` (served by ``--nodes`` workers)."""
        return f"{self.prefix}:node:{name}"

    def live(self, trace_id: str) -> str:
        """How many stream entries of the request are not yet done (across all streams)."""
        return f"{self.prefix}:live:{trace_id}"

    def client(self, client_id: str) -> str:
        """One client's reply stream."""
        return f"{self.prefix}:client:{client_id}"

    def running(self, trace_id: str) -> str:
        """Set while a worker runs the request (its value is the worker's name)."""
        return f"{self.prefix}:running:{trace_id}"

    def cancelled(self, trace_id: str) -> str:
        """Set by a cancel, so a worker that picks the request up later skips it."""
        return f"{self.prefix}:cancelled:{trace_id}"

    def cancelled_runs(self, trace_id: str) -> str:
        """The tags of the sends of a request that were cancelled (not later sends of it)."""
        return f"{self.prefix}:cancelled-runs:{trace_id}"
