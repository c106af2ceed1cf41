"""Playbooks: a fresh subflow run for one message, as one awaitable call.

The subflow sees the very same message (trace id, headers, meta, deadline), and is
always stopped, even when the call is cancelled, before ``run_playbook`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeAlias

from ._trace import trace_id_of
from ._validation import AdapterSource
from .clock import wall_time
from .errors import TraceCancelled
from .types import Message

__all__ = ["Subflow", "SubflowFactory", "run_playbook"]


class Subflow(Protocol):
    """What a playbook factory returns: a flow that can run one message (a PenguiFlow)."""

    @property
    def is_running(self) -> bool: ...

    def run(self, *, registry: AdapterSource | None = None) -> None: ...

    async def emit(self, msg: Any) -> None: ...

    async def fetch(self) -> Any: ...

    async def invoke(self, message: Any) -> object: ...

    async def cancel(self, trace_id: str) -> bool: ...

    async def stop(self) -> None: ...


SubflowFactory: TypeAlias = Callable[[], "tuple[Subflow, AdapterSource | None]"]
"""A zero-argument callable returning ``(flow, registry)``; called once per playbook call.

The public alias is ``penguiflow.core.PlaybookFactory``, whose flow is a ``PenguiFlow``."""

WatchCancel = Callable[[Callable[[str], None]], Callable[[], None]]


async def run_playbook(
    playbook: SubflowFactory,
    parent_msg: Any,
    timeout: float | None,
    *,
    on_cancel: WatchCancel | None = None,
) -> Any:
    """Run a fresh subflow for ``parent_msg`` and return its first Rookery payload.

    The playbook inherits the time left before the message's ``deadline_s``, and its
    outcome is the subflow's: a node of it that gives up raises its ``FlowError`` here.
    ``on_cancel`` is the parent flow's ``on_trace_cancel``: a cancel of the trace there
    is mirrored into the subflow.

    Raises:
        FlowError: The subflow failed, or ended without a result.
        TraceCancelled: The trace was cancelled.
        TimeoutError: No result within ``timeout`` seconds (or before the deadline).
    """
    trace_id = trace_id_of(parent_msg)
    if isinstance(parent_msg, Message) and parent_msg.deadline_s is not None:
        left = parent_msg.deadline_s - wall_time()
        timeout = left if timeout is None else min(timeout, left)
    flow, registry = playbook()
    flow.run(registry=registry)
    remove_watch: Callable[[], None] | None = None
    mirror: list[asyncio.Task[bool]] = []
    if on_cancel is not None and trace_id is not None:
        loop = asyncio.get_running_loop()

        def mirror_cancel(cancelled: str) -> None:
            if cancelled == trace_id and flow.is_running:
                mirror.append(loop.create_task(flow.cancel(trace_id)))

        remove_watch = on_cancel(mirror_cancel)
    try:
        # ``invoke`` for a tracked message (its outcome, errors included), else the
        # subflow's first output; awaited directly, with no frame of our own in between.
        if trace_id is not None:
            outcome: Awaitable[Any] = flow.invoke(parent_msg)
        else:
            outcome = _first_output(flow, parent_msg)
        if timeout is None:
            item = await outcome
        else:
            async with asyncio.timeout(timeout):
                item = await outcome
        return item.payload if isinstance(item, Message) else item
    except (TraceCancelled, asyncio.CancelledError):
        if trace_id is not None and flow.is_running:
            with contextlib.suppress(Exception):
                await asyncio.shield(flow.cancel(trace_id))
        raise
    finally:
        if remove_watch is not None:
            remove_watch()
        try:
            if mirror:
                await asyncio.gather(*mirror, return_exceptions=True)
        finally:
            await flow.stop()  # waits for every subflow worker, even when cancelled


async def _first_output(flow: Subflow, parent_msg: Any) -> Any:
    await flow.emit(parent_msg)
    return await flow.fetch()
