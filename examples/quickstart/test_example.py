"""Smoke-run the quickstart: as a script, and in-process to inspect what it returns."""

from __future__ import annotations

import asyncio
import runpy
import subprocess
import sys
from pathlib import Path

MAIN = Path(__file__).with_name("main.py")


def test_script_prints_the_prompt_and_payload() -> None:
    proc = subprocess.run(
        [sys.executable, str(MAIN)], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "[metrics] summarize 2 docs",
        "prompt='[metrics] summarize 2 docs'",
    ]


def test_result_is_an_envelope_carrying_the_request_headers() -> None:
    module = runpy.run_path(str(MAIN), run_name="quickstart_example")
    out = asyncio.run(module["main"]())
    assert type(out).__name__ == "Message"
    assert out.payload == module["PackOut"](prompt="[metrics] summarize 2 docs")
    assert out.prompt == "[metrics] summarize 2 docs"
    assert out.headers.tenant == "acme"
