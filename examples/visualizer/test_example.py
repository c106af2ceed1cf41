"""Smoke-run the visualizer example: as a script, and in-process into a temp folder."""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

MAIN = Path(__file__).with_name("main.py")


def test_script_writes_markdown_dot_and_svg(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(MAIN), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"markdown: {tmp_path / 'flow.md'}" in proc.stdout
    markdown = (tmp_path / "flow.md").read_text(encoding="utf-8")
    assert markdown.count("```mermaid\ngraph LR\n") == 2
    assert "    controller -->|loop| controller" in markdown
    assert "    triage --> retrieve_web\n    triage --> retrieve_docs" in markdown  # fan-out
    assert 'retrieve_docs[["retrieve_docs<br/>playbook: retrieval playbook' in markdown
    dot = (tmp_path / "flow.dot").read_text(encoding="utf-8")
    assert dot.startswith("digraph PenguiFlow {\n    rankdir=LR\n")
    assert '    controller -> controller [label="loop"]' in dot
    if shutil.which("dot") is not None:
        assert (tmp_path / "flow.svg").read_text(encoding="utf-8").rstrip().endswith("</svg>")
        assert (tmp_path / "flow_live.svg").exists()
    else:
        assert "no SVG written" in proc.stdout


def test_live_view_shows_the_stuck_merge(tmp_path: Path) -> None:
    module = runpy.run_path(str(MAIN), run_name="visualizer_example")
    files = module["main"](tmp_path)
    live = files["live_dot"].read_text(encoding="utf-8")
    assert re.search(r'merge \[label="merge\\nqueued 5, running 1/1", color=', live)
    queued = [int(n) for n in re.findall(r'-> merge \[label="(\d+)/8 queued"', live)]
    assert sorted(queued) == [2, 3]  # 3 results per retriever, merge holds one of them
    markdown = files["markdown"].read_text(encoding="utf-8")
    assert "    class merge backlog" in markdown
