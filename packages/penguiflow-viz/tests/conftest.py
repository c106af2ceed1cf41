"""Fixtures for penguiflow-viz: tricky flows, strict grammar checks, real parsers.

Real parsers:

- Graphviz ``dot`` from PATH (CI: ``apt-get install -y graphviz``). Missing: the tests
  that need it skip, saying so; the grammar checks below still run.
- Mermaid: the ``mermaid`` npm package, run headless by ``node`` with a jsdom DOM
  (``mermaid_parse.mjs``). It is installed once into ``$PENGUIFLOW_VIZ_MERMAID_DIR``
  (default ``<tmp>/penguiflow-viz-mermaid``) with ``npm install`` when missing. Without
  node/npm or registry access those tests skip, saying so.

Test modules cannot import this file (``--import-mode=importlib``), so helpers are
exposed as fixtures.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from penguiflow.core import OPEN_SEA, ROOKERY, Context, Endpoint, PenguiFlow, create
from penguiflow.inspect import EdgeSnapshot, FlowSnapshot, NodeSnapshot
from penguiflow.node import Node, NodePolicy

HERE = Path(__file__).resolve().parent
MERMAID_SPEC = ("mermaid@11", "jsdom@26")
NPM_TIMEOUT_S = 600
NODE_TIMEOUT_S = 120


# --------------------------------------------------------------------------- flows


async def _work(item: Any, ctx: Context) -> Any:
    return item


def node(name: str, *, allow_cycle: bool = False, max_concurrency: int = 1) -> Node:
    """A pass-through node with the given name and no validation."""
    policy = NodePolicy(validate="none", max_concurrency=max_concurrency)
    return Node(_work, name=name, policy=policy, allow_cycle=allow_cycle)


ODD_NAMES = (
    'say "hi"',
    "back\\slash",
    "trailing\\",
    "a b",
    "[x]",
    "{y}",
    "(z)",
    "end",
    "graph",
    "subgraph",
    "node",
    "edge",
    "digraph",
    "strict",
    "Graph",
    "NODE",
    "style",
    "class",
    "classDef",
    "click",
    "linkStyle",
    "_self",
    "1st step",
    "42",
    "日本語 ノード",
    "🐧 penguin",
    "é",
    "a|b",
    "a;b",
    "%% not a comment",
    "C# & <b>bold</b>",
    "#quot; literal",
    "&amp; literal",
    "`md`",
    "multi\nline",
    "crlf\r\nline",
    "tab\there",
    "\\N \\G \\l",
    'style: "x"',
    "classDef:#35;",
    "a --> b",
    "x:::y",
    "dup!",
    "dup?",
    "dup_",
    "OpenSea",
    "Rookery",
    "ctl\x00bell\x07",
    "lone\ud800surrogate",
)


@dataclass
class Case:
    """One flow to draw, with the optional overlay and playbook arguments."""

    name: str
    flow: PenguiFlow
    nodes: dict[str, Node] = field(default_factory=dict)
    snapshot: FlowSnapshot | None = None
    playbooks: dict[Node | str, str] | None = None

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.snapshot is not None:
            out["snapshot"] = self.snapshot
        if self.playbooks is not None:
            out["playbooks"] = self.playbooks
        return out


def fake_snapshot(flow: PenguiFlow, depths: dict[tuple[Any, Any], int]) -> FlowSnapshot:
    """A snapshot of ``flow`` (not running) with the given edge depths.

    ``depths`` maps ``(source, target)`` (nodes or endpoints) to queued items. Each node's
    ``queue_depth_in`` is the sum over its incoming edges; the first node with a backlog
    is shown running.
    """
    edges = tuple(
        EdgeSnapshot(f.source, f.target, f.maxsize, depths.get((f.source, f.target), 0))
        for f in flow.floes
    )
    nodes = []
    busy = False
    for n in flow.nodes:
        queued = sum(e.depth for e in edges if e.target is n)
        running = 1 if queued and not busy else 0
        busy = busy or bool(queued)
        nodes.append(NodeSnapshot(n, n.name, queued, running, n.policy.max_concurrency))
    return FlowSnapshot(
        running=True,
        queue_maxsize=flow.queue_maxsize,
        nodes=tuple(nodes),
        edges=edges,
        traces={},
        resources={},
        workers=len(nodes),
        subscriptions=0,
    )


def _controller() -> Case:
    planner, ctl, summarize = node("planner"), node("controller", allow_cycle=True), node("sum")
    flow = create(planner.to(ctl), ctl.to(ctl, summarize), summarize.to())
    return Case("controller", flow, {"planner": planner, "controller": ctl, "sum": summarize})


def _fan_out_in() -> Case:
    split, a, b, c, join = (node(n) for n in ("split", "a", "b", "c", "join"))
    flow = create(split.to(a, b, c), a.to(join), b.to(join), c.to(join), join.to())
    return Case("fan_out_in", flow, {"split": split, "a": a, "b": b, "c": c, "join": join})


def _odd_names() -> Case:
    # A fan-out from one hub so every odd name gets an ingress-side and an egress edge.
    hub = node("hub")
    odd = [node(name) for name in ODD_NAMES]
    sink = node("sink")
    flow = create(hub.to(*odd), *(n.to(sink) for n in odd), sink.to())
    return Case("odd_names", flow, {"hub": hub, "sink": sink})


def _self_loop_mixed() -> Case:
    # allow_cycles=True: a self-loop without allow_cycle, a 2-node cycle, and a node with
    # a self-edge plus another successor (no Rookery edge for it).
    entry, loop, ping, pong, out = (node(n) for n in ("entry", "loop", "ping", "pong", "out"))
    flow = create(
        entry.to(loop, ping),
        loop.to(loop, out),
        ping.to(pong),
        pong.to(ping, out),
        out.to(),
        allow_cycles=True,
    )
    return Case("self_loop_mixed", flow, {"loop": loop, "out": out})


def _pure_cycle() -> Case:
    # No ingress and no egress at all: neither boundary is drawn.
    a, b = node("a"), node("b")
    return Case("pure_cycle", create(a.to(b), b.to(a), allow_cycles=True), {"a": a, "b": b})


def _overlay() -> Case:
    case = _fan_out_in()
    flow, n = case.flow, case.nodes
    case.name = "overlay"
    case.snapshot = fake_snapshot(
        flow, {(OPEN_SEA, n["split"]): 7, (n["split"], n["b"]): 3, (n["join"], ROOKERY): 2}
    )
    case.playbooks = {n["b"]: 'retrieval "v2" <fast>', "join": ""}
    return case


def _overlay_odd() -> Case:
    case = _odd_names()
    case.name = "overlay_odd"
    hub = case.nodes["hub"]
    case.snapshot = fake_snapshot(case.flow, {(OPEN_SEA, hub): 5})
    case.playbooks = {"style": 'x:"y"', "dup?": "dup playbook", "end": "🐧\nnew line"}
    return case


CASES: dict[str, Callable[[], Case]] = {
    "controller": _controller,
    "fan_out_in": _fan_out_in,
    "odd_names": _odd_names,
    "self_loop_mixed": _self_loop_mixed,
    "pure_cycle": _pure_cycle,
    "overlay": _overlay,
    "overlay_odd": _overlay_odd,
}


MakeNode = Callable[..., Node]
"""The ``make_node`` fixture's type (test modules import these under ``TYPE_CHECKING``)."""
MakeSnapshot = Callable[[PenguiFlow, dict[tuple[Any, Any], int]], FlowSnapshot]
"""The ``make_snapshot`` fixture's type."""
Cases = dict[str, Callable[[], Case]]
"""The ``cases`` fixture's type."""


