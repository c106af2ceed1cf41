"""The scale benchmark stays runnable (a tiny run; the figures are in the README)."""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_scale_script_runs(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    module = runpy.run_path(str(SCRIPT), run_name="scale_benchmark")
    args = ["--requests", "40", "--concurrency", "4", "--url", redis_url]
    assert module["main"](args) == 0
    table = capsys.readouterr().out.splitlines()
    rows = [row.split("|")[1].strip() for row in table if row.startswith("| ") and "---" not in row]
    assert rows[1:] == list(module["MODES"])
