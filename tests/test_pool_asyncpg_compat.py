"""One asyncpg-behaviour suite, run against a plain asyncpg pool and a 1-shard ShardedPool.

The promise of ShardedPool is "drop-in": code written for ``asyncpg.Pool`` keeps working once
``shard_key=`` is added.  So every test here is written against asyncpg's API, and the only
difference between the two parametrizations is the routing keywords (``{}`` vs
``{"shard_key": ...}``).  Both run on the same real Postgres shard from LocalStack.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from tiercache.sharding.pool import ShardedPool, create_sharded_pool

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Subject:
    """A pool under test plus the keywords that route a call on it."""

    kind: str
    pool: Any
    route: dict[str, Any]
    table: str


class MyRecord(asyncpg.Record):  # type: ignore[misc]
    pass


@pytest.fixture(params=["asyncpg", "sharded"])
async def subject(request: pytest.FixtureRequest, tiercache_stack: Any) -> AsyncIterator[Subject]:
    dsn = tiercache_stack.pg_dsns["s1"]
    pool: Any
    if request.param == "asyncpg":
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
        route: dict[str, Any] = {}
    else:
        pool = await create_sharded_pool({"s1": dsn}, min_size=1, max_size=3)
        route = {"shard_key": 12345}
    table = f"compat_{request.param}_{uuid.uuid4().hex[:10]}"
    await pool.execute(
        f"CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL)", **route
    )
    try:
        yield Subject(request.param, pool, route, table)
    finally:
        if not pool.is_closing():
            await pool.execute(f"DROP TABLE IF EXISTS {table}", **route)
            await pool.close()
        else:
            cleanup = await asyncpg.connect(dsn)
            try:
                await cleanup.execute(f"DROP TABLE IF EXISTS {table}")
            finally:
                await cleanup.close()


async def _seed(s: Subject, n: int = 3) -> None:
    await s.pool.executemany(
        f"INSERT INTO {s.table} (id, name) VALUES ($1, $2)",
        [(i, f"n{i}") for i in range(1, n + 1)],
        **s.route,
    )


async def test_execute_returns_status(subject: Subject) -> None:
    status = await subject.pool.execute(
        f"INSERT INTO {subject.table} VALUES ($1, $2)", 1, "a", **subject.route
    )
    assert status == "INSERT 0 1"
    # Multiple statements without arguments, as asyncpg allows.
    status = await subject.pool.execute(
        f"UPDATE {subject.table} SET name = 'b'; DELETE FROM {subject.table} WHERE id = 99",
        **subject.route,
    )
    assert status == "DELETE 0"


async def test_fetch_family(subject: Subject) -> None:
    s = subject
    await _seed(s)
    rows = await s.pool.fetch(f"SELECT id, name FROM {s.table} ORDER BY id", **s.route)
    assert isinstance(rows, list)
    assert [tuple(r) for r in rows] == [(1, "n1"), (2, "n2"), (3, "n3")]
    assert isinstance(rows[0], asyncpg.Record)
    row = await s.pool.fetchrow(f"SELECT id, name FROM {s.table} WHERE id = $1", 2, **s.route)
    assert row is not None and row["name"] == "n2"
    assert await s.pool.fetchrow(f"SELECT * FROM {s.table} WHERE id = $1", 99, **s.route) is None
    assert await s.pool.fetchval(f"SELECT count(*) FROM {s.table}", **s.route) == 3
    assert await s.pool.fetchval(
        f"SELECT id, name FROM {s.table} WHERE id = $1", 3, column=1, **s.route
    ) == "n3"
    assert await s.pool.fetchval(f"SELECT id FROM {s.table} WHERE id = 99", **s.route) is None


async def test_record_class(subject: Subject) -> None:
    s = subject
    await _seed(s, 1)
    rows = await s.pool.fetch(f"SELECT * FROM {s.table}", record_class=MyRecord, **s.route)
    assert type(rows[0]) is MyRecord
    row = await s.pool.fetchrow(f"SELECT * FROM {s.table}", record_class=MyRecord, **s.route)
    assert type(row) is MyRecord


async def test_fetchmany_and_executemany(subject: Subject) -> None:
    s = subject
    await _seed(s, 5)
    rows = await s.pool.fetchmany(
        f"SELECT name FROM {s.table} WHERE id = $1", [(1,), (4,)], **s.route
    )
    assert [r["name"] for r in rows] == ["n1", "n4"]


async def test_copy_roundtrip(subject: Subject) -> None:
    s = subject
    status = await s.pool.copy_records_to_table(
        s.table, records=[(1, "x"), (2, "y")], columns=["id", "name"], **s.route
    )
    assert status == "COPY 2"
    out = io.BytesIO()
    status = await s.pool.copy_from_table(s.table, output=out, format="csv", **s.route)
    assert status == "COPY 2"
    assert sorted(out.getvalue().decode().splitlines()) == ["1,x", "2,y"]
    out2 = io.BytesIO()
    status = await s.pool.copy_from_query(
        f"SELECT name FROM {s.table} WHERE id > $1 ORDER BY id", 0, output=out2, **s.route
    )
    assert status == "COPY 2" and out2.getvalue() == b"x\ny\n"
    status = await s.pool.copy_to_table(
        s.table, source=io.BytesIO(b"3\tz\n"), columns=["id", "name"], **s.route
    )
    assert status == "COPY 1"
    assert await s.pool.fetchval(f"SELECT name FROM {s.table} WHERE id = 3", **s.route) == "z"


async def test_postgres_errors_keep_their_class(subject: Subject) -> None:
    s = subject
    await _seed(s, 1)
    with pytest.raises(asyncpg.UniqueViolationError):
        await s.pool.execute(f"INSERT INTO {s.table} VALUES (1, 'dup')", **s.route)
    with pytest.raises(asyncpg.UndefinedTableError):
        await s.pool.fetch("SELECT * FROM no_such_table_for_compat", **s.route)
    with pytest.raises(asyncpg.DataError):
        await s.pool.fetchval("SELECT $1::int", "not an int", **s.route)
    # The pool is still usable and nothing leaked.
    assert await s.pool.fetchval("SELECT 1", **s.route) == 1
    assert s.pool.get_idle_size(**s.route) == s.pool.get_size(**s.route)


async def test_timeout(subject: Subject) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await subject.pool.fetchval("SELECT pg_sleep(5)", timeout=0.1, **subject.route)
    assert await subject.pool.fetchval("SELECT 2", **subject.route) == 2


async def test_acquire_context_and_await_release(subject: Subject) -> None:
    s = subject
    async with s.pool.acquire(**s.route) as con:
        assert isinstance(con, asyncpg.pool.PoolConnectionProxy)
        assert await con.fetchval("SELECT 41 + 1") == 42
        async with con.transaction():
            await con.execute(f"INSERT INTO {s.table} VALUES (7, 'seven')")
    con = await s.pool.acquire(timeout=5, **s.route)
    try:
        assert await con.fetchval(f"SELECT name FROM {s.table} WHERE id = 7") == "seven"
    finally:
        await s.pool.release(con)
    assert s.pool.get_idle_size(**s.route) == s.pool.get_size(**s.route)


async def test_connection_transaction_rollback(subject: Subject) -> None:
    s = subject
    with pytest.raises(RuntimeError):
        async with s.pool.acquire(**s.route) as con, con.transaction():
            await con.execute(f"INSERT INTO {s.table} VALUES (1, 'gone')")
            raise RuntimeError("boom")
    assert await s.pool.fetchval(f"SELECT count(*) FROM {s.table}", **s.route) == 0


async def test_release_rejects_foreign_connection(
    subject: Subject, tiercache_stack: Any
) -> None:
    con = await asyncpg.connect(tiercache_stack.pg_dsns["s1"])
    try:
        with pytest.raises(asyncpg.InterfaceError):
            await subject.pool.release(con)
    finally:
        await con.close()


async def test_sizes(subject: Subject) -> None:
    p, r = subject.pool, subject.route
    assert p.get_min_size(**r) == 1
    assert p.get_max_size(**r) == 3
    assert p.get_init_size(**r) == 1
    assert 1 <= p.get_size(**r) <= 3
    async with p.acquire(**r):
        assert p.get_idle_size(**r) == p.get_size(**r) - 1
    assert p.get_idle_size(**r) == p.get_size(**r)


async def test_expire_connections_and_set_connect_args(subject: Subject) -> None:
    p, r = subject.pool, subject.route
    pid1 = await p.fetchval("SELECT pg_backend_pid()", **r)
    await p.expire_connections(**r)
    pid2 = await p.fetchval("SELECT pg_backend_pid()", **r)
    assert pid1 != pid2
    if subject.kind == "asyncpg":
        p.set_connect_args(
            p._connect_args[0], server_settings={"application_name": "compat-app"}
        )
    else:
        p.set_connect_args(server_settings={"application_name": "compat-app"}, **r)
    await p.expire_connections(**r)
    assert await p.fetchval("SELECT current_setting('application_name')", **r) == "compat-app"


async def test_close_then_use_fails(subject: Subject) -> None:
    p, r = subject.pool, subject.route
    assert not p.is_closing()
    await p.close()
    assert p.is_closing()
    with pytest.raises(asyncpg.InterfaceError):
        await p.fetchval("SELECT 1", **r)


async def test_terminate(subject: Subject) -> None:
    subject.pool.terminate()
    assert subject.pool.is_closing()


async def test_async_with_and_await_forms(tiercache_stack: Any) -> None:
    dsn = tiercache_stack.pg_dsns["s1"]
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as plain:
        assert await plain.fetchval("SELECT 1") == 1
    async with create_sharded_pool({"s1": dsn}, min_size=1, max_size=1) as sharded:
        assert isinstance(sharded, ShardedPool)
        assert await sharded.fetchval("SELECT 1", shard="s1") == 1
    assert sharded.is_closing()
    sharded2 = await create_sharded_pool({"s1": dsn}, min_size=1, max_size=1)
    async with sharded2 as same:
        assert same is sharded2
