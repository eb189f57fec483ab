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

from tiercache.bench.base import (
    BenchContext,
    Row,
    SuiteError,
    compare_row,
    info_row,
    target_row,
)
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
    """The journal's cost per put, sequential and with 100 putters, vs a raw XADD.

    A put's append waits in an event loop that is not idle: the previous put's own bus
    message (its invalidation, echoed back to this process's subscriber) is handled while
    the append is on the wire, ~0.5 round trip of loop time that is the tiers' work, not the
    journal's. So the judged reference is a raw XADD sent at the same point (right after a
    ``journal=False`` put, whose bus message it waits next to); the isolated XADD round trip
    is reported beside it, and the concurrent row is judged against the isolated one.
    """
    url = ctx.require_redis()
    number, rounds = ctx.scale(200, 60), ctx.scale(9, 3)
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
    waited = _time_appends(journaled)
    in_place: list[float] = []  # the raw XADD sent where a put's append goes
    plain_put: list[float] = []
    clock = time.perf_counter_ns

    async def put_then_xadd() -> None:
        start = clock()
        await plain.put(next(keys) % 2000, 1)
        mid = clock()
        await raw.xadd(stream, {"d": b"x" * 24})
        in_place.append(float(clock() - mid))
        plain_put.append(float(mid - start))

    try:
        await raw.initialize()
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "journal=True": lambda: journaled.put(next(keys) % 2000, 1),
            "journal=False, then XADD": put_then_xadd,
            "XADD": lambda: raw.xadd(stream, {"d": b"x" * 24}),
        }
        seq = await rounds_async(calls, number, rounds)
        appended = journaled.stats()["journal_appends"]
        if appended < number * rounds or await raw.xlen(stream) < 2 * number * rounds:
            raise SuiteError("policies: puts were not journaled / XADDs not appended")

        def per_round(values: list[float]) -> list[float]:
            return [sum(part) / len(part) for part in _chunks(values, number)][-rounds:]

        # the journal's cost to a put: the time the put waits for its append, per round
        wait, xadd_here, plain_rounds = per_round(waited), per_round(in_place), per_round(
            plain_put)
        ratio = statistics.median(w / x for w, x in zip(wait, xadd_here, strict=True))
        alone = statistics.median(w / x for w, x in zip(wait, seq["XADD"], strict=True))
        rtt = statistics.median(seq["XADD"])
        diff = statistics.median(
            a - b for a, b in zip(seq["journal=True"], plain_rounds, strict=True))
        rows = [target_row(
            "journal cost per put (its wait for the journal append) vs one raw redis-py XADD "
            "sent at the same point of a put",
            ratio, "x XADD round trip", at_most=1.5,
            summary=(f"{statistics.median(wait) / 1e3:.1f} us per put vs XADD "
                     f"{statistics.median(xadd_here) / 1e3:.1f} us after a journal=False put: "
                     f"{ratio:.2f}x (median of {rounds} paired rounds); vs an isolated XADD "
                     f"{rtt / 1e3:.1f} us: {alone:.2f}x; put journal=True minus "
                     f"journal=False: {diff / 1e3:.1f} us"),
            rounds={"journal wait": wait, "XADD at the same point": xadd_here,
                    "XADD alone": seq["XADD"]},
            data={"ratio_isolated_xadd": alone, "put_diff_ns": diff}), compare_row(
            "put, WriteBehind(journal=True) vs put, WriteBehind(journal=False) (same tiers)",
            {"journal=True": seq["journal=True"], "journal=False": plain_rounds},
            ours="journal=True", theirs="journal=False", statistic="paired")]
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
    per_task, repeats = ctx.scale(10, 10), ctx.scale(14, 2)

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
        if r % 2 == 0:  # alternate which store goes first (a load change hits both)
            j, p = await wall(journaled, base), await wall(plain, base)
        else:
            p, j = await wall(plain, base), await wall(journaled, base)
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


def _time_appends(store: Store) -> list[float]:
    """Record how long each journal append of ``store`` takes (ns), on the instance."""
    engine = store.engine
    if engine is None:
        raise SuiteError("policies: the journaled store has no write-behind engine")
    gc, waited = engine.gc, []
    append = gc.append_async

    async def timed(payloads: list[bytes]) -> list[str]:
        start = time.perf_counter_ns()
        try:
            return await append(payloads)
        finally:
            waited.append(float(time.perf_counter_ns() - start))

    gc.append_async = timed  # type: ignore[method-assign]
    return waited


def _chunks(values: list[float], size: int) -> list[list[float]]:
    return [values[i:i + size] for i in range(0, len(values) - size + 1, size)]


