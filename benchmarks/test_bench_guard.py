"""CI guard: fail on a 30% regression of any scenario's ratio, never on noise.

Every scenario of the benchmark runs in this process, ours and the pydantic-envelope
asyncio baseline (``raw-pyd``) interleaved in the same run, and the best throughput of
each side gives the ratio ours / raw-pyd. Each scenario has its own floor: 70% of the
ratio it reaches on the reference machine (``REFERENCE`` below), so a change that makes
any scenario 30% slower turns CI red, wherever the README target stands.

Noise never does: the ratio is taken within one run (both sides see the same machine
load), as the best of ``ROUNDS`` interleaved rounds per side, and a scenario under its
floor is measured again, up to ``ATTEMPTS`` times; only a ratio that stays under the
floor fails. Every measured run also checks its own results: a wrong, missing or
duplicated result fails the test outright.

Takes about half a minute; no sleeps. The full benchmark is ``python benchmarks/run.py``;
``python benchmarks/test_bench_guard.py`` prints this guard's ratios, to recalibrate
``REFERENCE`` after a deliberate change.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent

# ours / raw-pyd as this guard measures it (sizes below, best of ROUNDS) on the reference
# machine (2 cores, Python 3.11, asyncio loop), median of three guard runs.
REFERENCE: dict[str, float] = {
    "chain_seq": 0.95,
    "chain_pipe": 0.86,
    "chain_pipe_mw": 0.52,
    "chain_validated_pipe": 0.84,
    "quickstart_pipe": 1.12,
    "fanout_join_pipe": 0.85,
    "controller_seq": 1.05,
    "controller_w16": 1.04,
    "controller_emit_w16": 1.03,
    "streaming": 0.84,
    "playbook": 0.65,
    "concurrency_1k": 0.88,
    "concurrency_10k": 0.91,
    "retry0": 1.0,
    "invoke_1k": 0.85,
}
REGRESSION = 0.30  # a scenario this much slower than its reference fails
ROUNDS = 3  # interleaved rounds per side; the best of each side is compared
ATTEMPTS = 3  # a scenario under its floor is measured again this many times in all
MIN_TIME = 0.1  # measured seconds per run (one batch is usually enough)
# Smaller batches than the full benchmark: the guard must stay quick.
SIZES: dict[str, int] = {
    "chain_seq": 2000,
    "chain_pipe": 4000,
    "chain_pipe_mw": 4000,
    "chain_validated_pipe": 4000,
    "quickstart_pipe": 4000,
    "fanout_join_pipe": 2000,
    "controller_seq": 4000,
    "controller_w16": 8000,
    "controller_emit_w16": 8000,
    "streaming": 8000,
    "playbook": 1000,
    "concurrency_1k": 1000,
    "concurrency_10k": 10000,
    "retry0": 2000,
    "invoke_1k": 1000,
}


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


@contextlib.contextmanager
def loaded() -> Iterator[Any]:
    """(harness, ours, raw-pyd baseline), with the guard's measuring time and quiet logs."""
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
        logging.getLogger("penguiflow").setLevel(old_level)


@pytest.fixture(scope="module")
def sides() -> Iterator[Any]:
    with loaded() as state:
        yield state


def test_same_scenarios_on_both_sides(sides: Any) -> None:
    harness, ours, base = sides
    assert list(ours.REG.scenarios) == harness.ORDER
    assert sorted(base.REG.scenarios) == sorted(harness.ORDER)


def measure(sides: Any, scenario: str) -> tuple[float, dict[str, float]]:
    """The ratio ours / raw-pyd of one scenario: best of ``ROUNDS`` interleaved runs."""
    harness, ours, base = sides
    n = SIZES[scenario]
    best = {"ours": 0.0, "raw-pyd": 0.0}
    for _ in range(ROUNDS):
        for label, module in (("ours", ours), ("raw-pyd", base)):
            res = harness.run_scenario(module.REG.scenarios[scenario], n, timeout=60.0)
            best[label] = max(best[label], res["per_sec"])
    return best["ours"] / best["raw-pyd"], best


def test_every_scenario_has_a_reference() -> None:
    assert sorted(REFERENCE) == sorted(SIZES)


@pytest.mark.parametrize("scenario", list(SIZES))
def test_no_regression_beyond_30_percent(sides: Any, scenario: str) -> None:
    floor = REFERENCE[scenario] * (1.0 - REGRESSION)
    seen = []
    for _ in range(ATTEMPTS):
        ratio, best = measure(sides, scenario)
        seen.append(ratio)
        if ratio >= floor:
            return
    pytest.fail(
        f"{scenario}: ours / raw-pyd = {', '.join(f'{r:.2f}' for r in seen)} over "
        f"{ATTEMPTS} measurements, under its floor {floor:.2f} (reference "
        f"{REFERENCE[scenario]:.2f}, less {REGRESSION:.0%}); last: ours "
        f"{best['ours']:,.0f}/s, raw-pyd {best['raw-pyd']:,.0f}/s. A hot-path regression?"
    )


if __name__ == "__main__":  # recalibrate: print this guard's ratios, one line each
    with loaded() as state:
        for name in SIZES:
            print(f"{name:22s} {measure(state, name)[0]:.3f}", flush=True)
