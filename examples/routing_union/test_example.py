"""Smoke-run examples/routing_union/main.py."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest


async def test_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(Path(__file__).with_name("main.py")), run_name="example")
    result: Any = await module["main"]()
    out = capsys.readouterr().out
    assert result[0] == "calc: 2.0 + 3.0 = 5.0"
    assert result[1].startswith("search: looking up 'penguins'")
    assert "calc: 2.0 + 3.0 = 5.0" in out
