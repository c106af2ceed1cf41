#!/usr/bin/env python3
"""PenguiFlow's own benchmark: our scenarios against hand-written asyncio, one command.

    python benchmarks/run.py                         # every scenario, 3 runs, asyncio loop
    python benchmarks/run.py --only chain_pipe,streaming --runs 1
    python benchmarks/run.py --uvloop                # needs `pip install uvloop`
    python benchmarks/run.py --quick                 # 1 run, short batches: a smoke test
    python benchmarks/run.py --json results.json     # also write every row and the medians
    python benchmarks/run.py --profile chain_pipe    # cProfile one scenario (ours), top 30

Every (scenario, implementation, run) is a fresh interpreter. Runs go in run-major order
(all scenarios, then again) and the three implementations of a scenario run back to
back, so machine noise hits all of them alike. The table shows medians; ratios are
taken within this one sitting. Exit status 1 if any scenario failed its checks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import ORDER  # noqa: E402

OURS, RAW, PYD = "ours", "raw-asyncio", "raw-pyd"
IMPLS: dict[str, list[str]] = {
    OURS: [str(HERE / "scenarios.py")],
    RAW: [str(HERE / "baseline.py"), "--msg", "plain"],
    PYD: [str(HERE / "baseline.py"), "--msg", "pydantic"],
}
# The README's targets: ratio ours / raw-pyd to reach (None = measured, no target).
TARGETS: dict[str, float | None] = {
    name: 0.8
    for name in (
        "chain_seq",
        "chain_pipe",
        "chain_validated_pipe",
        "quickstart_pipe",
        "fanout_join_pipe",
        "controller_seq",
        "controller_w16",
        "controller_emit_w16",
        "streaming",
        "playbook",
        "concurrency_1k",
        "concurrency_10k",
        "retry0",
        "invoke_1k",
    )
}
TARGETS["chain_pipe_mw"] = 0.5
KB_TARGET = 1.5  # KB per in-flight trace at 10k


def run_one(impl: str, scenario: str, extra: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, *IMPLS[impl][:1], scenario, *IMPLS[impl][1:], *extra]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        r = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=tempfile.gettempdir(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"scenario": scenario, "impl": impl, "error": f"timeout after {timeout:.0f}s"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if lines:
        try:
            row: dict[str, Any] = json.loads(lines[-1])
            row["impl"] = impl
            return row
        except json.JSONDecodeError:
            pass
    tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
    return {"scenario": scenario, "impl": impl, "error": f"exit {r.returncode}: {' | '.join(tail)}"}


def median_cell(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if any("skipped" in r for r in rows):
        return {"skipped": next(r["skipped"] for r in rows if "skipped" in r)}
    ok = [r for r in rows if "error" not in r and r.get("per_sec")]
    if len(ok) < len(rows) or not ok:
        bad = next(r for r in rows if "error" in r or not r.get("per_sec"))
        return {"error": bad.get("error", "no result"), "runs": len(rows), "failed": True}
    ps = [r["per_sec"] for r in ok]
    med = statistics.median(ps)
    cell: dict[str, Any] = {
        "per_sec": med,
        "spread": (max(ps) - min(ps)) / med if med else 0.0,
        "unit": ok[0]["unit"],
        "runs": len(ok),
    }
    kb = [r["kb_per_trace"] for r in ok if "kb_per_trace" in r]
    if kb:
        cell["kb_per_trace"] = statistics.median(kb)
    return cell


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["impl"]), []).append(r)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (sc, impl), rs in groups.items():
        out.setdefault(sc, {})[impl] = median_cell(rs)
    # Paired ratio: ours and raw-pyd of one run ran back to back, so the ratio of each
    # pair cancels slow drifts of a shared machine; report the median of those ratios.
    for sc, cells in out.items():
        pairs: dict[int, dict[str, float]] = {}
        for r in rows:
            if r["scenario"] == sc and r.get("per_sec") and "error" not in r:
                pairs.setdefault(r.get("run", 0), {})[r["impl"]] = r["per_sec"]
        ratios = [p[OURS] / p[PYD] for p in pairs.values() if OURS in p and PYD in p]
        if ratios and OURS in cells and "per_sec" in cells[OURS]:
            med = statistics.median(ratios)
            cells[OURS]["ratio_pyd"] = med
            cells[OURS]["ratio_spread"] = (max(ratios) - min(ratios)) / med if med else 0.0
    return out


def _rate(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "—"
    if "skipped" in cell:
        return "skip"
    if "error" in cell:
        return "FAIL"
    txt = f"{cell['per_sec']:,.0f}"
    return txt + "~" if cell["spread"] > 0.10 else txt


def render(med: dict[str, dict[str, dict[str, Any]]], scenarios: list[str], loop: str) -> str:
    lines = [
        f"## PenguiFlow vs hand-written asyncio ({loop} loop, median per second)",
        "",
        "| scenario | unit | ours/s | raw-asyncio/s | raw-pyd/s | ours / raw-pyd | target "
        "| KB/trace ours (raw-pyd) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    problems: list[str] = []
    for sc in scenarios:
        cells = med.get(sc, {})
        ours, raw, pyd = cells.get(OURS), cells.get(RAW), cells.get(PYD)
        unit = next((c["unit"] for c in (ours, raw, pyd) if c and "unit" in c), "")
        ratio = ""
        target = TARGETS.get(sc)
        if ours and "ratio_pyd" in ours:
            r = ours["ratio_pyd"]
            ratio = f"{r:.2f}"
            if ours["ratio_spread"] > 0.10:
                ratio += "~"
            if target is not None and r < target:
                ratio = f"**{ratio}**"
        kb = ""
        if ours and "kb_per_trace" in ours:
            kb = f"{ours['kb_per_trace']:.2f}"
            if pyd and "kb_per_trace" in pyd:
                kb += f" ({pyd['kb_per_trace']:.2f})"
        tgt = "—" if target is None else f"≥ {target}"
        if sc == "concurrency_10k":
            tgt += f", ≤ {KB_TARGET} KB"
        lines.append(
            f"| {sc} | {unit} | {_rate(ours)} | {_rate(raw)} | {_rate(pyd)} | {ratio} | {tgt} "
            f"| {kb} |"
        )
        for impl, c in cells.items():
            if c and "error" in c:
                problems.append(f"- {sc} / {impl}: FAIL {c['error'][:300]}")
            elif c and "skipped" in c:
                problems.append(f"- {sc} / {impl}: skipped: {c['skipped']}")
    lines += [
        "",
        "ours / raw-pyd: median over runs of the ratio within each run (the two ran back to "
        "back). `~`: spread (max - min) / median over runs above 10%. **bold**: below target.",
    ]
    if problems:
        lines += ["", "### Failures and skips", "", *problems]
    return "\n".join(lines)


def machine() -> str:
    try:
        from importlib.metadata import version

        pyd = version("pydantic")
    except Exception:
        pyd = "?"
    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return (
        f"Python {platform.python_version()}, pydantic {pyd}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load}"
    )


def profile(a: argparse.Namespace) -> int:
    impl = a.impl or OURS
    extra = ["--profile", str(a.top), "--min-time", str(a.min_time)]
    if a.uvloop:
        extra.append("--uvloop")
    cmd = [sys.executable, *IMPLS[impl][:1], a.profile, *IMPLS[impl][1:], *extra]
    return subprocess.run(cmd, check=False, cwd=tempfile.gettempdir()).returncode


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", help="comma-separated scenarios (default: all)")
    p.add_argument("--skip", help="comma-separated scenarios to leave out")
    p.add_argument("--runs", type=int, default=3, help="fresh processes per scenario and impl")
    p.add_argument("--uvloop", action="store_true", help="run every side on uvloop")
    p.add_argument("--json", help="write every row and the medians to this file")
    p.add_argument("--quick", action="store_true", help="1 run, 0.1 s batches, scale 0.3")
    p.add_argument("--impls", default=",".join(IMPLS), help="subset of ours,raw-asyncio,raw-pyd")
    p.add_argument("--min-time", type=float, default=0.5, help="min measured seconds per run")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every batch size")
    p.add_argument("--timeout", type=float, default=120.0, help="per scenario process")
    p.add_argument("--profile", metavar="SCENARIO", help="cProfile one scenario and exit")
    p.add_argument("--impl", help="with --profile: which side (default: ours)")
    p.add_argument("--top", type=int, default=30, help="with --profile: functions to print")
    p.add_argument("--report", metavar="FILE", help="print the table of a --json file and exit")
    a = p.parse_args()

    if a.report:
        doc = json.loads(Path(a.report).read_text())
        rows = doc["rows"]
        names = [s for s in ORDER if any(r["scenario"] == s for r in rows)]
        print(render(summarize(rows), names, doc["loop"]))
        print(f"\n{doc['machine']}; {doc['runs']} run(s).")
        return 0

    if a.uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            p.error("--uvloop needs uvloop: pip install uvloop")
    if a.profile:
        return profile(a)
    if a.quick:
        a.runs, a.min_time, a.scale = 1, 0.1, min(a.scale, 0.3)

    scenarios = list(ORDER)
    if a.only:
        wanted = a.only.split(",")
        unknown = [w for w in wanted if w not in ORDER]
        if unknown:
            p.error(f"unknown scenarios {unknown}; known: {', '.join(ORDER)}")
        scenarios = [s for s in ORDER if s in wanted]
    if a.skip:
        scenarios = [s for s in scenarios if s not in a.skip.split(",")]
    impls = [i for i in IMPLS if i in a.impls.split(",")]

    extra = ["--min-time", str(a.min_time), "--timeout", str(a.timeout)]
    if a.scale != 1.0:
        extra += ["--scale", str(a.scale)]
    if a.uvloop:
        extra.append("--uvloop")
    loop = "uvloop" if a.uvloop else "asyncio"

    info = machine()
    print(f"[bench] {info}", file=sys.stderr)
    info = f"{info} at start"
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    for run in range(1, a.runs + 1):
        for sc in scenarios:
            for impl in impls:
                row = run_one(impl, sc, extra, a.timeout + 30)
                row["run"] = run
                rows.append(row)
                if "error" in row:
                    status = "FAIL " + row["error"][:200]
                elif "skipped" in row:
                    status = "skipped: " + row["skipped"]
                else:
                    status = f"{row['per_sec']:>12,.0f} {row['unit']}/s"
                    if "kb_per_trace" in row:
                        status += f"  {row['kb_per_trace']:.2f} KB/trace"
                print(f"[run {run}] {sc:22s} {impl:12s} {status}", file=sys.stderr, flush=True)
    print(f"[bench] {len(rows)} processes in {time.time() - t0:.0f}s", file=sys.stderr)

    med = summarize(rows)
    print(render(med, scenarios, loop))
    info += f", {machine().rsplit(', ', 1)[-1]} at end"
    print(f"\n{info}; {a.runs} run(s), min-time {a.min_time}s, scale {a.scale}.")
    if a.json:
        doc = {"machine": info, "loop": loop, "runs": a.runs, "rows": rows, "medians": med}
        Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")
    failed = any("error" in r for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
