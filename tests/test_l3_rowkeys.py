"""Row-keyed generations: a write pinned to primary-key values invalidates only those keys'
point reads (and every read that is not a point read of that table), never fewer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tiercache import QueryCache, create_sharded_pool
from tiercache.sharding.pool import ShardedPool
from tiercache.tiers._sql import analyze
from tiercache.tiers._sql_keys import bucket


@pytest.fixture(params=["memory", "redis"])
async def pool(request: pytest.FixtureRequest, tiercache_stack: Any
               ) -> AsyncIterator[ShardedPool]:
    store = "memory" if request.param == "memory" else tiercache_stack.redis_url
    qc = QueryCache(store, namespace=f"rk{uuid.uuid4().hex[:8]}")
    dsn = next(iter(tiercache_stack.pg_dsns.values()))
    async with create_sharded_pool({"s": dsn}, min_size=1, max_size=4, query_cache=qc) as p:
        yield p
    await qc.close()


@pytest.fixture
async def table(pool: ShardedPool) -> AsyncIterator[str]:
    name = f"rk_{uuid.uuid4().hex[:8]}"
    await pool.execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, v text, g int)")
    await pool.execute(
        f"INSERT INTO {name} SELECT i, 'v' || i, i % 3 FROM generate_series(1, 20) i")
    yield name
    await pool.execute(f"DROP TABLE {name}")


def _stats(pool: ShardedPool) -> dict[str, Any]:
    assert pool.query_cache is not None
    return pool.query_cache.stats()


async def test_update_of_one_key_keeps_other_point_reads(pool: ShardedPool, table: str) -> None:
    point = f"SELECT v FROM {table} WHERE id = $1"
    agg = f"SELECT count(*) FROM {table} WHERE v LIKE 'new%'"
    by_g = f"SELECT count(*) FROM {table} WHERE g = $1"
    for sql, args in ((point, (3,)), (point, (4,)), (agg, ()), (by_g, (0,))):
        await pool.fetchval(sql, *args, cache_ttl=30)
    await pool.execute(f"UPDATE {table} SET v = 'new3' WHERE id = $1", 3)
    hits = _stats(pool)["hits"]
    assert await pool.fetchval(point, 4, cache_ttl=30) == "v4"
    assert _stats(pool)["hits"] == hits + 1  # another key's point read survived the write
    assert await pool.fetchval(point, 3, cache_ttl=30) == "new3"
    assert await pool.fetchval(agg, cache_ttl=30) == 1  # not a point read: invalidated
    await pool.execute(f"UPDATE {table} SET g = 0 WHERE id = 4")  # a literal key
    assert await pool.fetchval(by_g, 0, cache_ttl=30) == 7  # g=0 had 6 rows (3, 6, ..., 18)
    assert _stats(pool)["hits"] == hits + 1


async def test_literal_key_read_and_param_write(pool: ShardedPool, table: str) -> None:
    sql = f"SELECT v FROM {table} WHERE id = 5"
    assert await pool.fetchval(sql, cache_ttl=30) == "v5"
    await pool.execute(f"DELETE FROM {table} WHERE id = $1", 5)
    assert await pool.fetchval(sql, cache_ttl=30) is None


async def test_insert_with_key_invalidates_a_cached_miss(pool: ShardedPool, table: str) -> None:
    sql = f"SELECT v FROM {table} WHERE id = $1"
    assert await pool.fetchval(sql, 100, cache_ttl=30) is None  # negative result, cached
    await pool.execute(f"INSERT INTO {table} (id, v, g) VALUES ($1, $2, 0), (101, 'b', 0)",
                       100, "a")
    assert await pool.fetchval(sql, 100, cache_ttl=30) == "a"
    await pool.executemany(f"INSERT INTO {table} (id, v, g) VALUES ($1, $2, 0)",
                           [(102, "c"), (103, "d")])
    assert await pool.fetchval(sql, 103, cache_ttl=30) == "d"


async def test_writes_of_uncertain_reach_invalidate_the_table(
    pool: ShardedPool, table: str
) -> None:
    sql = f"SELECT v FROM {table} WHERE id = $1"
    assert await pool.fetchval(sql, 50, cache_ttl=30) is None
    await pool.execute(f"UPDATE {table} SET id = 50 WHERE id = 1")  # moves a row to key 50
    assert await pool.fetchval(sql, 50, cache_ttl=30) == "v1"
    assert await pool.fetchval(sql, 2, cache_ttl=30) == "v2"
    await pool.execute(f"UPDATE {table} SET v = 'all' WHERE g = 2")  # not pinned to keys
    assert await pool.fetchval(sql, 2, cache_ttl=30) == "all"
    await pool.execute(f"INSERT INTO {table} (id, v, g) VALUES (2, 'x', 0) "
                       "ON CONFLICT (id) DO UPDATE SET v = 'upsert'")
    assert await pool.fetchval(sql, 2, cache_ttl=30) == "upsert"
    rows = iter([("gen", 2)])  # a one-shot iterator: its keys can't be read after the call
    await pool.executemany(f"UPDATE {table} SET v = $1 WHERE id = $2", rows)
    assert await pool.fetchval(sql, 2, cache_ttl=30) == "gen"


@pytest.mark.parametrize(("sql", "pinned", "eq"), [
    ("SELECT v FROM t WHERE id = $1", True, (("id", ("p", 1)),)),
    ("SELECT v FROM t WHERE t.id = $2::bigint AND v > $1", True, (("id", ("p", 2)),)),
    ("SELECT v FROM t WHERE 7 = id", True, (("id", ("c", 7)),)),
    ("SELECT v FROM t WHERE id = $1 OR id = $2", False, ()),
    ("SELECT v FROM t JOIN u USING (id) WHERE id = $1", False, ()),
    ("SELECT v FROM t WHERE id = (SELECT max(id) FROM t)", False, ()),
    ("SELECT v FROM t WHERE id = $1 UNION SELECT v FROM t WHERE id = $2", False, ()),
    ("UPDATE t SET v = $2 WHERE id = $1", True, (("id", ("p", 1)),)),
    ("UPDATE t SET v = s.v FROM s WHERE t.id = $1", False, ()),
    ("DELETE FROM t WHERE id = 3 AND v = 'x'", True, (("id", ("c", 3)), ("v", ("c", "x")))),
    ("INSERT INTO t (id, v) VALUES ($1, $2) ON CONFLICT DO NOTHING", False, ()),
    ("WITH x AS (SELECT 1) UPDATE t SET v = 1 WHERE id = 1", False, ()),
])
def test_row_key_shapes(sql: str, pinned: bool, eq: tuple[Any, ...]) -> None:
    a = analyze(sql)
    assert (a.pinned, a.eq) == (pinned, eq)


def test_bucket_agrees_with_postgres_spelling() -> None:
    assert bucket(7, "int") == bucket("7", "int") == bucket(" +7 ", "int") == 7
    assert bucket(-5, "int") == 4091 and bucket(4096 + 3, "int") == 3
    assert bucket(7.0, "int") is None and bucket(True, "int") is None
    assert bucket("abc", "text") == bucket("abc", "text") != bucket("abd", "text")
    assert bucket(7, "text") is None
