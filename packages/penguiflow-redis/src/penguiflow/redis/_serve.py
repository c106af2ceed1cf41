"""``serve``: run a worker in the current event loop; ``load_target`` for the command line."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from penguiflow.core import PenguiFlow
from penguiflow.registry import ModelRegistry

from ._keys import DEFAULT_PREFIX
from ._worker import WorkerSettings, run_worker

__all__ = ["load_target", "serve"]


async def serve(
    flow: PenguiFlow,
    url: str,
    *,
    registry: ModelRegistry | None = None,
    prefix: str = DEFAULT_PREFIX,
    concurrency: int = 32,
    claim_idle_s: float = 15.0,
    grace_s: float = 30.0,
    name: str | None = None,
    stop: asyncio.Event | None = None,
    nodes: Sequence[str] | None = None,
    max_deliveries: int = 5,
    stream_maxlen: int = 1000,
) -> None:
    """Serve ``flow``'s requests from the Redis at ``url`` until ``stop`` is set.

    ``python -m penguiflow.redis worker`` calls this. The flow must not be running: the
    worker runs it (``flow.run(registry=registry)``) and stops it on the way out. With
    ``nodes``, the worker runs only those nodes (in a flow of their own it builds from
    ``flow``'s topology), takes their items from their Redis streams and sends what they
    emit to other nodes on to those nodes' streams.

    Args:
        flow: The flow to run; without ``nodes`` every request runs whole in this
            process.
        url: ``redis://host:port/db``.
        registry: The models of the flow's nodes, as for ``flow.run``.
        prefix: The flow's key prefix (the same as its clients').
        concurrency: Requests this worker runs at once.
        claim_idle_s: A request whose worker has not touched it for this long is taken
            over by another worker (its worker is presumed dead). Live workers touch
            their requests every ``claim_idle_s / 3``.
        grace_s: On stop, how long in-flight requests may take to finish before they are
            cancelled and handed back to the stream for another worker.
        name: This worker's consumer name (unique per live worker); a random one by
            default.
        stop: Set it to stop the worker; without it, the worker runs until cancelled
            (and then hands back at once whatever it holds).
        nodes: The names of the nodes this worker serves (all of them by default). A
            node on a loop is served with the whole loop, and a node with several
            incoming edges (a join) with every node that leads to it.
        max_deliveries: An entry delivered this many times, whose worker stopped each
            time before finishing it, goes to the dead-letter stream ``{prefix}:dead``
            and its request fails with ``FlowError`` code ``DELIVERY_LIMIT``.
        stream_maxlen: With ``nodes``: a node's stream holds at most this many entries;
            a node sending to a full stream waits for room.

    Raises:
        FlowTypeError: A model of the flow cannot cross processes as JSON.
        FlowBuildError: ``nodes`` names a node the flow does not have, or splits a
            loop or a join across processes (the message names the node and the fix).
    """
    settings = WorkerSettings(
        name=name,
        concurrency=concurrency,
        claim_idle_s=claim_idle_s,
        grace_s=grace_s,
        max_deliveries=max_deliveries,
        nodes=None if nodes is None else tuple(nodes),
        stream_maxlen=stream_maxlen,
    )
    await run_worker(
        flow,
        url,
        registry=registry,
        prefix=prefix,
        settings=settings,
        stop=stop if stop is not None else asyncio.Event(),
    )


def load_target(spec: str) -> tuple[PenguiFlow, ModelRegistry | None]:
    """Import ``MODULE:ATTR`` and return ``(flow, registry)``.

    ``ATTR`` (dotted names allowed) is a ``PenguiFlow``, or a zero-argument callable that
    returns one or a ``(flow, registry)`` pair. The current directory is importable, as
    with ``python -m``.

    Raises:
        ValueError: ``spec`` is not ``MODULE:ATTR``, cannot be imported, or names
            something else.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:ATTR (for example app.flows:build), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} (from {spec}): {exc}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"{spec}: {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(target, PenguiFlow) and callable(target):
        target = target()
    if isinstance(target, PenguiFlow):
        return target, None
    if (
        isinstance(target, tuple)
        and len(target) == 2
        and isinstance(target[0], PenguiFlow)
        and (target[1] is None or isinstance(target[1], ModelRegistry))
    ):
        return target[0], target[1]
    raise ValueError(
        f"{spec} must be a PenguiFlow, or a zero-argument callable returning a PenguiFlow "
        f"or a (flow, registry) pair; got {type(target).__name__}"
    )
