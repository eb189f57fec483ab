"""``tiercache bench --suite pool``: ShardedPool vs a direct asyncpg pool, and fan-out.

Two figures from the issue's Must-show list, each measured side by side in one process:

* **routing overhead** -- ``ShardedPool.fetchval(..., shard_key=k)`` vs ``asyncpg.Pool.fetchval``
  on the *same* shard server, one connection each, same statement.  Target: <= 5%.
* **fan-out** -- ``fetch_all`` over 3 shards vs the slowest single-shard ``fetch`` of the same
  statement.  Target: <= 1.3x.

Loopback round trips are ~50-250 us and a shared machine adds jitter of the same order as
the effect measured, so both figures come from *interleaved* batches (A, B, B, A, ...) and
are reported as the median of the per-round ratios, next to the plain medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg

from tiercache.sharding.pool import ShardedPool, create_sharded_pool

__all__ = ["NAME", "measure_fanout", "measure_overhead", "run"]

NAME = "pool"
DESCRIPTION = "ShardedPool routing overhead vs asyncpg, and 3-shard fan-out vs slowest shard"

OVERHEAD_TARGET = 1.05
FANOUT_TARGET = 1.3

#: Fan-out workloads: a trivial statement (pure client/round-trip cost) and one with real
#: server time, which is what fan-out is for (per-shard aggregates).
#: The CPU-bound aggregate also shows the machine: three shard servers doing CPU work at
#: once cannot beat the slowest single shard when there are fewer cores than shards, so its
#: ratio is reported but judged against the target only with >= 4 cores (3 servers + client).
FANOUT_QUERIES: dict[str, str] = {
    "select-1": "SELECT 1",
    "io-2ms": "SELECT 1 FROM pg_sleep(0.002)",
    "cpu-aggregate": "SELECT count(*) FROM generate_series(1, 60000) AS g(i) WHERE i % 7 = 0",
}
_CPU_BOUND = frozenset({"cpu-aggregate"})


async def _timed_batch(fn: Callable[[], Awaitable[Any]], n: int) -> float:
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


async def _interleaved(
    fns: Mapping[str, Callable[[], Awaitable[Any]]], rounds: int, batch: int
) -> dict[str, list[float]]:
    """Per-round mean seconds per call of each fn, rotating the order every round so drift
    and cache effects hit every variant alike."""
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
    return samples


def _paired_ratio(samples: Sequence[float], base: Sequence[float]) -> float:
    return statistics.median(a / b for a, b in zip(samples, base, strict=True))


async def measure_overhead(
    dsns: Mapping[str, str], *, rounds: int = 300, batch: int = 50
) -> dict[str, Any]:
    """Per-call ``fetchval`` latency: ShardedPool vs a direct asyncpg pool, same shard.

    Two baselines: the shard's own asyncpg pool (``pool.shard_pool(name)``: same connection,
    same backend process, so the ratio is exactly what the ShardedPool layer adds) and a
    separately created asyncpg pool (a different backend process; on a busy 2-core box two
    identical asyncpg pools already differ by a few percent, so this one is context).
    """
    sharded = await create_sharded_pool(dict(dsns), min_size=1, max_size=1)
    try:
        shard = sharded.shards[0]
        key = next(k for k in range(100_000) if sharded.shard_for(k) == shard)
        own = sharded.shard_pool(shard)
        separate = await asyncpg.create_pool(dsns[shard], min_size=1, max_size=1)
        query = "SELECT $1::int"
        try:
            samples = await _interleaved(
                {
                    "asyncpg_own": lambda: own.fetchval(query, 1),
                    "asyncpg_separate": lambda: separate.fetchval(query, 1),
                    "sharded_key": lambda: sharded.fetchval(query, 1, shard_key=key),
                    "sharded_name": lambda: sharded.fetchval(query, 1, shard=shard),
                },
                rounds,
                batch,
            )
        finally:
            await separate.close()
    finally:
        await sharded.close()
    base = samples["asyncpg_own"]
    ratio = _paired_ratio(samples["sharded_key"], base)
    return {
        "name": "pool.fetchval overhead",
        "shard": shard,
        "rounds": rounds,
        "calls_per_round": batch,
        "asyncpg": _summary(base),
        "asyncpg_separate_pool": _summary(samples["asyncpg_separate"]),
        "sharded": _summary(samples["sharded_key"]),
        "sharded_by_name": _summary(samples["sharded_name"]),
        "ratio": ratio,
        "overhead_pct": (ratio - 1.0) * 100.0,
        "overhead_by_name_pct": (_paired_ratio(samples["sharded_name"], base) - 1.0) * 100.0,
        "overhead_vs_separate_pool_pct": (
            _paired_ratio(samples["sharded_key"], samples["asyncpg_separate"]) - 1.0
        ) * 100.0,
        "target": f"<= {(OVERHEAD_TARGET - 1) * 100:.0f}%",
        "ok": ratio <= OVERHEAD_TARGET,
    }


async def measure_fanout(
    dsns: Mapping[str, str],
    *,
    rounds: int = 30,
    batch: int = 20,
    queries: Mapping[str, str] = FANOUT_QUERIES,
) -> list[dict[str, Any]]:
    """``fetch_all`` over every shard vs the slowest single-shard ``fetch``."""
    results: list[dict[str, Any]] = []
    pool: ShardedPool = await create_sharded_pool(dict(dsns), min_size=1, max_size=1)
    try:
        for label, query in queries.items():

            def single(shard: str, q: str = query) -> Callable[[], Awaitable[Any]]:
                return lambda: pool.fetch(q, shard=shard)

            async def fan(q: str = query) -> Any:
                return await pool.fetch_all(q)

            async def raw_gather(
                q: str = query, raw_pools: Sequence[Any] = tuple(map(pool.shard_pool, pool.shards))
            ) -> Any:
                # the floor: plain asyncio.gather over the shards' asyncpg pools
                return await asyncio.gather(*(p.fetch(q) for p in raw_pools))

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
            slowest = max(per_shard, key=lambda s: statistics.median(per_shard[s]))
            ratio = statistics.median(ratios)
            results.append({
                "name": f"pool.fan-out {label}",
                "query": query,
                "shards": len(pool.shards),
                "rounds": rounds,
                "calls_per_round": batch,
                "single_shard": {s: _summary(v) for s, v in per_shard.items()},
                "slowest_shard": slowest,
                "fanout": _summary(fan_s),
                "raw_asyncio_gather": _summary(raw_s),
                "ratio": ratio,
                "ratio_vs_raw_gather": _paired_ratio(fan_s, raw_s),
                "target": f"<= {FANOUT_TARGET}x",
                "cpu_count": os.cpu_count(),
                "ok": (
                    None
                    if label in _CPU_BOUND and (os.cpu_count() or 1) < len(pool.shards) + 1
                    else ratio <= FANOUT_TARGET
                ),
            })
    finally:
        await pool.close()
    return results


def _dsns_from(ctx: Any) -> dict[str, str]:
    for attr in ("pg_dsns", "postgres_dsns", "dsns"):
        value = ctx.get(attr) if isinstance(ctx, Mapping) else getattr(ctx, attr, None)
        if value:
            return dict(value)
    stack = ctx.get("stack") if isinstance(ctx, Mapping) else getattr(ctx, "stack", None)
    if stack is not None and getattr(stack, "pg_dsns", None):
        return dict(stack.pg_dsns)
    raise RuntimeError("the pool suite needs Postgres shard DSNs (ctx.pg_dsns)")


async def run(ctx: Any) -> list[dict[str, Any]]:
    """Entry point for the bench runner: returns one result dict per measurement."""
    dsns = _dsns_from(ctx)
    quick = bool(ctx.get("quick") if isinstance(ctx, Mapping) else getattr(ctx, "quick", False))
    results = [await measure_overhead(dsns, rounds=40 if quick else 300, batch=50)]
    if len(dsns) >= 2:
        results.extend(
            await measure_fanout(dsns, rounds=10 if quick else 30, batch=10 if quick else 20)
        )
    return results


def _format(result: Mapping[str, Any]) -> str:
    if "asyncpg" in result:
        return (
            f"{result['name']}: asyncpg {result['asyncpg']['median_us']:.1f} us, "
            f"sharded {result['sharded']['median_us']:.1f} us, overhead "
            f"{result['overhead_pct']:+.2f}% (target {result['target']}) "
            f"{'OK' if result['ok'] else 'MISS'}; shard= {result['overhead_by_name_pct']:+.2f}%, "
            f"vs a separate asyncpg pool (other backend process) "
            f"{result['overhead_vs_separate_pool_pct']:+.2f}%"
        )
    slowest = result["single_shard"][result["slowest_shard"]]["median_us"]
    return (
        f"{result['name']}: slowest shard {slowest:.1f} us, fan-out "
        f"{result['fanout']['median_us']:.1f} us, ratio {result['ratio']:.2f}x "
        f"(raw asyncio.gather over asyncpg: {result['raw_asyncio_gather']['median_us']:.1f} us, "
        f"fetch_all/raw {result['ratio_vs_raw_gather']:.2f}x) "
        f"(target {result['target']}) "
        + ("OK" if result["ok"] else "MISS" if result["ok"] is False
           else f"info only: {result['cpu_count']} cores < shards + 1")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tiercache.bench.suites.pool --pg-dsn s1=DSN ...`` (without the runner)."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--pg-dsn", action="append", required=True, metavar="NAME=DSN")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    dsns = dict(item.split("=", 1) for item in args.pg_dsn)
    results = asyncio.run(run({"pg_dsns": dsns, "quick": args.quick}))
    for result in results:
        print(_format(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
