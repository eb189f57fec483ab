"""Helpers for the rebalancer tests: fresh databases per test, data loading, end-state checks.

Each test gets its own databases (one per LocalStack server, plus a second database on the
first server standing in for the added shard ``s4``), so journals, triggers and tables of one
test never meet another's.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest_asyncio

from tiercache.sharding.pool import ShardedPool, create_sharded_pool
from tiercache.sharding.ring import HashRing

USERS_DDL = """CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL,
    n integer NOT NULL DEFAULT 0, payload bytea)"""
ORDERS_DDL = """CREATE TABLE orders (id uuid PRIMARY KEY, user_id bigint NOT NULL,
    amount numeric(12, 2), at timestamptz NOT NULL DEFAULT now())"""
ORDERS_INDEX = "CREATE INDEX orders_user ON orders (user_id)"
TABLES = {"users": "id", "orders": "user_id"}


@pytest_asyncio.fixture(loop_scope="session", name="dsns")
async def fresh_dsns(tiercache_stack: Any) -> AsyncIterator[dict[str, str]]:
    """The ``dsns`` fixture: fresh databases s1..s3 (one per server) and s4 (a second one on
    the first server), dropped after the test.  Import ``fresh_dsns`` into a test module."""
    base = tiercache_stack.pg_dsns
    made = await make_databases(base)
    try:
        yield made
    finally:
        await drop_databases(base, made)


def with_db(dsn: str, db: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{db}"))


async def make_databases(base: Mapping[str, str], extra: int = 1) -> dict[str, str]:
    """One fresh database per server (s1..sN) plus ``extra`` more on the first server."""
    tag = uuid.uuid4().hex[:8]
    dsns: dict[str, str] = {}
    servers = list(base.values())
    names = [f"s{i + 1}" for i in range(len(servers) + extra)]
    for i, name in enumerate(names):
        server = servers[i] if i < len(servers) else servers[0]
        db = f"rb_{tag}_{name}"
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(f'CREATE DATABASE "{db}"')
        finally:
            await conn.close()
        dsns[name] = with_db(server, db)
    return dsns


async def drop_databases(base: Mapping[str, str], dsns: Mapping[str, str]) -> None:
    servers = {urlsplit(d).port: d for d in base.values()}
    for dsn in dsns.values():
        server = servers[urlsplit(dsn).port]
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(dsn).path[1:]}" WITH (FORCE)')
        finally:
            await conn.close()


async def create_schema(dsns: Mapping[str, str], shards: Iterable[str]) -> None:
    for name in shards:
        conn = await asyncpg.connect(dsns[name])
        try:
            await conn.execute(USERS_DDL)
            await conn.execute(ORDERS_DDL)
            await conn.execute(ORDERS_INDEX)
        finally:
            await conn.close()


def user_row(i: int) -> tuple[Any, ...]:
    return (i, f"user-{i}", i % 97, bytes([i % 256]) * (i % 5))


def order_row(i: int) -> tuple[Any, ...]:
    from decimal import Decimal

    return (uuid.UUID(int=i * 7919 + 1), i // 3, Decimal(i % 1000) / 4, None)


async def load(pool: ShardedPool, users: int, orders: int) -> None:
    """Rows on their ring owners (split with shard_for_many, loaded by binary COPY)."""
    ring = pool.ring
    by_shard: dict[str, list[tuple[Any, ...]]] = {}
    for i in range(users):
        by_shard.setdefault(ring.get_node(i), []).append(user_row(i))
    for shard, rows in by_shard.items():
        await pool.copy_records_to_table("users", records=rows, shard=shard)
    by_shard = {}
    for i in range(orders):
        row = order_row(i)
        by_shard.setdefault(ring.get_node(row[1]), []).append(row[:3])
    for shard, rows in by_shard.items():
        await pool.copy_records_to_table("orders", records=rows, shard=shard,
                                         columns=["id", "user_id", "amount"])


async def open_pool(dsns: Mapping[str, str], ring: HashRing) -> ShardedPool:
    pool = create_sharded_pool(dict(dsns), ring=ring, min_size=1, max_size=6)
    await pool
    return pool


async def snapshot(pool: ShardedPool, table: str, key: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of ``table`` per shard (primary key order), with the shard-key value first."""
    out = {}
    for shard in pool.shards:
        if not await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", table, shard=shard):
            out[shard] = []
            continue
        rows = await pool.fetch(f"SELECT {key} AS k, * FROM {table} ORDER BY 2", shard=shard)
        out[shard] = [tuple(r) for r in rows]
    return out


