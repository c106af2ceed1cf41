"""Smoke-run the playbook example: as a script, and in-process to check trace reuse."""

from __future__ import annotations

import asyncio
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

MAIN = Path(__file__).with_name("main.py")


def test_script_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(MAIN)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "summary='acme pricing tiers | acme pricing faq'" in proc.stdout
    assert "summary='globex pricing sheet | globex security policy'" in proc.stdout


def test_playbook_reuses_the_parent_trace_and_headers(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(MAIN), run_name="playbook_retrieval_example")
    results = asyncio.run(module["main"]())
    printed = capsys.readouterr().out

    assert [r.headers.tenant for r in results] == ["acme", "globex"]
    assert [type(r.payload).__name__ for r in results] == ["Compressed", "Compressed"]
    assert results[1].payload.sources == ["globex pricing sheet", "globex security policy"]
    for result in results:
        # Every playbook node reported an event under the parent request's trace id.
        for node in ("retrieve", "rerank"):
            assert f"[playbook] {node:<8} ok  trace={result.trace_id}" in printed
    assert "retrieve for tenant=globex" in printed
