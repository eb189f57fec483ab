"""Invalidation by arguments, tag and pattern; the pub/sub bus, including a second real process."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import textwrap
import time
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from redis.cluster import RedisCluster

from tiercache._l1index import L1Index, glob_to_regex
from tiercache.cache import TierCache

Factory = Callable[..., TierCache]


@pytest.fixture
def make_cache(cache_factory: Factory) -> Factory:
    return functools.partial(cache_factory, l1_default_ttl=300, l2_ttl=300)


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def l2_keys(client: RedisCluster, cache: TierCache) -> set[str]:
    found = client.scan_iter(match=f"{cache.namespace}:*", target_nodes=RedisCluster.PRIMARIES)
    return {k.decode() for k in found}


async def test_tags_drop_l1_and_l2_here_and_in_other_processes(
        make_cache: Factory, redis_cluster_client: RedisCluster) -> None:
    a, b = make_cache(), make_cache()
    loads: list[Any] = []

    def load_user(user_id: int, detail: str = "short") -> dict[str, Any]:
        loads.append((user_id, detail))
        return {"id": user_id, "detail": detail}

    def load_order(order_id: int) -> int:
        loads.append(("order", order_id))
        return order_id

    tags = lambda user_id, detail="short": [f"user:{user_id}"]  # noqa: E731
    ua, ub = a.cached(tags=tags)(load_user), b.cached(tags=tags)(load_user)
    oa = a.cached(tags=["orders"])(load_order)
    for fn in (ua, ub):
        fn(1), fn(1, "long"), fn(2)
    oa(9)
    assert len(loads) == 4 and len(ub.segment) == 3
    assert await a.invalidate_tags("user:1") == 2  # both L2 entries of user 1
    assert len(ua.segment) == 1  # user 2 stays
    await eventually(lambda: len(ub.segment) == 1)
    ub(1)
    assert loads[-1] == (1, "short") and len(loads) == 5
    assert a.invalidate_tags_sync("orders") == 1 and len(oa.segment) == 0
    assert not any("load_order" in k for k in l2_keys(redis_cluster_client, a))


async def test_pattern_relative_to_namespace(make_cache: Factory,
                                             redis_cluster_client: RedisCluster) -> None:
    cache, other_ns = make_cache(), make_cache(namespace=f"other{uuid.uuid4().hex[:6]}")

    @cache.cached(key=lambda user_id: f"user:{user_id}")
    async def user(user_id: int) -> int:
        return user_id

    @cache.cached(key=lambda order_id: f"order:{order_id}")
    def order(order_id: int) -> int:
        return order_id

    for i in range(5):
        await user(i)
        order(i)
    await cache.set("user:kv", "x")
    await other_ns.set("user:1", "untouched")
    assert await cache.invalidate_pattern("user:*") == 6
    assert l2_keys(redis_cluster_client, cache) == {f"{cache.namespace}:order:{i}"
                                                    for i in range(5)}
    assert len(user.segment) == 0 and len(order.segment) == 5
    assert await cache.get("user:kv") is None
    assert await other_ns.get("user:1") == "untouched"
    assert cache.invalidate_pattern_sync("order:[0-2]") == 3 and len(order.segment) == 2


async def test_invalidate_all_and_clear(make_cache: Factory,
                                        redis_cluster_client: RedisCluster) -> None:
    cache = make_cache()

    @cache.cached()
    async def f(x: int) -> int:
        return x

    @cache.cached()
    def g(x: int) -> int:
        return -x

    for i in range(3):
        await f(i)
        g(i)
    assert await f.invalidate_all() == 3
    assert len(f.segment) == 0 and len(g.segment) == 3
    assert len(l2_keys(redis_cluster_client, cache)) == 3
    assert await cache.clear() == 3
    assert len(g.segment) == 0 and not l2_keys(redis_cluster_client, cache)


async def test_invalidation_racing_a_load_leaves_nothing_stale(
        make_cache: Factory, redis_cluster_client: RedisCluster) -> None:
    cache = make_cache()
    started, release = asyncio.Event(), asyncio.Event()
    version = ["old"]

    @cache.cached()
    async def read(x: int) -> str:
        value = version[0]
        started.set()
        await release.wait()
        return value

    pending = asyncio.create_task(read(1))
    await started.wait()
    version[0] = "new"
    await read.invalidate(1)  # the write happened; the running load read the old row
    release.set()
    assert await pending == "old"  # it started before the invalidation: linearizable
    assert len(read.segment) == 0 and not l2_keys(redis_cluster_client, cache)
    assert await read(1) == "new"


async def test_bus_skips_own_messages_and_survives_garbage(
        make_cache: Factory, redis_cluster_client: RedisCluster) -> None:
    a, b = make_cache(), make_cache()
    fa, fb = a.cached()(_ident), b.cached()(_ident)
    await fa(1)
    await fb(1)
    await fa.invalidate(1)
    await eventually(lambda: len(fb.segment) == 0)
    assert a.stats()["bus"]["received"] == 0 and b.stats()["bus"]["received"] == 1
    assert a.bus is not None
    redis_cluster_client.publish(a.bus.channel, b"\x00 not msgpack")
    redis_cluster_client.publish(a.bus.channel, b"\x93\x01\x02\x03")  # msgpack, wrong shape
    await eventually(lambda: b.stats()["bus"]["errors"] >= 2)
    await fb(2)
    await fa.invalidate(2)
    await eventually(lambda: len(fb.segment) == 0)
    assert b.stats()["bus"]["connected"]


async def test_bus_reconnect_flushes_l1(make_cache: Factory,
                                        redis_cluster_client: RedisCluster) -> None:
    cache = make_cache()
    f = cache.cached()(_ident)
    await f(1)
    await f(2)
    assert cache.bus is not None and cache.stats()["bus"]["connects"] == 1
    assert len(f.segment) == 2
    # a real server-side disconnect of every subscriber: messages may have been lost
    redis_cluster_client.client_kill_filter(_type="pubsub",
                                            target_nodes=RedisCluster.ALL_NODES)
    await eventually(lambda: cache.stats()["bus"]["connects"] >= 2)
    assert len(f.segment) == 0
    assert await f(1) == 1 and len(f.segment) == 1


def test_sync_users_get_a_bus_thread(make_cache: Factory) -> None:
    a, b = make_cache(), make_cache()
    fa, fb = a.cached()(_ident_sync), b.cached()(_ident_sync)
    fa(1), fb(1)
    assert b.stats()["bus"]["running"]
    fa.invalidate(1)
    deadline = time.monotonic() + 10
    while len(fb.segment) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(fb.segment) == 0
    b.close()
    assert not b.stats()["bus"]["running"]


def test_glob_translation_matches_redis_scan(redis_cluster_client: RedisCluster) -> None:
    """L1 pattern invalidation must pick exactly the keys Redis SCAN MATCH picks in L2."""
    keys = ["user:1", "user:", "users:1", "user", "uer", "usser", "k1", "k3", "k", "kk",
            "a*b", "axb", "a\\b", "[x]", "x", "user:1:2"]
    for key in keys:
        redis_cluster_client.set("gl:" + key, 1)
    for pattern in ["user:*", "u?er", "k[0-2]", "k[^0-2]", "a\\*b", "\\[x\\]", "*", "user:*:2",
                    "k[a-z]"]:
        found = redis_cluster_client.scan_iter(match="gl:" + pattern,
                                               target_nodes=RedisCluster.PRIMARIES)
        in_redis = {k.decode()[3:] for k in found}
        rx = glob_to_regex(pattern)
        assert {k for k in keys if rx.fullmatch(k)} == in_redis, pattern


async def _ident(x: int) -> int:
    return x


def _ident_sync(x: int) -> int:
    return x


CHILD = textwrap.dedent("""
    import json, sys, time
    from redis.cluster import RedisCluster
    from tiercache.cache import TierCache
    from tiercache.tiers.memory import MemoryTier
    from tiercache.tiers.redis import RedisTier

    url, namespace = sys.argv[1], sys.argv[2]
    db = RedisCluster.from_url(url)
    cache = TierCache(l1=MemoryTier(ttl=300), l2=RedisTier(url, ttl=300), namespace=namespace,
                      bus_wait=30)
    loads = []

    @cache.cached(ttl=300, key=lambda sku: f"price:{sku}", tags=lambda sku: [f"sku:{sku}"])
    def price(sku):
        loads.append(sku)
        return db.get(f"db:{sku}").decode()

    def report(value):
        st = cache.stats()
        print(json.dumps({"value": value, "loads": len(loads), "l1_hits": st["l1"]["hits"],
                          "received": st["bus"]["received"]}), flush=True)

    for line in sys.stdin:
        cmd, sku, *rest = line.split()
        if cmd == "get":
            report(price(sku))
        elif cmd == "until":  # poll the cached function until the new value shows up
            deadline = time.monotonic() + 10
            while price(sku) != rest[0] and time.monotonic() < deadline:
                time.sleep(0.01)
            report(price(sku))
    cache.close()