@pytest.fixture(params=sorted(CASES))
def tricky(request: pytest.FixtureRequest) -> Case:
    """Each tricky flow in turn."""
    return CASES[request.param]()


@pytest.fixture
def make_node() -> MakeNode:
    return node


@pytest.fixture
def make_snapshot() -> MakeSnapshot:
    return fake_snapshot


@pytest.fixture
def cases() -> Cases:
    return CASES


# --------------------------------------------------------------------------- expected model


def normalised(text: str) -> str:
    """What a label shows: the normalisation rules of the package README."""
    text = re.sub(r"\r\n|[\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]", "\n", text)

    def unprintable(ch: str) -> bool:
        code = ord(ch)
        return (
            (code < 0x20 and ch not in "\n\t") or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF
        )

    return "".join("\ufffd" if unprintable(ch) else ch for ch in text)


def expected_labels(case: Case) -> dict[Node | Endpoint, str]:
    """The text each visual node should show (label, playbook line, overlay line)."""
    flow = case.flow
    pbs: dict[Node, str] = {}
    for key, label in (case.playbooks or {}).items():
        for n in flow.nodes:
            if n is key or n.name == key:
                pbs[n] = label
    loads = {ns.node: ns for ns in case.snapshot.nodes} if case.snapshot else {}
    out: dict[Node | Endpoint, str] = {}
    for n in flow.nodes:
        lines = [normalised(n.name or n.node_id)]
        if n in pbs:
            lines.append(normalised(f"playbook: {pbs[n]}" if pbs[n] else "playbook"))
        if n in loads:
            ns = loads[n]
            lines.append(f"queued {ns.queue_depth_in}, running {ns.inflight}/{ns.max_concurrency}")
        out[n] = "\n".join(lines)
    if any(f.source == OPEN_SEA for f in flow.floes):
        out[OPEN_SEA] = "OpenSea"
    if any(f.target == ROOKERY for f in flow.floes):
        rook = "Rookery"
        if case.snapshot is not None:
            queued = sum(e.depth for e in case.snapshot.edges if e.target == ROOKERY)
            rook += f"\nqueued {queued}"
        out[ROOKERY] = rook
    return out


