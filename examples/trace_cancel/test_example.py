"""Smoke-run the cancellation example: as a script, and in-process to check the outcome."""

from __future__ import annotations

import asyncio
import runpy
import subprocess
import sys
from pathlib import Path

MAIN = Path(__file__).with_name("main.py")


def test_script_runs_and_prints_the_cancel_events() -> None:
    proc = subprocess.run(
        [sys.executable, str(MAIN)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "trace_cancel_start" in proc.stdout
    assert "trace_cancel_finish" in proc.stdout
    assert "mock_llm got CancelledError" in proc.stdout
    assert "answer to 'what is 2+2'" in proc.stdout


def test_only_the_cancelled_trace_is_affected() -> None:
    module = runpy.run_path(str(MAIN), run_name="trace_cancel_example")
    summary = asyncio.run(module["main"]())
    stuck, normal = summary["stuck"], summary["normal"]

    # The other request finished normally.
    assert summary["result"].trace_id == normal
    assert summary["result"].payload == "answer to 'what is 2+2'"
    # The playbook node of the cancelled trace saw CancelledError, and only that one.
    assert summary["cleaned_up"] == [stuck]
    # cancel() is idempotent while the trace unwinds, and a no-op once it is gone.
    assert summary["cancel_returns"] == (True, True, False)

    main_events = [(kind, trace) for flow, kind, trace in summary["events"] if flow == "main"]
    assert main_events.count(("trace_cancel_start", stuck)) == 1
    assert main_events.count(("trace_cancel_finish", stuck)) == 1
    assert all(trace == stuck for _, trace in main_events)
    # The cancel was mirrored into the playbook's own flow.
    assert ("playbook", "node_trace_cancelled", stuck) in summary["events"]
