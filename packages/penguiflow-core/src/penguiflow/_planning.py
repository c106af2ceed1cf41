"""``PlanStep`` and ``Thought``: what a controller plans with (plain data).

Exported by :mod:`penguiflow.types` and :mod:`penguiflow`, which load this module on first
use: the runtime itself never needs them.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PlanStep", "Thought"]

# Schemas build on first use, as for the other core types.
_DEFERRED: Final = ConfigDict(defer_build=True)


class PlanStep(BaseModel):
    """One step a controller plans to take (plain data)."""

    model_config = _DEFERRED

    kind: Literal["retrieve", "web", "sql", "summarize", "route", "stop"]
    """What kind of step."""
    args: dict[str, Any] = Field(default_factory=dict)
    """Arguments of the step."""
    max_concurrency: int = 1
    """How many of these may run at once."""


class Thought(BaseModel):
    """A controller's intermediate reasoning (plain data)."""

    model_config = _DEFERRED

    steps: list[PlanStep]
    """Planned steps."""
    rationale: str
    """Why."""
    done: bool = False
    """True when the controller is ready to answer."""