# --------------------------------------------------------------------------- grammar checks


@dataclass
class Parsed:
    """What a grammar check or a real parser read from a diagram."""

    labels: dict[str, str]  # id -> shown text, in declaration order
    classes: dict[str, list[str]]  # id -> classes, in statement order
    edges: list[tuple[str, str, str | None]]  # (source id, target id, label)
    shapes: dict[str, str] = field(default_factory=dict)  # id -> "box" | "subroutine"
    link_styles: list[int] = field(default_factory=list)


MERMAID_RESERVED = {
    "_blank", "_parent", "_self", "_top", "call", "class", "classDef", "click", "end",
    "flowchart", "graph", "href", "interpolate", "linkStyle", "style", "subgraph",
}  # fmt: skip
DOT_KEYWORDS = {"digraph", "edge", "graph", "node", "strict", "subgraph"}
CLASS_DEFS = {
    "backlog": "stroke:#b91c1c,stroke-width:3px",
    "controller_loop": "fill:#fef3c7,stroke:#b45309,stroke-width:1px",
    "endpoint": "fill:#e0f2fe,stroke:#0369a1,stroke-width:1px",
    "playbook": "fill:#ede9fe,stroke:#6d28d9,stroke-width:1px",
}
_M_ID = r"[0-9A-Za-z_]+"
_M_LABEL = r'(?:[^"#&<>`\n\r]|#\w+;|<br/>)*'
_M_NODE = re.compile(rf'    ({_M_ID})(\["({_M_LABEL})"\]|\[\["({_M_LABEL})"\]\])')
_M_CLASSDEF = re.compile(r"    classDef (\w+) (\S+)")
_M_CLASS = re.compile(rf"    class ({_M_ID}) (\w+)")
_M_EDGE = re.compile(rf"    ({_M_ID}) -->(?:\|([0-9A-Za-z ,/]+)\|)? ({_M_ID})")
_M_LINKSTYLE = re.compile(r"    linkStyle (\d+(?:,\d+)*) stroke:#b91c1c,stroke-width:2px")
_M_STYLE_PASS = re.compile(r"(?:style|classDef).*:\S*#.*;")
_M_ENTITY = re.compile(r"#(\w+);")


def _mermaid_unescape(label: str) -> str:
    def entity(m: re.Match[str]) -> str:
        code = m.group(1)
        return chr(int(code)) if code.isdigit() else html.unescape(f"&{code};")

    return _M_ENTITY.sub(entity, label.replace("<br/>", "\n"))


