"""The write-behind journal: an acknowledged write survives SIGKILL of its process, a Redis
that cannot journal makes ``put`` raise (or, best effort, count and go on), hostile journal
entries are dead-lettered without stopping the flusher, and the CLI lists and replays dead
letters without the service's writer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis.cluster import RedisCluster

from tests._store_helpers import Writer, make_table, new_cache, rows
from tiercache import JournalUnavailable, Retry, Store, TierCache, WriteBehind, codec
from tiercache.cli import main as cli_main
from tiercache.tiers.keys import store_key
from tiercache.tiers.memory import MemoryTier
from tiercache.tiers.redis import RedisTier

CHILD = Path(__file__).with_name("_store_child.py")
KEYS = 10_000


@pytest.fixture
async def pg(pg_pools: dict[str, Any]) -> Any:
    return next(iter(pg_pools.values()))


async def test_10k_puts_of_a_sigkilled_process_are_replayed_by_a_new_one(
        tiercache_stack: Any, pg: Any) -> None:
    table = await make_table(pg)
    namespace = f"k{uuid.uuid4().hex[:8]}"
    dsn = next(iter(tiercache_stack.pg_dsns.values()))
    child = subprocess.Popen(
        [sys.executable, str(CHILD), tiercache_stack.redis_url, dsn, namespace, table,
         str(KEYS), "1.0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=CHILD.parent)
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 120)
        os.kill(child.pid, signal.SIGKILL)  # right after its puts returned
        assert line.startswith("PUTS-RETURNED"), child.stderr.read() if child.stderr else ""
    finally:
        child.kill()
        child.wait(30)
    before = await rows(pg, table)
    client = RedisCluster.from_url(tiercache_stack.redis_url)
    stream = store_key(namespace, "orders", "journal")
    unflushed = client.xpending(stream, "flushers")["pending"]
    client.close()
    assert unflushed > 0 and len(before) < KEYS  # the kill left acknowledged writes behind

    writer = Writer(pg, table)
    cache = new_cache(tiercache_stack.redis_url, namespace)
    store = Store(cache, "orders", loader=writer.load, writer=writer,
                  policy=WriteBehind(max_delay=0.05, batch_size=1000, claim_after=1.0))
    deadline = time.monotonic() + 60  # no put, no flush: the new store takes over on start
    while len(await rows(pg, table)) < KEYS and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert store.stats()["recovered"] > 0
    assert await store.flush(timeout=120)
    assert await rows(pg, table) == {k: k * 3 + 1 for k in range(KEYS)}
    assert store.stats()["recovered"] >= unflushed
    await store.health()  # a fresh look at the journal
    assert store.stats()["journal_pending"] == 0
    await store.aclose()
    await cache.aclose()


async def test_redis_down_journal_true_raises_and_leaves_no_trace(pg: Any) -> None:
    table = await make_table(pg)
    writer = Writer(pg, table)
    dead = RedisTier("redis://127.0.0.1:1", cluster=False, socket_timeout=0.1,
                     connect_timeout=0.1)
    cache = TierCache(l1=MemoryTier(), l2=dead, namespace=f"d{uuid.uuid4().hex[:8]}",
                      bus=False)
    store = Store(cache, "u", loader=writer.load, writer=writer, policy=WriteBehind())
    with pytest.raises(JournalUnavailable, match="could not be journaled"):
        await store.put(1, 11)
    with pytest.raises(JournalUnavailable):
        store.put_sync(2, 22)
    assert cache.coherence.kv.get("u:1") is None  # no tier holds the refused write
    assert store.stats()["queue_depth"] == 0 and store.stats()["journal_errors"] == 2
    assert any("journal unavailable" in r for r in store.health_reasons())
    assert writer.calls == [] and await rows(pg, table) == {}

    best = Store(cache, "b", loader=writer.load, writer=writer,
                 policy=WriteBehind(journal="best_effort", max_delay=0.0))
    await best.put(3, 33)  # availability over durability: accepted, counted, written
    assert await best.get(3) == 33
    assert await best.flush(timeout=30)
    assert await rows(pg, table) == {3: 33} and best.stats()["journal_errors"] == 1
    await best.aclose()
    await cache.aclose()


async def test_hostile_journal_entries_are_dead_lettered_and_the_flusher_goes_on(
        tiercache_stack: Any, pg: Any) -> None:
    table = await make_table(pg)
    writer = Writer(pg, table)
    cache = new_cache(tiercache_stack.redis_url, signing_key=b"k" * 32)
    store = Store(cache, "h", loader=writer.load, writer=writer,
                  policy=WriteBehind(max_delay=0.0, claim_after=3.0))
    await store.put(1, 1)
    assert await store.flush(timeout=30)
    client = RedisCluster.from_url(tiercache_stack.redis_url)
    stream = store_key(cache.namespace, "h", "journal")
    forged = codec.encode(["p", 2, 666, 1.0])  # well-formed but unsigned: refused
    for fields in ({"d": b"\xc1garbage"}, {"x": b"1"}, {"d": forged},
                   {"d": b"\x91" * 100_000}):
        client.xadd(stream, fields)
    client.close()
    assert await store.flush(timeout=30)
    await store.put(3, 3)  # still flushing
    assert await store.flush(timeout=30)
    assert await rows(pg, table) == {1: 1, 3: 3}
    assert store.stats()["bad_entries"] == 4
    letters = await store.dead_letters()
    assert len(letters) == 4 and all("unreadable journal entry" in d["error"] for d in letters)
    assert any("4 dead-lettered" in r for r in store.health_reasons())
    await store.aclose()
    await cache.aclose()


async def test_cli_lists_and_replays_dead_letters_without_the_writer(
        tiercache_stack: Any, pg: Any, capsys: pytest.CaptureFixture[str]) -> None:
    table = await make_table(pg)
    writer = Writer(pg, table, fail_rate=1.0)
    cache = new_cache(tiercache_stack.redis_url)
    store = Store(cache, "cli", loader=writer.load, writer=writer,
                  policy=WriteBehind(max_delay=0.0, batch_size=50, claim_after=1.5,
                                     retry=Retry(attempts=1)))
    await store.put_many({i: i * 2 for i in range(20)})
    assert await store.flush(timeout=30)
    assert store.stats()["dead_lettered"] == 20
    base = ["store", "dead-letters", "--redis", tiercache_stack.redis_url, "--namespace",
            cache.namespace, "--store", "cli"]
    assert await asyncio.to_thread(cli_main, [*base, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sum(len(d["writes"]) for d in listed) == 20
    assert {w["key"]: w["value"] for d in listed for w in d["writes"]} == {
        i: i * 2 for i in range(20)}
    assert "injected writer failure" in listed[0]["error"]
    assert await asyncio.to_thread(cli_main, base) == 0
    assert "attempts=1" in capsys.readouterr().out

    writer.fail_rate = 0.0  # the database is back; the operator replays
    assert await asyncio.to_thread(cli_main, [*base, "--replay", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["writes"] == 20
    deadline = time.monotonic() + 30
    while len(await rows(pg, table)) < 20 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # the live flusher picks them up from the journal
    assert await store.flush(timeout=30)
    assert await rows(pg, table) == {i: i * 2 for i in range(20)}
    assert await store.dead_letters() == []
    await store.aclose()
    await cache.aclose()


async def test_a_put_behind_many_undelivered_entries_still_owns_its_own(
        tiercache_stack: Any, pg: Any) -> None:
    table = await make_table(pg)
    writer = Writer(pg, table)
    cache = new_cache(tiercache_stack.redis_url)
    store = Store(cache, "many", loader=writer.load, writer=writer,
                  policy=WriteBehind(max_delay=0.0, batch_size=1000, claim_after=3.0))
    assert store.engine is not None
    journal = store.engine.journal
    client = RedisCluster.from_url(tiercache_stack.redis_url)
    pipe = client.pipeline(transaction=False)
    for k in range(1200):  # as `tiercache store dead-letters --replay` leaves them
        pipe.xadd(journal.stream, {"d": journal.encode("p", k, k + 5)})
    pipe.execute()
    await store.put(5000, 1)  # its script call is delivered all 1201 entries
    assert await store.flush(timeout=60)
    assert await rows(pg, table) == {k: k + 5 for k in range(1200)} | {5000: 1}
    assert client.xpending(journal.stream, "flushers")["pending"] == 0
    assert client.xlen(journal.stream) == 0
    client.close()
    await store.aclose()
    await cache.aclose()
