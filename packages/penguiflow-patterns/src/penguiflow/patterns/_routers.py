"""``predicate_router`` and ``union_router``: decision points that are ordinary nodes.

Both return a ``Node`` whose function emits the item itself (``ctx.emit(..., to=...)``)
and returns ``None``, so nothing is broadcast by default. Successor names are resolved
once per flow (``_perflow.Successors``); routing a message allocates nothing beyond what
the router forwards.

Errors raised while routing are ordinary node errors: the runtime reports
``node_error`` / ``node_failed`` (with the exception, which names the router) and drops
the item. Nothing is dropped silently except what the predicate itself asks to drop.
"""

from __future__ import annotations

import enum
import logging
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter

from penguiflow.core import declare_shape
from penguiflow.node import Node, NodePolicy
from penguiflow.types import Message

from ._perflow import PerFlow, RoutingError, Successors, attach_check

if TYPE_CHECKING:
    from penguiflow.core import Context, Runtime

__all__ = ["predicate_router", "union_router"]

logger = logging.getLogger("penguiflow.patterns")
_debug_enabled = logger.isEnabledFor
_DEBUG = logging.DEBUG

Target: TypeAlias = "Node | str"
Predicate: TypeAlias = Callable[[Any], Any]
"""``item -> None | bool | Node | str | Iterable[Node | str]``."""
PredicateMap: TypeAlias = "Mapping[Node | str, Callable[[Any], object]]"
"""``{successor: item -> truthy}``: route to every successor whose test passes."""


def _policy() -> NodePolicy:
    return NodePolicy(validate="none")


def _check_name(name: object, factory: str) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{factory}: name must be a non-empty str, got {name!r}")
    return name


def _dropped(router: str, item: object, decision: object) -> None:
    """Log a deliberate drop; costs one level check when DEBUG is off."""
    if _debug_enabled(_DEBUG):
        reason = "no test matched" if decision is _NO_MATCH else f"predicate returned {decision!r}"
        logger.debug(
            "router_drop",
            extra={
                "node_name": router,
                "trace_id": getattr(item, "trace_id", None),
                "reason": reason,
            },
        )


_NO_MATCH = object()


# --------------------------------------------------------------------------- predicate


class _PredicateTable(Successors):
    """Successors, plus the resolved ``(test, node)`` pairs of a mapping predicate."""

    __slots__ = ("pairs",)

    def __init__(
        self, flow: Runtime | None, node: Node, tests: tuple[tuple[Any, Any], ...]
    ) -> None:
        super().__init__(flow, node, "predicate_router")
        self.pairs: tuple[tuple[Callable[[Any], object], Node], ...] = tuple(
            (test, self.resolve(key)) for key, test in tests
        )


def predicate_router(name: str, predicate: Predicate | PredicateMap) -> Node:
    """Build a node that routes each item to the successors a predicate picks.

    ``predicate`` is either:

    - a callable ``item -> decision`` receiving the whole item (a ``Message`` or a bare
      payload), so it can look at ``item.payload`` and ``item.headers``. The decision is:

      - ``None``, ``False`` or an empty iterable: the item is dropped (logged at DEBUG
        on ``penguiflow.patterns`` as ``router_drop``);
      - ``True``: the item goes to every successor (``ctx.emit(item)``);
      - a successor ``Node``, a successor name (``str``), or an iterable of them: the
        item goes to each, in the order given (a repeated target gets it again);
      - anything else is a ``TypeError`` for that item;

    - or a mapping ``{successor node or name: item -> bool}``: the item goes to every
      successor whose test is truthy, in mapping order. All tests run before anything is
      emitted. The names are checked against the flow's wiring once per flow (and by
      ``node.func.__penguiflow_check__(flow, node)``, which core calls when the flow is built).

    The item is forwarded **unchanged**. Names are resolved once per flow against the
    router's successors (first match by ``Node.name``).

    Args:
        name: The node's name.
        predicate: The routing decision, see above. It must be synchronous and should be
            a pure function of the item.

    Returns:
        A ``Node`` with ``NodePolicy(validate="none")``.

    Raises:
        TypeError: ``predicate`` is neither callable nor a mapping of callables.

    At run time, inside the node (reported as ``node_error``/``node_failed``): a
    ``KeyError`` (``RoutingError``) for a name or node that is not a successor, and a
    ``TypeError`` (``Targets must be Node or str``) for a decision of another type.
    """
    router = _check_name(name, "predicate_router")
    if isinstance(predicate, Mapping):
        return _mapping_router(router, predicate)
    if not callable(predicate):
        raise TypeError(
            f"predicate_router '{router}': predicate must be a callable or a mapping of "
            f"successor -> callable, got {type(predicate).__name__}"
        )
    decide = predicate
    tables: PerFlow[_PredicateTable] = PerFlow(lambda flow, node: _PredicateTable(flow, node, ()))

    async def route(item: Any, ctx: Context) -> None:
        decision = decide(item)
        if decision is None or decision is False:
            _dropped(router, item, decision)
            return None
        if decision is True:
            await ctx.emit(item)
            return None
        if isinstance(decision, str | Node):
            await ctx.emit(item, to=tables.get(ctx).resolve(decision))
            return None
        if not isinstance(decision, Iterable):
            raise TypeError(
                f"Targets must be Node or str (predicate_router '{router}': the predicate "
                f"returned {type(decision).__name__}: {decision!r})"
            )
        table = tables.get(ctx)
        targets = [table.resolve(target) for target in decision]  # all resolved first
        if not targets:
            _dropped(router, item, decision)
            return None
        await ctx.emit(item, to=targets)
        return None

    route.__name__ = route.__qualname__ = router
    return _routing(Node(route, name=router, policy=_policy(), allow_cycle=False))


