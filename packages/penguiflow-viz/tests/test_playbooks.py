"""Opt-in playbook/subflow annotation: ``playbooks={node_or_name: "label"}``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from penguiflow.core import create
from penguiflow.viz import flow_to_dot, flow_to_mermaid

if TYPE_CHECKING:
    from conftest import Cases, MakeNode
    from penguiflow.node import Node


def test_playbook_nodes_are_marked_in_both_outputs(cases: Cases) -> None:
    case = cases["fan_out_in"]()
    kwargs: dict[str, Any] = {"playbooks": {case.nodes["b"]: "retrieval", "c": ""}}
    assert flow_to_mermaid(case.flow, **kwargs).split("\n")[1:11] == [
        '    split["split"]',
        '    a["a"]',
        '    b[["b<br/>playbook: retrieval"]]',
        '    c[["c<br/>playbook"]]',
        '    join["join"]',
        '    OpenSea["OpenSea"]',
        '    Rookery["Rookery"]',
        "    classDef endpoint fill:#e0f2fe,stroke:#0369a1,stroke-width:1px",
        "    classDef playbook fill:#ede9fe,stroke:#6d28d9,stroke-width:1px",
        "    class b playbook",
    ]
    dot = flow_to_dot(case.flow, **kwargs).split("\n")
    assert dot[5:7] == [
        '    b [label="b\\nplaybook: retrieval", peripheries=2]',
        '    c [label="c\\nplaybook", peripheries=2]',
    ]


def test_playbook_on_a_controller(cases: Cases) -> None:
    case = cases["controller"]()
    kwargs: dict[str, Any] = {"playbooks": {"controller": 'search "web" & <cite>'}}
    lines = flow_to_mermaid(case.flow, **kwargs).split("\n")
    assert lines[2] == (
        '    controller[["controller<br/>playbook: search #quot;web#quot; #amp; #lt;cite#gt;"]]'
    )
    assert "    class controller controller_loop" in lines
    assert "    class controller playbook" in lines
    dot = flow_to_dot(case.flow, **kwargs).split("\n")
    assert dot[4] == (
        '    controller [label="controller\\nplaybook: search \\"web\\" &amp; <cite>", '
        'style="rounded,filled", fillcolor="#fef3c7", peripheries=2]'
    )


def test_no_playbooks_or_an_empty_mapping_changes_nothing(cases: Cases) -> None:
    flow = cases["controller"]().flow
    assert flow_to_mermaid(flow, playbooks={}) == flow_to_mermaid(flow)
    assert flow_to_dot(flow, playbooks=None) == flow_to_dot(flow)


def test_unknown_node_name_is_rejected(cases: Cases) -> None:
    flow = cases["controller"]().flow
    with pytest.raises(ValueError, match="playbooks: no node named 'nope' in this flow"):
        flow_to_mermaid(flow, playbooks={"nope": "x"})


def test_node_of_another_flow_is_rejected(cases: Cases, make_node: MakeNode) -> None:
    flow = cases["controller"]().flow
    stranger = make_node("stranger")
    with pytest.raises(ValueError, match="'stranger' is not a node of this flow"):
        flow_to_dot(flow, playbooks={stranger: "x"})


def test_a_key_of_the_wrong_type_is_rejected(cases: Cases) -> None:
    flow = cases["controller"]().flow
    with pytest.raises(TypeError, match="keys must be Node or str"):
        flow_to_mermaid(flow, playbooks={3: "x"})  # type: ignore[arg-type]


def test_a_label_of_the_wrong_type_is_rejected(cases: Cases) -> None:
    flow = cases["controller"]().flow
    with pytest.raises(TypeError, match="must be a str"):
        flow_to_dot(flow, playbooks={"controller": 3})  # type: ignore[arg-type]


def test_conflicting_labels_for_one_node_are_rejected(cases: Cases) -> None:
    case = cases["controller"]()
    playbooks: dict[Node | str, str] = {case.nodes["sum"]: "one", "sum": "two"}
    with pytest.raises(ValueError, match="node 'sum' is annotated twice"):
        flow_to_mermaid(case.flow, playbooks=playbooks)
    same: dict[Node | str, str] = {case.nodes["sum"]: "one", "sum": "one"}
    assert "playbook: one" in flow_to_mermaid(case.flow, playbooks=same)


def test_playbook_label_cannot_break_the_diagram(make_node: MakeNode) -> None:
    a = make_node("a")
    flow = create(a.to())
    line = flow_to_mermaid(flow, playbooks={"a": '"]]\n    end --> x'}).split("\n")[1]
    assert line == '    a[["a<br/>playbook: #quot;]]<br/>    end --#gt; x"]]'
