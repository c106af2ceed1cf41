"""Load drivers, result checks and the one-scenario command line, shared by both sides.

This module never imports ``penguiflow``: ``scenarios.py`` (ours) and ``baseline.py``
(hand-written asyncio) both use it, so both sides are driven and checked by the very
same code.

Result checks are exact and cheap. Before a timed batch starts (untimed) we build the
set of results the batch must produce; every fetched result must remove exactly one
entry (``set.remove`` of a key read with one attribute access), and the set must be
empty when the batch ends. A wrong, missing or duplicated result is therefore an error,
never a number, in pipelined mode too. Error texts (reprs) are built only on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

perf_counter = time.perf_counter

# A timed batch is repeated until at least MIN_TIME seconds were measured (--min-time).
MIN_TIME = 0.5

# Work per timed batch, the same for both sides (units: see each scenario). The same
# sizes as ../shared/bench, plus chain_pipe_mw.
DEFAULT_N: dict[str, int] = {
    "chain_seq": 5000,
    "chain_pipe": 10000,
    "chain_pipe_mw": 10000,
    "chain_validated_pipe": 10000,
    "quickstart_pipe": 10000,
    "fanout_join_pipe": 3000,
    "controller_seq": 10000,
    "controller_w16": 20000,
    "controller_emit_w16": 20000,
    "streaming": 20000,
    "playbook": 2000,
    "concurrency_1k": 1000,
    "concurrency_10k": 10000,
    "retry0": 5000,
    "invoke_1k": 1000,
}

# Scenarios measured by run.py, in table order.
ORDER = list(DEFAULT_N)

Key = Callable[[Any], Hashable]
Want = Callable[[int], Hashable]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux: ru_maxrss is KiB)."""
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":  # bytes on macOS
        return ru / (1024.0 * 1024.0)
    return ru / 1024.0


class CheckError(AssertionError):
    """A scenario produced a wrong, missing or duplicated result."""


def fail(what: str) -> None:
    raise CheckError(what)


@dataclass
class Scenario:
    name: str
    fn: Callable[[int], Awaitable[dict[str, Any]]]
    default_n: int
    unit: str
    doc: str = ""


@dataclass
class Registry:
    scenarios: dict[str, Scenario] = field(default_factory=dict)

    def add(self, name: str, unit: str, doc: str = "") -> Callable[[Any], Any]:
        def deco(fn: Any) -> Any:
            self.scenarios[name] = Scenario(name, fn, DEFAULT_N[name], unit, doc)
            return fn

        return deco


# --------------------------------------------------------------------------- checks


def expected(want: Want, start: int, n: int) -> set[Hashable]:
    """The results a batch of traces ``start .. start+n-1`` must produce (built untimed)."""
    left = {want(i) for i in range(start, start + n)}
    if len(left) != n:
        raise ValueError("result keys of a batch must be distinct")
    return left


def _take(left: set[Hashable], key: Key, out: Any) -> None:
    # Cold path of a failed check: say what went wrong.
    try:
        k = key(out)
    except Exception as exc:
        fail(f"result of the wrong shape ({type(exc).__name__}: {exc}): {out!r}"[:400])
        return
    fail(f"unexpected or duplicated result (key {k!r}): {out!r}"[:400])


def finish(left: set[Hashable], what: str = "") -> None:
    if left:
        sample = sorted(map(repr, left))[:3]
        fail(f"{len(left)} result(s) missing{what}, e.g. {', '.join(sample)}")


async def no_trailing(fetch: Callable[[], Awaitable[Any]], wait: float = 0.05) -> None:
    """After the last batch (untimed): nothing more may come out (late duplicates)."""
    try:
        async with asyncio.timeout(wait):
            extra = await fetch()
    except TimeoutError:
        return
    fail(f"a result arrived after every expected result was fetched: {extra!r}"[:400])


# --------------------------------------------------------------------------- drivers


