"""L3 query cache through the ShardedPool, on the real Postgres shards of the LocalStack."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tiercache import QueryCache, create_sharded_pool, metrics
from tiercache.sharding.pool import ShardedPool


@pytest.fixture
def dsns(tiercache_stack: Any) -> dict[str, str]:
    return dict(tiercache_stack.pg_dsns)


@pytest.fixture
async def pool(dsns: dict[str, str]) -> AsyncIterator[ShardedPool]:
    qc = QueryCache(default_ttl=30, max_ttl=300)
    async with create_sharded_pool(dsns, min_size=1, max_size=8, query_cache=qc) as p:
        yield p


@pytest.fixture
async def table(pool: ShardedPool) -> AsyncIterator[str]:
    name = f"l3_{uuid.uuid4().hex[:10]}"
    await pool.execute_all(f"CREATE TABLE {name} (id bigint PRIMARY KEY, v text)")
    await pool.execute_all(f"INSERT INTO {name} SELECT g, 'v' || g FROM generate_series(1, 50) g")
    yield name
    await pool.execute_all(f"DROP TABLE IF EXISTS {name}")


def _qc(pool: ShardedPool) -> QueryCache:
    assert pool.query_cache is not None
    return pool.query_cache


async def test_hit_returns_records_and_counts(pool: ShardedPool, table: str) -> None:
    sql = f"SELECT id, v FROM {table} WHERE id = $1"
    first = await pool.fetch(sql, 7, shard_key=7, cache_ttl=30)
    again = await pool.fetch(sql, 7, shard_key=7, cache_ttl=30)
    assert again == first and isinstance(again[0], asyncpg.Record)
    assert again[0]["v"] == "v7" and again[0][1] == "v7" and again[0].get("id") == 7
    assert list(again[0].keys()) == ["id", "v"] and list(again[0].items())[1] == ("v", "v7")
    row = await pool.fetchrow(sql, 8, shard_key=8, cache_ttl=30)
    assert (await pool.fetchrow(sql, 8, shard_key=8, cache_ttl=30)) == row
    assert await pool.fetchval(sql, 9, column=1, shard_key=9, cache_ttl="adaptive") == "v9"
    assert await pool.fetchval(sql, 9, column=0, shard_key=9, cache_ttl="adaptive") == 9
    many = await pool.fetchmany(sql, [(1,), (2,)], shard_key=1, cache_ttl=30)
    assert await pool.fetchmany(sql, [(1,), (2,)], shard_key=1, cache_ttl=30) == many
    s = _qc(pool).stats()
    assert s["hits"] == 3 and s["misses"] == 5 and s["entries"] == 5
    assert await pool.fetch(sql, 7, shard_key=7) == first  # cache_ttl=None: not cached
    assert _qc(pool).stats()["hits"] == 3


async def test_writes_through_the_pool_invalidate(pool: ShardedPool, table: str) -> None:
    sql = f"SELECT v FROM {table} WHERE id = $1"
    assert await pool.fetchval(sql, 3, shard_key=3, cache_ttl=30) == "v3"
    await pool.execute(f"UPDATE {table} SET v = 'new' WHERE id = $1", 3, shard_key=3)
    assert await pool.fetchval(sql, 3, shard_key=3, cache_ttl=30) == "new"
    await pool.executemany(f"UPDATE {table} SET v = $2 WHERE id = $1", [(3, "many")],
                           shard_key=3)
    assert await pool.fetchval(sql, 3, shard_key=3, cache_ttl=30) == "many"
    async with pool.transaction(shard_key=3) as conn:
        await conn.execute(f"UPDATE {table} SET v = 'tx' WHERE id = 3")
    assert await pool.fetchval(sql, 3, shard_key=3, cache_ttl=30) == "tx"
    await pool.copy_records_to_table(table, records=[(1000, "copied")], shard_key=3)
    count = f"SELECT count(*) FROM {table}"
    before = await pool.fetchval(count, shard_key=3, cache_ttl=30)
    await pool.copy_records_to_table(table, records=[(1001, "copied")], shard_key=3)
    assert await pool.fetchval(count, shard_key=3, cache_ttl=30) == before + 1
    await pool.execute(f"TRUNCATE {table}", shard_key=3)
    assert await pool.fetchval(count, shard_key=3, cache_ttl=30) == 0
    assert _qc(pool).stats()["invalidations"] >= 5


async def test_fanout_reads_cached_and_execute_all_invalidates(
    pool: ShardedPool, table: str
) -> None:
    sql = f"SELECT count(*) FROM {table}"
    counts = await pool.fetchval_all(sql, cache_ttl=30)
    assert counts == await pool.fetchval_all(sql, cache_ttl=30)
    assert _qc(pool).stats()["hits"] == len(pool.shards)
    rows = await pool.fetch_all(f"SELECT id FROM {table} ORDER BY id LIMIT 2", cache_ttl=30)
    assert all(len(r) == 2 for r in rows.values())
    await pool.execute_all(f"DELETE FROM {table}")
    assert set((await pool.fetchval_all(sql, cache_ttl=30)).values()) == {0}


async def test_refusals_are_bypass_with_reason(pool: ShardedPool, table: str) -> None:
    shard = pool.shards[0]
    for sql in (f"SELECT now(), v FROM {table}", f"SELECT v FROM {table} FOR UPDATE",
                "SELECT * FROM pg_class LIMIT 1", "SELECT 1"):
        await pool.fetch(sql, shard=shard, cache_ttl=30)
        await pool.fetch(sql, shard=shard, cache_ttl=30)
    s = _qc(pool).stats()
    assert s["hits"] == 0 and s["entries"] == 0
    assert s["bypass"] == {"volatile": 2, "for_update": 2, "system_catalog": 2, "no_table": 2}


async def test_too_large_not_stored(dsns: dict[str, str], table: str) -> None:
    qc = QueryCache(max_entry_bytes=200)
    async with create_sharded_pool(dsns, min_size=1, max_size=2, query_cache=qc) as p:
        shard = p.shards[0]
        await p.fetch(f"SELECT * FROM {table}", shard=shard, cache_ttl=30)
        await p.fetch(f"SELECT * FROM {table}", shard=shard, cache_ttl=30)
        assert qc.stats()["bypass"] == {"too_large": 2} and qc.stats()["hits"] == 0


async def test_cache_ttl_without_query_cache_is_an_error(dsns: dict[str, str]) -> None:
    async with create_sharded_pool(dsns, min_size=1, max_size=2) as p:
        with pytest.raises(TypeError, match="query_cache"):
            await p.fetch("SELECT 1", shard=p.shards[0], cache_ttl=30)


async def test_write_committed_between_read_and_store_is_never_served(
    pool: ShardedPool, table: str
) -> None:
    """The reader read the old value; the write commits (and bumps) before it stores."""
    qc = _qc(pool)
    shard = pool.shard_for(5)
    sql = f"SELECT v FROM {table} WHERE id = $1"

    async def old_read_then_write() -> Any:
        value = await pool.fetchval(sql, 5, shard_key=5)
        await pool.execute(f"UPDATE {table} SET v = 'fresh' WHERE id = 5", shard_key=5)
        return value

    stale = await qc.read(shard, pool._shards[shard].primary.redacted, "fetchval", sql, (5,),
                          0, 30, old_read_then_write)
    assert stale == "v5"  # that call's own answer (it began before the write)
    assert qc.stats()["race_skips"] == 1 and qc.stats()["entries"] == 0
    assert await pool.fetchval(sql, 5, shard_key=5, cache_ttl=30) == "fresh"


async def test_race_no_stale_read_after_commit(pool: ShardedPool, table: str) -> None:
    """One writer commits in a loop; 20 readers; a read that starts after a commit returned
    never sees an older value."""
    sql = f"SELECT v FROM {table} WHERE id = $1"
    committed = 0
    done = False
    stale = 0
    reads = 0

    async def writer() -> None:
        nonlocal committed, done
        for i in range(1, 301):
            await pool.execute(f"UPDATE {table} SET v = $2 WHERE id = $1", 11, str(i),
                               shard_key=11)
            committed = i
            await asyncio.sleep(0)
        done = True

    async def reader() -> None:
        nonlocal stale, reads
        while not done:
            floor = committed
            v = await pool.fetchval(sql, 11, shard_key=11, cache_ttl=30)
            reads += 1
            await asyncio.sleep(0)  # a cache hit never yields: let the writer run
            if (v.isdigit() and int(v) < floor) or (floor and not v.isdigit()):
                stale += 1

    await asyncio.gather(writer(), *(reader() for _ in range(20)))
    s = _qc(pool).stats()
    assert stale == 0
    assert reads > 300 and s["hits"] > 0


async def test_replica_reads_bypass(dsns: dict[str, str], table: str) -> None:
    name, dsn = next(iter(dsns.items()))
    qc = QueryCache()
    shards = {name: {"dsn": dsn, "replicas": [dsn]}}
    async with create_sharded_pool(shards, min_size=1, max_size=2, query_cache=qc) as p:
        await p.fetch(f"SELECT v FROM {table}", readonly=True, cache_ttl=30)
        assert qc.stats()["bypass"] == {"replica": 1}


async def test_metrics_under_tier_l3(pool: ShardedPool, table: str) -> None:
    qc = _qc(pool)
    await pool.fetch(f"SELECT v FROM {table} WHERE id = 1", shard_key=1, cache_ttl=30)
    await pool.fetch(f"SELECT v FROM {table} WHERE id = 1", shard_key=1, cache_ttl=30)
    metrics.register(qc)
    try:
        text = repr(metrics.samples())
    finally:
        metrics.unregister(qc)
    assert "l3" in text


async def test_external_writer_invalidates_via_notify_and_listener_loss_bypasses(
    pool: ShardedPool, table: str, dsns: dict[str, str]
) -> None:
    qc = _qc(pool)
    await pool.install_invalidation_triggers([table])
    shard = pool.shard_for(4)
    sql = f"SELECT v FROM {table} WHERE id = $1"
    assert await pool.fetchval(sql, 4, shard_key=4, cache_ttl=30) == "v4"
    assert await pool.fetchval(sql, 4, shard_key=4, cache_ttl=30) == "v4"
    other = await asyncpg.connect(dsns[shard])  # not the pool: only NOTIFY can tell us
    try:
        await other.execute(f"UPDATE {table} SET v = 'outside' WHERE id = 4")

        async def fresh() -> bool:
            return await pool.fetchval(sql, 4, shard_key=4, cache_ttl=30) == "outside"

        for _ in range(100):
            if await fresh():
                break
            await asyncio.sleep(0.02)
        assert await fresh()
        listener = pool._l3_listeners[shard]
        old_pid = listener.backend_pid
        await other.execute("SELECT pg_terminate_backend($1)", old_pid)
        for _ in range(100):
            if shard in qc.stats()["untrusted_shards"] or listener.backend_pid != old_pid:
                break
            await asyncio.sleep(0.01)
        # Untrusted or already back (with an epoch bump): either way, no stale read.
        await other.execute(f"UPDATE {table} SET v = 'gap' WHERE id = 4")
        await asyncio.wait_for(listener.connected.wait(), 10)
        for _ in range(100):
            if listener.backend_pid != old_pid and listener.connected.is_set():
                break
            await asyncio.sleep(0.02)
        assert listener.backend_pid != old_pid
        assert await pool.fetchval(sql, 4, shard_key=4, cache_ttl=30) == "gap"
        assert qc.stats()["epoch_bumps"] >= 2
    finally:
        await other.close()


async def test_listener_heartbeat_catches_an_unresponsive_backend(
    pool: ShardedPool, table: str
) -> None:
    """A LISTEN backend that stops answering (SIGSTOP: the TCP connection stays up, so no
    termination callback fires) is caught by the heartbeat: untrusted, then replaced."""
    import os
    import signal

    qc = _qc(pool)
    await pool.install_invalidation_triggers([table])
    shard = pool.shard_for(6)
    listener = pool._l3_listeners[shard]
    pid = listener.backend_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(200):
            if shard in qc.stats()["untrusted_shards"] or listener.heartbeat_failures:
                break
            await asyncio.sleep(0.02)
        assert listener.heartbeat_failures >= 1
        sql = f"SELECT v FROM {table} WHERE id = $1"
        await pool.fetchval(sql, 6, shard_key=6, cache_ttl=30)
        for _ in range(250):
            if listener.backend_pid != pid and listener.connected.is_set():
                break
            await asyncio.sleep(0.02)
        assert listener.backend_pid != pid and shard not in qc.stats()["untrusted_shards"]
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_transaction_bumps_the_tables_it_wrote(
    pool: ShardedPool, table: str, dsns: dict[str, str]
) -> None:
    """A transaction's commit bumps what it wrote -- seen by Postgres' own per-transaction
    counters, so COPY and trigger writes count -- not the whole shard; a rollback bumps
    nothing; DDL inside bumps the shard."""
    qc = _qc(pool)
    shard = pool.shard_for(1)
    other = f"{table}_b"
    await pool.execute(f"CREATE TABLE {other} (id int PRIMARY KEY, v text)", shard=shard)
    await pool.execute(f"INSERT INTO {other} VALUES (1, 'b1')", shard=shard)
    try:
        sql_a = f"SELECT count(*) FROM {table}"
        sql_b = f"SELECT v FROM {other} WHERE id = 1"
        count = await pool.fetchval(sql_a, shard=shard, cache_ttl=30)
        assert await pool.fetchval(sql_b, shard=shard, cache_ttl=30) == "b1"
        async with pool.transaction(shard=shard) as conn:
            await conn.copy_records_to_table(table, records=[(5000, "copied")])
        hits = qc.stats()["hits"]
        assert await pool.fetchval(sql_b, shard=shard, cache_ttl=30) == "b1"  # not written
        assert qc.stats()["hits"] == hits + 1
        assert await pool.fetchval(sql_a, shard=shard, cache_ttl=30) == count + 1  # COPY seen
        with pytest.raises(RuntimeError):
            async with pool.transaction(shard=shard) as conn:
                await conn.execute(f"UPDATE {other} SET v = 'rolled back'")
                raise RuntimeError("abort")
        assert await pool.fetchval(sql_b, shard=shard, cache_ttl=30) == "b1"
        assert qc.stats()["hits"] == hits + 2  # a rollback invalidates nothing
        async with pool.transaction(shard=shard) as conn:
            await conn.execute(f"TRUNCATE {table}")
        assert await pool.fetchval(sql_a, shard=shard, cache_ttl=30) == 0
        epochs = qc.stats()["epoch_bumps"]
        async with pool.transaction(shard=shard) as conn:
            await conn.execute(f"ALTER TABLE {other} ADD COLUMN w int")
        assert qc.stats()["epoch_bumps"] == epochs + 1
    finally:
        await pool.execute(f"DROP TABLE {other}", shard=shard)


async def test_memory_hit_is_served_without_awaiting_read(pool: ShardedPool, table: str) -> None:
    """The pool asks ``lookup`` first: a memory hit builds no ``read`` coroutine and no query
    closure; anything else (a cold plan, an untrusted shard, an expired entry) goes to
    ``read``."""
    sql = f"SELECT v FROM {table} WHERE id = $1"
    qc = _qc(pool)
    assert await pool.fetchval(sql, 7, shard_key=7, cache_ttl=30) == "v7"
    real = qc.read

    async def not_here(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("went through read()")

    qc.read = not_here  # type: ignore[method-assign]
    try:
        hits = qc.stats()["hits"]
        assert await pool.fetchval(sql, 7, shard_key=7, cache_ttl=30) == "v7"
        assert qc.stats()["hits"] == hits + 1
        with pytest.raises(AssertionError):  # never read: no plan entry to hit
            await pool.fetchval(sql, 8, shard_key=8, cache_ttl=30)
        shard = pool.shard_for(7)
        qc.set_trusted(shard, False)
        with pytest.raises(AssertionError):  # untrusted: read() bypasses
            await pool.fetchval(sql, 7, shard_key=7, cache_ttl=30)
        qc.set_trusted(shard, True)
    finally:
        qc.read = real  # type: ignore[method-assign]
