"""``Node`` and ``NodePolicy``: an async function plus how the runtime treats it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import FunctionType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeAlias

if TYPE_CHECKING:
    # Type checkers read the PEP 696 defaults below; at run time they change nothing, so
    # core needs no dependency beyond pydantic.
    from typing_extensions import TypeVar
else:
    from typing import TypeVar as _TypeVar

    def TypeVar(name: str, *, default: object = None) -> object:
        return _TypeVar(name)


from ._validation import AdapterSource, Validator
from .errors import FlowBuildError, FlowTypeError
from .types import new_trace_id

__all__ = ["Node", "NodeFunc", "NodePolicy", "ValidateMode"]

# Defaults (PEP 696) keep a bare ``Node`` meaning ``Node[Any, Any]``: code that does not
# care about a node's types, such as the runtime, names it without parameters.
InT = TypeVar("InT", default=Any)
"""What a node function receives (its first parameter's annotation)."""
OutT = TypeVar("OutT", default=Any)
"""What a node function returns."""

# ``ctx`` is typed ``Any`` here so that this module need not import ``Context`` (which
# imports it): a function annotated ``ctx: Context`` is still a valid node function.
NodeFunc: TypeAlias = Callable[[InT, Any], Awaitable[OutT]]
"""``async def f(message: In, ctx: Context) -> Out``."""
ValidateMode: TypeAlias = Literal["both", "in", "out", "none"]
"""Which side of a node is validated against the registry."""
RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]
"""Which failures a node retries: exception types, or a predicate on the exception."""

_VALIDATE_MODES = ("both", "in", "out", "none")


