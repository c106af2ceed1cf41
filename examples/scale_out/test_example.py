"""Smoke-run the scale-out example: as a script, and in-process to check what it returns."""

from __future__ import annotations

import asyncio
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MAIN = Path(__file__).with_name("main.py")

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed (Debian: apt-get install redis-server)",
)


def test_script_runs_two_workers_and_a_client() -> None:
    proc = subprocess.run(
        [sys.executable, str(MAIN)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "40 answers, first: '[metrics] show metric 0'",
        "streamed: [general] penguins swim in cold water -> "
        "'[general] penguins swim in cold water'",
        "cancelled: cancelled",
    ]


def test_the_answers_come_from_worker_processes() -> None:
    module = runpy.run_path(str(MAIN), run_name="scale_out_example")
    summary = asyncio.run(module["main"]())
    answers = summary["answers"]
    assert [a.payload.answer for a in answers] == [f"[metrics] show metric {i}" for i in range(40)]
    assert os.getpid() not in summary["worker_pids"]
    assert summary["words"] == ["[general]", "penguins", "swim", "in", "cold", "water"]
    assert summary["stuck"] == "cancelled"
