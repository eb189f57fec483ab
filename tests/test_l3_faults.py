"""L3 with the Redis store under injected Redis faults (real Redis Cluster, real Postgres).

The only mock: a wrapper around one process's ``RedisTier._run`` that makes chosen L3 calls
(``l3_bump``, ``l3_gens``) fail with the ConnectionError a dropped connection gives -- a real
server cannot drop exactly one chosen command on demand.  Two pools with their own
QueryCache and RedisTier on one Redis stand for two application processes.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Generator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from tiercache import QueryCache, RedisTier, create_sharded_pool
from tiercache.sharding.pool import ShardedPool
from tiercache.tiers._breaker import OPEN


class Faults:
    """Make the next ``n`` calls of an L3 op on one tier raise ConnectionError."""

    def __init__(self, tier: RedisTier) -> None:
        self.left: dict[str, int] = {}
        self.raised: dict[str, int] = {}
        real = tier._run

        async def run(req: Any) -> Any:
            if self.left.get(req.op, 0) > 0:
                self.left[req.op] -= 1
                self.raised[req.op] = self.raised.get(req.op, 0) + 1

                def broken(_client: Any) -> Generator[Any, Any, Any]:
                    raise RedisConnectionError("Connection lost")
                    yield  # pragma: no cover - a generator, like the real plans

                req = req._replace(plan=broken)
            return await real(req)

        tier._run = run  # type: ignore[method-assign]

    def fail(self, op: str, n: int = 1) -> None:
        self.left[op] = n


@pytest.fixture
async def procs(tiercache_stack: Any) -> AsyncIterator[tuple[ShardedPool, ShardedPool, str]]:
    dsn = str(next(iter(tiercache_stack.pg_dsns.values())))
    ns = f"l3f{uuid.uuid4().hex[:8]}"
    tiers = [RedisTier(tiercache_stack.redis_url, ttl=None, ttl_jitter=0.0, socket_timeout=2.0,
                       connect_timeout=2.0) for _ in range(2)]
    qa, qb = (QueryCache(t, namespace=ns) for t in tiers)
    table = f"l3f_{uuid.uuid4().hex[:8]}"
    async with create_sharded_pool({"s": dsn}, min_size=1, max_size=4, query_cache=qa) as a, \
            create_sharded_pool({"s": dsn}, min_size=1, max_size=4, query_cache=qb) as b:
        await a.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text)")
        await a.execute(f"INSERT INTO {table} VALUES (1, '0')")
        try:
            yield a, b, table
        finally:
            await a.execute(f"DROP TABLE {table}")
    for tier in tiers:
        await tier.close()


def _qc(pool: ShardedPool) -> QueryCache:
    assert pool.query_cache is not None
    return pool.query_cache


def _faults(pool: ShardedPool) -> Faults:
    shared = _qc(pool)._shared
    assert shared is not None
    return Faults(shared.tier)


async def _warm(b: ShardedPool, sql: str, want: str) -> None:
    """b fills the entry and hits it once (so it also holds a near copy)."""
    assert await b.fetchval(sql, 1, cache_ttl=30) == want
    assert await b.fetchval(sql, 1, cache_ttl=30) == want
    assert _qc(b).stats()["hits"] >= 1


async def test_a_dropped_bump_never_lets_another_process_serve_the_old_row(
    procs: tuple[ShardedPool, ShardedPool, str],
) -> None:
    """Writer's HINCRBY EVAL hits a dropped connection once: the write must still reach the
    shared generations before it returns (it is retried), or the other process -- whose
    Redis is fine -- keeps serving the old row."""
    a, b, table = procs
    sql = f"SELECT v FROM {table} WHERE id = $1"
    await _warm(b, sql, "0")
    faults = _faults(a)
    for i in range(1, 4):
        faults.fail("l3_bump", 1)
        await a.execute(f"UPDATE {table} SET v = $1 WHERE id = 1", str(i))
        assert faults.raised["l3_bump"] == i
        assert await b.fetchval(sql, 1, cache_ttl=30) == str(i)  # not the old row
        assert await a.fetchval(sql, 1, cache_ttl=30) == str(i)
    assert _qc(a).stats()["pending_bumps"] == 0


async def test_a_bump_behind_an_open_breaker_is_still_sent(
    procs: tuple[ShardedPool, ShardedPool, str],
) -> None:
    """Dropped connections opened the writer's breaker for the generations' node (Redis is
    fine again, as the other process sees): a write's bump must not be skipped by it."""
    a, b, table = procs
    sql = f"SELECT v FROM {table} WHERE id = $1"
    await _warm(b, sql, "0")
    await _warm(a, sql, "0")  # a's reads take the near-copy path: one generations EVAL each
    faults = _faults(a)
    shared = _qc(a)._shared
    assert shared is not None
    faults.fail("l3_gens", 8)
    for _ in range(8):  # reads whose generation reads fail: bypassed, and the breaker opens
        assert await a.fetchval(sql, 1, cache_ttl=30) == "0"
    assert shared.tier._node_of(shared.gens_key("s")).state is OPEN
    await a.execute(f"UPDATE {table} SET v = 'new' WHERE id = 1")
    assert await b.fetchval(sql, 1, cache_ttl=30) == "new"


