"""Row-keyed generations: a write pinned to primary-key values invalidates only those keys'
point reads (and every read that is not a point read of that table), never fewer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests._l3_helpers import l3_pool, l3_table
from tiercache.sharding.pool import ShardedPool
from tiercache.tiers._sql import analyze
from tiercache.tiers._sql_keys import bucket


@pytest.fixture(params=["memory", "redis"])
async def pool(request: pytest.FixtureRequest, tiercache_stack: Any
               ) -> AsyncIterator[ShardedPool]:
    async with l3_pool(tiercache_stack, request.param, "rk") as p:
        yield p


@pytest.fixture
async def table(pool: ShardedPool) -> AsyncIterator[str]:
    async with l3_table(pool, "rk", "id bigint PRIMARY KEY, v text, g int",
                        "SELECT i, 'v' || i, i % 3 FROM generate_series(1, 20) i") as name:
        yield name


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


async def test_a_write_keeps_the_point_reads_of_keys_4096_apart(
    pool: ShardedPool, table: str
) -> None:
    """Buckets are 2**16 per table: 7 and 4096 + 7 (one bucket with 4096 buckets) no longer
    invalidate each other, so a write refills only its own key's entries."""
    point = f"SELECT v FROM {table} WHERE id = $1"
    await pool.execute(f"INSERT INTO {table} (id, v, g) VALUES ($1, 'far', 0)", 4096 + 7)
    assert await pool.fetchval(point, 4096 + 7, cache_ttl=30) == "far"
    assert await pool.fetchval(point, 7, cache_ttl=30) == "v7"
    await pool.execute(f"UPDATE {table} SET v = 'new7' WHERE id = $1", 7)
    hits = _stats(pool)["hits"]
    assert await pool.fetchval(point, 4096 + 7, cache_ttl=30) == "far"
    assert _stats(pool)["hits"] == hits + 1
    assert await pool.fetchval(point, 7, cache_ttl=30) == "new7"
    await pool.execute(f"UPDATE {table} SET v = 'new65543' WHERE id = $1", 7 + 65536)
    assert await pool.fetchval(point, 7, cache_ttl=30) == "new7"  # no such row: nothing changed


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
    assert bucket(-5, "int") == 65531 and bucket(65536 + 3, "int") == 3
    assert bucket(4096 + 3, "int") == 4099  # 2**16 buckets: keys 4096 apart are distinct
    assert bucket(7.0, "int") is None and bucket(True, "int") is None
    assert bucket("abc", "text") == bucket("abc", "text") != bucket("abd", "text")
    assert bucket(7, "text") is None


@pytest.fixture
async def text_table(pool: ShardedPool) -> AsyncIterator[str]:
    name = f"rkt_{uuid.uuid4().hex[:8]}"
    await pool.execute(f"CREATE TABLE {name} (k text PRIMARY KEY, v text)")
    await pool.execute(
        f"INSERT INTO {name} SELECT 'k' || i, 'v' || i FROM generate_series(1, 50) i")
    yield name
    await pool.execute(f"DROP TABLE {name}")


async def _settle(pool: ShardedPool, dsn: str, table: str) -> None:
    """Wait until every NOTIFY sent so far has been handled (a marker write comes last)."""
    import asyncio

    import asyncpg

    sql = f"SELECT count(*) FROM {table}"
    before = await pool.fetchval(sql, cache_ttl=30)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"INSERT INTO {table} (id, v, g) VALUES (-1, 'marker', 0)")
        for _ in range(300):
            if await pool.fetchval(sql, cache_ttl=30) != before:
                break
            await asyncio.sleep(0.01)
        await conn.execute(f"DELETE FROM {table} WHERE id = -1")
        for _ in range(300):
            if await pool.fetchval(sql, cache_ttl=30) == before:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("notifications never arrived")
    finally:
        await conn.close()


