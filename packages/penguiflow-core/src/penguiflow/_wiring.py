"""Wiring: from ``node.to(...)`` adjacencies to edges, with the build-time checks.

Everything here runs once per ``create()`` (and once per playbook call), never per
message, and stays index-based so that building a small flow is cheap.
"""

from __future__ import annotations

import logging
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import FrozenInstanceError
from typing import Any, Final, Literal, TypeAlias

from pydantic import BaseModel

from ._edges import OPEN_SEA, ROOKERY, Floe, Ports
from .errors import CycleError, FlowBuildError
from .node import Node
from .types import WM, FinalAnswer, Message

__all__ = [
    "CHECK_HOOK",
    "Plan",
    "SHAPE_HOOK",
    "Adjacency",
    "Shape",
    "Wiring",
    "WiringMode",
    "check_cycles",
    "check_wiring",
    "collect",
    "plan",
    "declare_shape",
    "run_checks",
]

Adjacency: TypeAlias = tuple[Node, Iterable[Node]]

CHECK_HOOK: Final = "__penguiflow_check__"
"""Attribute name of a component's build-time check.

A node function may carry ``func.__penguiflow_check__ = check``; ``create()`` calls
``check(flow, node)`` for every node of the flow, and the check raises a
``FlowBuildError`` naming the node when the component cannot work in that graph (for
example a router whose variant has no successor). It must not have side effects.
"""


class Plan:
    """The index-level shape of a flow, computed once per topology and reused.

    ``links`` lists every edge as ``(source, target)`` positions in a flow's ports, in
    the order of ``Wiring.floes``; position ``-2`` is OpenSea and ``-1`` is Rookery.
    """

    __slots__ = ("exits", "links")

    def __init__(self, nodes: list[Node], edges: list[tuple[int, int]]) -> None:
        count = len(nodes)
        incoming = [0] * count
        succ: list[list[int]] = [[] for _ in range(count)]
        for src, dst in edges:
            succ[src].append(dst)
            if not (src == dst and nodes[src].allow_cycle):
                incoming[dst] += 1
        links = [(-2, i) for i in range(count) if incoming[i] == 0]
        links += edges
        # A node whose only successor is itself (a controller) also exits to Rookery.
        exits = [i for i in range(count) if all(j == i for j in succ[i])]
        links += [(i, -1) for i in exits]
        self.links: tuple[tuple[int, int], ...] = tuple(links)
        self.exits: int = len(exits)


# Flows of one shape are often built again and again (a playbook factory builds a fresh
# subflow per call): their plan, and their passing cycle check, are looked up here.
_PLANS: dict[tuple[object, ...], Plan] = {}
_PLANS_MAX = 512


def plan(nodes: list[Node], edges: list[tuple[int, int]], *, allow_cycles: bool) -> Plan:
    """The flow's ``Plan``; raises ``CycleError`` unless ``allow_cycles`` (or acyclic)."""
    key = (tuple(edges), tuple([node.allow_cycle for node in nodes]), allow_cycles)
    found = _PLANS.get(key)
    if found is not None:
        return found
    if not allow_cycles:
        check_cycles(nodes, edges)
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    found = _PLANS[key] = Plan(nodes, edges)
    return found


class Wiring:
    """The edges of a flow and each owner's ports, in a stable order.

    ``floes`` lists ingress edges, then internal edges in declaration order, then egress.
    """

    __slots__ = ("floes", "opensea", "ports", "rookery", "rookery_floes")

    def __init__(self, nodes: list[Node], shape: Plan, maxsize: int) -> None:
        self.ports = ports = [Ports(n) for n in nodes]
        self.opensea = opensea = Ports(OPEN_SEA)
        self.rookery = rookery = Ports(ROOKERY)
        ends = [*ports, opensea, rookery]  # positions -2 and -1, as in ``Plan.links``
        floes: list[Floe] = []
        for src, dst in shape.links:
            sp = ends[src]
            dp = ends[dst]
            floe = Floe(sp.owner, dp.owner, maxsize=maxsize, inbox=dp.inbox)
            sp.outs.append(floe)
            sp.by_target[dp.owner] = floe
            dp.ins.append(floe)
            floes.append(floe)
        self.floes = tuple(floes)
        self.rookery_floes = floes[len(floes) - shape.exits :]


