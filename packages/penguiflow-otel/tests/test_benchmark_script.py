"""The overhead benchmark stays runnable (a tiny run; the figures are in the README)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"


def test_overhead_script_runs(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(SCRIPT), run_name="overhead_benchmark")
    assert module["main"](["--runs", "1", "--min-time", "0", "--batch", "20"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [row.split("|")[1].strip() for row in table[3:]] == list(module["MODES"])
