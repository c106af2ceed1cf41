"""Identifiers, collisions, keywords and label escaping: user text never breaks a diagram."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.core import create
from penguiflow.viz import _model, flow_to_dot, flow_to_mermaid
from penguiflow.viz._escape import dot_text, mermaid_text, normalise

if TYPE_CHECKING:
    from conftest import MakeNode


def _chain(make_node: MakeNode, *names: str) -> Any:
    nodes = [make_node(n) for n in names]
    adj = [a.to(b) for a, b in itertools.pairwise(nodes)] + [nodes[-1].to()]
    return create(*adj)


def _node_lines(text: str, count: int) -> list[str]:
    return text.split("\n")[1 : 1 + count]


def test_identifier_is_the_label_with_unsafe_characters_replaced(make_node: MakeNode) -> None:
    flow = _chain(make_node, "fetch docs", "ré-rank", "日本", "ok_1")
    assert _node_lines(flow_to_mermaid(flow), 4) == [
        '    fetch_docs["fetch docs"]',
        '    r__rank["ré-rank"]',
        '    __["日本"]',
        '    ok_1["ok_1"]',
    ]


def test_collisions_get_numbered_suffixes_in_order(make_node: MakeNode) -> None:
    flow = _chain(make_node, "a b", "a-b", "a.b", "a_b_2", "a_b")
    assert _node_lines(flow_to_dot(flow), 8)[2:7] == [
        '    a_b [label="a b"]',
        '    a_b_2 [label="a-b"]',
        '    a_b_3 [label="a.b"]',
        '    a_b_2_2 [label="a_b_2"]',
        '    a_b_4 [label="a_b"]',
    ]


def test_a_node_named_like_a_boundary_stays_distinct(make_node: MakeNode) -> None:
    flow = _chain(make_node, "OpenSea", "Rookery")
    lines = flow_to_mermaid(flow).split("\n")
    assert lines[1:5] == [
        '    OpenSea["OpenSea"]',
        '    Rookery["Rookery"]',
        '    OpenSea_2["OpenSea"]',
        '    Rookery_2["Rookery"]',
    ]
    assert "    OpenSea_2 -->|ingress| OpenSea" in lines
    assert "    Rookery -->|egress| Rookery_2" in lines
    assert "    class OpenSea_2 endpoint" in lines
    assert "    class OpenSea endpoint" not in lines


def test_same_label_twice_stays_distinct() -> None:
    # Core rejects two nodes with one name in a flow, so exercise the model directly.
    ids = _model._Identifiers()
    assert [ids.new(label) for label in ("x", "x", "x", "x_2")] == ["x", "x_2", "x_3", "x_2_2"]


def test_empty_name_falls_back_to_node_id(make_node: MakeNode) -> None:
    blank = make_node("")
    text = flow_to_mermaid(create(blank.to()))
    assert f'    {blank.node_id}["{blank.node_id}"]' in text.split("\n")


@pytest.mark.parametrize(
    ("name", "ident"),
    [
        ("end", "end_2"),
        ("graph", "graph_2"),
        ("subgraph", "subgraph_2"),
        ("flowchart", "flowchart_2"),
        ("style", "style_2"),
        ("class", "class_2"),
        ("classDef", "classDef_2"),
        ("click", "click_2"),
        ("linkStyle", "linkStyle_2"),
        ("call", "call_2"),
        ("href", "href_2"),
        ("interpolate", "interpolate_2"),
        ("_blank", "_blank_2"),
        ("node", "node_2"),
        ("edge", "edge_2"),
        ("digraph", "digraph_2"),
        ("strict", "strict_2"),
        ("Node", "Node_2"),  # DOT keywords are case-insensitive
        ("GRAPH", "GRAPH_2"),
        ("End", "End"),  # Mermaid keywords are case-sensitive
        ("Style", "Style"),
        ("end!", "end_"),
    ],
)
def test_keywords_are_never_identifiers(make_node: MakeNode, name: str, ident: str) -> None:
    flow = create(make_node(name).to())
    assert flow_to_mermaid(flow).split("\n")[1].startswith(f"    {ident}[")
    assert flow_to_dot(flow).split("\n")[3].startswith(f"    {ident} [")


def test_digit_led_identifiers_are_quoted_in_dot_only(make_node: MakeNode) -> None:
    flow = _chain(make_node, "1st step", "42")
    dot = flow_to_dot(flow).split("\n")
    assert dot[3:5] == ['    "1st_step" [label="1st step"]', '    "42" [label="42"]']
    assert '    "1st_step" -> "42"' in dot
    mermaid = flow_to_mermaid(flow).split("\n")
    assert mermaid[1:3] == ['    1st_step["1st step"]', '    42["42"]']
    assert "    1st_step --> 42" in mermaid


@pytest.mark.parametrize(
    ("name", "mermaid", "dot"),
    [
        ('say "hi"', "say #quot;hi#quot;", 'say \\"hi\\"'),
        ("back\\slash", "back\\slash", "back\\\\slash"),
        ("trailing\\", "trailing\\", "trailing\\\\"),
        ("C# & <b>", "C#35; #amp; #lt;b#gt;", "C# &amp; <b>"),
        ("#quot;", "#35;quot;", "#quot;"),
        ("&amp;", "#amp;amp;", "&amp;amp;"),
        ("`md`", "#96;md#96;", "`md`"),
        ("two\nlines", "two<br/>lines", "two\\nlines"),
        ("cr\r\nlf\rx", "cr<br/>lf<br/>x", "cr\\nlf\\nx"),
        ("sep\u2028para\u2029", "sep<br/>para<br/>", "sep\\npara\\n"),
        ("\\N \\G", "\\N \\G", "\\\\N \\\\G"),
        ("tab\tkept", "tab\tkept", "tab\tkept"),
        ("nul\x00bell\x07del\x7f", "nul\ufffdbell\ufffddel\ufffd", "nul\ufffdbell\ufffddel\ufffd"),
        ("lone\ud800", "lone\ufffd", "lone\ufffd"),
        ("[x] {y} (z) |;%", "[x] {y} (z) |;%", "[x] {y} (z) |;%"),
        ("🐧 日本語 é", "🐧 日本語 é", "🐧 日本語 é"),
    ],
)
def test_label_escaping(name: str, mermaid: str, dot: str) -> None:
    assert mermaid_text(name) == mermaid
    assert dot_text(name) == dot


def test_normalise_keeps_printable_text_untouched() -> None:
    text = "plain ascii, ünïcödé, 🐧, tabs\tand\nnewlines"
    assert normalise(text) == text


def test_escaped_labels_in_full_lines(make_node: MakeNode) -> None:
    flow = create(make_node('say "hi" \\o/').to())
    assert flow_to_mermaid(flow).split("\n")[1] == '    say__hi___o_["say #quot;hi#quot; \\o/"]'
    assert flow_to_dot(flow).split("\n")[3] == '    say__hi___o_ [label="say \\"hi\\" \\\\o/"]'


def test_mermaid_style_pre_pass_cannot_eat_an_entity(make_node: MakeNode) -> None:
    # Mermaid drops the last ";" of /(style|classDef).*:\S*#.*;/ on every line; such a
    # line gets its ":" as "#58;" so the pattern no longer matches.
    flow = create(make_node('style:"x"').to(), make_node("plain: #1").to())
    lines = flow_to_mermaid(flow).split("\n")
    assert lines[1] == '    style__x_["style#58;#quot;x#quot;"]'
    assert lines[2] == '    plain___1["plain: #35;1"]'  # no "style" on the line: kept


def test_user_text_cannot_forge_a_line_break(make_node: MakeNode) -> None:
    flow = create(make_node("a<br/>b").to())
    assert flow_to_mermaid(flow).split("\n")[1] == '    a_br__b["a#lt;br/#gt;b"]'
