"""Write-behind stores on a real Redis Cluster with a real Postgres shard as the system of
record: tiers at once, coalescing, backpressure, retries, dead letters and their replay."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests._store_helpers import Writer, make_table, new_cache, rows
from tiercache import Retry, Store, WriteBehind


@pytest.fixture
async def pg(pg_pools: dict[str, Any]) -> Any:
    return next(iter(pg_pools.values()))


async def test_put_serves_at_once_and_flush_writes_every_row(tiercache_stack: Any,
                                                             pg: Any) -> None:
    table = await make_table(pg)
    writer = Writer(pg, table)
    cache = new_cache(tiercache_stack.redis_url)
    users = Store(cache, "users", loader=writer.load, writer=writer, deleter=writer.delete,
                  policy=WriteBehind(max_delay=0.05, batch_size=100))
    for i in range(250):
        await users.put(i, i * 10)
    assert [await users.get(i) for i in (0, 1, 249)] == [0, 10, 2490]  # before any flush
    assert await users.flush(timeout=30)
    assert await rows(pg, table) == {i: i * 10 for i in range(250)}
    assert sum(writer.calls) == 250 and max(writer.calls) <= 100
    other = new_cache(tiercache_stack.redis_url, cache.namespace)  # another cache: via L2
    reader = Store(other, "users", loader=writer.load, writer=writer,
                   policy=WriteBehind(journal=False))
    assert await reader.get(7) == 70
    assert await reader.get_many([7, 8, 10**6]) == {7: 70, 8: 80}  # L2 hits, a loader miss
    assert reader.get_many_sync([9]) == {9: 90}
    stats = users.stats()
    assert stats["flushed"] == 250 and stats["queue_depth"] == 0 and stats["dead_letters"] == 0
    assert stats["journal_appends"] == 250 and users.health_reasons() == []
    await users.delete(3)
    await users.flush(timeout=30)
    from tiercache.tiers.base import ValueTooLarge

    cache.l2.max_value_bytes = 1000  # type: ignore[union-attr]
    with pytest.raises(ValueTooLarge):  # refused before the journal: no tier or row changes
        await users.put(4, 7 * 10**3000)
    assert await users.get(4) == 40 and users.stats()["queue_depth"] == 0
    assert 3 not in await rows(pg, table) and await users.get(3) is None
    await users.aclose()
    await reader.aclose()
    await cache.aclose()
    await other.aclose()


async def test_1000_puts_to_10_keys_in_one_window_write_at_most_10_rows(
        tiercache_stack: Any, pg: Any) -> None:
    table = await make_table(pg)
    writer = Writer(pg, table)
    cache = new_cache(tiercache_stack.redis_url)
    store = Store(cache, "hot", loader=writer.load, writer=writer,
                  policy=WriteBehind(max_delay=30, batch_size=1000))
    await asyncio.gather(*(store.put(i % 10, i) for i in range(1000)))
    assert await store.flush(timeout=30)
    assert writer.calls and all(n <= 10 for n in writer.calls), writer.calls
    assert await rows(pg, table) == {k: 990 + k for k in range(10)}  # the last write wins
    assert store.stats()["coalesced"] == 990
    assert [await store.get(k) for k in range(10)] == [990 + k for k in range(10)]
    await store.aclose()
    await cache.aclose()


async def test_a_full_queue_makes_the_next_distinct_key_wait_and_drops_nothing(
        tiercache_stack: Any, pg: Any) -> None:
    table = await make_table(pg)
    writer = Writer(pg, table)
    writer.gate = asyncio.Event()  # the writer stalls
    cache = new_cache(tiercache_stack.redis_url)
    store = Store(cache, "bp", loader=writer.load, writer=writer,
                  policy=WriteBehind(max_delay=0.0, batch_size=1000, max_queue=100))
    for i in range(100):
        await store.put(i, i)
    await store.put(5, 555)  # a queued key is coalesced: never waits
    late = asyncio.ensure_future(store.put(100, 100))
    await asyncio.sleep(0.5)
    assert not late.done(), "the 101st distinct key must wait for room"
    assert store.stats()["backpressure_waits"] >= 1
    with pytest.raises(RuntimeError, match="use the async method"):
        store.put_sync(101, 101)  # would block the loop the flusher needs
    await asyncio.sleep(0.7)  # full for more than max(1 s, 2 x max_delay): degraded
    assert any("queue above 90% full" in r for r in store.health_reasons())
    writer.gate.set()
    await asyncio.wait_for(late, 30)
    assert await store.flush(timeout=30)
    expected = {i: i for i in range(101)} | {5: 555}
    assert await rows(pg, table) == expected
    await store.aclose()
    await cache.aclose()


async def test_a_writer_failing_half_the_time_loses_nothing_dead_letters_replay(
        tiercache_stack: Any, pg: Any) -> None:
    table = await make_table(pg)
    writer = Writer(pg, table, fail_rate=0.5, seed=3)
    cache = new_cache(tiercache_stack.redis_url)
    store = Store(cache, "flaky", loader=writer.load, writer=writer,
                  policy=WriteBehind(max_delay=0.0, batch_size=10,
                                     retry=Retry(attempts=2, backoff=0.001)))
    for i in range(300):
        await store.put(i, i + 1)
    assert await store.flush(timeout=60)
    stats = store.stats()
    assert stats["retries"] > 0 and stats["dead_lettered"] > 0, stats
    letters = await store.dead_letters()
    assert letters and all("injected writer failure" in d["error"] for d in letters)
    assert all(w["op"] == "put" and w["value"] == w["key"] + 1 for d in letters
               for w in d["writes"])
    assert any("dead-lettered" in r for r in store.health_reasons())
    for _ in range(40):  # replay until the flaky writer took everything
        if not await store.dead_letters():
            break
        assert await store.replay_dead_letters() > 0
        assert await store.flush(timeout=60)
    assert await store.dead_letters() == []
    assert await rows(pg, table) == {i: i + 1 for i in range(300)}
    assert store.stats()["replayed"] >= stats["dead_lettered"]
    await store.health()
    assert store.health_reasons() == []
    await store.aclose()
    await cache.aclose()


async def test_an_l1_only_cache_keeps_dead_letters_in_memory_and_refuses_a_journal() -> None:
    from tiercache import TierCache
    from tiercache.tiers.memory import MemoryTier

    cache = TierCache(l1=MemoryTier(), namespace="l1only")
    with pytest.raises(ValueError, match="needs a RedisTier"):
        Store(cache, "j", loader=lambda k: None, writer=lambda b: None, policy=WriteBehind())
    fail = {"on": True}
    written: dict[int, int] = {}

    def writer(batch: dict[int, int]) -> None:
        if fail["on"]:
            raise ConnectionError("down")
        written.update(batch)

    store = Store(cache, "m", loader=written.get, writer=writer,
                  policy=WriteBehind(journal=False, max_delay=0.0, retry=Retry(attempts=1)))
    await store.put(1, 10)
    assert await store.get(1) == 10
    assert await store.flush(timeout=10)
    assert [w["value"] for d in await store.dead_letters() for w in d["writes"]] == [10]
    assert store.health_reasons() == ["store m: 1 dead-lettered batches"]
    fail["on"] = False
    assert await store.replay_dead_letters() == 1
    assert await store.flush(timeout=10)
    assert written == {1: 10} and await store.dead_letters() == []
    await store.health()
    assert store.health_reasons() == []
    await store.aclose()


async def test_cache_clear_keeps_the_journal_and_the_dead_letters(tiercache_stack: Any,
                                                                  pg: Any) -> None:
    from redis.cluster import RedisCluster

    table = await make_table(pg)
    writer = Writer(pg, table)
    cache = new_cache(tiercache_stack.redis_url)
    store = Store(cache, "keep", loader=writer.load, writer=writer,
                  policy=WriteBehind(max_delay=30, batch_size=1000))
    assert store.engine is not None
    await store.put(1, 10)
    await store.engine.journal.run_async(store.engine.journal.push_letter_plan(
        store.engine.journal.letter("kept", 1, [store.engine.journal.encode("p", 2, 20)])))
    await cache.clear()  # namespace-wide: tags, leases, entries -- not acknowledged writes
    client = RedisCluster.from_url(tiercache_stack.redis_url)
    assert client.xlen(store.engine.journal.stream) == 1
    assert client.llen(store.engine.journal.dead) == 1
    client.close()
    assert await store.flush(timeout=30)
    assert await store.replay_dead_letters() == 1 and await store.flush(timeout=30)
    assert await rows(pg, table) == {1: 10, 2: 20}
    await store.aclose()
    await cache.aclose()
