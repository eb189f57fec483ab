"""``tiercache bench --suite stack``: the raw client baselines every tier is compared with.

redis-py GET / MGET on the Redis Cluster (sync and asyncio clients, hiredis parser) and
asyncpg ``fetchval`` on each Postgres shard. Values are checked before timing. Figures are
medians of per-call latency over sequential calls (loopback round trips); each group gets a
latency CDF (``--plot``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import asyncpg
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from tiercache.bench.base import BenchContext, Row, SuiteError
from tiercache.bench.timing import percentile

NAME = "stack"
DESCRIPTION = "raw redis-py GET/MGET on the cluster and raw asyncpg fetchval per shard"
NEEDS = ("redis", "pg")


def _row(name: str, samples_ns: list[float], extra: dict[str, Any] | None = None) -> Row:
    median = statistics.median(samples_ns)
    p99 = percentile(samples_ns, 99)
    return {
        "name": name,
        "summary": f"median {median / 1e3:.1f} us, p99 {p99 / 1e3:.1f} us "
                   f"({len(samples_ns)} calls)",
        "target": None,
        "ok": None,
        "value": median, "unit": "ns", "better": "lower",
        "data": {
            "median_ns": median, "min_ns": min(samples_ns), "p99_ns": p99,
            "calls": len(samples_ns), **(extra or {}),
        },
    }


def _time_sync(fn: Callable[[], Any], n: int) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        fn()
        samples.append(float(clock() - start))
    return samples


async def _time_async(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        await fn()
        samples.append(float(clock() - start))
    return samples


async def _redis_rows(ctx: BenchContext, url: str, calls: int) -> list[Row]:
    keys = [f"tiercache-bench:stack:{i}" for i in range(100)]
    value = b"x" * 100
    sync_client = RedisCluster.from_url(url)
    async_client = AsyncRedisCluster.from_url(url)
    try:
        for key in keys:
            sync_client.set(key, value, ex=300)
        if sync_client.get(keys[0]) != value or await async_client.get(keys[0]) != value:
            raise SuiteError("Redis GET returned the wrong value")
        if sync_client.mget_nonatomic(keys) != [value] * 100:
            raise SuiteError("Redis MGET returned the wrong values")
        get = {"sync cluster": _time_sync(lambda: sync_client.get(keys[0]), calls),
               "asyncio cluster": await _time_async(lambda: async_client.get(keys[0]), calls)}
        mget = {"sync": _time_sync(lambda: sync_client.mget_nonatomic(keys), calls // 5),
                "asyncio": await _time_async(lambda: async_client.mget_nonatomic(keys),
                                             calls // 5)}
        ctx.cdf("redis-py GET: per-call latency", get)
        ctx.cdf("redis-py MGET x100 (mget_nonatomic): per-call latency", mget)
        rows = [_row(f"redis-py GET ({k})", v) for k, v in get.items()]
        rows += [_row(f"redis-py MGET x100 ({k}, mget_nonatomic)", v) for k, v in mget.items()]
        sync_client.delete(*keys[:1])
        return rows
    finally:
        sync_client.close()
        await async_client.aclose()


async def _pg_rows(ctx: BenchContext, dsns: dict[str, str], calls: int) -> list[Row]:
    rows: list[Row] = []
    per_shard: dict[str, list[float]] = {}
    for shard, dsn in dsns.items():
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            if await pool.fetchval("SELECT $1::int + 1", 41) != 42:
                raise SuiteError(f"shard {shard}: fetchval returned the wrong value")
            samples = await _time_async(partial(pool.fetchval, "SELECT $1::int + 1", 41), calls)
            rows.append(_row(f"asyncpg fetchval, shard {shard}", samples, {"shard": shard}))
            per_shard[f"shard {shard}"] = samples
        finally:
            await pool.close()
    ctx.cdf("asyncpg fetchval per shard: per-call latency", per_shard)
    return rows


async def run(ctx: BenchContext) -> list[Row]:
    calls = ctx.scale(2000, 500)
    with ctx.progress("stack: raw redis-py + asyncpg", 2) as bar:
        rows = await _redis_rows(ctx, ctx.require_redis(), calls)
        bar.advance()
        rows += await _pg_rows(ctx, ctx.require_pg(), calls)
        bar.advance()
    return rows
