"""Smoke-run examples/routing_predicate/main.py."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest


async def test_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(Path(__file__).with_name("main.py")), run_name="example")
    result: Any = await module["main"]()
    out = capsys.readouterr().out
    assert result == [
        "audit    <- 'metric outage!' (priority 9)",
        "general  <- 'hello there'",
        "metrics  <- 'metric outage!'",
        "metrics  <- 'unique reach metric'",
    ]
    assert "buy now" not in out