@dataclass(frozen=True, slots=True)
class NodePolicy:
    """How the runtime runs a node. Normalised and checked once, at construction.

    Attributes:
        validate: ``"both"``, ``"in"``, ``"out"`` or ``"none"``: which side of the node is
            validated against the registry given to ``run()``.
        timeout_s: Limit of one attempt in seconds; ``None`` = no limit (and no timeout
            machinery on the hot path).
        max_retries: Extra attempts after the first.
        backoff_base: Delay before the first retry, in seconds.
        backoff_mult: Factor applied to the delay for each further retry.
        max_backoff: Cap on the delay; ``None`` = uncapped.
        max_concurrency: Invocations of this node that may run at once, across traces.
            Items of one trace are still handled one after another, in order.
        retry_on: Which failures are retried: a tuple of exception types, or a predicate
            on the exception. Any other failure is final at once. ``None`` (the default)
            retries every ``Exception``.
        jitter: The fraction of each backoff that is random, from 0 (the default: exact
            delays) to 1. A delay ``d`` becomes uniform in ``[d * (1 - jitter), d]``, so
            ``jitter=1`` is "full jitter" and ``jitter=0.5`` is "equal jitter". Drawn from
            the flow's own random source, never the global ``random`` module.
    """

    validate: ValidateMode = "both"
    timeout_s: float | None = None
    max_retries: int = 0
    backoff_base: float = 0.5
    backoff_mult: float = 2.0
    max_backoff: float | None = None
    max_concurrency: int = 1
    retry_on: RetryOn | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.validate not in _VALIDATE_MODES:
            raise FlowBuildError(
                f"validate must be one of 'both', 'in', 'out', 'none'; got {self.validate!r}"
            )
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise FlowBuildError(f"timeout_s must be positive or None, got {self.timeout_s!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise FlowBuildError(f"max_retries must be an int, got {self.max_retries!r}")
        if self.max_retries < 0:
            raise FlowBuildError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_base < 0 or self.backoff_mult < 0:
            raise FlowBuildError("backoff_base and backoff_mult must be >= 0")
        if self.max_backoff is not None and self.max_backoff < 0:
            raise FlowBuildError(f"max_backoff must be >= 0 or None, got {self.max_backoff!r}")
        if (
            isinstance(self.max_concurrency, bool)
            or not isinstance(self.max_concurrency, int)
            or self.max_concurrency < 1
        ):
            raise FlowBuildError(
                f"max_concurrency must be an int >= 1, got {self.max_concurrency!r}"
            )

        retry_on: object = self.retry_on
        if isinstance(retry_on, list):
            object.__setattr__(self, "retry_on", retry_on := tuple(retry_on))
        if isinstance(retry_on, tuple):
            bad = [
                t for t in retry_on if not (isinstance(t, type) and issubclass(t, BaseException))
            ]
            if bad:
                raise FlowTypeError(
                    f"retry_on must hold exception types, got {bad!r}; e.g. "
                    "NodePolicy(retry_on=(TimeoutError, ConnectionError))"
                )
        elif retry_on is not None and not callable(retry_on):
            raise FlowTypeError(
                f"retry_on must be a tuple of exception types or a predicate, got {retry_on!r}"
            )
        if isinstance(self.jitter, bool) or not 0.0 <= self.jitter <= 1.0:
            raise FlowBuildError(f"jitter must be a fraction between 0 and 1, got {self.jitter!r}")

    def retries(self, failure: BaseException) -> bool:
        """Whether ``failure`` may be retried under this policy."""
        retry_on = self.retry_on
        if retry_on is None:
            return isinstance(failure, Exception | asyncio.CancelledError)
        if isinstance(retry_on, tuple):
            return isinstance(failure, retry_on)
        return bool(retry_on(failure))

    def backoff(self, attempt: int) -> float:
        """Return the sleep before ``attempt`` (1-based retry number)."""
        delay = self.backoff_base * self.backoff_mult ** (attempt - 1)
        if self.max_backoff is not None and delay > self.max_backoff:
            return self.max_backoff
        return delay


_DEFAULT_POLICY = NodePolicy()
_VARARGS, _VARKEYWORDS = inspect.CO_VARARGS, inspect.CO_VARKEYWORDS


def _is_async(func: Any) -> bool:
    # A plain ``async def`` function is recognised from its code flags; everything else
    # (partials, marked callables, callable objects) goes through ``inspect``.
    if type(func) is FunctionType and func.__code__.co_flags & inspect.CO_COROUTINE:
        return True
    return inspect.iscoroutinefunction(func)


def _arity(func: Any) -> tuple[int, bool]:
    """Return (parameter count, whether the second parameter is positional).

    Plain functions are read from their code object (flows built per request, such as
    playbooks, create nodes on a hot path); anything else goes through ``inspect``.
    """
    code = getattr(func, "__code__", None)
    if type(func) is FunctionType and code is not None:
        positional = code.co_argcount
        flags = code.co_flags
        count = positional + code.co_kwonlyargcount
        count += bool(flags & _VARARGS) + bool(flags & _VARKEYWORDS)
        return count, positional >= 2
    params = list(inspect.signature(func).parameters.values())
    ctx_positional = len(params) >= 2 and params[1].kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    return len(params), ctx_positional


@dataclass(slots=True, eq=False)
class Node(Generic[InT, OutT]):
    """An async function ``(message, ctx)`` plus its name, policy and cycle permission.

    ``Node[In, Out]`` is inferred from the function's annotations:
    ``Node(f)`` with ``async def f(msg: In, ctx: Context) -> Out`` is a ``Node[In, Out]``.

    Args:
        func: ``async def f(message, ctx)``; both parameters positional.
        name: Defaults to ``func.__name__``.
        policy: Validation, timeout, retry and concurrency settings.
        allow_cycle: Allow the self-edge ``n.to(n)`` (a controller loop).

    Nodes hash by ``node_id`` and compare by identity, so they can be dict keys.
    """

    func: NodeFunc[InT, OutT]
    name: str = None  # type: ignore[assignment]  # always a str after __post_init__
    policy: NodePolicy = field(default=_DEFAULT_POLICY)
    allow_cycle: bool = False
    node_id: str = field(init=False)

    def __post_init__(self) -> None:
        func = self.func
        name: str | None = self.name
        if name is None:
            self.name = getattr(func, "__name__", None) or type(func).__name__
        if not _is_async(func):
            raise FlowTypeError(
                f"Node function must be declared with async def (node '{self.name}'); "
                f"write it as `async def {self.name}(message, ctx): ...`"
            )
        count, ctx_positional = _arity(func)
        if count != 2:
            raise FlowBuildError(
                f"Node '{self.name}' must accept exactly two parameters (message, ctx); got {count}"
            )
        if not ctx_positional:
            raise FlowBuildError(
                f"Context parameter must be positional (node '{self.name}'); drop the `*` "
                "before ctx"
            )
        if not isinstance(self.policy, NodePolicy):
            raise FlowTypeError(
                f"Node '{self.name}': policy must be a NodePolicy, got {type(self.policy).__name__}"
            )
        self.node_id = new_trace_id()

    def __hash__(self) -> int:
        return hash(self.node_id)

    def __repr__(self) -> str:
        return f"Node({self.name!r})"

    def to(self, *nodes: Node[Any, Any]) -> tuple[Node[InT, OutT], tuple[Node[Any, Any], ...]]:
        """Return the adjacency entry ``(self, nodes)`` for ``create``."""
        return (self, nodes)

    async def invoke(self, message: Any, ctx: Any, *, registry: AdapterSource | None) -> Any:
        # ``Any`` on purpose: with validation the result may be the incoming envelope
        # re-wrapped around the output, so neither ``InT`` nor ``OutT`` describes it.
        """Run one call with validation only: no timeout, no retry, no routing.

        Raises:
            KeyError: Validation is on and the node is not in ``registry``.
            pydantic.ValidationError: The input or output does not validate.
        """
        if registry is None or self.policy.validate == "none":
            return await self.func(message, ctx)
        validator = Validator(self.name, self.policy.validate, registry)
        result = await self.func(validator.prepare(message), ctx)
        return validator.finish(message, result)
