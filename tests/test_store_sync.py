"""Sync stores: the same store API from threads, with a flusher thread where no event loop
runs; sync and async writers; Postgres (asyncpg on a private loop) as the system of record."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import asyncpg
import pytest

from tests._store_helpers import UPSERT, LoopThread, new_cache
from tiercache import Store, WriteBehind


@pytest.fixture
def db(tiercache_stack: Any) -> Any:
    """A table on the first shard, reachable from sync code through a loop thread."""
    lt = LoopThread()
    dsn = next(iter(tiercache_stack.pg_dsns.values()))
    pool = lt.run(lambda: asyncpg.create_pool(dsn, min_size=1, max_size=2))
    table = f"kv_{uuid.uuid4().hex[:10]}"
    lt.run(lambda: pool.execute(f"CREATE TABLE {table} (k bigint PRIMARY KEY, v bigint)"))
    yield lt, pool, table
    lt.run(pool.close)
    lt.stop()


def _rows(lt: LoopThread, pool: Any, table: str) -> dict[int, int]:
    return {r["k"]: r["v"] for r in lt.run(lambda: pool.fetch(f"SELECT k, v FROM {table}"))}


def test_sync_write_behind_from_threads_with_a_flusher_thread(tiercache_stack: Any,
                                                              db: Any) -> None:
    lt, pool, table = db
    calls: list[tuple[int, str]] = []

    def writer(batch: dict[int, int]) -> None:  # a plain sync function
        calls.append((len(batch), threading.current_thread().name))
        lt.run(lambda: pool.executemany(UPSERT.format(t=table), list(batch.items())))

    def loader(key: int) -> int | None:
        value: int | None = lt.run(lambda: pool.fetchval(f"SELECT v FROM {table} WHERE k = $1",
                                                         key))
        return value

    cache = new_cache(tiercache_stack.redis_url)
    store = Store(cache, "sync", loader=loader, writer=writer,
                  policy=WriteBehind(max_delay=0.02, batch_size=100, claim_after=2.0))

    def work(t: int) -> None:
        for i in range(150):
            store.put_sync(t * 1000 + i, i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.get_sync(3005) == 5  # before the flush: served from the tiers
    assert store.flush_sync(timeout=60)
    assert _rows(lt, pool, table) == {t * 1000 + i: i for t in range(6) for i in range(150)}
    assert all(name.startswith("tiercache-store-sync") for _, name in calls)
    assert store.stats()["journal_batches"] < 900  # threads shared journal round trips
    assert store.get_sync(99_999) is None and store.get_sync(2001, "d") == 1
    store.close()
    cache.close()


def test_sync_store_with_an_async_writer_runs_it_on_the_flusher_threads_loop(
        tiercache_stack: Any, db: Any) -> None:
    lt, pool, table = db
    dsn = next(iter(tiercache_stack.pg_dsns.values()))
    loops: set[int] = set()

    async def writer(batch: dict[int, int]) -> None:  # asyncpg, on the flusher's own loop
        loops.add(id(asyncio.get_running_loop()))
        conn = await asyncpg.connect(dsn)
        try:
            await conn.executemany(UPSERT.format(t=table), list(batch.items()))
        finally:
            await conn.close()

    cache = new_cache(tiercache_stack.redis_url)
    store = Store(cache, "asyncw", loader=lambda key: None, writer=writer,
                  policy=WriteBehind(max_delay=0.01, journal=False))
    for i in range(50):
        store.put_sync(i, -i)
    assert store.flush_sync(timeout=30)
    assert _rows(lt, pool, table) == {i: -i for i in range(50)} and len(loops) == 1
    store.close()
    cache.close()
