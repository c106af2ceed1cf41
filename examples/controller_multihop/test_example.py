"""Smoke-run the controller example: as a script, and in-process to check each guardrail."""

from __future__ import annotations

import asyncio
import runpy
import subprocess
import sys
from pathlib import Path

MAIN = Path(__file__).with_name("main.py")


def test_script_runs_and_prints_every_outcome() -> None:
    proc = subprocess.run(
        [sys.executable, str(MAIN)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    for text in ("answered 'easy'", "Hop budget exhausted", "Token budget exhausted"):
        assert text in proc.stdout
    assert "Deadline exceeded" in proc.stdout


def test_each_guardrail_ends_its_own_request() -> None:
    module = runpy.run_path(str(MAIN), run_name="controller_multihop_example")
    results = asyncio.run(module["main"]())
    assert results == {
        "easy": ("answered 'easy'", 3),
        "hops": ("Hop budget exhausted", 4),  # invoked budget_hops times, never more
        "tokens": ("Token budget exhausted", 3),
        "deadline": ("Deadline exceeded", 3),
    }