def check_mermaid(text: str) -> Parsed:
    """Strict check of the Mermaid subset we emit; returns what it declares."""
    assert not text.endswith("\n")
    lines = text.split("\n")
    assert re.fullmatch(r"graph (TB|TD|BT|RL|LR)", lines[0]), lines[0]
    parsed = Parsed({}, {}, [])
    defined: list[str] = []
    section = 0  # 0 nodes, 1 classDef, 2 class, 3 edges, 4 linkStyle
    for line in lines[1:]:
        assert _M_STYLE_PASS.search(line) is None, f"style pre-pass would alter {line!r}"
        if m := _M_NODE.fullmatch(line):
            assert section == 0, line
            ident = m.group(1)
            assert ident not in MERMAID_RESERVED and ident not in parsed.labels, line
            label = m.group(3) if m.group(3) is not None else m.group(4)
            parsed.labels[ident] = _mermaid_unescape(label)
            parsed.shapes[ident] = "box" if m.group(3) is not None else "subroutine"
            parsed.classes[ident] = []
        elif m := _M_CLASSDEF.fullmatch(line):
            assert section <= 1, line
            section = 1
            assert CLASS_DEFS.get(m.group(1)) == m.group(2), line
            assert not defined or defined[-1] < m.group(1), "classDefs must be sorted"
            defined.append(m.group(1))
        elif m := _M_CLASS.fullmatch(line):
            assert section <= 2, line
            section = 2
            assert m.group(1) in parsed.labels and m.group(2) in defined, line
            parsed.classes[m.group(1)].append(m.group(2))
        elif m := _M_EDGE.fullmatch(line):
            assert section <= 3, line
            section = 3
            assert m.group(1) in parsed.labels and m.group(3) in parsed.labels, line
            parsed.edges.append((m.group(1), m.group(3), m.group(2)))
        elif m := _M_LINKSTYLE.fullmatch(line):
            assert section == 3, line
            section = 4
            parsed.link_styles = [int(i) for i in m.group(1).split(",")]
            assert all(0 <= i < len(parsed.edges) for i in parsed.link_styles), line
        else:
            raise AssertionError(f"not in the Mermaid grammar: {line!r}")
    used = {c for cs in parsed.classes.values() for c in cs}
    assert set(defined) == used, (defined, used)
    return parsed


_D_BARE = r"[A-Za-z_][0-9A-Za-z_]*"
_D_QUOTED = r'"[0-9][0-9A-Za-z_]*"'
_D_ID = rf"(?:{_D_BARE}|{_D_QUOTED})"
_D_STR = r'(?:[^"\\\n]|\\["\\n])*'
_D_NODE_ATTRS = (
    r'(?:, shape=oval, style="filled", fillcolor="#e0f2fe"'
    r'|, style="rounded,filled", fillcolor="#fef3c7")?'
    r"(, peripheries=2)?"
    r'(, color="#b91c1c", penwidth=2)?'
)
_D_NODE = re.compile(rf'    ({_D_ID}) \[label="({_D_STR})"({_D_NODE_ATTRS})\]')
_D_EDGE = re.compile(
    rf'    ({_D_ID}) -> ({_D_ID})(?: \[label="({_D_STR})"(, color="#b91c1c", penwidth=2)?\])?'
)


def _dot_ident(token: str) -> str:
    ident = token.strip('"')
    if token.startswith('"'):
        assert ident[0].isdigit(), "only digit-led ids are quoted"
    else:
        assert ident.lower() not in DOT_KEYWORDS, token
    assert ident not in MERMAID_RESERVED, token
    return ident


def _dot_unescape(label: str) -> str:
    assert re.search(r"&(?!amp;)", label) is None, f"raw & in {label!r}"
    label = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), label)
    return label.replace("&amp;", "&")