async def test_a_failed_generation_read_is_a_bypass_never_a_hit(
    procs: tuple[ShardedPool, ShardedPool, str],
) -> None:
    """The reader's generations EVAL fails (near copy or not): it runs the query, it never
    falls back to its mirror or its near copy's generations."""
    a, b, table = procs
    sql = f"SELECT v FROM {table} WHERE id = $1"
    await _warm(b, sql, "0")
    faults = _faults(b)
    await a.execute(f"UPDATE {table} SET v = '1' WHERE id = 1")
    hits = _qc(b).stats()["hits"]
    faults.fail("l3_gens", 1)  # the near-copy path: one generations read
    assert await b.fetchval(sql, 1, cache_ttl=30) == "1"
    _qc(b)._mem.clear()
    await a.execute(f"UPDATE {table} SET v = '2' WHERE id = 1")
    faults.fail("l3_gens", 1)  # the cold path: generations || GET
    assert await b.fetchval(sql, 1, cache_ttl=30) == "2"
    s = _qc(b).stats()
    assert s["hits"] == hits and s["bypass"].get("store_error") == 2, s
    assert await b.fetchval(sql, 1, cache_ttl=30) == "2"


async def test_a_failed_check_after_the_query_stores_nothing(
    procs: tuple[ShardedPool, ShardedPool, str],
) -> None:
    """The second generations read of a fill (after the query) fails: nothing is stored,
    so no entry can sit under generations nobody proved current."""
    a, b, table = procs
    sql = f"SELECT v FROM {table} WHERE id = $1"
    faults = _faults(b)
    real = _qc(b)._shared
    assert real is not None
    calls = {"n": 0}
    gens = real.gens

    async def second_fails(shard: str, fields: tuple[str, ...]) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            faults.fail("l3_gens", 1)
        return await gens(shard, fields)

    real.gens = second_fails  # type: ignore[method-assign]
    assert await b.fetchval(sql, 1, cache_ttl=30) == "0"
    real.gens = gens  # type: ignore[method-assign]
    s = _qc(b).stats()
    assert faults.raised == {"l3_gens": 1} and s["sets"] == 0 and s["race_skips"] == 1, s
    await a.execute(f"UPDATE {table} SET v = '1' WHERE id = 1")
    assert await b.fetchval(sql, 1, cache_ttl=30) == "1"


async def test_a_bump_that_fails_twice_is_owed_and_rides_the_next_write(
    procs: tuple[ShardedPool, ShardedPool, str],
) -> None:
    """Both attempts fail: the writer owes the bump (its own reads bypass, never hit), and
    its next bump of the shard carries the owed names too, so nothing stays owed."""
    a, b, table = procs
    sql = f"SELECT v FROM {table} WHERE id = $1"
    other = f"SELECT count(*) FROM {table} WHERE id = $1"
    await _warm(a, sql, "0")
    faults = _faults(a)
    faults.fail("l3_bump", 3)  # the write's two attempts, then the read's retry of it
    await a.execute(f"UPDATE {table} SET v = '1' WHERE id = 1")
    s = _qc(a).stats()
    assert faults.raised == {"l3_bump": 2} and s["pending_bumps"] >= 1 and s["bump_retries"] == 1
    hits = s["hits"]
    assert await a.fetchval(sql, 1, cache_ttl=30) == "1"
    assert faults.raised == {"l3_bump": 3}
    assert _qc(a).stats()["hits"] == hits and _qc(a).stats()["bypass"]["store_pending"] == 1
    await a.execute(f"INSERT INTO {table} VALUES (2, 'x')")  # a later bump: owed ones too
    assert _qc(a).stats()["pending_bumps"] == 0
    assert await b.fetchval(sql, 1, cache_ttl=30) == "1"
    assert await b.fetchval(other, 2, cache_ttl=30) == 1
    assert await a.fetchval(sql, 1, cache_ttl=30) == "1"