def collect(adjacencies: Sequence[Adjacency]) -> tuple[list[Node], list[tuple[int, int]]]:
    """Return the nodes in order of first appearance and the deduplicated edges (indices)."""
    nodes: list[Node] = []
    index: dict[int, int] = {}  # id(node) -> position; nodes compare by identity
    edges: dict[tuple[int, int], None] = {}
    for position, adjacency in enumerate(adjacencies):
        if not (isinstance(adjacency, tuple) and len(adjacency) == 2):
            raise FlowBuildError(
                f"adjacency #{position} must be (node, successors), e.g. node.to(...); "
                f"got {adjacency!r}"
            )
        start, successors = adjacency
        if not isinstance(start, Node):
            raise FlowBuildError(f"adjacency #{position}: {start!r} is not a Node")
        src = index.get(id(start))
        if src is None:
            src = index[id(start)] = len(nodes)
            nodes.append(start)
        for succ in successors:
            if not isinstance(succ, Node):
                raise FlowBuildError(
                    f"adjacency #{position} ({start.name}): successor {succ!r} is not a Node"
                )
            dst = index.get(id(succ))
            if dst is None:
                dst = index[id(succ)] = len(nodes)
                nodes.append(succ)
            edges[(src, dst)] = None
    if len({node.name for node in nodes}) != len(nodes):
        seen: set[str] = set()
        for node in nodes:
            if node.name in seen:
                raise FlowBuildError(
                    f"two different nodes are named {node.name!r}; node names must be unique "
                    "within a flow (the registry, routers and fetch(from_=) key by name)"
                )
            seen.add(node.name)
    return nodes, list(edges)