UPSERT = ("INSERT INTO {t} (k, v) VALUES ($1, $2) "
          "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v")
STAGE = ("CREATE TEMP TABLE IF NOT EXISTS tc_stage (k bigint, v bigint) "
         "ON COMMIT DELETE ROWS")
MERGE = ("INSERT INTO {t} SELECT k, v FROM tc_stage "
         "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v")
UNNEST = ("INSERT INTO {t} (k, v) SELECT * FROM unnest($1::bigint[], $2::bigint[]) "
          "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v")


async def postgres_rows(ctx: BenchContext) -> list[Row]:
    """Write-behind (journal on, batch_size=1000) into Postgres vs the rows one by one."""
    url, dsns = ctx.require_redis(), ctx.require_pg()
    n, single = ctx.scale(30_000, 5000), ctx.scale(1000, 500)
    pool = await asyncpg.create_pool(next(iter(dsns.values())), min_size=2, max_size=4)
    cache = _cache(url, f"bw{uuid.uuid4().hex[:6]}")
    tables: list[str] = []
    try:
        rows = []
        for label, judged in (("unnest upsert", True), ("COPY + upsert", False)):
            table = f"bench_wb_{uuid.uuid4().hex[:8]}"
            tables.append(table)
            await pool.execute(f"CREATE TABLE {table} (k bigint PRIMARY KEY, v bigint)")
            rows.append(await _drain_row(pool, cache, table, n, label, judged))
        start = time.perf_counter()
        for k in range(n, n + single):
            await pool.execute(UPSERT.format(t=tables[0]), k, k * 7)
        one_by_one = single / (time.perf_counter() - start)
        if await pool.fetchval(f"SELECT count(*) FROM {tables[0]}") != n + single:
            raise SuiteError("policies: the one-by-one rows are not all in Postgres")
        for row in rows:
            rate = float(row.get("value", 0.0))
            row["summary"] += f"; one by one: {one_by_one:,.0f} rows/s ({rate / one_by_one:.1f}x)"
            row["data"]["one_by_one_rows_per_s"] = one_by_one
        return rows
    finally:
        await cache.aclose()
        for table in tables:
            await pool.execute(f"DROP TABLE IF EXISTS {table}")
        await pool.close()


async def _drain_row(pool: asyncpg.Pool, cache: TierCache, table: str, n: int, label: str,
                     judged: bool) -> Row:
    """Queue ``n`` journaled puts while the writer is held, then time the drain into
    Postgres (flusher + writer + journal acks); the end-to-end rate is reported too."""
    gate = asyncio.Event()

    async def copy_writer(batch: dict[int, int]) -> None:
        await gate.wait()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(STAGE)
            await conn.copy_records_to_table("tc_stage", records=list(batch.items()))
            await conn.execute(MERGE.format(t=table))

    async def unnest_writer(batch: dict[int, int]) -> None:
        await gate.wait()
        await pool.execute(UNNEST.format(t=table), list(batch), list(batch.values()))

    store = Store(cache, f"rows{len(label)}", loader=_load_none,
                  writer=copy_writer if judged else unnest_writer,
                  policy=WriteBehind(journal=True, batch_size=1000, max_delay=0.05,
                                     max_queue=10 * n))
    try:
        began = time.perf_counter()
        for base in range(0, n, 1000):
            await store.put_many({k: k * 7 for k in range(base, min(n, base + 1000))})
        queued = time.perf_counter()
        gate.set()
        if not await store.flush(timeout=600):
            raise SuiteError("policies: write-behind into Postgres did not drain")
        done = time.perf_counter()
    finally:
        gate.set()
        await store.aclose()
    count, total = await pool.fetchrow(f"SELECT count(*), sum(v) FROM {table}")
    if count != n or total != 7 * n * (n - 1) // 2:
        raise SuiteError(f"policies: {count} of {n} rows in Postgres (or wrong values)")
    drain = n / (done - queued)
    end_to_end = n / (done - began)
    summary = (f"{drain:,.0f} rows/s drained into Postgres ({n:,} journaled puts, "
               f"{label} writer, acks included); end to end with the puts {end_to_end:,.0f} "
               "rows/s")
    name = f"write-behind into Postgres, batch_size=1000, {label}"
    data = {"rows": n, "end_to_end_rows_per_s": end_to_end, "puts_per_s": n / (queued - began)}
    if judged:
        return target_row(name, drain, "rows/s", at_least=20_000, summary=summary, data=data)
    return info_row(name, summary, value=drain, unit="rows/s", better="higher", data=data)


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
