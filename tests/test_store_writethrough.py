"""Write-through stores: the writer first, then the tiers; a failing writer leaves no new value
in L1 or L2, in this process or another (a second process reading through the same Redis)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests._store_helpers import Writer, make_table, new_cache, rows
from tiercache import MISSING, Store, WriteThrough
from tiercache.tiers.base import ValueTooLarge

READER = '''
import asyncio, json, sys
sys.path.insert(0, {tests!r})
from _store_helpers import new_cache
from tiercache import Store, WriteThrough

async def main():
    cache = new_cache({url!r}, {ns!r})
    loads = []
    async def load(key):
        loads.append(key)
        return "from-db"
    store = Store(cache, "users", loader=load, policy=WriteThrough())
    value = await store.get(1)
    print(json.dumps({{"value": value, "loads": loads}}))
    await cache.aclose()
asyncio.run(main())
'''


def _other_process_reads(url: str, namespace: str) -> dict[str, Any]:
    code = READER.format(tests=str(Path(__file__).parent), url=url, ns=namespace)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.fixture
async def pg(pg_pools: dict[str, Any]) -> Any:
    return next(iter(pg_pools.values()))


async def test_a_failing_writer_leaves_no_new_value_in_any_tier_here_or_elsewhere(
        tiercache_stack: Any) -> None:
    cache = new_cache(tiercache_stack.redis_url)
    db = {1: "old"}
    started = asyncio.Event()

    async def load(key: int) -> str | None:
        return db.get(key)

    async def failing_writer(batch: dict[int, str]) -> None:
        started.set()
        await asyncio.sleep(0.2)  # readers race the write meanwhile
        raise ConnectionError("database down")

    store = Store(cache, "users", loader=load, writer=failing_writer, policy=WriteThrough())
    assert await store.get(1) == "old"  # cached in L1 and L2

    async def readers() -> list[str]:
        await started.wait()
        seen = []
        for _ in range(20):
            seen += await asyncio.gather(*(store.get(1) for _ in range(10)))
            await asyncio.sleep(0.01)
        return seen

    reading = asyncio.ensure_future(readers())
    with pytest.raises(ConnectionError, match="database down"):
        await store.put(1, "new")
    assert set(await reading) == {"old"}
    assert await store.get(1) == "old"
    assert cache.coherence.kv.get("users:1") == "old"  # L1
    assert (await cache.l2.get_entry(cache.full_key("users:1"))).value == "old"  # type: ignore[union-attr]
    with pytest.raises(ConnectionError):
        await store.put(2, "new")  # a key never read: nothing written either
    assert await cache.l2.get(cache.full_key("users:2")) is MISSING  # type: ignore[union-attr]
    assert cache.coherence.kv.get("users:2", MISSING) is MISSING
    other = await asyncio.to_thread(_other_process_reads, tiercache_stack.redis_url,
                                    cache.namespace)
    assert other == {"value": "old", "loads": []}  # from L2, not a new value
    assert store.stats()["write_failures"] == 2
    await cache.aclose()


async def test_a_successful_write_reaches_the_database_then_every_tier(
        tiercache_stack: Any, pg: Any) -> None:
    table = await make_table(pg)
    writer = Writer(pg, table)
    cache = new_cache(tiercache_stack.redis_url)
    peer_cache = new_cache(tiercache_stack.redis_url, cache.namespace)  # another process's L1
    store = Store(cache, "acct", loader=writer.load, writer=writer, deleter=writer.delete)
    peer = Store(peer_cache, "acct", loader=writer.load, writer=writer)
    await store.put(5, 50)
    assert await rows(pg, table) == {5: 50} and writer.calls == [1]
    assert await peer.get(5) == 50  # through L2, now in the peer's L1
    await store.put(5, 51)
    for _ in range(200):  # the bus drops the peer's L1 copy
        if await peer.get(5) == 51:
            break
        await asyncio.sleep(0.01)
    assert await peer.get(5) == 51
    await store.put_many({6: 60, 7: 70})
    assert writer.calls == [1, 1, 2] and await store.get(7) == 70
    await store.delete(6)
    assert await rows(pg, table) == {5: 51, 7: 70} and await store.get(6) is None
    with pytest.raises(TypeError, match="str or int"):
        await store.put(1.5, 1)
    with pytest.raises(TypeError, match="cannot encode"):
        await store.put(8, object())  # refused before the writer runs
    assert 8 not in await rows(pg, table)
    cache.l2.max_value_bytes = 1000  # type: ignore[union-attr]
    with pytest.raises(ValueTooLarge):  # L2 could not take it: the writer never runs
        await store.put(9, 7 * 10**3000)
    assert 9 not in await rows(pg, table) and await store.get(9) is None
    assert store.health_reasons() == [] and store.stats()["policy"] == "WriteThrough"
    await cache.aclose()
    await peer_cache.aclose()