""")


async def test_cross_process_l1_invalidation(make_cache: Factory, tiercache_stack: Any,
                                             redis_cluster_client: RedisCluster,
                                             tmp_path: Path) -> None:
    parent = make_cache()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    redis_cluster_client.set("db:A", "v1")
    proc = subprocess.Popen([sys.executable, str(script), tiercache_stack.redis_url,
                             parent.namespace], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parent.parent)
    assert proc.stdin is not None and proc.stdout is not None

    async def ask(line: str) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        reply = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert reply, "child process died"
        return json.loads(reply)  # type: ignore[no-any-return]

    try:
        assert (await ask("get A"))["value"] == "v1"
        second = await ask("get A")
        assert second["value"] == "v1" and second["loads"] == 1 and second["l1_hits"] == 1
        redis_cluster_client.set("db:A", "v2")  # the row changes ...
        assert (await ask("get A"))["value"] == "v1"  # ... the child's L1 keeps it (TTL 300)
        await parent.delete("price:A")  # ... until this process invalidates the key
        after = await ask("until A v2")
        assert after["value"] == "v2" and after["loads"] == 2 and after["received"] >= 1
        redis_cluster_client.set("db:A", "v3")
        await parent.invalidate_tags("sku:A")
        assert (await ask("until A v3"))["value"] == "v3"
        redis_cluster_client.set("db:A", "v4")
        await parent.invalidate_pattern("price:*")
        final = await ask("until A v4")
        assert final["value"] == "v4" and final["loads"] == 4
    finally:
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_l1_index_aliases_compaction_and_pruning(impl: ModuleType) -> None:
    store = impl.LRU(maxsize=10)
    fn_seg, kv_seg = store.segment("fn"), store.segment("kv")
    index = L1Index()
    index.register(fn_seg, "mod.fn:")
    index.register(kv_seg, "")
    digest = "0123456789abcdef" * 2
    for l1key in (1, (1, 2)):
        fn_seg.put(l1key, "v")
        index.add(f"mod.fn:{digest}", fn_seg, l1key, ["t"])
    kv_seg.put("ABCDEF0123456789" * 2, "kv")  # upper-case hex: must not be "compacted"
    index.add("ABCDEF0123456789" * 2, kv_seg, "ABCDEF0123456789" * 2, [])
    assert len(index) == 2
    assert index.drop_matching(glob_to_regex("ABCDEF*")) == 1 and len(kv_seg) == 0
    assert index.drop_matching(glob_to_regex("mod.fn:0123*")) == 2 and len(fn_seg) == 0
    for i in range(50):  # the store keeps 10: the index forgets the evicted ones on prune
        fn_seg.put(i, i)
        index.add(f"mod.fn:{i:032x}", fn_seg, i, [f"tag{i}"])
    index._prune()
    assert len(index) == 10 and index.drop_tags(["tag49", "tag0"]) == 1
    with pytest.raises(ValueError):
        index.add("other:1", fn_seg, 1, [])


async def test_a_write_first_process_is_subscribed_before_it_fills_l1(
        make_cache: Factory) -> None:
    writer, other = make_cache(), make_cache()
    writer.set_sync("cfg", "v1")  # first operation of this cache, from a sync call in a loop
    assert writer.get_sync("cfg") == "v1"
    await other.set("cfg", "v2")
    await eventually(lambda: writer.get_sync("cfg") == "v2")
    assert writer.stats()["bus"]["connects"] == 1  # no late (re)subscription flushed it


async def test_a_remote_load_racing_an_invalidation_is_undone(
        make_cache: Factory, redis_cluster_client: RedisCluster) -> None:
    """B loads the old row; A deletes the key; B's write lands after the delete and before
    A's message: when the message arrives, B deletes its raced write again."""
    a, b = make_cache(), make_cache()
    row = {"v": "old"}
    release = asyncio.Event()

    async def load(key: int) -> str:
        seen = row["v"]
        if key == 1:
            await release.wait()
        return seen

    fa, fb = a.cached()(load), b.cached()(load)
    await fa(0), await fb(0)  # both buses are up
    full = a.full_key(fa.key_for(1))
    pending = asyncio.create_task(fb(1))  # B read "old" and waits
    await asyncio.sleep(0.05)
    row["v"] = "new"
    steps = a.coherence.invalidate(keys=[fa.key_for(1)])  # A's invalidation, step by step
    op = next(steps)
    removed = await op.run_async()  # A's DEL reaches Redis ...
    release.set()
    assert await pending == "old"  # ... then B's load writes "old" after it
    assert redis_cluster_client.get(full) is not None
    with pytest.raises(StopIteration):  # A finishes: drain, L1, publish
        while True:
            op = steps.send(removed)
            removed = await op.run_async()
    # the counter moves once the DEL (run in a worker thread) has returned to the bus task
    await eventually(lambda: redis_cluster_client.get(full) is None
                     and b.stats()["bus"]["raced_writes_undone"] >= 1)
    assert await fb(1) == "new" and await fa(1) == "new"


