"""L3 and the catalog: views resolved to base tables, temp tables refused, search_path writes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tiercache import QueryCache, create_sharded_pool
from tiercache.sharding.pool import ShardedPool


@pytest.fixture
async def pool(tiercache_stack: Any) -> AsyncIterator[ShardedPool]:
    qc = QueryCache()
    async with create_sharded_pool(dict(tiercache_stack.pg_dsns), min_size=1, max_size=4,
                                   query_cache=qc) as p:
        yield p


@pytest.fixture
async def names(pool: ShardedPool) -> AsyncIterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:8]
    n = {"t": f"vt_{tag}", "v": f"vv_{tag}", "vv": f"vvv_{tag}", "s": f"vs_{tag}"}
    await pool.execute_all(f"CREATE TABLE {n['t']} (id int PRIMARY KEY, v text)")
    await pool.execute_all(f"INSERT INTO {n['t']} VALUES (1, 'a'), (2, 'b')")
    await pool.execute_all(f"CREATE VIEW {n['v']} AS SELECT id, upper(v) AS v FROM {n['t']}")
    await pool.execute_all(f"CREATE VIEW {n['vv']} AS SELECT * FROM {n['v']} WHERE id > 0")
    await pool.execute_all(f"CREATE SCHEMA {n['s']}")
    await pool.execute_all(f"CREATE TABLE {n['s']}.items (id int PRIMARY KEY, v text)")
    await pool.execute_all(f"INSERT INTO {n['s']}.items VALUES (1, 'x')")
    yield n
    await pool.execute_all(f"DROP VIEW IF EXISTS {n['vv']}, {n['v']}")
    await pool.execute_all(f"DROP TABLE IF EXISTS {n['t']}")
    await pool.execute_all(f"DROP SCHEMA IF EXISTS {n['s']} CASCADE")


async def test_view_invalidated_by_a_write_to_its_base_table(
    pool: ShardedPool, names: dict[str, str]
) -> None:
    shard = pool.shards[0]
    for view in (names["v"], names["vv"]):  # a view, and a view over that view
        sql = f"SELECT v FROM {view} WHERE id = 1"
        first = await pool.fetchval(sql, shard=shard, cache_ttl=30)
        assert await pool.fetchval(sql, shard=shard, cache_ttl=30) == first
    hits = pool.query_cache.stats()["hits"]  # type: ignore[union-attr]
    assert hits == 2
    await pool.execute(f"UPDATE {names['t']} SET v = 'z' WHERE id = 1", shard=shard)
    for view in (names["v"], names["vv"]):
        assert await pool.fetchval(f"SELECT v FROM {view} WHERE id = 1", shard=shard,
                                   cache_ttl=30) == "Z"


async def test_view_invalidated_by_an_external_write_to_its_base(
    pool: ShardedPool, names: dict[str, str], tiercache_stack: Any
) -> None:
    shard = pool.shards[0]
    await pool.install_invalidation_triggers([names["t"]])
    sql = f"SELECT v FROM {names['vv']} WHERE id = 2"
    assert await pool.fetchval(sql, shard=shard, cache_ttl=30) == "B"
    conn = await asyncpg.connect(tiercache_stack.pg_dsns[shard])
    try:
        await conn.execute(f"UPDATE {names['t']} SET v = 'q' WHERE id = 2")
    finally:
        await conn.close()
    for _ in range(200):
        if await pool.fetchval(sql, shard=shard, cache_ttl=30) == "Q":
            break
        await asyncio.sleep(0.02)
    assert await pool.fetchval(sql, shard=shard, cache_ttl=30) == "Q"


async def test_write_through_an_updatable_view_invalidates_the_table(
    pool: ShardedPool, names: dict[str, str]
) -> None:
    shard = pool.shards[0]
    await pool.execute(f"CREATE VIEW {names['v']}_raw AS SELECT * FROM {names['t']}",
                       shard=shard)
    try:
        sql = f"SELECT v FROM {names['t']} WHERE id = 2"
        assert await pool.fetchval(sql, shard=shard, cache_ttl=30) == "b"
        await pool.execute(f"UPDATE {names['v']}_raw SET v = 'w' WHERE id = 2", shard=shard)
        assert await pool.fetchval(sql, shard=shard, cache_ttl=30) == "w"
    finally:
        await pool.execute(f"DROP VIEW {names['v']}_raw", shard=shard)


async def test_schema_qualified_write_and_search_path_read(
    tiercache_stack: Any, names: dict[str, str]
) -> None:
    """The reader's ``items`` is ``<schema>.items`` through search_path; a write naming it
    qualified must reach it (and the other way round)."""
    qc = QueryCache()
    dsns = dict(tiercache_stack.pg_dsns)
    s = names["s"]
    async with create_sharded_pool(dsns, min_size=1, max_size=2, query_cache=qc,
                                   server_settings={"search_path": f"{s},public"}) as p:
        shard = p.shards[0]
        sql = "SELECT v FROM items WHERE id = 1"
        assert await p.fetchval(sql, shard=shard, cache_ttl=30) == "x"
        await p.execute(f"UPDATE {s}.items SET v = 'y' WHERE id = 1", shard=shard)
        assert await p.fetchval(sql, shard=shard, cache_ttl=30) == "y"
        qualified = f"SELECT v FROM {s}.items WHERE id = 1"
        assert await p.fetchval(qualified, shard=shard, cache_ttl=30) == "y"
        await p.execute("UPDATE items SET v = 'w' WHERE id = 1", shard=shard)
        assert await p.fetchval(qualified, shard=shard, cache_ttl=30) == "w"
        assert await p.fetchval(sql, shard=shard, cache_ttl=30) == "w"


async def test_temp_table_is_refused(pool: ShardedPool, names: dict[str, str]) -> None:
    shard = pool.shards[0]
    async with pool.acquire(shard=shard) as conn:
        await conn.execute("CREATE TEMP TABLE IF NOT EXISTS scratch_l3 (id int)")
    # The temp table lives on one pooled connection only: never cacheable.
    with contextlib.suppress(asyncpg.UndefinedTableError):  # another pooled connection
        await pool.fetch("SELECT * FROM scratch_l3", shard=shard, cache_ttl=30)
    assert pool.query_cache.stats()["bypass"].get("temp_table", 0) >= 1  # type: ignore[union-attr]
    assert pool.query_cache.stats()["entries"] == 0  # type: ignore[union-attr]


async def test_function_volatility_comes_from_the_catalog(
    pool: ShardedPool, names: dict[str, str]
) -> None:
    """User functions are judged by pg_proc.provolatile (not a name list), also inside views."""
    shard = pool.shards[0]
    t = names["t"]
    fn_v, fn_i, view = f"{t}_vol", f"{t}_imm", f"{t}_clock"
    await pool.execute(f"CREATE FUNCTION {fn_v}() RETURNS int LANGUAGE sql VOLATILE "
                       "AS 'SELECT 1'", shard=shard)
    await pool.execute(f"CREATE FUNCTION {fn_i}(x text) RETURNS text LANGUAGE sql IMMUTABLE "
                       "AS 'SELECT upper(x)'", shard=shard)
    await pool.execute(f"CREATE VIEW {view} AS SELECT id, v, now() AS at FROM {t}", shard=shard)
    try:
        qc = pool.query_cache
        assert qc is not None
        for sql in (f"SELECT {fn_v}(), v FROM {t}", f"SELECT * FROM {view}",
                    f"SELECT to_char(id, '999') FROM {t}"):
            await pool.fetch(sql, shard=shard, cache_ttl=30)
        assert qc.stats()["bypass"].get("volatile") == 3, qc.stats()["bypass"]
        cached = f"SELECT {fn_i}(v), upper(v), count(*) FROM {t} GROUP BY v ORDER BY v"
        first = await pool.fetch(cached, shard=shard, cache_ttl=30)
        assert await pool.fetch(cached, shard=shard, cache_ttl=30) == first
        assert qc.stats()["hits"] == 1
    finally:
        await pool.execute(f"DROP VIEW {view}", shard=shard)
        await pool.execute(f"DROP FUNCTION {fn_v}(), {fn_i}(text)", shard=shard)


async def test_partitions_and_their_parent_invalidate_each_other(pool: ShardedPool) -> None:
    shard = pool.shards[0]
    p = f"vp_{uuid.uuid4().hex[:8]}"
    await pool.execute(f"CREATE TABLE {p} (id int PRIMARY KEY, v text) PARTITION BY RANGE (id)",
                       shard=shard)
    await pool.execute(f"CREATE TABLE {p}_a PARTITION OF {p} FOR VALUES FROM (1) TO (101)",
                       shard=shard)
    await pool.execute(f"CREATE TABLE {p}_b PARTITION OF {p} FOR VALUES FROM (101) TO (201)",
                       shard=shard)
    await pool.execute(f"INSERT INTO {p} VALUES (5, 'a'), (150, 'b')", shard=shard)
    try:
        whole = f"SELECT count(*) FROM {p} WHERE v = 'new'"
        part = f"SELECT v FROM {p}_b WHERE id = $1"
        assert await pool.fetchval(whole, shard=shard, cache_ttl=30) == 0
        assert await pool.fetchval(part, 150, shard=shard, cache_ttl=30) == "b"
        await pool.execute(f"UPDATE {p}_a SET v = 'new' WHERE id = 5", shard=shard)  # a child
        assert await pool.fetchval(whole, shard=shard, cache_ttl=30) == 1
        await pool.execute(f"UPDATE {p} SET v = 'new' WHERE id = $1", 150, shard=shard)  # parent
        assert await pool.fetchval(part, 150, shard=shard, cache_ttl=30) == "new"
        assert await pool.fetchval(whole, shard=shard, cache_ttl=30) == 2
    finally:
        await pool.execute(f"DROP TABLE {p}", shard=shard)