def check_cycles(nodes: list[Node], edges: list[tuple[int, int]]) -> None:
    """Raise CycleError naming a cycle; allowed self-loops (``allow_cycle``) are skipped."""
    count = len(nodes)
    succ: list[list[int]] = [[] for _ in range(count)]
    for src, dst in edges:
        if src == dst and nodes[src].allow_cycle:
            continue
        succ[src].append(dst)
    white, grey, black = 0, 1, 2
    color = [white] * count
    for root in range(count):
        if color[root] != white:
            continue
        path = [root]
        stack = [(root, 0)]
        color[root] = grey
        while stack:
            node, i = stack[-1]
            if i < len(succ[node]):
                stack[-1] = (node, i + 1)
                nxt = succ[node][i]
                if color[nxt] == grey:
                    cycle = [*path[path.index(nxt) :], nxt]
                    names = [nodes[n].name for n in cycle]
                    if len(cycle) == 2:
                        fix = (
                            f"a node that loops on itself (a controller) is declared with "
                            f"Node(..., allow_cycle=True), e.g. node {names[0]!r}"
                        )
                    else:
                        fix = "create(..., allow_cycles=True) accepts any cycle"
                    raise CycleError(
                        "Flow contains a cycle; enable allow_cycles to bypass "
                        f"(cycle: {' -> '.join(names)}). To fix it: {fix}"
                    )
                if color[nxt] == white:
                    color[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                color[node] = black
                stack.pop()
                path.pop()


def run_checks(flow: Any, nodes: Iterable[Node]) -> None:
    """Call each node function's build-time check (``CHECK_HOOK``), if it has one."""
    for node in nodes:
        check = getattr(node.func, CHECK_HOOK, None)
        if check is not None:
            check(flow, node)


# -- build-time type checks of the edges ----------------------------------------------------

WiringMode: TypeAlias = Literal["strict", "warn", "off"]
"""What ``run(wiring=...)`` does with an edge whose models do not fit."""
_WIRING_MODES: Final = ("strict", "warn", "off")

SHAPE_HOOK: Final = "__penguiflow_shape__"
"""Attribute name of a component's declared shape (a :class:`Shape`); see ``declare_shape``."""

logger = logging.getLogger("penguiflow.wiring")
_warned: dict[tuple[str, str, str, str], None] = {}
_WARNED_MAX = 4096


class Shape:
    """How a component that does not validate (a join, a router) transforms its input.

    Attributes:
        out: ``out(incoming, successor)`` returns the type ``successor`` receives from the
            component, given the type arriving at the component (``None`` = unknown).
            Types are models, unions of them (``A | B``) or ``list[...]`` of them; return
            ``None`` when it cannot be known.
        routes: ``True`` for a router: each item goes to *some* successors, so the check
            asks that every member of the incoming type has a successor that takes it,
            instead of asking every successor to take every member.
    """

    # A hand-written value class rather than a dataclass: generating a dataclass costs
    # about half a millisecond of ``import penguiflow``.
    __slots__ = ("_out", "_routes")
    _out: Callable[[object, Node], object]
    _routes: bool

    def __init__(self, out: Callable[[object, Node], object], routes: bool = False) -> None:
        object.__setattr__(self, "_out", out)
        object.__setattr__(self, "_routes", routes)

    @property
    def out(self) -> Callable[[object, Node], object]:
        return self._out

    @property
    def routes(self) -> bool:
        return self._routes

    def __setattr__(self, attr: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {attr!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Shape:
            return NotImplemented
        return self._out == other._out and self._routes == other._routes

    def __hash__(self) -> int:
        return hash((self._out, self._routes))

    def __repr__(self) -> str:
        return f"Shape(out={self._out!r}, routes={self._routes!r})"


def declare_shape(
    node: Node, out: Callable[[object, Node], object], *, routes: bool = False
) -> None:
    """Declare how ``node`` (a component with ``validate="none"``) shapes its output.

    The build-time wiring check (``run(wiring=...)``) then follows types through it: a
    join declares ``lambda t, _: list[t]``, a router ``lambda t, _: t`` with ``routes=True``.
    """
    setattr(node.func, SHAPE_HOOK, Shape(out, routes))


def _members(tp: object) -> tuple[object, ...]:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return tuple(m for arg in typing.get_args(tp) for m in _members(arg))
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    return (tp,)


def _union(parts: Iterable[object]) -> object:
    seen: dict[object, None] = {}
    for part in parts:
        for member in _members(part):
            seen[member] = None
    members = tuple(seen)
    if len(members) == 1:
        return members[0]
    return typing.Union[members]  # noqa: UP007 - built from a tuple at run time


def _payload(model: object) -> object:
    """The payload type an envelope model carries (``Any`` for ``Message`` itself)."""
    if isinstance(model, type) and issubclass(model, Message):
        return model.model_fields["payload"].annotation
    return model


def _describe(tp: object) -> str:
    if isinstance(tp, type):
        return tp.__name__
    members = _members(tp)
    if len(members) > 1:
        return " | ".join(_describe(m) for m in members)
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin is not None and args:
        name = getattr(origin, "__name__", repr(origin))
        return f"{name}[{', '.join(_describe(a) for a in args)}]"
    return repr(tp)


def _fits(member: object, accepted: object) -> bool:
    """Whether an item of type ``member`` validates as ``accepted`` without coercion."""
    if accepted is Any or accepted is object:
        return True
    accepted_members = _members(accepted)
    if len(accepted_members) > 1:
        return any(_fits(member, a) for a in accepted_members)
    if isinstance(accepted, type) and issubclass(accepted, BaseModel):
        if getattr(accepted, "__pydantic_root_model__", False):
            return _fits(member, accepted.model_fields["root"].annotation)
        return isinstance(member, type) and issubclass(member, accepted)
    if typing.get_origin(accepted) is list and typing.get_origin(member) is list:
        (inner,) = typing.get_args(accepted) or (Any,)
        (item,) = typing.get_args(member) or (Any,)
        return item is Any or all(_fits(m, inner) for m in _members(item))
    if isinstance(accepted, type) and isinstance(member, type):
        return issubclass(member, accepted)
    return member == accepted


def _models(registry: object, node: Node) -> tuple[object, object]:
    """``(takes, returns)`` of a node as the registry declares them (``None`` = unknown)."""
    validate = node.policy.validate
    models = getattr(registry, "models", None)
    if validate == "none" or models is None:
        return None, None
    try:
        in_model, out_model = models(node.name)
    except KeyError:
        return None, None
    takes = _payload(in_model) if validate in ("in", "both") else None
    returns = _payload(out_model) if validate in ("out", "both") else None
    if returns is Any or returns in (WM, FinalAnswer):
        returns = None  # unknown, or routed by the runtime (controller loop, Rookery)
    return (None if takes is Any else takes), returns


def check_wiring(floes: Sequence[Floe], registry: object, mode: WiringMode) -> list[str]:
    """Check that every edge's producer returns what its consumer takes.

    Types come from the registry (nodes that validate) and from components' declared
    shapes (:class:`Shape`); an edge with an unknown side is not checked.

    Returns:
        The mismatches found, one sentence each.

    Raises:
        FlowBuildError: ``mode="strict"`` and an edge does not fit; every mismatch is named.
    """
    if mode not in _WIRING_MODES:
        raise FlowBuildError(f"wiring must be 'strict', 'warn' or 'off', got {mode!r}")
    if mode == "off" or registry is None:
        return []
    edges: list[tuple[Node, Node]] = []
    for floe in floes:
        src, dst = floe.source, floe.target
        if isinstance(src, Node) and isinstance(dst, Node):
            edges.append((src, dst))
    nodes = list({id(n): n for edge in edges for n in edge}.values())
    declared = {id(n): _models(registry, n) for n in nodes}
    shapes: dict[int, Shape | None] = {id(n): getattr(n.func, SHAPE_HOOK, None) for n in nodes}
    incoming: dict[int, list[Node]] = {id(n): [] for n in nodes}
    for a, b in edges:
        incoming[id(b)].append(a)
    ingress = {id(f.target) for f in floes if f.source is OPEN_SEA}
    sent: dict[tuple[int, int], object] = {}

    def arriving(node: Node) -> object:
        if id(node) in ingress:
            return None
        parts = [sent.get((id(a), id(node))) for a in incoming[id(node)] if a is not node]
        return None if not parts or any(p is None for p in parts) else _union(parts)

    # Types through components settle in a few passes (one per component on a chain).
    for _ in range(len(nodes) + 1):
        changed = False
        for a, b in edges:
            shape = shapes[id(a)]
            if shape is not None:
                source = arriving(a)
                out = None if source is None else shape.out(source, b)
            else:
                out = declared[id(a)][1]
            if sent.get((id(a), id(b))) != out:
                sent[(id(a), id(b))] = out
                changed = True
        if not changed:
            break

    problems: list[tuple[tuple[str, str, str, str], str]] = []
    for a, b in edges:
        out = sent.get((id(a), id(b)))
        takes = declared[id(b)][0]
        if out is None or takes is None or (a is b and a.allow_cycle and shapes[id(a)] is None):
            continue
        shape = shapes[id(a)]
        if shape is not None and shape.routes:
            continue  # checked per router below
        bad = [m for m in _members(out) if not _fits(m, takes)]
        if bad:
            what = "returns" if shape is None else "passes on"
            problems.append(
                (
                    (a.name, b.name, _describe(out), _describe(takes)),
                    f"node {a.name!r} {what} {_describe(out)}, but its successor {b.name!r} "
                    f"takes {_describe(takes)}: {_describe(_union(bad))} is not a "
                    f"{_describe(takes)}",
                )
            )
    for router in nodes:
        shape = shapes[id(router)]
        if shape is None or not shape.routes:
            continue
        outs = [b for a, b in edges if a is router]
        source = arriving(router)
        if source is None:
            continue
        takers = {id(b): declared[id(b)][0] for b in outs}
        for member in _members(source):
            if any(t is None or _fits(member, t) for t in takers.values()):
                continue
            listed = ", ".join(f"{b.name!r} takes {_describe(takers[id(b)])}" for b in outs)
            problems.append(
                (
                    (router.name, "*", _describe(member), _describe(source)),
                    f"router {router.name!r} receives {_describe(source)}, but none of its "
                    f"successors takes {_describe(member)} ({listed or 'no successors'})",
                )
            )
    if problems and mode == "strict":
        raise FlowBuildError(
            "the flow's edges do not fit the registry's models: "
            + "; ".join(text for _, text in problems)
            + ". Change a model, register the node with the model it really takes, or "
            "run(wiring='off') to skip this check"
        )
    for key, text in problems:
        if key not in _warned:
            if len(_warned) >= _WARNED_MAX:
                _warned.clear()
            _warned[key] = None
            logger.warning("wiring: %s", text)
    return [text for _, text in problems]
