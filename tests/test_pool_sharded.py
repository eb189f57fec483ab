"""ShardedPool over three real Postgres shards from LocalStack.

Routing equals the HashRing, transactions stay on one shard, fan-out reports a dead shard,
read replicas, 200 concurrent acquires without leaks, metrics, slow-query log, health and
password redaction.

Replicas: LocalStack has no streaming replication, so a "replica" here is a second DSN to a
server, told apart by ``application_name``.  That exercises exactly the pool's part -- choosing
an endpoint, round-robin, fallback -- which is independent of how the replica is fed.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from pglast.parser import fingerprint as pg_fingerprint

from tiercache.metrics.counters import merge_snapshots
from tiercache.sharding._redact import dsn_password
from tiercache.sharding.pool import ShardedPool, ShardFanoutError, create_sharded_pool
from tiercache.sharding.ring import HashRing

pytestmark = pytest.mark.asyncio(loop_scope="session")

DEAD_DSN = "postgresql://nobody:deadpassword@127.0.0.1:1/tiercache"


def _port(dsn: str) -> int:
    port = urlsplit(dsn).port
    assert port is not None
    return port


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.2)


@pytest.fixture
def dsns(tiercache_stack: Any) -> dict[str, str]:
    return dict(tiercache_stack.pg_dsns)


@pytest.fixture
async def pool(dsns: dict[str, str]) -> AsyncIterator[ShardedPool]:
    async with create_sharded_pool(dsns, min_size=1, max_size=5) as p:
        yield p


@pytest.fixture
async def table(pool: ShardedPool) -> AsyncIterator[str]:
    name = f"sharded_{uuid.uuid4().hex[:10]}"
    await pool.execute_all(f"CREATE TABLE {name} (id bigint PRIMARY KEY, v text)")
    yield name
    await pool.execute_all(f"DROP TABLE IF EXISTS {name}")


async def test_shard_for_equals_hashring(pool: ShardedPool, dsns: dict[str, str]) -> None:
    ring = HashRing(list(dsns))
    keys: list[Any] = [*range(2000), *(f"tenant-{i}" for i in range(500))]
    assert [pool.shard_for(k) for k in keys] == [ring.get_node(k) for k in keys]
    assert set(pool.shards) == set(dsns)


async def test_each_shard_is_its_server(pool: ShardedPool, dsns: dict[str, str]) -> None:
    ports = await pool.fetchval_all("SELECT inet_server_port()")
    assert ports == {name: _port(dsn) for name, dsn in dsns.items()}


async def test_rows_land_on_the_ring_shard(pool: ShardedPool, table: str) -> None:
    keys = list(range(1, 121))
    for key in keys[:20]:
        await pool.execute(f"INSERT INTO {table} VALUES ($1, $2)", key, f"v{key}", shard_key=key)
    batches: dict[str, list[tuple[int, str]]] = {}  # the rest: one executemany per shard
    for key, shard in zip(keys[20:], pool.shard_for_many(keys[20:]), strict=True):
        batches.setdefault(shard, []).append((key, f"v{key}"))
    for shard, batch in batches.items():
        await pool.executemany(f"INSERT INTO {table} VALUES ($1, $2)", batch, shard=shard)
    per_shard = await pool.fetch_all(f"SELECT id FROM {table}")
    seen = []
    for shard, rows in per_shard.items():
        for row in rows:
            assert pool.shard_for(row["id"]) == shard
            seen.append(row["id"])
    assert sorted(seen) == keys
    assert len([s for s, rows in per_shard.items() if rows]) == 3  # 120 keys hit every shard
    # Reads with the same key find the row; other shards do not have it.
    for key in (1, 57, 120):
        assert await pool.fetchval(f"SELECT v FROM {table} WHERE id = $1", key,
                                   shard_key=key) == f"v{key}"
        others = [s for s in pool.shards if s != pool.shard_for(key)]
        for other in others:
            assert await pool.fetchval(
                f"SELECT v FROM {table} WHERE id = $1", key, shard=other
            ) is None


async def test_transaction_stays_on_one_shard(
    pool: ShardedPool, table: str, dsns: dict[str, str]
) -> None:
    key = 4242
    home = pool.shard_for(key)
    async with pool.transaction(shard_key=key) as con:
        assert await con.fetchval("SELECT inet_server_port()") == _port(dsns[home])
        xid = await con.fetchval("SELECT txid_current()")
        await con.execute(f"INSERT INTO {table} VALUES ($1, 'a')", key)
        await con.execute(f"UPDATE {table} SET v = 'b' WHERE id = $1", key)
        assert await con.fetchval("SELECT txid_current()") == xid
    assert await pool.fetchval(f"SELECT v FROM {table} WHERE id = $1", key, shard_key=key) == "b"

    with pytest.raises(ZeroDivisionError):
        async with pool.transaction(shard_key=key + 1) as con:
            await con.execute(f"INSERT INTO {table} VALUES ($1, 'gone')", key + 1)
            _ = 1 / 0
    counts = await pool.fetchval_all(f"SELECT count(*) FROM {table} WHERE id = $1", key + 1)
    assert counts == {s: 0 for s in pool.shards}
    assert pool.get_idle_size() == pool.get_size()

    async with pool.transaction(shard_key=key, isolation="serializable") as con:
        assert await con.fetchval("SHOW transaction_isolation") == "serializable"
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        async with pool.transaction(shard_key=key, readonly=True) as con:
            await con.execute(f"DELETE FROM {table}")


async def test_acquire_and_release_route(pool: ShardedPool, dsns: dict[str, str]) -> None:
    for name in pool.shards:
        async with pool.acquire(shard=name) as con:
            assert await con.fetchval("SELECT inet_server_port()") == _port(dsns[name])
    con = await pool.acquire(shard_key="user:7")
    wrong = next(s for s in pool.shards if s != pool.shard_for("user:7"))
    with pytest.raises(asyncpg.InterfaceError, match="belongs to shard"):
        await pool.release(con, shard=wrong)
    await pool.release(con, shard_key="user:7")
    assert pool.get_idle_size() == pool.get_size()


async def test_fanout(pool: ShardedPool, table: str) -> None:
    statuses = await pool.execute_all(f"INSERT INTO {table} VALUES ($1, 'x')", 1)
    assert statuses == {s: "INSERT 0 1" for s in pool.shards}
    rows = await pool.fetch_all(f"SELECT id, v FROM {table}")
    assert list(rows) == list(pool.shards)
    assert all([tuple(r) for r in v] == [(1, "x")] for v in rows.values())
    two = list(pool.shards)[:2]
    assert list(await pool.fetchval_all("SELECT 1", shards=two)) == two
    assert await pool.fetchval_all("SELECT $1::int * 2", 21, concurrency=1) == {
        s: 42 for s in pool.shards
    }
    with pytest.raises(ShardFanoutError) as info:
        await pool.execute_all(f"INSERT INTO {table} VALUES (1, 'dup')")
    assert set(info.value.errors) == set(pool.shards)
    assert all(isinstance(e, asyncpg.UniqueViolationError) for e in info.value.errors.values())


async def test_fanout_with_one_shard_down(
    tiercache_stack: Any, dsns: dict[str, str]
) -> None:
    password = dsn_password(dsns["s2"])
    async with create_sharded_pool(dsns, min_size=1, max_size=2) as pool:
        await _maybe_await(tiercache_stack.kill_pg_shard("s2"))
        try:
            with pytest.raises(ShardFanoutError) as info:
                await pool.fetchval_all("SELECT inet_server_port()", timeout=5)
            err = info.value
            assert err.failed_shards == ["s2"]
            assert set(err.results) == {"s1", "s3"}
            assert "s2" in str(err)
            assert password is None or password not in str(err)
            health = await pool.health(timeout=3)
            assert health["ok"] is False and health["status"] == "unhealthy"
            assert [r.split(":")[0] for r in health["reasons"]] == ["shard s2"]
            assert health["shards"]["s2"]["ok"] is False
            assert health["shards"]["s1"]["ok"] and health["shards"]["s3"]["ok"]
            assert pool.stats()["shards"]["s2"]["errors"] >= 1
        finally:
            await _maybe_await(tiercache_stack.restart_pg_shard("s2"))

        async def recovered() -> bool:
            return len(await pool.fetchval_all("SELECT 1", timeout=5)) == 3

        await _eventually(recovered)
        health = await pool.health()
        assert health["ok"] is True and health["status"] == "healthy"
        assert health["reasons"] == []


async def test_200_concurrent_acquires_no_leak(pool: ShardedPool) -> None:
    async def worker(i: int) -> int:
        if i % 2:
            async with pool.acquire(shard_key=i) as con:
                value: int = await con.fetchval("SELECT $1::int FROM pg_sleep(0.005)", i)
                return value
        result: int = await pool.fetchval("SELECT $1::int FROM pg_sleep(0.005)", i, shard_key=i)
        return result

    results = await asyncio.gather(*(worker(i) for i in range(200)))
    assert results == list(range(200))
    assert pool.get_max_size() == 15
    assert pool.get_size() == pool.get_max_size()  # saturation grew every shard to max
    assert pool.get_idle_size() == pool.get_max_size()
    stats = pool.stats()
    for shard in pool.shards:
        s = stats["shards"][shard]
        assert s["waiters"] == 0
        assert s["idle"] == s["size"] == s["max_size"] == 5
    assert sum(s["acquire_wait"]["count"] for s in stats["shards"].values()) == 200
    assert sum(s["queries"] for s in stats["shards"].values()) == 100
    # 200 tasks on 15 connections: somebody waited for a connection
    assert max(s["acquire_wait"]["max"] for s in stats["shards"].values()) > 0


async def test_stats_count_queries_errors_and_latency(pool: ShardedPool) -> None:
    pool.reset_stats()
    for _ in range(5):
        await pool.fetchval("SELECT 1", shard="s1")
    with pytest.raises(asyncpg.DivisionByZeroError):
        await pool.fetchval("SELECT 1 / 0", shard="s1")
    stats = pool.stats()
    assert stats["name"] == "default"
    s1 = stats["shards"]["s1"]
    assert s1["queries"] == 6
    assert s1["errors"] == 1 and s1["errors_by_class"] == {"DivisionByZeroError": 1}
    assert s1["latency"]["count"] == 6 and s1["latency"]["buckets"][-1] == (float("inf"), 6)
    assert 0 < s1["latency"]["sum"] < 60
    assert s1["acquire_wait"]["count"] == 6
    assert s1["max_size"] == 5 and s1["idle"] == s1["size"] and s1["waiters"] == 0
    assert stats["totals"]["queries"] == 6 and stats["totals"]["errors"] == 1
    # Same histogram shape and bounds as every tier: merges (and exports) like the cache's.
    merged = merge_snapshots(s["latency"] for s in stats["shards"].values())
    assert merged["count"] == 6 and merged["buckets"][-1] == (float("inf"), 6)


async def test_slow_query_log(dsns: dict[str, str]) -> None:
    async with create_sharded_pool(dsns, min_size=1, max_size=1) as pool:
        assert pool.slow_query_threshold_ms == 100.0
        await pool.fetchval("SELECT 1", shard="s1")
        query = "SELECT pg_sleep($1)"
        await pool.fetchval(query, 0.12, shard="s3")
        assert await pool.fetchval("SELECT 1 FROM pg_sleep(0.01)", shard="s2") == 1
        slow = pool.slow_queries()
        # Only the invariant is asserted: a loaded CI box may make a fast statement slow too.
        assert all(e["duration_ms"] >= 100 for e in slow)
        entry = next(e for e in slow if e["shard"] == "s3")
        assert entry["method"] == "fetchval" and entry["role"] == "primary"
        assert entry["query"] == query and entry["duration_ms"] >= 120
        assert entry["fingerprint"] == pg_fingerprint(query)
        assert entry["failed"] is False and "args" not in entry
        assert pool.stats()["shards"]["s3"]["slow_queries"] == 1
        pool.slow_query_threshold_ms = 5
        await pool.fetchval("SELECT 1 FROM pg_sleep(0.01)", shard="s2")
        assert pool.slow_queries(1)[0]["shard"] == "s2"
        assert len(pool.slow_queries(1)) == 1
        assert pool.slow_queries(10, order="slowest")[0]["shard"] == "s3"
        failing = "SELECT pg_sleep(0.01)::text::int"  # fails after the sleep, at run time
        with pytest.raises(asyncpg.InvalidTextRepresentationError):
            await pool.fetchval(failing, shard="s1")
        entry = pool.slow_queries(1)[0]
        # Stored normalized (constants -> $n), like pg_stat_statements shows it.
        assert entry["query"] == "SELECT pg_sleep($1)::text::int" and entry["failed"] is True
        assert entry["duration_ms"] >= 10


async def test_replica_round_robin_and_readonly(dsns: dict[str, str]) -> None:
    d1 = dsns["s1"]
    shards = {
        "s1": {
            "dsn": d1,
            "server_settings": {"application_name": "primary"},
            "replicas": [
                {"dsn": d1, "server_settings": {"application_name": "replica0"}},
                {"dsn": d1, "server_settings": {"application_name": "replica1"}},
            ],
        }
    }
    q = "SELECT current_setting('application_name')"
    async with create_sharded_pool(shards, min_size=1, max_size=2) as pool:
        reads = [await pool.fetchval(q, shard_key=i, readonly=True) for i in range(6)]
        assert sorted(set(reads)) == ["replica0", "replica1"]
        assert all(a != b for a, b in itertools.pairwise(reads))  # round-robin
        assert await pool.fetchval(q, shard_key=1) == "primary"
        assert (await pool.fetch(q, shard="s1", readonly=True))[0][0].startswith("replica")
        async with pool.acquire(shard="s1", readonly=True) as con:
            assert (await con.fetchval(q)).startswith("replica")
        async with pool.transaction(shard="s1", readonly=True) as con:
            assert (await con.fetchval(q)).startswith("replica")
        vals = await pool.fetchval_all(q, readonly=True)
        assert vals["s1"].startswith("replica")
        stats = pool.stats()["shards"]["s1"]
        assert list(stats["replicas"]) == ["replica0", "replica1"]
        assert sum(r["queries"] for r in stats["replicas"].values()) >= 8
        assert stats["max_size"] == 2 and pool.get_max_size() == 2  # primaries only


async def test_least_latency_replica_selection(dsns: dict[str, str]) -> None:
    d1 = dsns["s1"]
    shards = {
        "s1": {
            "dsn": d1,
            "replicas": [
                {"dsn": d1, "server_settings": {"application_name": "replica0"}},
                {"dsn": d1, "server_settings": {"application_name": "replica1"}},
            ],
        }
    }
    q = "SELECT current_setting('application_name')"
    async with create_sharded_pool(
        shards, min_size=1, max_size=1, replica_selection="least_latency"
    ) as pool:
        # Pick 1: nothing measured yet, the first replica; a 50 ms statement makes it "slow".
        assert await pool.fetchval(
            "SELECT current_setting('application_name') FROM pg_sleep(0.05)",
            shard="s1", readonly=True,
        ) == "replica0"
        # Picks 2..7 go to the replica with the lower moving average ...
        assert [await pool.fetchval(q, shard="s1", readonly=True) for _ in range(6)] == [
            "replica1"
        ] * 6
        # ... and pick 8 is round-robin, so the slow one is measured again, not starved.
        assert await pool.fetchval(q, shard="s1", readonly=True) == "replica0"
    with pytest.raises(ValueError, match="replica_selection"):
        create_sharded_pool(shards, replica_selection="random")  # type: ignore[arg-type]


async def test_dead_replica_is_skipped_and_primary_is_the_fallback(
    dsns: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    d1 = dsns["s1"]
    q = "SELECT current_setting('application_name')"
    shards = {
        "s1": {
            "dsn": d1,
            "server_settings": {"application_name": "primary"},
            "replicas": [
                DEAD_DSN,
                {"dsn": d1, "server_settings": {"application_name": "replica1"}},
            ],
        },
        "s2": {"dsn": dsns["s2"], "server_settings": {"application_name": "primary"},
               "replicas": [DEAD_DSN]},
    }
    with caplog.at_level(logging.WARNING, logger="tiercache"):
        pool = await create_sharded_pool(shards, min_size=1, max_size=2)
    try:
        assert "deadpassword" not in caplog.text
        assert "unavailable at start" in caplog.text
        assert {await pool.fetchval(q, shard="s1", readonly=True) for _ in range(4)} == {
            "replica1"
        }
        assert await pool.fetchval(q, shard="s2", readonly=True) == "primary"
        health = await pool.health(timeout=2)
        assert health["ok"] is True  # primaries are up
        assert health["status"] == "degraded"
        assert len(health["reasons"]) == 2 and "replica0 down" in health["reasons"][0]
        replicas = health["shards"]["s1"]["replicas"]
        assert {role: r["ok"] for role, r in replicas.items()} == {
            "replica0": False, "replica1": True
        }
        assert "deadpassword" not in str(health)
    finally:
        await pool.close()


async def test_replica_dying_mid_flight_falls_back(
    tiercache_stack: Any, dsns: dict[str, str]
) -> None:
    q = "SELECT current_setting('application_name')"
    shards = {
        "s1": {
            "dsn": dsns["s1"],
            "server_settings": {"application_name": "primary"},
            # the "replica" lives on the s3 server, so killing s3 kills the replica only
            "replicas": [{"dsn": dsns["s3"], "server_settings": {"application_name": "r"}}],
        }
    }
    async with create_sharded_pool(shards, min_size=1, max_size=1) as pool:
        assert await pool.fetchval(q, shard="s1", readonly=True) == "r"
        await _maybe_await(tiercache_stack.kill_pg_shard("s3"))
        try:
            assert await pool.fetchval(q, shard="s1", readonly=True, timeout=5) == "primary"
            replica = pool.stats()["shards"]["s1"]["replicas"]["replica0"]
            assert replica["healthy"] is False and replica["errors"] >= 1
            assert await pool.fetchval(q, shard="s1", readonly=True) == "primary"
        finally:
            await _maybe_await(tiercache_stack.restart_pg_shard("s3"))

        async def replica_back() -> bool:
            report = await pool.health(timeout=3)
            return bool(report["shards"]["s1"]["replicas"]["replica0"]["ok"])

        await _eventually(replica_back)
        assert await pool.fetchval(q, shard="s1", readonly=True) == "r"


async def test_passwords_never_leak(dsns: dict[str, str]) -> None:
    password = dsn_password(dsns["s1"])
    assert password
    bad = dict(dsns)
    bad["s3"] = dsns["s3"].replace(f":{password}@", ":wrongsecret42@")
    with pytest.raises(asyncpg.InvalidPasswordError) as info:
        await create_sharded_pool(bad, min_size=1, max_size=1)
    for text in (str(info.value), repr(info.value)):
        assert "wrongsecret42" not in text and password not in text
    with pytest.raises(OSError) as oserr:
        await create_sharded_pool({"s1": DEAD_DSN}, min_size=1, max_size=1)
    assert "deadpassword" not in str(oserr.value)
    async with create_sharded_pool(dsns, min_size=1, max_size=1) as pool:
        texts = [repr(pool), str(pool.stats()), str(await pool.health())]
        for text in texts:
            assert password not in text
        assert ":***@" in texts[0]