async def drive(
    emit: Callable[[Any], Awaitable[Any]],
    fetch: Callable[[], Awaitable[Any]],
    make: Callable[[int], Any],
    start: int,
    n: int,
    window: int | None,
    key: Key,
    left: set[Hashable],
) -> None:
    """Push traces ``start .. start+n-1`` through a flow and check every result.

    window == 1  -> latency-bound: emit one, fetch one, in the same task.
    window == k  -> at most k traces in flight (producer task + consumer).
    window None  -> unbounded producer task; only the flow's backpressure limits it.
    """
    remove = left.remove
    if window == 1:
        for i in range(start, start + n):
            await emit(make(i))
            out = await fetch()
            try:
                remove(key(out))
            except Exception:
                _take(left, key, out)
        return

    sem = asyncio.Semaphore(window) if window else None

    async def producer() -> None:
        if sem is None:
            for i in range(start, start + n):
                await emit(make(i))
        else:
            acquire = sem.acquire
            for i in range(start, start + n):
                await acquire()
                await emit(make(i))

    task = asyncio.create_task(producer())
    try:
        release = sem.release if sem is not None else None
        for _ in range(n):
            out = await fetch()
            if release is not None:
                release()
            try:
                remove(key(out))
            except Exception:
                _take(left, key, out)
        # The last result cannot exist before the last emit was accepted, so the
        # producer must finish promptly; if not, the flow is stuck or duplicated.
        await asyncio.wait({task}, timeout=5.0)
        if not task.done():
            fail("got n results while the producer was still emitting (duplicates?)")
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    task.result()


async def run_timed(
    emit: Callable[[Any], Awaitable[Any]],
    fetch: Callable[[], Awaitable[Any]],
    make: Callable[[int], Any],
    n: int,
    window: int | None,
    key: Key,
    want: Want,
    *,
    warm: int,
) -> tuple[int, float]:
    """Warm up, then time batches of ``n`` traces until MIN_TIME is reached.

    Each batch starts from an empty pipeline, so fill and drain count once per batch.
    Returns (traces done, seconds measured).
    """
    left = expected(want, 0, warm)
    await drive(emit, fetch, make, 0, warm, window, key, left)
    finish(left, " (warm-up)")
    done = 0
    seconds = 0.0
    while True:
        start = 1_000_000 + done
        left = expected(want, start, n)
        gc.collect()
        t0 = perf_counter()
        await drive(emit, fetch, make, start, n, window, key, left)
        seconds += perf_counter() - t0
        finish(left)
        done += n
        if seconds >= MIN_TIME:
            await no_trailing(fetch)
            return done, seconds


async def run_concurrent(
    emit: Callable[[Any], Awaitable[Any]],
    fetch: Callable[[], Awaitable[Any]],
    make: Callable[[int], Any],
    n: int,
    key: Key,
    want: Want,
) -> dict[str, Any]:
    """``n`` client tasks each emit one trace at once; one consumer fetches all ``n``.

    All ``n`` traces are in flight together (queued in the flow or parked on its
    backpressure). ``kb_per_trace`` = (peak RSS - RSS before) / n.
    """
    left = expected(want, 0, 200)
    await drive(emit, fetch, make, 0, 200, None, key, left)
    finish(left, " (warm-up)")
    start = 1_000_000
    left = expected(want, start, n)
    remove = left.remove
    gc.collect()
    base = peak_rss_mb()
    t0 = perf_counter()
    msgs = [make(i) for i in range(start, start + n)]
    tasks = [asyncio.create_task(emit(m)) for m in msgs]
    del msgs
    try:
        for _ in range(n):
            out = await fetch()
            try:
                remove(key(out))
            except Exception:
                _take(left, key, out)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    seconds = perf_counter() - t0
    peak = peak_rss_mb()
    for t in tasks:
        t.result()
    finish(left)
    await no_trailing(fetch)
    return {
        "seconds": seconds,
        "n": n,
        "base_rss_mb": round(base, 2),
        "kb_per_trace": round((peak - base) * 1024.0 / n, 3),
    }


