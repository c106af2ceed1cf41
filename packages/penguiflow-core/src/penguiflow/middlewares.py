"""Middlewares: async observers of every ``FlowEvent``.

A middleware is any async callable taking one positional ``FlowEvent``. It is awaited
inline, in registration order, so a slow middleware slows the node it reports on. An
``Exception`` it raises is logged as ``middleware_error`` and never affects the flow.
"""

from __future__ import annotations

from typing import Protocol

from .metrics import FlowEvent

__all__ = ["FlowEvent", "Middleware"]


class Middleware(Protocol):
    """The middleware protocol: ``async def __call__(self, event: FlowEvent) -> None``."""

    async def __call__(self, event: FlowEvent) -> None: ...
