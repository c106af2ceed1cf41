"""Tricky flows through the real Graphviz ``dot`` and the real Mermaid parser.

Each diagram must be accepted, and what the tool reads back (node ids, shown labels,
classes, edges) must be exactly what the flow says: escaping round-trips.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.core import create
from penguiflow.viz import flow_to_dot, flow_to_mermaid

if TYPE_CHECKING:
    from conftest import Case, Cases, Grammar, Graphviz, MakeNode, Mermaid


def _expected(case: Any, grammar: type[Grammar], declared: Any) -> tuple[dict[str, str], list[Any]]:
    """Shown labels by id, and edges by id, derived from the flow itself."""
    labels = grammar.expected_labels(case)
    assert len(labels) == len(declared.labels)
    ident = dict(zip(labels, declared.labels, strict=True))
    edges = [(ident[floe.source], ident[floe.target]) for floe in case.flow.floes]
    return dict(zip(declared.labels, labels.values(), strict=True)), edges


def test_dot_is_rendered_by_graphviz(
    tricky: Case, graphviz: Graphviz, grammar: type[Grammar]
) -> None:
    text = flow_to_dot(tricky.flow, **tricky.kwargs())
    declared = grammar.dot(text)
    labels, edges = _expected(tricky, grammar, declared)
    assert declared.labels == labels
    assert sorted((s, d) for s, d, _ in declared.edges) == sorted(edges)

    graphviz.svg(text)
    drawn = graphviz.model(text)
    # Graphviz draws one text op per line; it does not draw empty lines.
    shown = {k: "\n".join(line for line in v.split("\n") if line) for k, v in labels.items()}
    assert drawn.labels == shown
    assert sorted(drawn.edges, key=repr) == sorted(declared.edges, key=repr)


@pytest.mark.parametrize("rankdir", ["TB", "LR", "BT", "RL"])
def test_every_rankdir_renders(rankdir: Any, cases: Cases, graphviz: Graphviz) -> None:
    case = cases["controller"]()
    svg = graphviz.svg(flow_to_dot(case.flow, rankdir=rankdir))
    assert "controller" in svg


def test_mermaid_is_accepted_by_the_mermaid_parser(
    tricky: Case, mermaid: Mermaid, grammar: type[Grammar]
) -> None:
    text = flow_to_mermaid(tricky.flow, **tricky.kwargs())
    declared = grammar.mermaid(text)
    labels, edges = _expected(tricky, grammar, declared)
    assert declared.labels == labels
    assert [(s, d) for s, d, _ in declared.edges] == edges

    parsed = mermaid.parse(text)
    assert list(parsed.labels) == list(declared.labels)  # same ids, none invented
    assert parsed.labels == labels
    assert parsed.classes == declared.classes
    assert parsed.shapes == declared.shapes
    assert parsed.edges == declared.edges


@pytest.mark.parametrize("direction", ["TD", "TB", "BT", "RL", "LR"])
def test_every_direction_parses(direction: Any, cases: Cases, mermaid: Mermaid) -> None:
    case = cases["controller"]()
    parsed = mermaid.parse(flow_to_mermaid(case.flow, direction=direction))
    assert "controller" in parsed.labels


def test_mermaid_rejects_what_we_avoid(mermaid: Mermaid) -> None:
    """The hazards the escaping rules exist for, shown on the real parser."""
    bad = [
        'graph TD\n    end["end"]',  # keyword as id
        'graph TD\n    style["style"]',
        'graph TD\n    a["x"]\n    class a c1 c2',  # several classes in one statement
        "graph TD\n    a -->|ingress (3)| b",  # parentheses in a bare edge label
    ]
    results = mermaid.parse_many(bad)
    assert [r["ok"] for r in results] == [False] * len(bad)
    # A backslash-escaped quote parses, but the quotes vanish from the label.
    (quoted,) = mermaid.parse_many(['graph TD\n    a["say \\"hi\\""]'])
    assert mermaid.model(quoted).labels["a"] != 'say "hi"'


# Random names from an alphabet of every character class the escaping rules care about.
ALPHABET = [
    *"abcXYZ019_ -.:;,|/\\\"'`#&<>[](){}%@!?*+=~^$",
    *["\n", "\r", "\t", "\x00", "\x7f", "\u2028", "é", "ß", "日", "🐧", "\u200d", "\ufeff"],
    *["end", "graph", "node", "style", "class", "classDef", "#quot;", "<br/>", "-->", "%%"],
]


def _random_names(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    names: dict[str, None] = {}  # core requires unique names within a flow
    while len(names) < count:
        names["".join(rng.choices(ALPHABET, k=rng.randint(1, 8)))] = None
    return list(names)


def _fan_flow(names: list[str], make_node: MakeNode) -> Any:
    nodes = [make_node(name) for name in names]
    hub, sink = make_node("hub"), make_node("sink")
    return create(hub.to(*nodes), *(n.to(sink) for n in nodes), sink.to())


def test_random_names_round_trip_through_graphviz(
    graphviz: Graphviz, grammar: type[Grammar], make_node: MakeNode
) -> None:
    names = _random_names(7, 300)
    flow = _fan_flow(names, make_node)
    text = flow_to_dot(flow)
    declared = grammar.dot(text)
    drawn = graphviz.model(text)
    assert set(drawn.labels) == set(declared.labels)
    assert len(declared.labels) == len(names) + 4
    for ident, label in declared.labels.items():
        # Graphviz trims each drawn line and skips empty ones; compare on that basis.
        want = [line.strip() for line in label.split("\n") if line.strip()]
        got = [line.strip() for line in drawn.labels[ident].split("\n") if line.strip()]
        assert got == want, (ident, label)
    idents = list(declared.labels)[1 : len(names) + 1]  # after "hub"
    assert [declared.labels[i] for i in idents] == [grammar.normalised(n) for n in names]


def test_random_names_round_trip_through_mermaid(
    mermaid: Mermaid, grammar: type[Grammar], make_node: MakeNode
) -> None:
    texts, name_sets = [], []
    for seed in range(10):
        names = _random_names(seed, 40)
        name_sets.append(names)
        texts.append(flow_to_mermaid(_fan_flow(names, make_node), direction="LR"))
    mermaid.warm(texts)
    for names, text in zip(name_sets, texts, strict=True):
        declared = grammar.mermaid(text)
        parsed = mermaid.parse(text)
        # Mermaid trims each label (JavaScript trim), as HTML would collapse it anyway.
        assert parsed.labels == {k: grammar.js_trim(v) for k, v in declared.labels.items()}
        assert parsed.edges == declared.edges
        shown = list(declared.labels.values())[1 : len(names) + 1]  # after "hub"
        assert shown == [grammar.normalised(n) for n in names]
