"""CI guard: fail on a large hot-path regression, never on noise.

Runs a few small scenarios in this process, ours and the pydantic-envelope asyncio
baseline (``raw-pyd``) interleaved in the same run, and compares the best throughput of
each side. The floor is far below the README targets (0.5, 0.3 with a middleware),
so only a real regression (an extra task per message, events built when nobody listens,
validation on ``validate="none"``...) can turn CI red. Every measured run also checks its
own results: a wrong, missing or duplicated result fails the test outright.

Takes a few seconds; no sleeps. The full benchmark is ``python benchmarks/run.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent

# Ratio ours / raw-pyd below which the guard fails; the README targets are >= 0.5.
FLOOR = 0.15
ROUNDS = 2  # interleaved rounds per side; the best of each side is compared
MIN_TIME = 0.1  # measured seconds per run (one batch is usually enough)
SIZES = {"chain_pipe": 2000, "controller_w16": 4000, "streaming": 4000}


def _load(name: str, filename: str) -> ModuleType:
    """Import a benchmark script under a private module name (it imports ``_harness``)."""
    saved = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location(name, HERE / filename)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


@pytest.fixture(scope="module")
def sides() -> Any:
    ours = _load("_pf_bench_scenarios", "scenarios.py")
    base = _load("_pf_bench_baseline", "baseline.py")
    harness = sys.modules["_harness"]
    base.use("pydantic")
    old_min_time = harness.MIN_TIME
    old_level = ours.quiet_logs()
    harness.MIN_TIME = MIN_TIME
    try:
        yield harness, ours, base
    finally:
        harness.MIN_TIME = old_min_time
        import logging

        logging.getLogger("penguiflow").setLevel(old_level)


def test_same_scenarios_on_both_sides(sides: Any) -> None:
    harness, ours, base = sides
    assert list(ours.REG.scenarios) == harness.ORDER
    assert sorted(base.REG.scenarios) == sorted(harness.ORDER)


@pytest.mark.parametrize("scenario", list(SIZES))
def test_no_large_regression(sides: Any, scenario: str) -> None:
    harness, ours, base = sides
    n = SIZES[scenario]
    best = {"ours": 0.0, "raw-pyd": 0.0}
    for _ in range(ROUNDS):
        for label, module in (("ours", ours), ("raw-pyd", base)):
            res = harness.run_scenario(module.REG.scenarios[scenario], n, timeout=30.0)
            best[label] = max(best[label], res["per_sec"])
    ratio = best["ours"] / best["raw-pyd"]
    assert ratio >= FLOOR, (
        f"{scenario}: ours {best['ours']:,.0f}/s vs raw-pyd {best['raw-pyd']:,.0f}/s "
        f"= {ratio:.2f} < {FLOOR} (target 0.5): a hot-path regression?"
    )