def _passes_on(incoming: object, successor: Node) -> object:
    return incoming


def _routing(node: Node) -> Node:
    """Tell the wiring check that ``node`` hands each item unchanged to some successors."""
    declare_shape(node, _passes_on, routes=True)
    return node


def _mapping_router(router: str, mapping: PredicateMap) -> Node:
    tests: list[tuple[Any, Any]] = []
    for key, test in mapping.items():
        if not isinstance(key, str | Node):
            raise TypeError(
                f"Targets must be Node or str (predicate_router '{router}': mapping key {key!r})"
            )
        if not callable(test):
            raise TypeError(f"predicate_router '{router}': the test for {key!r} is not callable")
        tests.append((key, test))
    frozen = tuple(tests)
    tables: PerFlow[_PredicateTable] = PerFlow(
        lambda flow, node: _PredicateTable(flow, node, frozen)
    )

    async def route(item: Any, ctx: Context) -> None:
        first: Node | None = None
        more: list[Node] | None = None
        for test, node in tables.get(ctx).pairs:
            if test(item):
                if first is None:
                    first = node
                elif more is None:
                    more = [first, node]
                else:
                    more.append(node)
        if first is None:
            _dropped(router, item, _NO_MATCH)
            return None
        await ctx.emit(item, to=first if more is None else more)
        return None

    def check(flow: Runtime, node: Node) -> None:
        _PredicateTable(flow, node, frozen)

    route.__name__ = route.__qualname__ = router
    attach_check(route, check)
    return _routing(Node(route, name=router, policy=_policy(), allow_cycle=False))


# --------------------------------------------------------------------------- union


def _union_members(tp: Any) -> list[Any]:
    """Flatten ``A | B``, ``Union[A, B]`` and ``Annotated[...]`` into their members.

    Raises:
        TypeError: ``tp`` is not a union.
    """
    origin = get_origin(tp)
    if origin is Annotated:
        return _union_members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        members: list[Any] = []
        for arg in get_args(tp):
            inner = arg
            while get_origin(inner) is Annotated:
                inner = get_args(inner)[0]
            if get_origin(inner) is Union or get_origin(inner) is types.UnionType:
                members.extend(_union_members(inner))
            else:
                members.append(inner)
        return members
    raise TypeError(f"{tp!r} is not a union")


def _plain(value: object) -> object:
    return value.value if isinstance(value, enum.Enum) else value


def _member_names(member: Any) -> tuple[str, ...] | None:
    """The successor names a union member can route to; ``None`` when not knowable.

    A model whose ``kind`` field is a ``Literal`` (or has a ``str`` default) routes on
    those values; any other member routes on its class name, as at run time.
    """
    if isinstance(member, type) and issubclass(member, BaseModel):
        field = member.model_fields.get("kind")
        if field is not None:
            annotation = field.annotation
            if get_origin(annotation) is Literal:
                names = tuple(_plain(v) for v in get_args(annotation))
                if all(isinstance(n, str) for n in names):
                    return typing.cast("tuple[str, ...]", names)
                return None
            default = _plain(field.default)
            return (default,) if isinstance(default, str) else None
        if member.model_config.get("extra") == "allow":
            return None  # ``kind`` might arrive as an extra key
        return (member.__name__,)
    kind = _plain(getattr(member, "kind", None))
    if isinstance(kind, str):
        return (kind,)
    if member is None or member is type(None):
        return ("NoneType",)
    name = getattr(member, "__name__", None)
    return (name,) if isinstance(name, str) else None


