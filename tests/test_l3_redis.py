"""L3 with the store in Redis: entries *and* generations shared across processes (real servers)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.cluster import RedisCluster

from tiercache import QueryCache, RedisTier, create_sharded_pool
from tiercache.sharding.pool import ShardedPool


@pytest.fixture
def dsns(tiercache_stack: Any) -> dict[str, str]:
    return dict(tiercache_stack.pg_dsns)


@pytest.fixture
def ns() -> str:
    return f"l3t{uuid.uuid4().hex[:8]}"


def _qc(pool: ShardedPool) -> QueryCache:
    assert pool.query_cache is not None
    return pool.query_cache


@pytest.fixture
async def pools(dsns: dict[str, str], tiercache_stack: Any, ns: str
                ) -> AsyncIterator[tuple[ShardedPool, ShardedPool]]:
    """Two pools with their own QueryCache on one Redis: two application processes."""
    # Generous timeouts: on a loaded 2-core box a 0.5 s budget can expire, and a timed-out
    # fill is (correctly) a miss elsewhere -- which would fail the hit counts below.
    tiers = [RedisTier(tiercache_stack.redis_url, ttl=None, ttl_jitter=0.0, socket_timeout=2.0,
                       connect_timeout=2.0) for _ in range(2)]
    qa, qb = (QueryCache(t, namespace=ns) for t in tiers)
    async with create_sharded_pool(dsns, min_size=1, max_size=6, query_cache=qa) as a, \
            create_sharded_pool(dsns, min_size=1, max_size=6, query_cache=qb) as b:
        yield a, b
    for tier in tiers:
        await tier.close()


@pytest.fixture
async def table(pools: tuple[ShardedPool, ShardedPool]) -> AsyncIterator[str]:
    pool = pools[0]
    name = f"l3r_{uuid.uuid4().hex[:10]}"
    await pool.execute_all(f"CREATE TABLE {name} (id bigint PRIMARY KEY, v text, n numeric)")
    await pool.execute_all(
        f"INSERT INTO {name} SELECT g, 'v' || g, g * 1.5 FROM generate_series(1, 50) g")
    yield name
    await pool.execute_all(f"DROP TABLE IF EXISTS {name}")


async def test_hit_from_another_process_behaves_like_records(
    pools: tuple[ShardedPool, ShardedPool], table: str
) -> None:
    a, b = pools
    sql = f"SELECT id, v, n FROM {table} WHERE id = $1"
    first = await a.fetch(sql, 7, shard_key=7, cache_ttl=30)
    got = await b.fetch(sql, 7, shard_key=7, cache_ttl=30)  # filled by a, read by b
    assert _qc(b).stats()["hits"] == 1 and _qc(b).stats()["misses"] == 0
    row = got[0]
    assert row == first[0] and row["v"] == "v7" and row[0] == 7 and row.get("n") == first[0]["n"]
    assert list(row.keys()) == ["id", "v", "n"] and list(row.values())[1] == "v7"
    assert dict(row.items())["id"] == 7 and len(row) == 3
    one = await a.fetchrow(sql, 8, shard_key=8, cache_ttl=30)
    assert await b.fetchrow(sql, 8, shard_key=8, cache_ttl=30) == one
    assert await a.fetchval(sql, 9, column=1, shard_key=9, cache_ttl=30) == "v9"
    assert await b.fetchval(sql, 9, column=1, shard_key=9, cache_ttl=30) == "v9"
    assert await b.fetchrow(sql, 9999, shard_key=1, cache_ttl=30) is None
    assert await a.fetchrow(sql, 9999, shard_key=1, cache_ttl=30) is None
    assert _qc(b).stats()["hits"] == 3


async def test_write_in_one_process_invalidates_the_other(
    pools: tuple[ShardedPool, ShardedPool], table: str
) -> None:
    a, b = pools
    sql = f"SELECT v FROM {table} WHERE id = $1"
    assert await b.fetchval(sql, 3, shard_key=3, cache_ttl=30) == "v3"
    assert await b.fetchval(sql, 3, shard_key=3, cache_ttl=30) == "v3"
    await a.execute(f"UPDATE {table} SET v = 'new' WHERE id = $1", 3, shard_key=3)
    assert await b.fetchval(sql, 3, shard_key=3, cache_ttl=30) == "new"  # a's bump is shared
    async with a.transaction(shard_key=3) as conn:
        await conn.execute(f"UPDATE {table} SET v = 'tx' WHERE id = 3")
    assert await b.fetchval(sql, 3, shard_key=3, cache_ttl=30) == "tx"
    count = f"SELECT count(*) FROM {table}"
    before = await b.fetchval(count, shard_key=3, cache_ttl=30)
    await a.copy_records_to_table(table, records=[(1001, "c", 1)], shard_key=3)
    assert await b.fetchval(count, shard_key=3, cache_ttl=30) == before + 1


async def test_external_writer_through_notify_reaches_redis_entries(
    pools: tuple[ShardedPool, ShardedPool], table: str, dsns: dict[str, str]
) -> None:
    import asyncpg

    a, b = pools
    await a.install_invalidation_triggers([table])  # only a listens
    sql = f"SELECT v FROM {table} WHERE id = $1"
    shard = a.shard_for(4)
    assert await b.fetchval(sql, 4, shard_key=4, cache_ttl=30) == "v4"
    other = await asyncpg.connect(dsns[shard])
    try:
        await other.execute(f"UPDATE {table} SET v = 'outside' WHERE id = 4")
    finally:
        await other.close()
    for _ in range(200):
        if await b.fetchval(sql, 4, shard_key=4, cache_ttl=30) == "outside":
            break
        await asyncio.sleep(0.02)
    assert await b.fetchval(sql, 4, shard_key=4, cache_ttl=30) == "outside"


async def test_lease_one_process_fills(
    pools: tuple[ShardedPool, ShardedPool], table: str
) -> None:
    """Concurrent misses of one key in two processes run the query once."""
    a, b = pools
    sql = f"SELECT count(*) FROM {table} WHERE pg_sleep(0) IS NOT NULL OR true"
    plain = f"SELECT count(*) FROM {table} WHERE id > $1"
    shard = a.shards[0]
    ran = 0

    def runner(pool: ShardedPool) -> Any:
        async def run() -> Any:
            nonlocal ran
            ran += 1
            await asyncio.sleep(0.3)
            return await pool.fetchval(plain, 0, shard=shard)
        return run

    reads = []
    for pool in (a, b, a, b):
        ident = pool._shards[shard].primary.redacted
        reads.append(_qc(pool).read(shard, ident, "fetchval", plain, (0,), 0, 30, runner(pool)))
    results = await asyncio.gather(*reads)
    assert len(set(results)) == 1 and ran == 1
    assert _qc(a).stats()["singleflight_waits"] + _qc(b).stats()["singleflight_waits"] == 2
    assert _qc(a).stats()["lease_waits"] + _qc(b).stats()["lease_waits"] == 1
    del sql


async def test_hostile_or_foreign_entry_is_a_miss(
    pools: tuple[ShardedPool, ShardedPool], table: str, tiercache_stack: Any, ns: str
) -> None:
    a, _ = pools
    sql = f"SELECT v FROM {table} WHERE id = $1"
    assert await a.fetchval(sql, 5, shard_key=5, cache_ttl=30) == "v5"
    client = RedisCluster.from_url(tiercache_stack.redis_url)
    try:
        keys = [k for k in client.scan_iter(match=f"{ns}:~tc:l3:e:*", target_nodes="all")]
        assert keys
        for k in keys:
            client.set(k, b"\xc1TC\x01" + b"\xdd\xff\xff\xff\xff")  # a lying msgpack length
        assert await a.fetchval(sql, 5, shard_key=5, cache_ttl=30) == "v5"
        gens = [k for k in client.scan_iter(match=f"{ns}:~tc:l3:gen:*", target_nodes="all")]
        for k in gens:
            client.delete(k)  # lost generations: a new incarnation, old entries never match
    finally:
        client.close()
    await a.execute(f"UPDATE {table} SET v = 'after' WHERE id = 5", shard_key=5)
    assert await a.fetchval(sql, 5, shard_key=5, cache_ttl=30) == "after"


async def test_redis_down_bypasses_and_stays_correct(dsns: dict[str, str], ns: str) -> None:
    qc = QueryCache("redis://127.0.0.1:1", namespace=ns)
    async with create_sharded_pool(dsns, min_size=1, max_size=2, query_cache=qc) as p:
        name = f"l3d_{uuid.uuid4().hex[:8]}"
        await p.execute_all(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        try:
            await p.execute(f"INSERT INTO {name} VALUES (1, 'a')", shard_key=1)
            sql = f"SELECT v FROM {name} WHERE id = 1"
            assert await p.fetchval(sql, shard_key=1, cache_ttl=30) == "a"
            await p.execute(f"UPDATE {name} SET v = 'b' WHERE id = 1", shard_key=1)
            assert await p.fetchval(sql, shard_key=1, cache_ttl=30) == "b"
            s = qc.stats()
            assert s["hits"] == 0 and s["pending_bumps"] >= 1
            assert set(s["bypass"]) <= {"store_error", "store_pending"}
        finally:
            await p.execute_all(f"DROP TABLE {name}")
    await qc.close()


async def test_processes_with_other_session_settings_never_share_entries(
    dsns: dict[str, str], tiercache_stack: Any, ns: str
) -> None:
    """Same DSN, other search_path / TimeZone: other results, so other keys in Redis."""
    url = tiercache_stack.redis_url
    dsn = next(iter(dsns.values()))
    schema = f"l3s{uuid.uuid4().hex[:6]}"
    qa, qb = QueryCache(url, namespace=ns), QueryCache(url, namespace=ns)
    async with create_sharded_pool({"s": dsn}, min_size=1, max_size=2, query_cache=qa) as a, \
            create_sharded_pool({"s": dsn}, min_size=1, max_size=2, query_cache=qb,
                                server_settings={"search_path": f"{schema},public",
                                                 "TimeZone": "Asia/Tokyo"}) as b:
        name = f"l3same_{uuid.uuid4().hex[:6]}"
        await a.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        await a.execute(f"CREATE SCHEMA {schema}")
        await a.execute(f"CREATE TABLE {schema}.{name} (id int PRIMARY KEY, v text)")
        try:
            await a.execute(f"INSERT INTO {name} VALUES (1, 'public')")
            await a.execute(f"INSERT INTO {schema}.{name} VALUES (1, 'other')")
            sql = f"SELECT v FROM {name} WHERE id = 1"
            assert await a.fetchval(sql, cache_ttl=30) == "public"
            assert await b.fetchval(sql, cache_ttl=30) == "other"
            ts = f"SELECT '2026-01-01 00:00+00'::timestamptz::text AS t FROM {name}"
            seen_a = await a.fetchval(ts, cache_ttl=30)
            seen_b = await b.fetchval(ts, cache_ttl=30)
            assert seen_b.endswith("+09") and not seen_a.endswith("+09")
            assert qb.stats()["hits"] == 0
        finally:
            await a.execute(f"DROP SCHEMA {schema} CASCADE")
            await a.execute(f"DROP TABLE {name}")
    await qa.close()
    await qb.close()


async def test_generations_that_go_back_are_caught(
    pools: tuple[ShardedPool, ShardedPool], table: str, tiercache_stack: Any, ns: str
) -> None:
    """A failover that lost increments (same incarnation, lower counters): a process that
    saw the higher value bypasses and raises the counters above it; the old entry is dead."""
    a, _ = pools
    sql = f"SELECT v FROM {table} WHERE id = $1"
    assert await a.fetchval(sql, 9, shard_key=9, cache_ttl=30) == "v9"
    await a.execute(f"UPDATE {table} SET v = 'later' WHERE id = 9", shard_key=9)
    assert await a.fetchval(sql, 9, shard_key=9, cache_ttl=30) == "later"  # saw the bump
    client = RedisCluster.from_url(tiercache_stack.redis_url)
    try:
        shard = a.shard_for(9)
        hkey = f"{ns}:~tc:l3:gen:{{{shard}}}"
        fields = [f for f in client.hkeys(hkey) if f != b"\x00inc"]
        for f in fields:
            client.hset(hkey, f, 0)  # back to before the write: the old entry would match
    finally:
        client.close()
    assert await a.fetchval(sql, 9, shard_key=9, cache_ttl=30) == "later"
    assert _qc(a).stats()["regressions"] >= 1
    assert await a.fetchval(sql, 9, shard_key=9, cache_ttl=30) == "later"
