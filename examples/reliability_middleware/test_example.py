"""Smoke-run the reliability example: as a script, and in-process to check the events."""

from __future__ import annotations

import asyncio
import runpy
import subprocess
import sys
from pathlib import Path

MAIN = Path(__file__).with_name("main.py")


def test_script_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(MAIN)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    for event in ("node_start", "node_error", "node_retry", "node_success", "node_timeout"):
        assert event in proc.stdout
    assert "broken node_failed" in proc.stdout
    assert "result: slow: ok after 2 attempts" in proc.stdout


def test_event_sequences_follow_the_policy() -> None:
    module = runpy.run_path(str(MAIN), run_name="reliability_middleware_example")
    results, log = asyncio.run(module["main"]())

    assert results == ["flaky: ok after 2 attempts", "slow: ok after 2 attempts"]

    def events(label: str) -> list[tuple[str, int]]:
        return [(kind, attempt) for who, kind, attempt in log.seen if who == label]

    assert events("flaky") == [
        ("node_start", 0),
        ("node_error", 0),
        ("node_retry", 1),
        ("node_start", 1),
        ("node_success", 1),
    ]
    assert events("slow") == [
        ("node_start", 0),
        ("node_timeout", 0),
        ("node_retry", 1),
        ("node_start", 1),
        ("node_success", 1),
    ]
    assert events("broken") == [
        ("node_start", 0),
        ("node_error", 0),
        ("node_retry", 1),
        ("node_start", 1),
        ("node_error", 1),
        ("node_retry", 2),
        ("node_start", 2),
        ("node_error", 2),
        ("node_failed", 2),
    ]
