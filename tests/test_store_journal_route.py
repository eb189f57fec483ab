"""How journal calls reach Redis: straight to the node that owns the stream's slot, and
through redis-py's cluster dispatch when that node is not the right one any more (a stale
slot map after a resharding or failover) or Redis forgot the scripts (restart, SCRIPT FLUSH).
Either way the put is journaled before it returns and the flusher's acknowledgements land."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.cluster import RedisCluster

from tests._store_helpers import Writer, make_table, new_cache, rows
from tiercache import Store, WriteBehind
from tiercache._journal import Journal


async def _store(stack: Any, pg_pools: dict[str, Any], name: str) -> tuple[Store, Writer,
                                                                           Journal]:
    """A journaled store whose first put went through (connected, slot map known); it
    flushes only when asked, so the stream holds every put until then."""
    writer = Writer(next(iter(pg_pools.values())), "")
    writer.table = await make_table(writer.pool)
    cache = new_cache(stack.redis_url)
    store = Store(cache, name, loader=writer.load, writer=writer,
                  policy=WriteBehind(max_delay=30.0, batch_size=100, claim_after=3.0))
    assert store.engine is not None
    await store.put(1, 10)
    return store, writer, store.engine.journal


def _stream_state(url: str, stream: str) -> tuple[int, int]:
    client = RedisCluster.from_url(url)
    try:
        return client.xpending(stream, "flushers")["pending"], client.xlen(stream)
    finally:
        client.close()


async def test_a_stale_slot_map_still_journals_through_the_cluster_dispatch(
        tiercache_stack: Any, pg_pools: dict[str, Any]) -> None:
    store, writer, journal = await _store(tiercache_stack, pg_pools, "route")
    client = await journal.tier._client()
    owner = client.nodes_manager.slots_cache[journal.slot][0]
    other = next(n for n in client.get_primaries() if n.name != owner.name)
    client.nodes_manager.slots_cache[journal.slot] = [other]  # as if the slot had moved

    await store.put(2, 20)  # the other node answers MOVED; the dispatch follows it
    assert _stream_state(tiercache_stack.redis_url, journal.stream) == (2, 2)
    assert client.nodes_manager.slots_cache[journal.slot][0].name == owner.name
    await store.put(3, 30)  # straight to the owner again
    assert store.stats()["journal_errors"] == 0
    assert await store.flush(timeout=30)
    assert await rows(writer.pool, writer.table) == {1: 10, 2: 20, 3: 30}
    assert _stream_state(tiercache_stack.redis_url, journal.stream) == (0, 0)
    await store.aclose()
    await store.cache.aclose()


async def test_scripts_forgotten_by_redis_are_sent_again(
        tiercache_stack: Any, pg_pools: dict[str, Any]) -> None:
    store, writer, journal = await _store(tiercache_stack, pg_pools, "noscript")
    assert await store.flush(timeout=30)
    flush = RedisCluster.from_url(tiercache_stack.redis_url)
    flush.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.ALL_NODES)  # as a restart
    flush.close()
    await store.put(2, 20)  # append: NOSCRIPT -> EVAL
    assert _stream_state(tiercache_stack.redis_url, journal.stream) == (1, 1)
    assert await store.flush(timeout=30)  # ack: NOSCRIPT -> EVAL
    assert _stream_state(tiercache_stack.redis_url, journal.stream) == (0, 0)
    assert await rows(writer.pool, writer.table) == {1: 10, 2: 20}
    assert store.stats()["journal_errors"] == 0
    await store.aclose()
    await store.cache.aclose()


async def test_put_sync_with_a_stale_slot_map_still_journals(
        tiercache_stack: Any, pg_pools: dict[str, Any]) -> None:
    store, writer, journal = await _store(tiercache_stack, pg_pools, "route-sync")
    await asyncio.to_thread(store.put_sync, 2, 20)  # the journal's sync client connects
    client = journal._client_sync()
    owner = client.nodes_manager.slots_cache[journal.slot][0]
    other = next(n for n in client.get_primaries() if n.name != owner.name)
    client.get_redis_connection(other)
    client.nodes_manager.slots_cache[journal.slot] = [other]

    await asyncio.to_thread(store.put_sync, 3, 30)  # MOVED, followed by the dispatch
    assert _stream_state(tiercache_stack.redis_url, journal.stream) == (3, 3)
    assert client.nodes_manager.slots_cache[journal.slot][0].name == owner.name
    await asyncio.to_thread(store.put_sync, 4, 40)
    assert store.stats()["journal_errors"] == 0
    assert await store.flush(timeout=30)
    assert await rows(writer.pool, writer.table) == {1: 10, 2: 20, 3: 30, 4: 40}
    await store.aclose()
    await store.cache.aclose()
