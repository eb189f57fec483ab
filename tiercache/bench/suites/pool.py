"""``tiercache bench --suite pool``: ShardedPool vs a direct asyncpg pool, and fan-out.

The two figures of the pool's Must-show list, each measured side by side in one process:

* **routing overhead** -- ``ShardedPool.fetchval(..., shard_key=k)`` vs ``asyncpg.Pool.fetchval``
  on the *same* shard, same statement.  Target: <= 5%.
* **fan-out** -- ``fetch_all`` over every shard vs the slowest single-shard ``fetch`` of the
  same statement.  Target: <= 1.3x.

Loopback round trips are ~50-250 us and a shared machine adds jitter of the same order as
the effect measured, so both figures come from *interleaved* batches (the order rotates every
round, so drift hits every variant alike) and are the median of the per-round ratios.  Results
are checked before anything is timed: a fast wrong answer is a :class:`SuiteError`.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg

from tiercache.bench.base import BenchContext, Progress, Row, SuiteError
from tiercache.sharding.pool import ShardedPool, create_sharded_pool
from tiercache.sharding.ring import HashRing

NAME = "pool"
DESCRIPTION = "ShardedPool fetchval overhead vs asyncpg (same shard); fan-out vs slowest shard"
NEEDS: tuple[str, ...] = ("pg",)

OVERHEAD_TARGET = 1.05
FANOUT_TARGET = 1.3

#: Fan-out workloads.  What fan-out can hide is *waiting*: ``io-2ms`` spends its time in the
#: server waiting, so three shards overlap and the target applies everywhere.  ``select-1``
#: and ``cpu-aggregate`` are all CPU (client protocol work, server execution, wake-ups): three
#: of them at once overlap only when there are cores for the client and every server, so on
#: fewer than ``shards + 1`` cores they are reported but not judged -- their data also holds
#: the ratio of a raw ``asyncio.gather`` over the asyncpg pools, the floor any client hits.
FANOUT_QUERIES: dict[str, str] = {
    "select-1": "SELECT 1",
    "io-2ms": "SELECT 1 FROM pg_sleep(0.002)",
    "cpu-aggregate": "SELECT count(*) FROM generate_series(1, 60000) AS g(i) WHERE i % 7 = 0",
}
_CPU_BOUND = frozenset({"select-1", "cpu-aggregate"})

Call = Callable[[], Awaitable[Any]]


async def _timed_batch(fn: Call, n: int) -> float:
    """Mean seconds per call over ``n`` sequential awaits of ``fn()``."""
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n


def _summary(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_us": statistics.median(ordered) * 1e6,
        "min_us": ordered[0] * 1e6,
        "p90_us": ordered[int(0.9 * (len(ordered) - 1))] * 1e6,
    }


def _paired_ratio(samples: Sequence[float], base: Sequence[float]) -> float:
    return statistics.median(a / b for a, b in zip(samples, base, strict=True))


async def _interleaved(
    fns: Mapping[str, Call], rounds: int, batch: int, bar: Progress
) -> dict[str, list[float]]:
    """Per-round mean seconds per call of each fn, rotating (and reversing) the order."""
    names = list(fns)
    for name in names:  # warm up: prepared statements, caches
        await _timed_batch(fns[name], batch)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        if r % 2:
            order.reverse()
        for name in order:
            samples[name].append(await _timed_batch(fns[name], batch))
        bar.advance()
    return samples


async def _overhead(ctx: BenchContext, dsns: Mapping[str, str], rounds: int, batch: int,
                    bar: Progress) -> Row:
    """fetchval through ShardedPool vs the same shard's asyncpg pool (same connection).

    Baselines: the shard's own asyncpg pool (``shard_pool``: same backend process, so the
    ratio is exactly what the ShardedPool layer adds) and, for context, a separately created
    asyncpg pool (another backend process; on a busy box two identical asyncpg pools already
    differ by a few percent).
    """
    query = "SELECT $1::int"
    async with create_sharded_pool(dict(dsns), min_size=1, max_size=1) as sharded:
        shard = sharded.shards[0]
        key = next(k for k in range(100_000) if sharded.shard_for(k) == shard)
        if HashRing(list(dsns)).get_node(key) != shard:
            raise SuiteError("ShardedPool routing differs from HashRing")
        own = sharded.shard_pool(shard)
        async with asyncpg.create_pool(dsns[shard], min_size=1, max_size=1) as separate:
            answers = {
                await own.fetchval(query, 7), await separate.fetchval(query, 7),
                await sharded.fetchval(query, 7, shard_key=key),
                await sharded.fetchval(query, 7, shard=shard),
            }
            if answers != {7}:
                raise SuiteError(f"fetchval answers differ: {answers}")
            samples = await _interleaved(
                {
                    "asyncpg": lambda: own.fetchval(query, 1),
                    "asyncpg_separate": lambda: separate.fetchval(query, 1),
                    "sharded_key": lambda: sharded.fetchval(query, 1, shard_key=key),
                    "sharded_name": lambda: sharded.fetchval(query, 1, shard=shard),
                },
                rounds, batch, bar,
            )
    ctx.cdf(f"fetchval: mean latency per round of {batch} calls",
            {"tiercache ShardedPool (shard_key=)": samples["sharded_key"],
             "tiercache ShardedPool (shard=)": samples["sharded_name"],
             "asyncpg pool (the shard's own)": samples["asyncpg"],
             "asyncpg pool (separate)": samples["asyncpg_separate"]}, unit="s")
    base = samples["asyncpg"]
    ratio = _paired_ratio(samples["sharded_key"], base)
    by_name = _paired_ratio(samples["sharded_name"], base)
    vs_separate = _paired_ratio(samples["sharded_key"], samples["asyncpg_separate"])
    asyncpg_us = statistics.median(base) * 1e6
    sharded_us = statistics.median(samples["sharded_key"]) * 1e6
    return {
        "name": "fetchval overhead (shard_key=)",
        "summary": (
            f"{sharded_us:.1f} us vs asyncpg {asyncpg_us:.1f} us: {(ratio - 1) * 100:+.1f}% "
            f"(shard= {(by_name - 1) * 100:+.1f}%)"
        ),
        "target": f"<= +{(OVERHEAD_TARGET - 1) * 100:.0f}% vs asyncpg",
        "ok": ratio <= OVERHEAD_TARGET,
        "value": ratio, "unit": "x", "better": "lower",
        "rounds": {"tiercache": [x * 1e9 for x in samples["sharded_key"]],
                   "asyncpg": [x * 1e9 for x in base]},
        "data": {
            "shard": shard, "rounds": rounds, "calls_per_round": batch,
            "ratio": ratio, "overhead_pct": (ratio - 1) * 100,
            "overhead_by_name_pct": (by_name - 1) * 100,
            "overhead_vs_separate_pool_pct": (vs_separate - 1) * 100,
            **{f"{name}_us": _summary(s) for name, s in samples.items()},
        },
    }


async def _check_fanout(pool: ShardedPool, query: str) -> None:
    fanned = await pool.fetch_all(query)
    singles = {s: await pool.fetch(query, shard=s) for s in pool.shards}
    if {s: [tuple(r) for r in rows] for s, rows in fanned.items()} != {
        s: [tuple(r) for r in rows] for s, rows in singles.items()
    }:
        raise SuiteError(f"fetch_all({query!r}) differs from per-shard fetch")


async def _fanout_one(
    ctx: BenchContext, pool: ShardedPool, label: str, query: str, rounds: int, batch: int,
    bar: Progress,
) -> Row:
    """fetch_all vs each single shard, alternating which goes first every round."""
    await _check_fanout(pool, query)
    raw_pools = [pool.shard_pool(s) for s in pool.shards]

    def single(shard: str) -> Call:
        return lambda: pool.fetch(query, shard=shard)

    def fan() -> Awaitable[Any]:
        return pool.fetch_all(query)

    def raw_gather() -> Awaitable[Any]:  # the floor: plain gather over the asyncpg pools
        return asyncio.gather(*(p.fetch(query) for p in raw_pools))

    singles = {s: single(s) for s in pool.shards}
    for fn in (*singles.values(), fan, raw_gather):
        await _timed_batch(fn, batch)
    per_shard: dict[str, list[float]] = {s: [] for s in pool.shards}
    fan_s: list[float] = []
    raw_s: list[float] = []
    ratios: list[float] = []
    for r in range(rounds):
        this_round: dict[str, float] = {}
        order = list(pool.shards) if r % 2 else list(reversed(pool.shards))
        if r % 2:
            fan_s.append(await _timed_batch(fan, batch))
            raw_s.append(await _timed_batch(raw_gather, batch))
        for s in order:
            this_round[s] = await _timed_batch(singles[s], batch)
            per_shard[s].append(this_round[s])
        if not r % 2:
            raw_s.append(await _timed_batch(raw_gather, batch))
            fan_s.append(await _timed_batch(fan, batch))
        ratios.append(fan_s[-1] / max(this_round.values()))
        bar.advance()
    slowest = max(per_shard, key=lambda s: statistics.median(per_shard[s]))
    ratio = statistics.median(ratios)
    vs_raw = _paired_ratio(fan_s, raw_s)
    cores = os.cpu_count() or 1
    judged = label not in _CPU_BOUND or cores >= len(pool.shards) + 1
    floor = statistics.median(
        raw / max(per_shard[sh][i] for sh in per_shard) for i, raw in enumerate(raw_s)
    )
    ctx.cdf(f"fan-out {label}: mean latency per round of {batch} calls",
            {f"tiercache fetch_all ({len(pool.shards)} shards)": fan_s,
             "asyncio.gather over asyncpg": raw_s,
             **{f"single shard {s}": v for s, v in per_shard.items()}}, unit="s")
    slowest_us = statistics.median(per_shard[slowest]) * 1e6
    fan_us = statistics.median(fan_s) * 1e6
    note = "" if judged else f"; not judged on {cores} cores"
    return {
        "name": f"fan-out x{len(pool.shards)} {label}",
        "summary": (
            f"{fan_us:.0f} us vs slowest shard {slowest_us:.0f} us: {ratio:.2f}x "
            f"(raw gather {floor:.2f}x{note})"
        ),
        "target": f"<= {FANOUT_TARGET}x slowest shard",
        "ok": ratio <= FANOUT_TARGET if judged else None,
        "value": ratio, "unit": "x", "better": "lower",
        "rounds": {"tiercache": [x * 1e9 for x in fan_s],
                   "slowest shard": [x * 1e9 for x in per_shard[slowest]]},
        "data": {
            "query": query, "shards": len(pool.shards), "rounds": rounds,
            "calls_per_round": batch, "ratio": ratio, "ratio_vs_raw_gather": vs_raw,
            "raw_gather_vs_slowest": floor,
            "slowest_shard": slowest, "cpu_count": cores,
            "single_shard_us": {s: _summary(v) for s, v in per_shard.items()},
            "fanout_us": _summary(fan_s), "raw_asyncio_gather_us": _summary(raw_s),
        },
    }


async def run(ctx: BenchContext) -> list[Row]:
    """Both Must-show figures; fan-out needs at least two shards."""
    dsns = ctx.require_pg()
    o_rounds, o_batch = ctx.scale(80, 16), ctx.scale(50, 25)
    f_rounds, f_batch = ctx.scale(20, 4), ctx.scale(10, 5)
    fan = len(dsns) >= 2
    total = o_rounds + (f_rounds * len(FANOUT_QUERIES) if fan else 0)
    with ctx.progress("pool: fetchval overhead, fan-out", total) as bar:
        rows = [await _overhead(ctx, dsns, o_rounds, o_batch, bar)]
        if not fan:
            rows.append({
                "name": "fan-out", "summary": "not measured: needs >= 2 shards",
                "target": f"<= {FANOUT_TARGET}x slowest shard", "ok": None,
            })
            return rows
        async with create_sharded_pool(dict(dsns), min_size=1, max_size=1) as pool:
            for label, query in FANOUT_QUERIES.items():
                rows.append(await _fanout_one(ctx, pool, label, query, f_rounds, f_batch, bar))
    return rows
