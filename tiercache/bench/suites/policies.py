"""``tiercache bench --suite policies``: what the write and read policies cost, in one run.

Write rows (this module): a write-behind ``put`` next to the L1 set it adds to; the
journal's cost next to a raw redis-py ``XADD`` round trip, alone and with 100 concurrent
putters (group commit); write-behind into Postgres with ``batch_size=1000`` next to the same
rows written one by one. Every row checks what it timed (values served, entries journaled,
rows in Postgres) and fails the suite when they are wrong.

Read rows (:mod:`tiercache.bench.suites._policies_read`): refresh-ahead's hot-key p99.
Each entry of :data:`ROWS` is one independent group of rows.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from tiercache.bench.base import BenchContext, Row, SuiteError, compare_row, target_row
from tiercache.bench.suites._policies_read import refresh_rows
from tiercache.bench.timing import rounds_async
from tiercache.cache import TierCache
from tiercache.policies.write import WriteBehind
from tiercache.store import Store
from tiercache.tiers.memory import MemoryTier
from tiercache.tiers.redis import RedisTier

NAME = "policies"
DESCRIPTION = ("write-behind put vs an L1 set, the journal vs raw XADD (alone and 100 "
               "putters), write-behind into Postgres; refresh-ahead p99 of a hot key")
NEEDS = ("redis", "pg")

CONCURRENT = 100


async def _nothing(batch: Any) -> None:
    return None


def _load_none(key: Any) -> None:
    return None


def _cache(url: str | None, namespace: str) -> TierCache:
    l2 = None if url is None else RedisTier(url, ttl=300, max_connections=256)
    return TierCache(l1=MemoryTier(maxsize=1_000_000), l2=l2, namespace=namespace,
                     bus_wait=30.0)


async def l1_put_rows(ctx: BenchContext) -> list[Row]:
    """put under WriteBehind(journal=False) on an L1-only cache vs cache.set on it."""
    number, rounds = ctx.scale(5000, 500), ctx.scale(9, 3)
    cache = _cache(None, f"bp{uuid.uuid4().hex[:6]}")
    store = Store(cache, "s", loader=_load_none, writer=_nothing,
                  policy=WriteBehind(journal=False, max_delay=0.05, batch_size=10_000,
                                     max_queue=10_000_000))
    skeys, ckeys = itertools.count(), itertools.count()
    try:
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "store.put": lambda: store.put(next(skeys) % 5000, 1),
            "cache.set": lambda: cache.set(f"k{next(ckeys) % 5000}", 1),
        }
        result = await rounds_async(calls, number, rounds)
        if (await store.get(number - 1) != 1 or await cache.get(f"k{number - 1}") != 1
                or store.stats()["queued"] != number * (rounds + 1)):
            raise SuiteError("policies: a put or set was not served back")
        if not await store.flush(timeout=60) or store.stats()["queue_depth"]:
            raise SuiteError("policies: write-behind did not drain")
        return [compare_row(
            "put, WriteBehind(journal=False) vs an L1 set (cache.set, L1-only cache)",
            result, ours="store.put", theirs="cache.set", theirs_label="L1 set",
            statistic="min", max_ratio=2.0)]
    finally:
        await store.aclose()
        await cache.aclose()


async def journal_rows(ctx: BenchContext) -> list[Row]:
    """The journal's cost per put, sequential and with 100 putters, vs a raw XADD."""
    url = ctx.require_redis()
    number, rounds = ctx.scale(400, 60), ctx.scale(9, 3)
    ns = f"bj{uuid.uuid4().hex[:6]}"
    cache = _cache(url, ns)
    journaled = Store(cache, "j", loader=_load_none, writer=_nothing,
                      policy=WriteBehind(journal=True, max_delay=0.05, batch_size=1000,
                                         max_queue=10_000_000))
    plain = Store(cache, "p", loader=_load_none, writer=_nothing,
                  policy=WriteBehind(journal=False, max_delay=0.05, batch_size=1000,
                                     max_queue=10_000_000))
    raw = AsyncRedisCluster.from_url(url)
    stream = f"{ns}:bench:{{xadd}}"
    keys = iter(range(10**9))
    try:
        await raw.initialize()
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "journal=True": lambda: journaled.put(next(keys) % 2000, 1),
            "journal=False": lambda: plain.put(next(keys) % 2000, 1),
            "XADD": lambda: raw.xadd(stream, {"d": b"x" * 24}),
        }
        seq = await rounds_async(calls, number, rounds)
        appended = journaled.stats()["journal_appends"]
        if appended < number * rounds or await raw.xlen(stream) < number * rounds:
            raise SuiteError("policies: puts were not journaled / XADDs not appended")
        cost = [a - b for a, b in zip(seq["journal=True"], seq["journal=False"], strict=True)]
        ratio = statistics.median(c / x for c, x in zip(cost, seq["XADD"], strict=True))
        rtt = statistics.median(seq["XADD"])
        rows = [target_row(
            "journal cost per put (put journal=True minus journal=False) vs one raw XADD",
            ratio, "x XADD round trip", at_most=1.5,
            summary=(f"{statistics.median(cost) / 1e3:.1f} us per put vs XADD "
                     f"{rtt / 1e3:.1f} us: {ratio:.2f}x (median of {rounds} paired rounds)"),
            rounds=seq), compare_row(
            "put, WriteBehind(journal=True) vs put, WriteBehind(journal=False) (same tiers)",
            seq, ours="journal=True", theirs="journal=False", statistic="paired")]
        rows.append(await _concurrent_row(ctx, journaled, plain, rtt))
        return rows
    finally:
        await journaled.aclose()
        await plain.aclose()
        await raw.delete(stream)
        await raw.aclose()
        await cache.aclose()