def misplaced(snap: Mapping[str, list[tuple[Any, ...]]], ring: HashRing) -> list[Any]:
    return [row for shard, rows in snap.items() for row in rows if ring.get_node(row[0]) != shard]


def all_rows(snap: Mapping[str, list[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
    return sorted((row[1:] for rows in snap.values() for row in rows), key=repr)


async def iter_none() -> AsyncIterator[None]:  # pragma: no cover - typing helper
    yield None


class Writers:
    """Tasks writing through the pool during a rebalance, keeping the reference state.

    Each task owns the loaded ids ``i % tasks == task`` and the ids it inserts, so the
    reference is exact without locks;
    a write rejected with KeyMovedError (SQLSTATE TCKM1) is retried on the refreshed ring
    (the rebalancer's pool flips in place), any other error fails the test.
    """

    def __init__(self, pool: ShardedPool, users: int, tasks: int = 4,
                 max_ops: int = 50_000) -> None:
        from tiercache.sharding.rebalance import KeyMovedError

        self._moved = KeyMovedError
        self.pool, self.tasks, self.max_ops = pool, tasks, max_ops
        self.ref: dict[int, tuple[Any, ...]] = {i: user_row(i) for i in range(users)}
        self.next_id = users
        self.ops = 0
        self.retries = 0
        self.latencies: list[tuple[float, float]] = []  # (start monotonic, seconds)
        self._stop = False
        self._running: list[Any] = []

    def start(self) -> None:
        import asyncio

        self._running = [asyncio.create_task(self._run(t)) for t in range(self.tasks)]

    async def stop(self) -> None:
        import asyncio

        self._stop = True
        await asyncio.gather(*self._running)

    async def _write(self, sql: str, *args: Any, key: int) -> None:
        import asyncio
        import time

        start = time.monotonic()
        for attempt in range(20):
            try:
                await self.pool.execute(sql, *args, shard_key=key)
                break
            except Exception as exc:
                if self._moved.from_exception(exc) is None or attempt == 19:
                    raise
                self.retries += 1
                await asyncio.sleep(0.01)
        self.latencies.append((start, time.monotonic() - start))

    async def _run(self, task: int) -> None:
        import asyncio
        import random

        rnd = random.Random(task)
        mine = [i for i in self.ref if i % self.tasks == task]
        ops = 0
        while not self._stop and ops < self.max_ops:
            ops += 1
            self.ops += 1
            choice = rnd.random()
            if choice < 0.4 or not mine:
                i = self.next_id
                self.next_id += 1
                row = (i, f"new-{i}", 0, b"w")
                await self._write("INSERT INTO users (id, name, n, payload) VALUES "
                                  "($1, $2, $3, $4)", *row, key=i)
                self.ref[i] = row
                mine.append(i)  # the creating task owns it from now on
            elif choice < 0.85:
                i = rnd.choice(mine)
                await self._write("UPDATE users SET n = n + 1, name = $2 WHERE id = $1", i,
                                  f"upd-{i}-{ops}", key=i)
                old = self.ref[i]
                self.ref[i] = (i, f"upd-{i}-{ops}", old[2] + 1, old[3])
            else:
                i = mine.pop(rnd.randrange(len(mine)))
                await self._write("DELETE FROM users WHERE id = $1", i, key=i)
                del self.ref[i]
            await asyncio.sleep(0)

    def p99(self, since: float | None = None, until: float | None = None) -> float:
        picked = sorted(d for s, d in self.latencies
                        if (since is None or s >= since) and (until is None or s < until))
        return picked[int(0.99 * (len(picked) - 1))] if picked else 0.0

    def expected(self) -> list[tuple[Any, ...]]:
        return sorted(self.ref.values(), key=repr)