async def test_triggers_notify_row_keys(
    pool: ShardedPool, table: str, text_table: str, tiercache_stack: Any
) -> None:
    """With triggers installed, a write (the pool's or another client's) invalidates only the
    key buckets it touched; a bulk write, the table."""
    import asyncio

    import asyncpg

    dsn = next(iter(tiercache_stack.pg_dsns.values()))
    await pool.install_invalidation_triggers([table, text_table])
    point = f"SELECT v FROM {table} WHERE id = $1"
    tpoint = f"SELECT v FROM {text_table} WHERE k = $1"
    for i in (3, 4, 5):
        await pool.fetchval(point, i, cache_ttl=30)
    for k in ("k1", "k2"):
        await pool.fetchval(tpoint, k, cache_ttl=30)
    await pool.execute(f"UPDATE {table} SET v = 'pool' WHERE id = $1", 3)  # + its NOTIFY
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"UPDATE {table} SET v = 'ext' WHERE id = 4")
        await conn.execute(f"UPDATE {text_table} SET v = 'ext' WHERE k = 'k1'")
    finally:
        await conn.close()
    await _settle(pool, dsn, table)
    for _ in range(300):
        if await pool.fetchval(tpoint, "k1", cache_ttl=30) == "ext":
            break
        await asyncio.sleep(0.01)
    hits = _stats(pool)["hits"]
    assert await pool.fetchval(point, 5, cache_ttl=30) == "v5"  # untouched key: still a hit
    assert await pool.fetchval(tpoint, "k2", cache_ttl=30) == "v2"
    assert _stats(pool)["hits"] == hits + 2
    assert await pool.fetchval(point, 3, cache_ttl=30) == "pool"
    assert await pool.fetchval(point, 4, cache_ttl=30) == "ext"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"UPDATE {table} SET g = g + 1")  # > 32 buckets: the whole table
    finally:
        await conn.close()
    for _ in range(300):
        hits = _stats(pool)["hits"]
        await pool.fetchval(point, 5, cache_ttl=30)
        if _stats(pool)["hits"] == hits:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("a bulk write did not invalidate the table")


async def test_trigger_buckets_agree_with_the_pool_above_4096(
    pool: ShardedPool, table: str, text_table: str, tiercache_stack: Any
) -> None:
    """The trigger computes the pool's 2**16 buckets (int and md5 of text): another client's
    write to key 4096 + 7 invalidates that key's reads, and not key 7's."""
    import asyncio

    import asyncpg

    dsn = next(iter(tiercache_stack.pg_dsns.values()))
    await pool.install_invalidation_triggers([table, text_table])
    point = f"SELECT v FROM {table} WHERE id = $1"
    tpoint = f"SELECT v FROM {text_table} WHERE k = $1"
    far = next(f"k{i}" for i in range(1, 51) if (bucket(f"k{i}", "text") or 0) >= 4096)
    await pool.execute(f"INSERT INTO {table} (id, v, g) VALUES ($1, 'far', 0)", 4096 + 7)
    assert await pool.fetchval(point, 4096 + 7, cache_ttl=30) == "far"
    assert await pool.fetchval(point, 7, cache_ttl=30) == "v7"
    assert await pool.fetchval(tpoint, far, cache_ttl=30) == "v" + far[1:]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"UPDATE {table} SET v = 'ext' WHERE id = $1", 4096 + 7)
        await conn.execute(f"UPDATE {text_table} SET v = 'ext' WHERE k = $1", far)
    finally:
        await conn.close()
    await _settle(pool, dsn, table)
    for _ in range(300):
        if (await pool.fetchval(point, 4096 + 7, cache_ttl=30) == "ext"
                and await pool.fetchval(tpoint, far, cache_ttl=30) == "ext"):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("another client's write to a key >= 4096 was not seen")
    hits = _stats(pool)["hits"]
    assert await pool.fetchval(point, 7, cache_ttl=30) == "v7"
    assert _stats(pool)["hits"] == hits + 1


def test_payload_parsing_is_bounded() -> None:
    from tiercache.sharding._l3_listen import parse_payload

    assert parse_payload("public.t") == ("public", "t", None)
    assert parse_payload("#16:1,2,65535#s.t#x") == ("s", "t#x", [1, 2, 65535])
    assert parse_payload("#16:1,99999#public.t")[2] is None  # out of range: the whole table
    assert parse_payload("#16:" + ",".join(["1"] * 40) + "#public.t")[2] is None
    assert parse_payload("#16:x#public.t")[2] is None
    # a trigger installed with another bucket count (the 4096 of older versions): the table
    assert parse_payload("#1,2,4095#s.t") == ("s", "t", None)
    assert parse_payload("#12:1,2#s.t") == ("s", "t", None)