_KIND, _CLASS = 1, 2


def union_router(name: str, union_model: Any) -> Node:
    """Build a node that validates an item against a union and routes it by variant.

    The item is validated with one ``TypeAdapter(union_model)`` built here. The target is
    the successor named after the variant: its ``kind`` attribute when that is a ``str``
    (a ``str`` enum counts by value), else its class name. The union's declared
    discriminator is not consulted.

    - A bare item (a dict or a variant instance) is forwarded as the validated variant.
    - A ``Message`` is routed on its validated payload and forwarded as the same envelope
      (trace id, headers, meta, deadline) carrying the validated payload; when the payload
      already was that variant, the very same message is forwarded.

    Every union member must have a matching successor. This is checked once per flow, on
    the router's first message, and by ``node.func.__penguiflow_check__(flow, node)``,
    which core calls when the flow is built. The error names the missing variants.

    Args:
        name: The node's name.
        union_model: ``A | B``, ``typing.Union[A, B]`` or an ``Annotated`` union (for
            example with a pydantic discriminator).

    Returns:
        A ``Node`` with ``NodePolicy(validate="none")``.

    Raises:
        TypeError: ``union_model`` is not a union (the message names the router).

    At run time, inside the node (reported as ``node_error``/``node_failed``):
    ``pydantic.ValidationError`` for an item that fits no variant, and ``RoutingError``
    (a ``KeyError``) when the flow lacks a successor for a variant.
    """
    router = _check_name(name, "union_router")
    try:
        members = _union_members(union_model)
    except TypeError:
        raise TypeError(
            f"union_router '{router}': union_model must be a union of models "
            f"(A | B, Union[A, B] or an Annotated union), got {union_model!r}"
        ) from None
    variants: list[tuple[str, tuple[str, ...]]] = []
    for member in members:
        names = _member_names(member)
        if names is not None:
            variants.append((getattr(member, "__name__", repr(member)), names))
    validate = TypeAdapter(union_model).validate_python
    modes: dict[type, int] = {}

    def mode_of(cls: type) -> int:
        mode = modes.get(cls)
        if mode is None:
            has_kind = hasattr(cls, "kind") or (
                issubclass(cls, BaseModel)
                and ("kind" in cls.model_fields or cls.model_config.get("extra") == "allow")
            )
            mode = modes[cls] = _KIND if has_kind else _CLASS
        return mode

    def check_flow(flow: Runtime | None, node: Node) -> Successors:
        table = Successors(flow, node, "union_router")
        missing = [(label, n) for label, names in variants for n in names if n not in table.by_name]
        if missing:
            described = ", ".join(
                f"'{label}'" if n == label else f"'{label}' (kind '{n}')" for label, n in missing
            )
            raise RoutingError(
                f"No successor named '{missing[0][1]}' for union_router '{router}': "
                f"no successor for variant(s) {described} ({table.describe()})"
            )
        return table

    tables: PerFlow[Successors] = PerFlow(check_flow)

    async def route(item: Any, ctx: Context) -> None:
        if type(item) is Message or isinstance(item, Message):
            payload = item.payload
            variant = validate(payload)
            out = item if variant is payload else item.model_copy(update={"payload": variant})
        else:
            variant = out = validate(item)
        cls = type(variant)
        if mode_of(cls) == _KIND:
            kind = _plain(getattr(variant, "kind", None))
            key = kind if isinstance(kind, str) else cls.__name__
        else:
            key = cls.__name__
        table = tables.get(ctx)
        target = table.by_name.get(key)
        if target is None:
            raise table.unknown(key)
        await ctx.emit(out, to=target)
        return None

    def check(flow: Runtime, node: Node) -> None:
        check_flow(flow, node)

    def variants_of(incoming: object, successor: Node) -> object:
        # What the wiring check sees on the edge to ``successor``: its variants.
        picked = tuple(m for m in members if successor.name in (_member_names(m) or ()))
        if not picked:
            return None
        return picked[0] if len(picked) == 1 else Union[picked]  # noqa: UP007

    route.__name__ = route.__qualname__ = router
    attach_check(route, check)
    node = Node(route, name=router, policy=_policy(), allow_cycle=False)
    declare_shape(node, variants_of)
    return node