async def run_invoke(
    call: Callable[[Any], Awaitable[Any]],
    make: Callable[[int], Any],
    n: int,
    key: Key,
    want: Want,
    *,
    warm: int,
) -> tuple[int, float]:
    """Batches of ``n`` concurrent request calls, each awaiting its own result.

    ``call(message)`` sends one request and returns its result (``flow.invoke`` on our
    side; on the baseline's, one future per request, resolved by the egress). Every
    caller must get the result of its own request: result ``i`` of a batch has the key
    ``want(start + i)``. Batches repeat until MIN_TIME was measured, as in ``run_timed``.
    Returns (calls done, seconds measured).
    """

    async def batch(start: int, count: int) -> None:
        wants = [want(i) for i in range(start, start + count)]
        results = await asyncio.gather(*[call(make(i)) for i in range(start, start + count)])
        for wanted, out in zip(wants, results, strict=True):
            try:
                ok = key(out) == wanted
            except Exception:
                ok = False
            if not ok:
                fail(f"a caller got another request's result: wanted {wanted!r}, got {out!r}"[:400])

    await batch(0, warm)
    done = 0
    seconds = 0.0
    while True:
        start = 1_000_000 + done
        gc.collect()
        t0 = perf_counter()
        await batch(start, n)
        seconds += perf_counter() - t0
        done += n
        if seconds >= MIN_TIME:
            return done, seconds


# --------------------------------------------------------------------------- command line


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    try:
        from importlib.metadata import version

        out["pydantic"] = version("pydantic")
    except Exception:  # pragma: no cover
        pass
    return out


def run_scenario(
    sc: Scenario, n: int, *, uvloop: bool = False, timeout: float = 120.0
) -> dict[str, Any]:
    """Run one scenario in this process; returns its result dict (raises on failure)."""

    async def runner() -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            return await sc.fn(n)

    gc.collect()
    if uvloop:
        import uvloop as _uvloop

        with asyncio.Runner(loop_factory=_uvloop.new_event_loop) as r:
            res = r.run(runner())
    else:
        res = asyncio.run(runner())
    if "skipped" in res:
        return res
    seconds = res.pop("seconds")
    work = res.pop("n", n)
    out = {
        "n": work,
        "seconds": round(seconds, 6),
        "per_sec": round(work / seconds, 2) if seconds > 0 else None,
        "peak_rss_mb": round(peak_rss_mb(), 2),
    }
    out.update(res)
    return out


def main(registry: Registry, impl: str, argv: list[str] | None = None) -> int:
    """Run one scenario and print one JSON line (``{"error": ...}`` on any failure)."""
    p = argparse.ArgumentParser(description="Run one benchmark scenario; prints one JSON line.")
    p.add_argument("scenario", help="scenario name, or 'list'")
    p.add_argument("--n", type=int, default=None, help="override the work size")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the default work size")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio")
    p.add_argument("--timeout", type=float, default=120.0, help="hard limit in seconds")
    p.add_argument("--min-time", type=float, default=MIN_TIME, help="min measured seconds")
    p.add_argument("--profile", type=int, default=0, help="cProfile; print top N functions")
    args = p.parse_args(argv)
    globals()["MIN_TIME"] = args.min_time

    if args.scenario == "list":
        for s in registry.scenarios.values():
            print(f"{s.name:22s} n={s.default_n:<7d} unit={s.unit:7s} {s.doc}")
        return 0
    sc = registry.scenarios.get(args.scenario)
    if sc is None:
        print(f"unknown scenario {args.scenario!r}; try 'list'", file=sys.stderr)
        return 2

    n = args.n if args.n is not None else max(1, int(sc.default_n * args.scale))
    base: dict[str, Any] = {
        "scenario": sc.name,
        "impl": impl,
        "loop": "uvloop" if args.uvloop else "asyncio",
        "unit": sc.unit,
    }
    base.update(versions())
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    try:
        res = run_scenario(sc, n, uvloop=args.uvloop, timeout=args.timeout)
    except BaseException as exc:  # report every failure as JSON
        base.update({"n": n, "error": f"{type(exc).__name__}: {exc}"[:500]})
        print(json.dumps(base), flush=True)
        return 1
    finally:
        if prof is not None:
            import pstats

            prof.disable()
            stats = pstats.Stats(prof, stream=sys.stderr)
            stats.strip_dirs().sort_stats("tottime").print_stats(args.profile)
    base.update(res)
    print(json.dumps(base), flush=True)
    return 0