def test_remembered_writes_expire_by_age(make_cache: Factory,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Completed L2 writes are remembered RECENT seconds (to undo raced ones), then forgotten
    -- oldest first, one at a time, not by rescanning the whole map on every write."""
    from tiercache import _invalidation

    now = [1000.0]
    # this module's clock only: patching time.monotonic itself would stop the event loop's
    monkeypatch.setattr(_invalidation, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    cache = make_cache()
    assert cache.bus is not None
    for i in range(3):
        cache.coherence.wrote(cache.full_key(f"k{i}"), [])
    cache.coherence.wrote(cache.full_key("k0"), ["t"])  # rewritten: now the youngest
    assert list(cache.coherence._recent) == [cache.full_key(k) for k in ("k1", "k2", "k0")]
    now[0] += _invalidation.RECENT + 1
    cache.coherence.wrote(cache.full_key("k3"), [])
    assert list(cache.coherence._recent) == [cache.full_key("k3")]


def test_invalidation_drains_only_writes_of_loads_that_began_before_it(
        make_cache: Factory) -> None:
    """The drain waits for L2 writes of loads older than the invalidation (they may carry
    the old value), not for writes of loads that began after it: under steady load some
    write is nearly always in flight, and waiting for "no write at all" cost every
    invalidate_tags/pattern/clear the whole DRAIN_TIMEOUT."""
    cache = make_cache()
    co, full = cache.coherence, cache.full_key("hot")
    old_gen = co.gen
    co.writing(full, +1, old_gen)  # a load from before: must be waited for
    co.gen += 1  # the invalidation's first bump
    assert [type(op).__name__ for op in co.drain_writes(None, co.gen)] == ["Until"]
    assert [type(op).__name__ for op in co.drain_writes([full], co.gen)] == ["Until"]
    co.writing(full, -1, old_gen)
    co.writing(full, +1, co.gen)  # a load that began after the bump
    assert list(co.drain_writes(None, co.gen)) == []
    assert list(co.drain_writes([full], co.gen)) == []
    co.writing(full, -1, co.gen)
    assert not cache.coherence._writes


def test_glob_character_classes_match_redis(redis_cluster_client: RedisCluster) -> None:
    """Redis' own class rules: reversed ranges swap, ``!`` is no negation, ``\\`` escapes
    inside a class, ``[]`` is an empty class. A pattern Redis accepts must never make the
    L1 side raise (L2 would be invalidated, L1 not) or pick different keys."""
    keys = ["k1", "k3", "kb", "k!", "ka", "k]", "k-", "k\\", "k", "kz", "k^"]
    for key in keys:
        redis_cluster_client.set("gc:" + key, 1)
    for pattern in ["k[z-a]", "k[3-1]", "k[!a]", "k[\\]]", "k[a\\-]", "k[]", "k[^z-a]",
                    "k[^!]", "k[a-]", "k[]]"]:
        found = redis_cluster_client.scan_iter(match="gc:" + pattern,
                                               target_nodes=RedisCluster.PRIMARIES)
        in_redis = {k.decode()[3:] for k in found}
        rx = glob_to_regex(pattern)
        assert {k for k in keys if rx.fullmatch(k)} == in_redis, pattern