def check_dot(text: str) -> Parsed:
    """Strict check of the DOT subset we emit; returns what it declares."""
    assert not text.endswith("\n")
    lines = text.split("\n")
    assert lines[0] == "digraph PenguiFlow {"
    assert re.fullmatch(r"    rankdir=(TB|LR|BT|RL)", lines[1]), lines[1]
    assert lines[2] == "    node [shape=box, style=rounded]"
    assert lines[-1] == "}"
    parsed = Parsed({}, {}, [])
    in_edges = False
    for line in lines[3:-1]:
        if (m := _D_NODE.fullmatch(line)) and not in_edges:
            ident = _dot_ident(m.group(1))
            assert ident not in parsed.labels, line
            parsed.labels[ident] = _dot_unescape(m.group(2))
            attrs = m.group(3)
            classes = []
            if "peripheries" in attrs:
                classes.append("playbook")
            if "penwidth" in attrs:
                classes.append("backlog")
            if "oval" in attrs:
                classes.append("endpoint")
            elif "rounded,filled" in attrs:
                classes.append("controller_loop")
            parsed.classes[ident] = sorted(classes)
            parsed.shapes[ident] = "subroutine" if "peripheries" in attrs else "box"
        elif m := _D_EDGE.fullmatch(line):
            in_edges = True
            src, dst = _dot_ident(m.group(1)), _dot_ident(m.group(2))
            assert src in parsed.labels and dst in parsed.labels, line
            label = None if m.group(3) is None else _dot_unescape(m.group(3))
            if m.group(4):
                parsed.link_styles.append(len(parsed.edges))
            parsed.edges.append((src, dst, label))
        else:
            raise AssertionError(f"not in the DOT grammar: {line!r}")
    return parsed


# What JavaScript's String.prototype.trim() removes (Mermaid trims every label).
JS_WHITESPACE = (
    " \t\n\v\f\r\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
)


def js_trim(text: str) -> str:
    """Trim as Mermaid does: on the raw label, where a line break is ``<br/>``."""
    return text.replace("\n", "\ue000").strip(JS_WHITESPACE).replace("\ue000", "\n")


class Grammar:
    """The grammar checks above, as one fixture (test modules cannot import conftest)."""

    mermaid = staticmethod(check_mermaid)
    dot = staticmethod(check_dot)
    expected_labels = staticmethod(expected_labels)
    normalised = staticmethod(normalised)
    js_trim = staticmethod(js_trim)


@pytest.fixture
def grammar() -> type[Grammar]:
    """``grammar.mermaid(text)`` / ``grammar.dot(text)`` -> :class:`Parsed`."""
    return Grammar


# --------------------------------------------------------------------------- graphviz


class Graphviz:
    """Runs the real ``dot`` binary."""

    def __init__(self, exe: str) -> None:
        self.exe = exe

    def run(self, text: str, fmt: str) -> str:
        proc = subprocess.run(
            [self.exe, f"-T{fmt}"],
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=60,
            check=False,
        )
        stderr = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0, f"dot -T{fmt} failed: {stderr}\n{text}"
        assert stderr == "", f"dot -T{fmt} warned: {stderr}\n{text}"
        return proc.stdout.decode("utf-8")

    def svg(self, text: str) -> str:
        out = self.run(text, "svg")
        assert "<svg" in out and out.rstrip().endswith("</svg>")
        return out

    def model(self, text: str) -> Parsed:
        """Labels as Graphviz draws them (``-Tjson`` text ops), classes left empty."""
        data = json.loads(self.run(text, "json"))
        objects = data.get("objects", [])
        names = [o["name"] for o in objects]
        labels = {
            o["name"]: "\n".join(op["text"] for op in o.get("_ldraw_", []) if op["op"] == "T")
            for o in objects
        }
        edges = []
        for e in data.get("edges", []):
            texts = [op["text"] for op in e.get("_ldraw_", []) if op["op"] == "T"]
            edges.append((names[e["tail"]], names[e["head"]], "\n".join(texts) or None))
        return Parsed(labels, {}, edges)


@pytest.fixture(scope="session")
def graphviz() -> Graphviz:
    exe = shutil.which("dot")
    if exe is None:
        pytest.skip(
            "Graphviz `dot` is not on PATH, so DOT output is only grammar-checked here; "
            "install it with `apt-get install -y graphviz` to render it for real"
        )
    return Graphviz(exe)


# --------------------------------------------------------------------------- mermaid