async def test_a_bump_redis_refused_twice_reaches_listening_processes_through_postgres(
    procs: tuple[ShardedPool, ShardedPool, str],
) -> None:
    """The writer's Redis is gone for its bump (both attempts), the other process's is fine:
    the names go out as a NOTIFY on the shard, and the listening process owes them at once
    (bypass) and puts them into Redis for everybody -- no trigger on the table needed."""
    a, b, table = procs
    sql = f"SELECT v FROM {table} WHERE id = $1"
    side = f"l3fs_{uuid.uuid4().hex[:8]}"
    await a.execute(f"CREATE TABLE {side} (id int PRIMARY KEY)")
    try:
        await b.install_invalidation_triggers([side])  # b listens on the shard
        await _warm(b, sql, "0")
        faults = _faults(a)
        faults.fail("l3_bump", 2)
        seen = _qc(b).stats()["invalidations"]
        await a.execute(f"UPDATE {table} SET v = '1' WHERE id = 1")
        assert faults.raised == {"l3_bump": 2} and _qc(a).stats()["notify_fallbacks"] == 1
        for _ in range(200):  # NOTIFY is asynchronous: wait until b was told
            if _qc(b).stats()["invalidations"] > seen:
                break
            await asyncio.sleep(0.01)
        assert _qc(b).stats()["invalidations"] > seen
        assert await b.fetchval(sql, 1, cache_ttl=30) == "1"
        for _ in range(200):  # b's background bump lands in Redis: hits again, fresh ones
            if _qc(b).stats()["pending_bumps"] == 0:
                break
            await asyncio.sleep(0.01)
        assert await b.fetchval(sql, 1, cache_ttl=30) == "1"
        assert await b.fetchval(sql, 1, cache_ttl=30) == "1"
    finally:
        await a.execute(f"DROP TABLE {side}")


def test_names_payload_is_bounded_and_hostile_ones_bump_the_epoch() -> None:
    from tiercache.sharding._l3_listen import MAX_NAMES, names_payload, parse_names

    assert parse_names(names_payload(["t", "t*", "t#3"])) == ["t", "t#3", "t*"]
    assert parse_names(names_payload([f"t{i}" for i in range(MAX_NAMES + 1)])) == [""]
    for bad in ("~", "~{}", "~[]", "~[1]", '~["' + "x" * 600 + '"]', "~" + "[" * 5000,
                "~" + json.dumps(["t"] * (MAX_NAMES + 1))):
        assert parse_names(bad) is None


async def test_race_with_dropped_bumps_zero_stale_in_the_other_process(
    procs: tuple[ShardedPool, ShardedPool, str],
) -> None:
    """The two-process race with the fault seen on a loaded box: a writer commits in a loop
    and one bump in four hits a dropped connection; readers of the other pool (their Redis
    fine) check every read that starts after a commit returned against it.  Before the
    retry this served the old row for every read until the next successful bump."""
    a, b, table = procs
    sql = f"SELECT v FROM {table} WHERE id = $1"
    faults = _faults(a)
    state = {"committed": 0, "done": 0, "stale": 0, "reads": 0}

    async def writer() -> None:
        for i in range(1, 121):
            if i % 4 == 0:
                faults.fail("l3_bump", 1)
            await a.execute(f"UPDATE {table} SET v = $1 WHERE id = 1", str(i))
            state["committed"] = i
            await asyncio.sleep(0.01)  # entries live between commits: b hits them
        state["done"] = 1

    async def reader() -> None:
        while not state["done"]:
            floor = state["committed"]
            v = await b.fetchval(sql, 1, cache_ttl=30)
            state["reads"] += 1
            state["stale"] += int(v) < floor
            await asyncio.sleep(0)

    await asyncio.gather(writer(), *(reader() for _ in range(6)))
    assert faults.raised["l3_bump"] == 30
    s = _qc(b).stats()
    assert state["stale"] == 0, (state, s)
    assert s["hits"] > 0 and state["reads"] > 120, (state, s)