async def _concurrent_row(ctx: BenchContext, journaled: Store, plain: Store,
                          rtt_ns: float) -> Row:
    per_task, repeats = ctx.scale(40, 10), ctx.scale(5, 2)

    async def wall(store: Store, base: int) -> float:
        async def task(t: int) -> None:
            for i in range(per_task):
                await store.put(base + t * per_task + i, i)

        start = time.perf_counter_ns()
        await asyncio.gather(*(task(t) for t in range(CONCURRENT)))
        return (time.perf_counter_ns() - start) / (CONCURRENT * per_task)

    gc = journaled.engine.gc if journaled.engine is not None else None
    if gc is None:
        raise SuiteError("policies: the journaled store has no write-behind engine")
    before = gc.batches, gc.appended
    costs, with_j, without = [], [], []
    for r in range(repeats):
        base = 10_000_000 + r * CONCURRENT * per_task
        j, p = await wall(journaled, base), await wall(plain, base)
        with_j.append(j)
        without.append(p)
        costs.append(j - p)
    batches, appended = gc.batches - before[0], gc.appended - before[1]
    if appended != repeats * CONCURRENT * per_task:
        raise SuiteError("policies: concurrent puts were not all journaled")
    cost = statistics.median(costs)
    return target_row(
        f"journal cost per put with {CONCURRENT} concurrent putters vs one XADD round trip",
        max(cost, 0.0) / rtt_ns, "x XADD round trip", at_most=0.3,
        summary=(f"{cost / 1e3:.1f} us per put ({statistics.median(with_j) / 1e3:.1f} vs "
                 f"{statistics.median(without) / 1e3:.1f} us wall per put) vs XADD "
                 f"{rtt_ns / 1e3:.1f} us; {appended / batches:.1f} puts per journal "
                 "round trip"),
        data={"puts_per_round_trip": appended / batches, "cost_ns": costs,
              "wall_ns_journal": with_j, "wall_ns_plain": without})


UPSERT = ("INSERT INTO {t} (k, v) VALUES ($1, $2) "
          "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v")
STAGE = ("CREATE TEMP TABLE IF NOT EXISTS tc_stage (k bigint, v bigint) "
         "ON COMMIT DELETE ROWS")
MERGE = ("INSERT INTO {t} SELECT k, v FROM tc_stage "
         "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v")


async def postgres_rows(ctx: BenchContext) -> list[Row]:
    """Write-behind (journal on, batch_size=1000, executemany upsert) vs one row at a time."""
    url, dsns = ctx.require_redis(), ctx.require_pg()
    n, single = ctx.scale(50_000, 5000), ctx.scale(3000, 500)
    pool = await asyncpg.create_pool(next(iter(dsns.values())), min_size=2, max_size=4)
    table = f"bench_wb_{uuid.uuid4().hex[:8]}"
    cache = _cache(url, f"bw{uuid.uuid4().hex[:6]}")
    await pool.execute(f"CREATE TABLE {table} (k bigint PRIMARY KEY, v bigint)")
    writer_seconds: list[float] = []

    async def writer(batch: dict[int, int]) -> None:  # COPY into a staging table, one upsert
        start = time.perf_counter()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(STAGE)
            await conn.copy_records_to_table("tc_stage", records=list(batch.items()))
            await conn.execute(MERGE.format(t=table))
        writer_seconds.append(time.perf_counter() - start)

    store = Store(cache, "rows", loader=_load_none, writer=writer,
                  policy=WriteBehind(journal=True, batch_size=1000, max_delay=0.05,
                                     max_queue=1_000_000))
    try:
        start = time.perf_counter()
        for base in range(0, n, 1000):
            await store.put_many({k: k * 7 for k in range(base, min(n, base + 1000))})
        if not await store.flush(timeout=300):
            raise SuiteError("policies: write-behind into Postgres did not drain")
        behind = n / (time.perf_counter() - start)
        count, total = await pool.fetchrow(f"SELECT count(*), sum(v) FROM {table}")
        if count != n or total != 7 * n * (n - 1) // 2:
            raise SuiteError(f"policies: {count} of {n} rows in Postgres (or wrong values)")
        start = time.perf_counter()
        for k in range(n, n + single):
            await pool.execute(UPSERT.format(t=table), k, k * 7)
        one_by_one = single / (time.perf_counter() - start)
        if await pool.fetchval(f"SELECT count(*) FROM {table}") != n + single:
            raise SuiteError("policies: the one-by-one rows are not all in Postgres")
        flusher = n / sum(writer_seconds)
        return [target_row(
            "write-behind into Postgres, batch_size=1000, journal on (puts -> rows)",
            behind, "rows/s", at_least=20_000,
            summary=(f"{behind:,.0f} rows/s end to end ({n:,} rows put 1000 at a time, "
                     f"journaled; COPY + upsert writer alone {flusher:,.0f} rows/s) vs "
                     f"{one_by_one:,.0f} rows/s one by one: {behind / one_by_one:.1f}x"),
            data={"rows": n, "one_by_one_rows_per_s": one_by_one,
                  "writer_rows_per_s": flusher, "batches": len(writer_seconds)})]
    finally:
        await store.aclose()
        await cache.aclose()
        await pool.execute(f"DROP TABLE IF EXISTS {table}")
        await pool.close()


#: groups of rows, run in order; the read-policy rows live in _policies_read
ROWS: list[Callable[[BenchContext], Awaitable[list[Row]]]] = [
    l1_put_rows, journal_rows, postgres_rows, refresh_rows,
]


async def run(ctx: BenchContext) -> list[Row]:
    rows: list[Row] = []
    with ctx.progress("policies: write and read policies", len(ROWS)) as bar:
        for group in ROWS:
            rows += await group(ctx)
            bar.advance()
    return rows
