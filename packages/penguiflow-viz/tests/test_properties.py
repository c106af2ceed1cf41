"""Property tests: any flow gives output in our strict grammar, faithful to the flow.

These run without Graphviz or node; ``test_real_renderers.py`` covers the real parsers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, given, settings, strategies as st

from penguiflow.core import OPEN_SEA, ROOKERY, PenguiFlow, create
from penguiflow.viz import flow_to_dot, flow_to_mermaid

if TYPE_CHECKING:
    from conftest import Case, Grammar, MakeNode, Parsed

NAMES = st.text(
    alphabet=st.one_of(
        st.sampled_from(list('ab_ "\\#&<>`:;|[](){}%\n\r\t\x00-.')),
        st.characters(codec="utf-8"),
        st.characters(),  # surrogates included
    ),
    min_size=0,
    max_size=10,
) | st.sampled_from(["end", "graph", "node", "Node", "style", "class", "1x", "OpenSea"])


@st.composite
def flows(draw: st.DrawFn, make_node: MakeNode) -> tuple[Any, dict[str, Any]]:
    names = draw(st.lists(NAMES, min_size=1, max_size=8, unique=True))
    loops = draw(st.lists(st.booleans(), min_size=len(names), max_size=len(names)))
    nodes = [make_node(n, allow_cycle=loop) for n, loop in zip(names, loops, strict=True)]
    adjacency = []
    for i, node in enumerate(nodes):
        later = nodes[i + 1 :]
        succ = draw(st.lists(st.sampled_from(later), max_size=3)) if later else []
        if loops[i] and draw(st.booleans()):
            succ.append(node)
        adjacency.append(node.to(*succ))
    kwargs: dict[str, Any] = {}
    if draw(st.booleans()):
        picked = draw(st.sampled_from(nodes))
        kwargs["playbooks"] = {picked: draw(NAMES)}
    flow = create(*draw(st.permutations(adjacency)), queue_maxsize=draw(st.integers(0, 8)))
    if draw(st.booleans()):
        kwargs["snapshot"] = flow.inspect()
    return flow, kwargs


SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(data=st.data())
def test_mermaid_is_always_in_grammar_and_faithful(
    data: st.DataObject, make_node: MakeNode, grammar: type[Grammar]
) -> None:
    flow, kwargs = data.draw(flows(make_node))
    text = flow_to_mermaid(flow, **kwargs)
    parsed = grammar.mermaid(text)
    _faithful(flow, parsed)
    assert flow_to_mermaid(flow, **kwargs) == text


@SETTINGS
@given(data=st.data())
def test_dot_is_always_in_grammar_and_faithful(
    data: st.DataObject, make_node: MakeNode, grammar: type[Grammar]
) -> None:
    flow, kwargs = data.draw(flows(make_node))
    text = flow_to_dot(flow, **kwargs)
    parsed = grammar.dot(text)
    _faithful(flow, parsed)
    assert flow_to_dot(flow, **kwargs) == text


def _faithful(flow: PenguiFlow, parsed: Parsed) -> None:
    has_in = any(f.source == OPEN_SEA for f in flow.floes)
    has_out = any(f.target == ROOKERY for f in flow.floes)
    assert len(parsed.labels) == len(flow.nodes) + has_in + has_out
    owners = [*flow.nodes, *([OPEN_SEA] if has_in else []), *([ROOKERY] if has_out else [])]
    ident = dict(zip(owners, parsed.labels, strict=True))
    assert [(s, d) for s, d, _ in parsed.edges] == [
        (ident[f.source], ident[f.target])
        for f in sorted(
            flow.floes, key=lambda f: 0 if f.source == OPEN_SEA else 2 if f.target == ROOKERY else 1
        )
    ]
    for src, dst, label in parsed.edges:
        if src == dst:
            assert label is not None and label.startswith("loop")
        for owner in (OPEN_SEA, ROOKERY):
            if owner in ident and ident[owner] in (src, dst):
                assert "endpoint" in parsed.classes[ident[owner]]
    for node in flow.nodes:
        looped = node.allow_cycle or any(f.source is node and f.target is node for f in flow.floes)
        assert ("controller_loop" in parsed.classes[ident[node]]) == looped


def test_tricky_flows_are_in_grammar_and_show_every_name(
    tricky: Case, grammar: type[Grammar]
) -> None:
    """The tricky flows of the real-renderer tests, without needing the renderers."""
    want = list(grammar.expected_labels(tricky).values())
    for render, check in ((flow_to_mermaid, grammar.mermaid), (flow_to_dot, grammar.dot)):
        parsed = check(render(tricky.flow, **tricky.kwargs()))
        _faithful(tricky.flow, parsed)
        assert list(parsed.labels.values()) == want
