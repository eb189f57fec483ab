"""Timing helpers shared by the suites and ``benchmarks/``: warm-up, interleaved rounds, stats.

Why interleaved: on a shared machine the background load drifts during a run. Running the
contenders in alternation (A B C, C B A, ...) exposes each to the same drift, so ratios
measured in one run stay fair even when absolute figures move.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import timeit
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "best_ns_interleaved", "best_ns_per_op", "percentile", "rounds_async", "rounds_interleaved",
    "spread", "summarize", "throughput_async",
]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest rank on the sorted values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def spread(values: Sequence[float]) -> float:
    """Relative spread between rounds: (p90 - min) / min (0 = every round the same)."""
    if len(values) < 3:
        return 0.0
    low = min(values)
    return (percentile(values, 90) - low) / low if low > 0 else 0.0


def summarize(values: Sequence[float]) -> dict[str, float]:
    """min / median / p99 / mean / stdev / spread / n of one contender's rounds."""
    vals = [float(v) for v in values]
    return {
        "min": min(vals), "median": statistics.median(vals), "p99": percentile(vals, 99),
        "mean": statistics.fmean(vals), "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "spread": spread(vals), "n": float(len(vals)),
    }


def rounds_interleaved(calls: Mapping[str, Callable[[], Any]], number: int, rounds: int,
                       warmup: int = 1) -> dict[str, list[float]]:
    """ns per call of each contender, one figure per round of ``number`` calls.

    ``warmup`` rounds are run and dropped first; the order flips every round.
    """
    timers = {name: timeit.Timer(call) for name, call in calls.items()}
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            timers[name].timeit(number)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(timers[name].timeit(number) / number * 1e9)
    return out


async def rounds_async(calls: Mapping[str, Callable[[], Awaitable[Any]]], number: int,
                       rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """The async twin of :func:`rounds_interleaved`: ``number`` sequential awaits per round."""
    names = list(calls)
    clock = time.perf_counter_ns

    async def batch(fn: Callable[[], Awaitable[Any]]) -> float:
        start = clock()
        for _ in range(number):
            await fn()
        return (clock() - start) / number

    for _ in range(warmup):
        for name in names:
            await batch(calls[name])
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(await batch(calls[name]))
    return out


async def throughput_async(call: Callable[[], Awaitable[Any]], concurrency: int,
                           total: int) -> float:
    """Operations per second with ``concurrency`` tasks sharing ``total`` awaits of ``call``."""
    per_task, extra = divmod(total, concurrency)

    async def worker(n: int) -> None:
        for _ in range(n):
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker(per_task + (i < extra)) for i in range(concurrency)))
    return total / (time.perf_counter() - start)


def best_ns_interleaved(
    fns: dict[str, Callable[[], Any]], ops: int, repeats: int
) -> dict[str, float]:
    """Best-of-``repeats`` ns per op for each callable, run in alternation.

    Alternating (A, B, A, B, ...) exposes both sides to the same background load, so the
    ratio of the two minima is fair on a shared machine.
    """
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter_ns()
            fn()
            best[name] = min(best[name], (time.perf_counter_ns() - start) / ops)
    return best


def best_ns_per_op(fn: Callable[[], Any], ops: int, repeats: int) -> float:
    """Best-of-``repeats`` nanoseconds per op of ``fn()`` doing ``ops`` operations.

    The minimum is the least noisy estimator of a CPU-bound loop on a shared machine.
    """
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - start) / ops)
    return best
