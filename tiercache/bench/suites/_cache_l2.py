"""L2 figures of the ``cache`` suite: RedisTier vs raw redis-py on the same server.

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

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from tiercache.bench.base import Row, SuiteError
from tiercache.codec import unpack_entry
from tiercache.tiers.base import MISSING
from tiercache.tiers.redis import RedisTier

__all__ = ["GET_MANY_MAX_RATIO", "GET_MAX_RATIO", "measure_l2"]

GET_MAX_RATIO = 1.2
GET_MANY_MAX_RATIO = 1.3
PREFIX = "tcbench:l2:"


def _value(i: int) -> dict[str, Any]:
    """A typical cached row: a user record of ~100 bytes."""
    return {"id": i, "name": f"user-{i}", "email": f"user{i}@example.com", "active": True,
            "score": i * 1.5}


def _row(name: str, baseline: str, ours: list[float], raw: list[float], max_ratio: float,
         batch: int) -> Row:
    paired = statistics.median(a / b for a, b in zip(ours, raw, strict=True))
    ours_us, raw_us = statistics.median(ours) * 1e6, statistics.median(raw) * 1e6
    return {
        "name": name,
        "summary": f"{ours_us:.1f} us vs {baseline} {raw_us:.1f} us: {paired:.3f}x "
                   f"(median of {len(ours)} paired rounds)",
        "target": f"<= {max_ratio:g}x {baseline}",
        "ok": paired <= max_ratio,
        "data": {"ratio": paired, "ours_median_us": ours_us, "raw_median_us": raw_us,
                 "ratio_of_minima": min(ours) / min(raw), "rounds": len(ours),
                 "calls_per_round": batch},
    }


async def _rounds_async(ours: Callable[[], Awaitable[Any]], raw: Callable[[], Awaitable[Any]],
                        rounds: int, pairs: int) -> tuple[list[float], list[float]]:
    """Per round: ``pairs`` calls of each, alternating call by call (AB, BA, AB, ...) so both
    sides see the same background load; returns per-round mean seconds per call."""
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
            if first is ours:
                ta += t1 - t0
                tb += t2 - t1
            else:
                tb += t1 - t0
                ta += t2 - t1
        a.append(ta / pairs)
        b.append(tb / pairs)
    return a, b


def _rounds_sync(ours: Callable[[], Any], raw: Callable[[], Any], rounds: int,
                 pairs: int) -> tuple[list[float], list[float]]:
    """The blocking twin of :func:`_rounds_async`."""
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
            if first is ours:
                ta += t1 - t0
                tb += t2 - t1
            else:
                tb += t1 - t0
                ta += t2 - t1
        a.append(ta / pairs)
        b.append(tb / pairs)
    return a, b


async def measure_l2(url: str, *, quick: bool = False) -> list[Row]:
    """Rows for L2 get and get_many(100), async and sync, against raw redis-py."""
    tier = RedisTier(url, ttl=600)
    await tier.ping()  # connects and detects cluster vs single server
    cluster = bool(tier.cluster)
    raw_a: Any = (redis.asyncio.cluster.RedisCluster if cluster else redis.asyncio.Redis
                  ).from_url(url)
    raw_s: Any = (redis.cluster.RedisCluster if cluster else redis.Redis).from_url(url)
    key = PREFIX + "get"
    many = [f"{PREFIX}many:{i}" for i in range(100)]
    mget_raw_a = raw_a.mget_nonatomic if cluster else raw_a.mget
    mget_raw_s = raw_s.mget_nonatomic if cluster else raw_s.mget
    base = "RedisCluster" if cluster else "Redis"
    rounds, batch, batch_many = (15, 40, 6) if quick else (60, 100, 10)
    try:
        await tier.set(key, _value(7))
        await tier.set_many({k: _value(i) for i, k in enumerate(many)})
        expected = {k: _value(i) for i, k in enumerate(many)}
        if await tier.get(key) != _value(7) or await tier.get_many(many) != expected:
            raise SuiteError("RedisTier read back wrong values")
        raw_one = await raw_a.get(key)
        raw_many = await mget_raw_a(many)
        if unpack_entry(raw_one).value != _value(7) or any(r is None for r in raw_many):
            raise SuiteError("raw redis-py read back wrong bytes")
        if tier.get_sync(key) == MISSING or len(tier.get_many_sync(many)) != 100:
            raise SuiteError("RedisTier sync twins read back wrong values")
        if tier.stats()["errors"]:
            raise SuiteError(f"RedisTier reported errors: {tier.stats()['errors_by_op']}")

        rows = []
        a, b = await _rounds_async(lambda: tier.get(key), lambda: raw_a.get(key), rounds, batch)
        rows.append(_row("L2 get vs raw redis-py (async)", f"{base}.get", a, b,
                         GET_MAX_RATIO, batch))
        a, b = await _rounds_async(lambda: tier.get_many(many), lambda: mget_raw_a(many),
                                   rounds, batch_many)
        rows.append(_row("L2 get_many(100) vs raw redis-py (async)",
                         f"{base}.{'mget_nonatomic' if cluster else 'mget'}", a, b,
                         GET_MANY_MAX_RATIO, batch_many))
        a, b = await asyncio.to_thread(_rounds_sync, lambda: tier.get_sync(key),
                                       lambda: raw_s.get(key), rounds, batch)
        rows.append(_row("L2 get vs raw redis-py (sync)", f"{base}.get", a, b,
                         GET_MAX_RATIO, batch))
        a, b = await asyncio.to_thread(_rounds_sync, lambda: tier.get_many_sync(many),
                                       lambda: mget_raw_s(many), rounds, batch_many)
        rows.append(_row("L2 get_many(100) vs raw redis-py (sync)",
                         f"{base}.{'mget_nonatomic' if cluster else 'mget'}", a, b,
                         GET_MANY_MAX_RATIO, batch_many))
        if tier.stats()["errors"]:
            raise SuiteError(f"RedisTier errors while timing: {tier.stats()['errors_by_op']}")
        return rows
    finally:
        await tier.delete_pattern(PREFIX + "*")
        await tier.close()
        await raw_a.aclose()
        raw_s.close()
