"""Paired rounds for the ``l2`` suite: RedisTier vs raw redis-py on the same server.

Fairness: both sides read the *same keys holding the same bytes* (the tier's envelopes), on
the same cluster, with hiredis and pooled connections. The raw side is redis-py as a user
gets it from ``from_url`` (its defaults, 5 s socket timeouts); the tier adds its breaker
check, timing, counters and envelope decode, and enforces its own 0.5 s operation budget
(``asyncio.timeout``, cheaper than redis-py's per-write ``wait_for`` on the raw side).
A loopback round trip is 40-200 us and a shared machine jitters by as much, so the two
sides alternate call by call (A B, B A, ...) within each round, and the judged figure is
the median over rounds of the per-round ratio of mean call times.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tiercache.bench.base import Row

__all__ = ["GET_MANY_MAX_RATIO", "GET_MAX_RATIO", "PREFIX", "paired_row", "rounds_async",
           "rounds_sync", "value"]

GET_MAX_RATIO = 1.2
GET_MANY_MAX_RATIO = 1.3
PREFIX = "tcbench:l2:"


def value(i: int) -> dict[str, Any]:
    """A typical cached row: a user record of ~100 bytes."""
    return {"id": i, "name": f"user-{i}", "email": f"user{i}@example.com", "active": True,
            "score": i * 1.5}


def paired_row(name: str, baseline: str, ours: list[float], raw: list[float], max_ratio: float,
               batch: int) -> Row:
    """Judged on the median of per-round ratios; rounds (seconds per call) kept in ns."""
    paired = statistics.median(a / b for a, b in zip(ours, raw, strict=True))
    ours_us, raw_us = statistics.median(ours) * 1e6, statistics.median(raw) * 1e6
    return {
        "name": name,
        "summary": f"{ours_us:.1f} us vs {baseline} {raw_us:.1f} us: {paired:.3f}x "
                   f"(median of {len(ours)} paired rounds)",
        "target": f"<= {max_ratio:g}x {baseline}",
        "ok": paired <= max_ratio,
        "value": paired, "unit": "x", "better": "lower",
        "rounds": {"tiercache": [a * 1e9 for a in ours], baseline: [b * 1e9 for b in raw]},
        "data": {"ratio": paired, "ours_median_us": ours_us, "raw_median_us": raw_us,
                 "ours_ns": ours_us * 1e3, "theirs_ns": raw_us * 1e3,
                 "ratio_of_minima": min(ours) / min(raw), "rounds": len(ours),
                 "calls_per_round": batch},
    }


async def rounds_async(ours: Callable[[], Awaitable[Any]], raw: Callable[[], Awaitable[Any]],
                        rounds: int, pairs: int, calls: dict[str, list[float]] | None = None
                        ) -> tuple[list[float], list[float]]:
    """Per round: ``pairs`` calls of each, alternating call by call (AB, BA, AB, ...) so both
    sides see the same background load; returns per-round mean seconds per call. ``calls``
    (optional) receives every call's seconds under ``"ours"`` / ``"raw"`` (for CDFs)."""
    for _ in range(pairs):  # warm both connection pools
        await ours()
        await raw()
    clock = time.perf_counter
    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        ta = tb = 0.0
        for i in range(pairs):
            first, second = (raw, ours) if i % 2 else (ours, raw)
            t0 = clock()
            await first()
            t1 = clock()
            await second()
            t2 = clock()
            da, db = (t1 - t0, t2 - t1) if first is ours else (t2 - t1, t1 - t0)
            ta += da
            tb += db
            if calls is not None:
                calls["ours"].append(da)
                calls["raw"].append(db)
        a.append(ta / pairs)
        b.append(tb / pairs)
    return a, b


def rounds_sync(ours: Callable[[], Any], raw: Callable[[], Any], rounds: int,
                 pairs: int, calls: dict[str, list[float]] | None = None
                 ) -> tuple[list[float], list[float]]:
    """The blocking twin of :func:`rounds_async`."""
    for _ in range(pairs):
        ours()
        raw()
    clock = time.perf_counter
    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        ta = tb = 0.0
        for i in range(pairs):
            first, second = (raw, ours) if i % 2 else (ours, raw)
            t0 = clock()
            first()
            t1 = clock()
            second()
            t2 = clock()
            da, db = (t1 - t0, t2 - t1) if first is ours else (t2 - t1, t1 - t0)
            ta += da
            tb += db
            if calls is not None:
                calls["ours"].append(da)
                calls["raw"].append(db)
        a.append(ta / pairs)
        b.append(tb / pairs)
    return a, b
