"""L3 single flight, memory and Redis store, on the LocalStack's Postgres: readers of a key
being filled wait for that one query; a cancelled runner does not fail them; every caller
gets its own list."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests._l3_helpers import l3_pool, l3_table
from tiercache.sharding.pool import ShardedPool


@pytest.fixture(params=["memory", "redis"])
async def pool(request: pytest.FixtureRequest, tiercache_stack: Any
               ) -> AsyncIterator[ShardedPool]:
    async with l3_pool(tiercache_stack, request.param, "fl") as p:
        yield p


@pytest.fixture
async def table(pool: ShardedPool) -> AsyncIterator[str]:
    async with l3_table(pool, "fl", "id bigint PRIMARY KEY, v text",
                        "SELECT i, 'v' || i FROM generate_series(1, 50) i") as name:
        yield name


def _stats(pool: ShardedPool) -> dict[str, Any]:
    assert pool.query_cache is not None
    return pool.query_cache.stats()


async def _until_waiting(pool: ShardedPool, n: int) -> None:
    for _ in range(500):
        if _stats(pool)["singleflight_waits"] >= n:
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"{n} readers never joined the running query")


async def test_cancelled_runner_does_not_fail_its_waiters(pool: ShardedPool, table: str) -> None:
    """The reader running a key's query is cancelled (its client left): the readers waiting
    for it run the query themselves instead of raising CancelledError."""
    # immutable, about half a second: long enough for the waiters to join and the cancel
    slow = (f"SELECT count(*) FROM {table} a, {table} b, {table} c, {table} d "
            "WHERE a.v < b.v AND c.id <> d.id")
    runner = asyncio.create_task(pool.fetchval(slow, cache_ttl=30))
    await asyncio.sleep(0.05)
    waiters = [asyncio.create_task(pool.fetchval(slow, cache_ttl=30)) for _ in range(3)]
    await _until_waiting(pool, 3)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    expected = 1225 * 2450
    assert await asyncio.gather(*waiters) == [expected] * 3
    assert _stats(pool)["misses"] == 2  # the runner, then one of the waiters
    assert await pool.fetchval(slow, cache_ttl=30) == expected
    assert _stats(pool)["hits"] == 1


async def test_a_waiter_that_is_cancelled_leaves_the_run_alone(
    pool: ShardedPool, table: str
) -> None:
    slow = (f"SELECT count(*) FROM {table} a, {table} b, {table} c, {table} d "
            "WHERE a.v < b.v AND c.id <> d.id")
    runner = asyncio.create_task(pool.fetchval(slow, cache_ttl=30))
    await asyncio.sleep(0.05)
    quitter = asyncio.create_task(pool.fetchval(slow, cache_ttl=30))
    stayer = asyncio.create_task(pool.fetchval(slow, cache_ttl=30))
    await _until_waiting(pool, 2)
    quitter.cancel()
    assert await runner == await stayer == 1225 * 2450
    assert quitter.cancelled()
    assert _stats(pool)["misses"] == 1


async def test_every_caller_gets_its_own_list(pool: ShardedPool, table: str) -> None:
    """A list result is copied per caller (runner, waiters, hits): appending to one can't
    change what the cache serves next."""
    sql = (f"SELECT a.id, count(*) FROM {table} a, {table} b, {table} c "
           "WHERE a.id <= 3 AND a.v < b.v GROUP BY a.id ORDER BY a.id")
    results = await asyncio.gather(*(pool.fetch(sql, cache_ttl=30) for _ in range(4)))
    assert len({id(r) for r in results}) == 4
    truth = [tuple(r) for r in results[0]]
    for r in results:
        assert [tuple(x) for x in r] == truth
        r.append("junk")
    hit = await pool.fetch(sql, cache_ttl=30)
    assert [tuple(x) for x in hit] == truth
    hit.clear()
    assert [tuple(x) for x in await pool.fetch(sql, cache_ttl=30)] == truth
