"""The messages that travel through a flow.

All models are plain pydantic v2 models with the default configuration (mutable, extra
keys ignored). ``Message`` is the envelope: a payload plus the routing facts that must
survive every hop (``trace_id``, ``headers``, ``deadline_s``, ``meta``).

``Message`` reads through to its payload: ``msg.prompt`` returns ``msg.payload.prompt``
when ``Message`` itself has no public attribute of that name, so code written for a bare
payload keeps working on its envelope. Setting
an attribute is never forwarded.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field

from ._copy import copy_with
from .clock import wall_time

if TYPE_CHECKING:
    from ._planning import PlanStep, Thought

__all__ = ["FinalAnswer", "Headers", "Message", "PlanStep", "StreamChunk", "Thought", "WM"]

# A private generator: it never disturbs (or is disturbed by) users of the global
# ``random`` module, such as seeded simulations or hypothesis. Reseeded in forked children.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)
_getrandbits = _rng.getrandbits
# uuid4 layout: version nibble 4 at bits 76..79, variant bits 10 at bits 62..63.
_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


def new_trace_id() -> str:
    """Return a fresh random uuid4 as 32 lowercase hex characters.

    Drawn from a private PRNG seeded from the OS (and reseeded in every forked child)
    rather than a syscall per id: ids identify requests, they are not secrets, and one is
    made for every ``Message``.
    """
    return "%032x" % ((_getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET)


# Schemas are built on first use, not at import: ``import penguiflow`` then costs little
# more than importing pydantic itself (building them also loads pydantic's plugins).
_DEFERRED: Final = ConfigDict(defer_build=True)


class Headers(BaseModel):
    """Routing facts of a request."""

    model_config = _DEFERRED

    tenant: str
    """The tenant the request belongs to."""
    topic: str | None = None
    """An optional routing topic."""
    priority: int = 0
    """Higher means more urgent; the runtime does not reorder by it."""

    def __repr__(self) -> str:
        # Same text as pydantic's generic repr, several times faster (logs, checks).
        if type(self) is not Headers:
            return super().__repr__()
        d = self.__dict__
        return f"Headers(tenant={d['tenant']!r}, topic={d['topic']!r}, priority={d['priority']!r})"


class Message(BaseModel):
    """The envelope every hop can carry: payload plus trace, headers, deadline and meta."""

    model_config = _DEFERRED

    payload: Any
    """The business object."""
    headers: Headers
    """Routing headers; a dict is coerced."""
    trace_id: str = Field(default_factory=new_trace_id)
    """Identifies the request across every hop; a fresh uuid4 hex by default."""
    ts: float = Field(default_factory=wall_time)
    """Wall-clock creation time (epoch seconds)."""
    deadline_s: float | None = None
    """Absolute wall-clock instant (epoch seconds) after which the trace is abandoned."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Free-form metadata; the runtime forwards it untouched and never replaces it."""

    def with_payload(self, payload: Any) -> Self:
        """Return a copy carrying ``payload``: same trace id, headers, deadline and meta.

        The same result as ``model_copy(update={"payload": payload})`` (a shallow copy;
        ``meta`` is shared, as there), several times faster: use it in nodes that answer
        with a new payload in the incoming envelope.
        """
        return copy_with(self, "payload", payload)

    def __repr__(self) -> str:
        # Same text as pydantic's generic repr, several times faster (logs, checks).
        if type(self) is not Message:
            return super().__repr__()
        d = self.__dict__
        return (
            f"Message(payload={d['payload']!r}, headers={d['headers']!r}, "
            f"trace_id={d['trace_id']!r}, ts={d['ts']!r}, deadline_s={d['deadline_s']!r}, "
            f"meta={d['meta']!r})"
        )

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            if name.startswith("_"):
                return super().__getattr__(name)
            try:
                payload = self.__dict__["payload"]
            except KeyError:
                raise AttributeError(name) from None
            try:
                return getattr(payload, name)
            except AttributeError:
                raise AttributeError(
                    f"'{type(self).__name__}' object has no attribute {name!r}, "
                    f"and neither has its payload ({type(payload).__name__})"
                ) from None


class StreamChunk(BaseModel):
    """One piece of a streamed response (for example an LLM token)."""

    model_config = _DEFERRED

    stream_id: str
    """The stream this chunk belongs to (defaults to the parent trace id)."""
    seq: int
    """Position in the stream, starting at 0."""
    text: str
    """The chunk's text."""
    done: bool = False
    """True on the last chunk of the stream."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Free-form metadata."""
    node: str | None = None
    """The node that emitted the chunk (``None`` for chunks emitted from outside a flow)."""


class WM(BaseModel):
    """Working memory of a controller loop; the runtime counts hops and enforces budgets."""

    model_config = _DEFERRED

    query: str
    """The question being worked on."""
    facts: list[Any] = Field(default_factory=list)
    """What has been learned so far."""
    hops: int = 0
    """Hops taken; advanced by the runtime when the controller does not advance it."""
    budget_hops: int | None = 8
    """Stop with "Hop budget exhausted" at this many hops; ``None`` = unbounded."""
    tokens_used: int = 0
    """Tokens spent, maintained by the controller."""
    budget_tokens: int | None = None
    """Stop with "Token budget exhausted" once ``tokens_used`` reaches it; ``None`` = off."""
    confidence: float = 0.0
    """The controller's confidence."""


class FinalAnswer(BaseModel):
    """The end of a trace: delivered straight to Rookery."""

    model_config = _DEFERRED

    text: str
    """The answer."""
    citations: list[str] = Field(default_factory=list)
    """Sources."""


if not TYPE_CHECKING:
    # ``PlanStep`` and ``Thought`` are plain data the runtime never uses: their classes
    # are built on first use, which keeps them out of ``import penguiflow``.
    def __getattr__(name: str) -> Any:
        if name in ("PlanStep", "Thought"):
            from ._planning import PlanStep, Thought

            globals().update(PlanStep=PlanStep, Thought=Thought)
            return globals()[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
