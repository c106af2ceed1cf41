"""Smoke-run the OpenTelemetry example: as a script, and in-process to check the spans."""

from __future__ import annotations

import asyncio
import runpy
import subprocess
import sys
from pathlib import Path

MAIN = Path(__file__).with_name("main.py")


def test_script_prints_the_span_tree() -> None:
    proc = subprocess.run(
        [sys.executable, str(MAIN)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "trace 4bf92f3577b34da6a3ce929d0e0e4736"
    assert lines[1:10] == [
        "penguiflow.request [outcome=ok, parent=remote 00f067aa0ba902b7]",
        "  * node_retry retrieve",
        "  penguiflow.node triage [attempt=1, outcome=ok]",
        "  penguiflow.node retrieve [attempt=1, outcome=error]",
        "    * exception",
        "  penguiflow.node retrieve [attempt=2, outcome=ok]",
        "    penguiflow.request [outcome=ok]",
        "      penguiflow.node search [attempt=1, outcome=ok]",
        "  penguiflow.node answer [attempt=1, outcome=ok]",
    ]
    assert lines[10] == "result: answer from 1 doc(s)"
    assert lines[11].startswith("result traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-")


def test_every_span_joins_the_callers_trace() -> None:
    module = runpy.run_path(str(MAIN), run_name="otel_console_example")
    result, spans = asyncio.run(module["main"]())
    assert len(spans) == 7  # 2 requests + 5 attempts (retrieve twice)
    assert {s.context.trace_id for s in spans} == {0x4BF92F3577B34DA6A3CE929D0E0E4736}
    [outer] = [s for s in spans if s.parent is not None and s.parent.is_remote]
    assert f"{outer.context.span_id:016x}" in result.meta["traceparent"]


def test_json_mode_uses_the_console_exporter() -> None:
    proc = subprocess.run(
        [sys.executable, str(MAIN), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"name": "penguiflow.node search"' in proc.stdout
