"""ShardedPool as a drop-in for asyncpg.Pool, and errors that say which shard failed.

Unrouted calls on one shard (or on ``default_shard=``), ``create_sharded_pool(dsn)``, asyncpg's
own argument errors and error texts, ``isinstance(pool, asyncpg.Pool)``, getters equal to
asyncpg's; exceptions of a routed call or a start-up keep their class and gain a note naming the
shard and its redacted DSN; the slow-query log never holds a literal.  Servers are LocalStack's.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
import uuid
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from tiercache.sharding._pool_metrics import UNPARSEABLE, SlowQueryLog
from tiercache.sharding._redact import Redactor
from tiercache.sharding.pool import ShardedPool, ShardFanoutError, create_sharded_pool

SECRET = "dead-pass-7731"  # long enough for the Redactor (it ignores strings under 3 chars)


def _texts(exc: BaseException) -> str:
    """Everything a user or a log can see of ``exc``: message, repr, notes, traceback."""
    return "\n".join([
        str(exc), repr(exc), *getattr(exc, "__notes__", ()),
        *traceback.format_exception(exc),
    ])


def _dead_dsn(port: int = 1) -> str:
    return f"postgresql://nobody:{SECRET}@127.0.0.1:{port}/tiercache"


# -- without a server ------------------------------------------------------------------------


def test_is_an_asyncpg_pool_overriding_every_public_method() -> None:
    pool = create_sharded_pool("postgresql://u:p@127.0.0.1:1/db")
    assert isinstance(pool, asyncpg.Pool)
    inherited = [
        name for name, value in vars(asyncpg.Pool).items()
        if (not name.startswith("_") or name in ("__await__", "__aenter__", "__aexit__"))
        and callable(value) and getattr(ShardedPool, name) is value
    ]
    assert inherited == []


def test_default_shard() -> None:
    one = create_sharded_pool("postgresql://u:p@127.0.0.1:1/db")
    assert one.shards == ("default",) and one.default_shard == "default"
    assert create_sharded_pool({"only": "postgresql://h/db"}).default_shard == "only"
    two = {"s1": "postgresql://h1/db", "s2": "postgresql://h2/db"}
    assert create_sharded_pool(two).default_shard is None
    with pytest.raises(TypeError, match="default_shard="):
        create_sharded_pool(two).acquire()
    routed = create_sharded_pool(two, default_shard="s2")
    assert routed.default_shard == "s2"
    with pytest.raises(asyncpg.InterfaceError, match="not initialized"):
        routed.acquire()  # routed to s2 (no TypeError), then: not awaited yet
    with pytest.raises(ValueError, match="unknown shard 'nope'"):
        create_sharded_pool(two, default_shard="nope")


def test_a_shard_without_dsn_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"'s2'.*no 'dsn'"):
        create_sharded_pool({"s1": "postgresql://h/db", "s2": {"weight": 2}})
    with pytest.raises(ValueError, match=r"'s1' \(replica0\).*no 'dsn'"):
        create_sharded_pool({"s1": {"dsn": "postgresql://h/db", "replicas": [{"port": 5}]}})
    # An explicit address by connect arguments is fine (per shard or pool-wide).
    create_sharded_pool({"s1": {"host": "127.0.0.1", "port": 1}, "s2": {"port": 2}},
                        host="127.0.0.1")


BAD_ARGUMENTS: list[dict[str, Any]] = [
    {"init_size": 1, "min_size": 2, "max_size": 3},
    {"min_size": 5, "max_size": 2},
    {"max_size": 0},
    {"min_size": -1},
    {"init_size": 9, "max_size": 3},
    {"max_queries": 0},
    {"max_inactive_connection_lifetime": -1},
    {"connection_class": object},
    {"record_class": dict},
]


@pytest.mark.parametrize("kwargs", BAD_ARGUMENTS, ids=lambda k: ",".join(k))
async def test_create_pool_argument_errors_are_asyncpgs(kwargs: dict[str, Any]) -> None:
    dsn = "postgresql://u:p@127.0.0.1:1/db"
    with pytest.raises((ValueError, TypeError)) as theirs:
        asyncpg.create_pool(dsn, **kwargs)
    for shards in (dsn, {"s1": dsn, "s2": dsn, "s3": dsn}):
        with pytest.raises(type(theirs.value)) as ours:
            create_sharded_pool(shards, **kwargs)
        assert str(ours.value) == str(theirs.value)
        assert not isinstance(ours.value, ShardFanoutError)


def test_create_sharded_pool_first_parameter_is_like_create_pools_dsn() -> None:
    assert inspect.signature(create_sharded_pool).parameters["shards"].default is None


SLOW_STATEMENTS = [
    ("ALTER ROLE app PASSWORD $$dollar-secret$$", "dollar-secret"),
    ("ALTER ROLE app PASSWORD $pw$tagged-secret$pw$", "tagged-secret"),
    ("ALTER ROLE app WITH ENCRYPTED PASSWORD 'quoted-secret'", "quoted-secret"),
    ("CREATE ROLE app LOGIN PASSWORD E'esc\\'aped-secret'", "aped-secret"),
    ("SELECT * FROM users WHERE email = 'alice@example.com' AND pin = 48151623", "alice@"),
    ("SELECT * FROM users WHERE pin = 48151623", "48151623"),
    ("SELECT 3.14159265 + 2", "3.14159265"),
    ("SELECT U&'d\\0061t\\+000061-secret'", "secret"),
    ("SELECT X'deadbeef', B'1011'", "deadbeef"),
    ("CREATE TABLE t (a text DEFAULT 'default-secret')", "default-secret"),
    ("COMMENT ON TABLE t IS 'comment-secret'", "comment-secret"),
    ("ALTER SYSTEM SET app.key = 'system-secret'", "system-secret"),
    ("SELECT 'ünïcode-secret', 'x'", "secret"),
]


@pytest.mark.parametrize(("query", "literal"), SLOW_STATEMENTS)
def test_slow_log_keeps_normalized_statements_only(
    query: str, literal: str, caplog: pytest.LogCaptureFixture
) -> None:
    log = SlowQueryLog(threshold_ms=1)
    with caplog.at_level(logging.WARNING, logger="tiercache.sharding.slowlog"):
        log.record("s1", "primary", "execute", query, 5_000_000, False)
    (entry,) = log.entries()
    assert literal not in str(entry) and literal not in caplog.text
    assert "$1" in entry["query"] and entry["query"] in caplog.text
    assert entry["fingerprint"] and not entry["fingerprint"].startswith("raw:")


def test_slow_log_unparseable_statement_keeps_no_text(caplog: pytest.LogCaptureFixture) -> None:
    log = SlowQueryLog(threshold_ms=1)
    query = "ALTER ROLE app PASSWORD $$secret-in-bad-sql$$ ((("
    with caplog.at_level(logging.WARNING, logger="tiercache.sharding.slowlog"):
        log.record("s1", "primary", "execute", query, 5_000_000, True)
    (entry,) = log.entries()
    assert entry["query"] == UNPARSEABLE and entry["fingerprint"].startswith("raw:")
    assert "secret-in-bad-sql" not in str(entry) and "secret-in-bad-sql" not in caplog.text
    log.record("s1", "primary", "execute", query, 5_000_000, True)
    assert len({e["fingerprint"] for e in log.entries()}) == 1  # still groups


# -- against LocalStack's Postgres -----------------------------------------------------------


async def test_dsn_string_is_a_one_shard_pool_with_asyncpgs_getters(tiercache_stack: Any) -> None:
    dsn = tiercache_stack.pg_dsns["s1"]
    sizes = {"min_size": 2, "max_size": 4, "init_size": 3}
    async with asyncpg.create_pool(dsn, **sizes) as plain, \
            create_sharded_pool(dsn, **sizes) as pool:
        assert await pool.fetchval("SELECT $1::int + 1", 41) == 42  # no shard_key=
        async with pool.acquire() as con, pool.transaction() as con2:
            assert await con.fetchval("SELECT 1") == await con2.fetchval("SELECT 1") == 1
            for getter in ("get_min_size", "get_max_size", "get_init_size", "get_size"):
                assert getattr(pool, getter)() == getattr(plain, getter)(), getter
            assert pool.get_idle_size() == pool.get_size() - 2
        assert pool.get_idle_size() == pool.get_size()
        await pool.executemany("SELECT $1::int", [(1,), (2,)])
        rows = await pool.fetch("SELECT g FROM generate_series(1, 3) g")
        assert [r["g"] for r in rows] == [1, 2, 3]


async def test_asyncpg_style_connect_arguments(tiercache_stack: Any) -> None:
    url = urlsplit(tiercache_stack.pg_dsns["s1"])
    args = {"host": url.hostname, "port": url.port, "user": url.username,
            "password": url.password, "database": url.path.lstrip("/")}
    async with create_sharded_pool(min_size=1, max_size=1, **args) as pool:
        assert await pool.fetchval("SELECT 7") == 7
        assert url.password is not None and url.password not in repr(pool)


async def test_default_shard_takes_unrouted_calls(tiercache_stack: Any) -> None:
    dsns = dict(tiercache_stack.pg_dsns)
    async with create_sharded_pool(dsns, min_size=1, max_size=1, default_shard="s2") as pool:
        port = await pool.fetchval("SELECT inet_server_port()")
        assert port == urlsplit(dsns["s2"]).port
        # Pool-wide getters still cover every shard.
        assert pool.get_max_size() == len(dsns)


async def test_asyncpg_error_texts(tiercache_stack: Any) -> None:
    dsn = tiercache_stack.pg_dsns["s1"]
    async with create_sharded_pool(dsn, min_size=1, max_size=1) as p1, \
            create_sharded_pool(dsn, min_size=1, max_size=1) as p2:
        con = await p1.acquire()
        try:
            with pytest.raises(asyncpg.InterfaceError, match="is not a member of this pool"):
                await p2.release(con)
            with pytest.raises(asyncpg.InterfaceError, match="is not a member of this pool"):
                await p1.release(con._con)
        finally:
            await p1.release(con)
        await p1.release(con)  # twice: a no-op, as in asyncpg
    pool = create_sharded_pool(dsn, min_size=1, max_size=1)
    starting = asyncio.ensure_future(pool)
    await asyncio.sleep(0)
    with pytest.raises(asyncpg.InterfaceError, match="being initialized, but not yet ready"):
        await pool.fetchval("SELECT 1")
    with pytest.raises(asyncpg.InterfaceError, match="being initialized in another task"):
        await pool
    await starting
    await pool.close()
    with pytest.raises(asyncpg.InterfaceError):
        await pool.fetchval("SELECT 1")


async def test_start_up_failure_names_the_shard(tiercache_stack: Any) -> None:
    good = tiercache_stack.pg_dsns["s1"]
    pool = create_sharded_pool({"s1": good, "s2": _dead_dsn()}, min_size=1, max_size=1)
    with pytest.raises(OSError) as info:  # ConnectionRefusedError, as plain asyncpg raises
        await pool
    notes = "\n".join(getattr(info.value, "__notes__", ()))
    assert "'s2'" in notes and "postgresql://nobody:***@127.0.0.1:1/tiercache" in notes
    assert SECRET not in _texts(info.value)
    both = create_sharded_pool({"a": _dead_dsn(1), "b": _dead_dsn(2)}, min_size=1, max_size=1)
    with pytest.raises(ShardFanoutError) as many:
        await both
    assert many.value.failed_shards == ["a", "b"]
    assert "a (postgresql://nobody:***@127.0.0.1:1/tiercache)" in str(many.value)
    assert SECRET not in _texts(many.value)
    for exc in many.value.errors.values():
        assert isinstance(exc, OSError) and SECRET not in _texts(exc)


async def test_routed_error_keeps_its_class_and_names_the_shard(tiercache_stack: Any) -> None:
    dsns = dict(tiercache_stack.pg_dsns)
    password = urlsplit(dsns["s2"]).password
    assert password
    async with create_sharded_pool(dsns, min_size=1, max_size=2) as pool:
        with pytest.raises(asyncpg.UndefinedTableError) as info:
            await pool.fetch("SELECT * FROM no_such_table_here", shard="s3")
        assert any("'s3'" in n for n in info.value.__notes__)
        tiercache_stack.kill_pg_shard("s2")
        try:
            for _ in range(2):  # an idle connection dies first, then a new one is refused
                with pytest.raises(Exception) as dead:
                    await pool.fetchval("SELECT 1", shard="s2")
                exc = dead.value
                assert not isinstance(exc, ShardFanoutError)
                assert isinstance(exc, OSError | asyncpg.PostgresConnectionError
                                  | asyncpg.InterfaceError), type(exc)
                redacted = f"postgresql://{urlsplit(dsns['s2']).username}:***@"
                assert any("'s2'" in n and redacted in n for n in exc.__notes__), exc.__notes__
                assert password not in _texts(exc)
            with pytest.raises(ShardFanoutError) as fan:
                await pool.fetchval_all("SELECT 1")
            assert fan.value.failed_shards == ["s2"] and password not in _texts(fan.value)
            assert await pool.fetchval("SELECT 1", shard="s1") == 1
        finally:
            tiercache_stack.restart_pg_shard("s2")


@pytest.mark.parametrize("literal", ["$$dollar-pw$$", "$k$dollar-pw$k$", "E'dollar-pw'",
                                     "'dollar-pw'"])
def test_error_texts_mask_sql_passwords_of_every_quoting_style(literal: str) -> None:
    exc = asyncpg.PostgresSyntaxError(f"near ALTER ROLE app PASSWORD {literal} VALID UNTIL")
    Redactor().exception(exc)
    assert "dollar-pw" not in str(exc) and "PASSWORD '***' VALID" in str(exc)


async def test_slow_role_rotation_is_logged_without_the_password(
    tiercache_stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with create_sharded_pool(tiercache_stack.pg_dsns["s1"], min_size=1, max_size=1,
                                   slow_query_ms=0) as pool:
        role = f"r_{uuid.uuid4().hex[:8]}"
        with caplog.at_level(logging.WARNING, logger="tiercache.sharding.slowlog"):
            await pool.execute(f"CREATE ROLE {role} PASSWORD $$first-pw-1$$")
            await pool.execute(f"ALTER ROLE {role} PASSWORD $t$second-pw-2$t$")
            await pool.execute(f"ALTER ROLE {role} PASSWORD E'third\\'pw-3'")
            await pool.execute(f"DROP ROLE {role}")
        seen = str(pool.slow_queries()) + caplog.text
        assert f"ALTER ROLE {role} PASSWORD $1" in seen
        for secret in ("first-pw-1", "second-pw-2", "pw-3"):
            assert secret not in seen