class Mermaid:
    """Runs the real ``mermaid`` parser (npm package) in node, many texts per process."""

    def __init__(self, node_exe: str, workdir: Path) -> None:
        self.node_exe = node_exe
        self.workdir = workdir
        self.version = json.loads((workdir / "node_modules/mermaid/package.json").read_text())[
            "version"
        ]
        self._cache: dict[str, dict[str, Any]] = {}

    def warm(self, texts: Sequence[str]) -> None:
        """Parse many texts in one node process; later ``parse`` calls reuse the results."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            self._cache.update(zip(todo, self.parse_many(todo), strict=True))

    def parse_many(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        proc = subprocess.run(
            [self.node_exe, str(self.workdir / "mermaid_parse.mjs")],
            input=json.dumps(list(texts)).encode("utf-8"),
            capture_output=True,
            cwd=self.workdir,
            timeout=NODE_TIMEOUT_S,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
        results: list[dict[str, Any]] = json.loads(proc.stdout)
        assert len(results) == len(texts)
        return results

    def parse(self, text: str) -> Parsed:
        """Parse one diagram; fail with the parser's message if it is rejected."""
        self.warm([text])
        result = self._cache[text]
        assert result["ok"], f"mermaid {self.version} rejected the diagram: {result['error']}"
        return self.model(result)

    @staticmethod
    def model(result: dict[str, Any]) -> Parsed:
        assert result["type"] == "flowchart-v2"

        def shown(raw: str) -> str:
            # Line breaks first: a literal "<br/>" of a name is still an entity placeholder
            # here (Mermaid keeps entity codes as placeholders until it renders HTML).
            raw = re.sub(r"<br\s*/?>", "\n", raw)
            raw = re.sub(r"\ufb02\xb0\xb0(\d+)\xb6\xdf", lambda m: chr(int(m.group(1))), raw)
            return re.sub(
                r"\ufb02\xb0(\w+)\xb6\xdf", lambda m: html.unescape(f"&{m.group(1)};"), raw
            )

        vertices = result["vertices"]
        return Parsed(
            labels={v["id"]: shown(v["text"]) for v in vertices},
            classes={v["id"]: list(v["classes"]) for v in vertices},
            edges=[(e["start"], e["end"], e["text"] or None) for e in result["edges"]],
            shapes={
                v["id"]: "subroutine" if v["type"] == "subroutine" else "box" for v in vertices
            },
        )


def _mermaid_dir() -> Path:
    default = Path(tempfile.gettempdir()) / "penguiflow-viz-mermaid"
    return Path(os.environ.get("PENGUIFLOW_VIZ_MERMAID_DIR", default))


def _ensure_mermaid(workdir: Path) -> str | None:
    """Install mermaid + jsdom into ``workdir`` if needed; return a skip reason on failure."""
    if (workdir / "node_modules/mermaid/package.json").is_file() and (
        workdir / "node_modules/jsdom/package.json"
    ).is_file():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not on PATH, so the mermaid parser cannot be installed"
    workdir.mkdir(parents=True, exist_ok=True)
    package = workdir / "package.json"
    if not package.exists():
        package.write_text('{"name": "penguiflow-viz-mermaid-check", "private": true}\n')
    try:
        proc = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", *MERMAID_SPEC],
            cwd=workdir,
            capture_output=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"`npm install {' '.join(MERMAID_SPEC)}` timed out"
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        return f"`npm install {' '.join(MERMAID_SPEC)}` failed: {' / '.join(err)}"
    return None


@pytest.fixture(scope="session")
def mermaid() -> Iterator[Mermaid]:
    node_exe = shutil.which("node")
    if node_exe is None:
        pytest.skip(
            "node is not on PATH, so Mermaid output is only checked by our own strict "
            "grammar (test_properties.py); install Node.js >= 18 to run the real parser"
        )
    workdir = _mermaid_dir()
    reason = _ensure_mermaid(workdir)
    if reason is not None:
        pytest.skip(f"{reason}; Mermaid output is only checked by our own strict grammar")
    shutil.copyfile(HERE / "mermaid_parse.mjs", workdir / "mermaid_parse.mjs")
    parser = Mermaid(node_exe, workdir)
    probe = parser.parse_many(["graph TD\n    a --> b", "graph TD\n    a[ --> "])
    assert probe[0]["ok"] and not probe[1]["ok"], probe
    # One node process for every tricky flow the tests will parse.
    from penguiflow.viz import flow_to_mermaid

    warm = []
    for build in CASES.values():
        case = build()
        warm.append(flow_to_mermaid(case.flow, **case.kwargs()))
    controller = CASES["controller"]().flow
    warm += [flow_to_mermaid(controller, direction=d) for d in ("TD", "TB", "BT", "RL", "LR")]
    parser.warm(warm)
    yield parser
