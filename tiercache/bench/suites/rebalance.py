"""``tiercache bench --suite rebalance``: the online rebalancer's Must-show figures.

Adds a 4th shard (a fresh database on the first server) to three, twice:

* **idle** (1M rows, ``--quick`` 100k): copy rate (target >= 50k rows/s), the plan's row
  counts vs the rows actually moved (must be equal), verification time vs copy time of the
  same rows (target: less);
* **with writers** (200k rows, ``--quick`` 50k; 4 tasks updating random rows through the
  pool, retrying on ``KeyMovedError``): copy rate, the write fence (target <= 100 ms), and the
  writers' p99 latency during the move next to their p99 before it.

Every run works in databases it creates and drops, so it never touches user data.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tiercache.bench.base import BenchContext, Row, SuiteError
from tiercache.sharding.pool import ShardedPool, create_sharded_pool
from tiercache.sharding.rebalance import KeyMovedError, Rebalancer
from tiercache.sharding.ring import HashRing

NAME = "rebalance"
DESCRIPTION = "online rebalance: copy rate, exact plan, verify vs copy, fence, writers' p99"
NEEDS: tuple[str, ...] = ("pg",)

COPY_TARGET = 50_000.0  # rows/s
FENCE_TARGET_MS = 100.0
DDL = "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, n integer NOT NULL)"


def _with_db(dsn: str, db: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{db}"))


async def _databases(base: Mapping[str, str]) -> dict[str, str]:
    servers = list(base.values())[:3]
    if len(servers) < 3:
        raise SuiteError("the rebalance suite needs 3 Postgres shards")
    tag = uuid.uuid4().hex[:8]
    dsns = {}
    for i, server in enumerate([*servers, servers[0]]):
        db = f"tc_bench_rb_{tag}_{i + 1}"
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(f'CREATE DATABASE "{db}"')
        finally:
            await conn.close()
        dsns[f"s{i + 1}"] = _with_db(server, db)
    return dsns


async def _drop(base: Mapping[str, str], dsns: Mapping[str, str]) -> None:
    servers = {urlsplit(d).port: d for d in base.values()}
    for dsn in dsns.values():
        conn = await asyncpg.connect(servers[urlsplit(dsn).port])
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(dsn).path[1:]}" WITH (FORCE)')
        finally:
            await conn.close()


async def _setup(dsns: Mapping[str, str], rows: int) -> ShardedPool:
    old = HashRing(["s1", "s2", "s3"])
    pool = create_sharded_pool(dict(dsns), ring=old, min_size=1, max_size=8)
    await pool
    by_shard: dict[str, list[tuple[int, str, int]]] = {}
    for i in range(rows):
        by_shard.setdefault(old.get_node(i), []).append((i, f"user-{i}", 0))
    for shard in ("s1", "s2", "s3"):  # s4 gets its table from the rebalancer
        await pool.execute(DDL, shard=shard)
    for shard, records in by_shard.items():
        await pool.copy_records_to_table("users", records=records, shard=shard)
    return pool


class _Writers:
    """Update random rows through the pool; latency per write, KeyMoved retried."""

    def __init__(self, pool: ShardedPool, rows: int, tasks: int = 4) -> None:
        self.pool, self.rows = pool, rows
        self.samples: list[tuple[float, float]] = []
        self._stop = False
        self._tasks = [asyncio.create_task(self._run(t)) for t in range(tasks)]

    async def _run(self, seed: int) -> None:
        rnd = random.Random(seed)
        while not self._stop:
            key = rnd.randrange(self.rows)
            start = time.monotonic()
            for _ in range(20):
                try:
                    await self.pool.execute("UPDATE users SET n = n + 1 WHERE id = $1", key,
                                            shard_key=key)
                    break
                except asyncpg.PostgresError as exc:
                    if KeyMovedError.from_exception(exc) is None:
                        raise
                    await asyncio.sleep(0.005)
            self.samples.append((start, time.monotonic() - start))

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)

    def p99(self, since: float, until: float) -> float:
        picked = sorted(d for s, d in self.samples if since <= s < until)
        return picked[int(0.99 * (len(picked) - 1))] if picked else 0.0


async def _idle(base: Mapping[str, str], rows: int) -> list[Row]:
    dsns = await _databases(base)
    try:
        pool = await _setup(dsns, rows)
        try:
            rb = Rebalancer(pool, {"users": "id"})
            plan = await rb.plan(add=["s4"])
            report = await rb.apply(plan, batch_size=10_000)
            check = await rb.verify(plan)
        finally:
            await pool.close()
    finally:
        await _drop(base, dsns)
    moved = sum(report.copied.values())
    rate = report.copy_rate
    return [
        {"name": f"copy rate, idle ({rows:,} rows, {moved:,} moved)",
         "summary": f"{rate:,.0f} rows/s ({report.copy_seconds:.2f}s)",
         "target": f">= {COPY_TARGET:,.0f} rows/s", "ok": rate >= COPY_TARGET,
         "data": {"rows_per_s": rate, "moved": moved}},
        {"name": "plan rows == rows moved",
         "summary": f"plan {plan.rows:,}, copied {moved:,}, deleted "
                    f"{sum(report.deleted.values()):,}; every row on its owner: {check.ok}",
         "target": "equal", "ok": plan.rows == moved == sum(report.deleted.values())
         and check.ok},
        {"name": f"verify vs copy ({moved:,} rows)",
         "summary": f"verify {report.verify_seconds:.2f}s vs copy {report.copy_seconds:.2f}s",
         "target": "verify < copy", "ok": report.verify_seconds < report.copy_seconds,
         "data": {"verify_s": report.verify_seconds, "copy_s": report.copy_seconds}},
    ]


async def _busy(base: Mapping[str, str], rows: int) -> list[Row]:
    dsns = await _databases(base)
    try:
        pool = await _setup(dsns, rows)
        try:
            rb = Rebalancer(pool, {"users": "id"})
            plan = await rb.plan(add=["s4"])
            writers = _Writers(pool, rows)
            before = time.monotonic()
            await asyncio.sleep(2.0)
            started = time.monotonic()
            report = await rb.apply(plan, batch_size=10_000)
            ended = time.monotonic()
            await writers.stop()
        finally:
            await pool.close()
    finally:
        await _drop(base, dsns)
    p99_before, p99_during = writers.p99(before, started), writers.p99(started, ended)
    return [
        {"name": f"copy rate, 4 writers ({rows:,} rows)",
         "summary": f"{report.copy_rate:,.0f} rows/s, {report.caught_up:,} changes caught up",
         "target": f">= {COPY_TARGET:,.0f} rows/s", "ok": report.copy_rate >= COPY_TARGET},
        {"name": "write fence", "summary": f"{report.fence_ms:.1f} ms",
         "target": f"<= {FENCE_TARGET_MS:g} ms", "ok": report.fence_ms <= FENCE_TARGET_MS},
        {"name": "writers' p99 before / during the move",
         "summary": f"{1000 * p99_before:.1f} ms / {1000 * p99_during:.1f} ms "
                    f"({len(writers.samples):,} writes)", "target": None, "ok": None,
         "data": {"p99_before_ms": 1000 * p99_before, "p99_during_ms": 1000 * p99_during}},
    ]


async def run(ctx: BenchContext) -> list[Row]:
    base = ctx.require_pg()
    rows: list[Row] = []
    with ctx.progress("rebalance: idle, then with writers", 2) as bar:
        rows += await _idle(base, ctx.scale(1_000_000, 100_000))
        bar.advance()
        rows += await _busy(base, ctx.scale(200_000, 50_000))
        bar.advance()
    return rows
