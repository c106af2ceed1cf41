"""Smoke-run examples/map_concurrent/main.py."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest


async def test_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(Path(__file__).with_name("main.py")), run_name="example")
    result: Any = await module["main"]()
    out = capsys.readouterr().out
    assert result == ["ALPHA", "BETA", "error: cannot enrich 'broken'", "GAMMA", "DELTA", "EPSILON"]
    assert out.splitlines() == result
