"""``tiercache bench --suite rebalance``: the online rebalancer's Must-show figures.

Adds a 4th shard (a fresh database on the first server) to three, holding two tables
(``users`` by ``id``, ``orders`` by ``user_id``):

* **idle** (500k users + 125k orders, ``--quick`` 100k + 25k): copy rate of the rows that move
  (target >= 50k rows/s), the plan's row counts vs the rows actually moved, per table (must
  be equal), verification time vs copy time of the same rows (target: less) and the time to
  check every row of every shard against the new ring;
* **with writers** (the same data; 4 tasks updating and inserting through the pool, retrying
  on ``KeyMovedError``): copy rate, the write fence (target <= 100 ms), and the writers' p99
  latency during the move next to their p99 before it.

Each scenario runs ``rounds`` times (2, ``--quick`` 1); a row reports the median round, every
round, and the load average next to it (the machine may be shared).  Charts: rows copied per
second over time, and the writers' latency before / during the move.  Every run works in
databases it creates and drops, so it never touches user data.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import random
import statistics
import time
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tiercache.bench.base import BenchContext, Row, SuiteError, info_row, target_row
from tiercache.sharding.pool import ShardedPool, create_sharded_pool
from tiercache.sharding.rebalance import KeyMovedError, Rebalancer, RebalanceReport
from tiercache.sharding.ring import HashRing

NAME = "rebalance"
DESCRIPTION = "online rebalance: copy rate, exact plan, verify vs copy, fence, writers' p99"
NEEDS: tuple[str, ...] = ("pg",)

COPY_TARGET = 50_000.0  # rows/s
FENCE_TARGET_MS = 100.0
DDL = ("CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, n integer NOT NULL)",
       "CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint NOT NULL, "
       "amount numeric(12, 2) NOT NULL)",
       "CREATE INDEX orders_user ON orders (user_id)")
TABLES = {"users": "id", "orders": "user_id"}


def _with_db(dsn: str, db: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{db}"))


def _load() -> float:
    return os.getloadavg()[0]


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


async def _setup(dsns: Mapping[str, str], users: int) -> ShardedPool:
    """s1..s3 with the tables and rows on their ring owners; s4 stays out of the pool (the
    rebalancer adds it from its DSN and creates its tables from the sources' DDL)."""
    old = HashRing(["s1", "s2", "s3"])
    pool = create_sharded_pool({k: v for k, v in dsns.items() if k != "s4"}, ring=old,
                               min_size=1, max_size=8)
    await pool
    for stmt in DDL:
        await pool.execute_all(stmt)
    by_shard: dict[str, list[tuple[Any, ...]]] = {}
    for i in range(users):
        by_shard.setdefault(old.get_node(i), []).append((i, f"user-{i}", 0))
    for shard, records in by_shard.items():
        await pool.copy_records_to_table("users", records=records, shard=shard)
    by_shard = {}
    for i in range(users // 4):
        user = (i * 7) % users
        by_shard.setdefault(old.get_node(user), []).append((i, user, Decimal(i % 1000) / 4))
    for shard, records in by_shard.items():
        await pool.copy_records_to_table("orders", records=records, shard=shard)
    await pool.execute_all("VACUUM ANALYZE")
    return pool


WRITES_PER_S = 50  # per writer task: a steady OLTP load, the same whatever the machine


class _Writers:
    """Update (70%) and insert (30%) users through the pool, each task paced at
    ``WRITES_PER_S`` (a closed loop would measure how the 2 shared cores are split, not
    the rebalancer); latency per write, retries on KeyMovedError included."""

    def __init__(self, pool: ShardedPool, rows: int, tasks: int = 4) -> None:
        self.pool, self.rows = pool, rows
        self.samples: list[tuple[float, float]] = []
        self._stop = False
        self._next = [10**9 + t for t in range(tasks)]
        self._tasks = [asyncio.create_task(self._run(t, tasks)) for t in range(tasks)]

    async def _run(self, task: int, tasks: int) -> None:
        rnd = random.Random(task)
        due = time.monotonic()
        while not self._stop:
            due += 1.0 / WRITES_PER_S
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 1.0:  # far behind (a stall): drop the backlog
                due = now
            if rnd.random() < 0.7:
                key = rnd.randrange(self.rows)
                sql, args = "UPDATE users SET n = n + 1 WHERE id = $1", (key,)
            else:
                key = self._next[task]
                self._next[task] += tasks
                sql, args = "INSERT INTO users (id, name, n) VALUES ($1, 'w', 0)", (key,)
            start = time.monotonic()
            for _ in range(50):
                try:
                    await self.pool.execute(sql, *args, shard_key=key)
                    break
                except KeyMovedError:
                    await asyncio.sleep(0.002)
            self.samples.append((start, time.monotonic() - start))

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)

    def window(self, since: float, until: float) -> list[float]:
        return [d for s, d in self.samples if since <= s < until]


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0


class _Timeline:
    """A rebalancer progress sink that records rows copied over time (for the chart)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.points: list[tuple[float, int]] = []
        self.total = 0

    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, label: str, rows: int) -> None:
        self.total += rows
        self.points.append((time.monotonic() - self.t0, self.total))

    def note(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass

    def rates(self, step: float = 0.5) -> list[tuple[float, float]]:
        """Rows/s per ``step`` seconds, from the first batch to the last.  Rows are counted
        when a batch commits, so the cumulative count is interpolated linearly between
        commits (a batch's rows arrive while it streams), then differentiated."""
        pts = self.points
        if len(pts) < 2:
            return []

        def rows_at(t: float) -> float:
            i = bisect.bisect_right([p[0] for p in pts], t)
            if i == 0:
                return float(pts[0][1])
            if i == len(pts):
                return float(pts[-1][1])
            (t0, r0), (t1, r1) = pts[i - 1], pts[i]
            return r0 + (r1 - r0) * (t - t0) / (t1 - t0) if t1 > t0 else float(r1)

        out, t = [], pts[0][0]
        while t < pts[-1][0]:
            out.append((round(t - pts[0][0], 3), (rows_at(t + step) - rows_at(t)) / step))
            t += step
        return out


async def _once(base: Mapping[str, str], users: int, writers: bool) -> dict[str, Any]:
    dsns = await _databases(base)
    try:
        pool = await _setup(dsns, users)
        try:
            load = _load()
            rb = Rebalancer(pool, TABLES)
            plan = await rb.plan(add={"s4": dsns["s4"]})
            timeline = _Timeline()
            crew = _Writers(pool, users) if writers else None
            before = time.monotonic()
            if crew is not None:
                await asyncio.sleep(2.0)
            started = time.monotonic()
            report: RebalanceReport = await rb.apply(plan, batch_size=50_000,
                                                     progress=timeline)
            ended = time.monotonic()
            if crew is not None:
                await crew.stop()
            check = await rb.verify(plan)
            await rb.close()
        finally:
            await pool.close()
    finally:
        await _drop(base, dsns)
    out: dict[str, Any] = {"plan": plan, "report": report, "check": check, "load": load,
                           "timeline": timeline.rates(), "users": users}
    if crew is not None:
        out["before"] = crew.window(before, started)
        out["during"] = crew.window(started, ended)
        out["writes"] = len(crew.samples)
    return out


def _median_round(runs: list[dict[str, Any]], key: Any) -> dict[str, Any]:
    ordered = sorted(runs, key=key)
    return ordered[(len(ordered) - 1) // 2]


def _idle_rows(runs: list[dict[str, Any]]) -> list[Row]:
    rate_of = [r["report"].copy_rate for r in runs]
    mid = _median_round(runs, lambda r: r["report"].copy_rate)
    rep, plan = mid["report"], mid["plan"]
    moved = sum(rep.copied.values())
    loads = ", ".join(f"{r['load']:.1f}" for r in runs)
    total = mid["users"] + mid["users"] // 4
    exact = all(r["plan"].rows_of(t) == r["report"].copied.get(t, 0)
                == r["report"].deleted.get(t, 0) for r in runs for t in TABLES)
    per_table = "; ".join(f"{t}: plan {plan.rows_of(t):,} copied {rep.copied.get(t, 0):,} "
                          f"deleted {rep.deleted.get(t, 0):,}" for t in TABLES)
    ratio = [r["report"].verify_seconds / r["report"].copy_seconds for r in runs]
    return [
        target_row(f"copy rate, idle ({total:,} rows, {moved:,} moved)", rep.copy_rate,
                   "rows/s", at_least=COPY_TARGET,
                   summary=f"{rep.copy_rate:,.0f} rows/s ({rep.copy_seconds:.2f}s; rounds "
                           f"{', '.join(f'{x:,.0f}' for x in rate_of)}; load {loads})",
                   rounds={"tiercache": rate_of}, data={"moved": moved, "loads": loads}),
        {"name": "plan rows == rows moved (every table)",
         "summary": f"{per_table}; every row on its new owner: "
                    f"{all(r['check'].ok for r in runs)}",
         "target": "equal", "ok": exact and all(r["check"].ok for r in runs)},
        target_row(f"verify vs copy ({moved:,} rows)", statistics.median(ratio), "x",
                   at_most=1.0,
                   summary=f"verify {rep.verify_seconds:.2f}s vs copy {rep.copy_seconds:.2f}s "
                           f"({rep.verify_seconds / rep.copy_seconds:.2f}x; rounds "
                           f"{', '.join(f'{x:.2f}' for x in ratio)}; load {loads})",
                   rounds={"tiercache": ratio},
                   data={"verify_s": rep.verify_seconds, "copy_s": rep.copy_seconds}),
        info_row(f"placement check of every row ({total:,} rows, 4 shards)",
                 f"{mid['check'].seconds:.2f}s ({mid['check'].checked_rows:,} rows checked)",
                 value=mid["check"].seconds, unit="s", better="lower"),
        info_row("whole move, idle",
                 f"apply {rep.seconds:.2f}s (copy, catch-up, verify, fence, flip, clean-up): "
                 f"{moved / rep.seconds:,.0f} moved rows/s end to end",
                 value=rep.seconds, unit="s", better="lower"),
    ]


def _busy_rows(runs: list[dict[str, Any]]) -> list[Row]:
    mid = _median_round(runs, lambda r: r["report"].copy_rate)
    rep = mid["report"]
    loads = ", ".join(f"{r['load']:.1f}" for r in runs)
    rates = [r["report"].copy_rate for r in runs]
    fences = [r["report"].fence_ms for r in runs]
    before = [1000 * _p99(r["before"]) for r in runs]
    during = [1000 * _p99(r["during"]) for r in runs]
    total = mid["users"] + mid["users"] // 4
    pairs = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(before, during, strict=True))
    return [
        target_row(f"copy rate, 4 writers ({4 * WRITES_PER_S} writes/s, {total:,} rows)",
                   rep.copy_rate, "rows/s", at_least=COPY_TARGET,
                   summary=f"{rep.copy_rate:,.0f} rows/s, {rep.caught_up:,} changes caught up "
                           f"(rounds {', '.join(f'{x:,.0f}' for x in rates)}; load {loads})",
                   rounds={"tiercache": rates}),
        target_row("write fence", statistics.median(fences), "ms", at_most=FENCE_TARGET_MS,
                   summary=f"{statistics.median(fences):.1f} ms (rounds "
                           f"{', '.join(f'{x:.1f}' for x in fences)}; load {loads})",
                   rounds={"tiercache": fences}),
        info_row("writers' p99 before / during the move",
                 f"{statistics.median(before):.1f} ms / {statistics.median(during):.1f} ms "
                 f"(rounds {pairs}; {mid['writes']:,} writes)",
                 value=statistics.median(during), unit="ms", better="lower",
                 data={"p99_before_ms": before, "p99_during_ms": during}),
    ]


async def run(ctx: BenchContext) -> list[Row]:
    base = ctx.require_pg()
    users = ctx.scale(500_000, 100_000)  # 1M took ~95 s of the 10-min make bench
    rounds = ctx.scale(2, 1)
    idle: list[dict[str, Any]] = []
    busy: list[dict[str, Any]] = []
    with ctx.progress("rebalance: idle and with writers", 2 * rounds) as bar:
        for _ in range(rounds):  # interleaved: both scenarios see the same background load
            idle.append(await _once(base, users, writers=False))
            bar.advance()
            busy.append(await _once(base, users, writers=True))
            bar.advance()
    ctx.timeseries("rebalance: rows copied per second", {
        "idle": idle[0]["timeline"], "4 writers": busy[0]["timeline"]}, ylabel="rows/s",
        note=f"{users:,} users + {users // 4:,} orders, 3 -> 4 shards")
    ctx.cdf("rebalance: writers' latency", {
        "before the move": busy[0]["before"], "during the move": busy[0]["during"]}, unit="s")
    return _idle_rows(idle) + _busy_rows(busy)
