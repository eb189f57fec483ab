"""Invalidations and writes made while Redis is unreachable are not lost (repairs).

A master is SIGKILLed and its replica promoted: the replica still holds the *old* values.
Deletes, tag invalidations and writes issued during the failover window cannot reach Redis;
the tier remembers them and applies them before L2 serves reads again, so neither this
process nor a second one ever reads the old value. Runs on its own LocalStack (with
replicas) so killing nodes never disturbs the session's stack; the killed node is restarted.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.cluster

from tiercache.local import LocalStack
from tiercache.tiers._breaker import CircuitBreaker
from tiercache.tiers._repairs import Repairs
from tiercache.tiers.base import MISSING
from tiercache.tiers.keys import tag_key
from tiercache.tiers.redis import RedisTier

VICTIM = 1  # master index killed (not the URL's seed node)


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(redis_masters=3, redis_replicas=1, pg_shards=0) as own:
        yield own


def keys_on(stack: LocalStack, index: int, prefix: str, n: int) -> list[str]:
    host, port = stack.redis_all_nodes[index]
    with redis.cluster.RedisCluster(host=host, port=port) as probe:
        name = f"{host}:{port}"
        out, i = [], 0
        while len(out) < n:
            key = f"{prefix}{i}"
            if probe.get_node_from_key(key).name == name:  # type: ignore[no-untyped-call]
                out.append(key)
            i += 1
    return out


def keys_on_tag(stack: LocalStack, key: str) -> bool:
    host, port = stack.redis_all_nodes[0]
    with redis.cluster.RedisCluster(host=host, port=port) as probe:
        return bool(probe.get_node_from_key(key).name == f"{host}:{port}")  # type: ignore[no-untyped-call]


def replica_has(stack: LocalStack, keys: list[str], value: bytes | None) -> bool:
    """Do the victim's replicas hold ``value`` for every key (READONLY reads)?"""
    masters = len(stack.redis_nodes)
    for host, port in stack.redis_all_nodes[masters:]:
        with redis.Redis(host=host, port=port, socket_timeout=1) as r:
            try:
                r.execute_command("READONLY")
                if all(r.get(k) is not None and (value is None or value in r.get(k))
                       for k in keys):
                    return True
            except redis.ResponseError:  # MOVED: not this master's replica
                continue
    return False


def read_elsewhere(url: str, keys: list[str]) -> dict[str, Any]:
    """Read ``keys`` through a RedisTier in a second process."""
    code = textwrap.dedent(f"""
        import json
        from tiercache.tiers.base import MISSING
        from tiercache.tiers.redis import RedisTier
        t = RedisTier({url!r})
        out = {{k: (None if (v := t.get_sync(k)) is MISSING else v) for k in {keys!r}}}
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


async def until(what: str, predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_invalidations_and_writes_during_a_failover_are_applied_after_it(
        stack: LocalStack) -> None:
    ns = f"o{uuid.uuid4().hex[:6]}"
    k_del, k_set, k_tag, k_sync = keys_on(stack, VICTIM, f"{ns}:", 4)
    k_other = keys_on(stack, 0, f"{ns}:", 1)[0]
    # the tag set lives on a healthy master: its pop works, the member deletes do not
    tag = next(t for t in (f"user:{i}" for i in range(1000))
               if keys_on_tag(stack, tag_key(t, ns)))
    tier = RedisTier(stack.redis_url, ttl=120, socket_timeout=0.2, connect_timeout=0.2,
                     breaker=CircuitBreaker(failure_threshold=2, reset_timeout=0.3))
    try:
        for key in (k_del, k_set, k_tag, k_sync, k_other):
            await tier.set(key, "old")
        await tier.add_tags(k_tag, [tag])
        await until("replication", lambda: replica_has(
            stack, [k_del, k_set, k_tag, k_sync], None))
        stack.kill_redis_node(VICTIM)
        # --- the failover window: nothing below can reach the victim's slots
        assert await tier.delete(k_del) is False
        await tier.set(k_set, "new")
        await tier.invalidate_tags([tag], namespace=ns)
        await asyncio.to_thread(tier.delete_sync, k_sync)
        repairs = tier.stats()["repairs"]
        assert repairs["pending"] >= 3 and repairs["deferred"] >= 3, repairs
        # a read of a key with a pending repair is a miss, never the old value
        assert await tier.get(k_del) is MISSING
        assert await tier.get(k_other) == "old"  # a healthy master's keys still serve
        # --- the replica takes over, holding the old values

        async def serves() -> bool:
            return await tier.get(k_set) is MISSING and tier.stats()["repairs"]["pending"] == 0

        deadline = time.monotonic() + 60
        while not await serves():
            assert time.monotonic() < deadline, (tier.stats()["repairs"], tier._repairs.keys)
            for key in (k_del, k_set, k_tag, k_sync):  # never the old value meanwhile
                assert await tier.get(key) in (MISSING, "new"), key
            await asyncio.sleep(0.1)
        for key in (k_del, k_set, k_tag):
            assert await tier.get(key) is MISSING, key
        assert await asyncio.to_thread(tier.get_sync, k_sync) is MISSING
        assert tier.stats()["repairs"]["applied"] >= 3
        elsewhere = await asyncio.to_thread(
            read_elsewhere, stack.redis_url, [k_del, k_set, k_tag, k_sync, k_other])
        assert elsewhere == {k_del: None, k_set: None, k_tag: None, k_sync: None,
                             k_other: "old"}
        direct = redis.cluster.RedisCluster.from_url(stack.redis_url)
        try:
            assert direct.exists(k_del, k_set, k_tag, k_sync) == 0
            assert direct.exists(tag_key(tag, ns)) == 0
        finally:
            direct.close()
    finally:
        await asyncio.to_thread(stack.restart_redis_node, VICTIM)
        await tier.close()


# ------------------------------------------------------------------ forced-open breakers


def _open_all(tier: RedisTier) -> None:
    tier.stats()  # seeds one breaker per known master
    for breaker in tier.breakers.values():
        for _ in range(breaker.failure_threshold):
            tier.breaker.failed(breaker)


@pytest.fixture
def tier(tiercache_stack: Any, redis_cluster_client: Any) -> Iterator[RedisTier]:
    t = RedisTier(tiercache_stack.redis_url, ttl=60, max_pending=5,
                  breaker=CircuitBreaker(2, reset_timeout=60))
    yield t
    t.close_sync()


def test_skipped_calls_become_repairs_and_overflow_into_namespace_flushes(
        tier: RedisTier, redis_cluster_client: Any) -> None:
    a, b = f"a{uuid.uuid4().hex[:6]}", f"b{uuid.uuid4().hex[:6]}"
    tier.set_many_sync({f"{a}:{i}": i for i in range(10)})
    tier.set_sync(f"{b}:keep", "kept")
    assert tier.get_sync(f"{a}:1") == 1
    _open_all(tier)
    assert tier.breaker.state == "open"
    tier.delete_sync(f"{a}:1")
    tier.set_sync(f"{a}:2", "never written")
    assert tier.stats()["repairs"]["pending"] == 2
    assert tier.get_sync(f"{a}:3") is MISSING  # breaker open: skipped
    for i in range(3, 8):  # past max_pending=5: one flush of namespace a instead
        tier.delete_sync(f"{a}:{i}")
    snap = tier.stats()["repairs"]
    assert snap["overflows"] == 1 and snap["pending"] == 2, snap  # "{a}:*" and a:7
    tier.breaker.reset()
    assert tier.get_sync(f"{a}:9") is MISSING  # the flush ran first: a's keys are gone
    assert tier.stats()["repairs"]["pending"] == 0
    assert redis_cluster_client.exists(*[f"{a}:{i}" for i in range(10)]) == 0
    assert tier.get_sync(f"{b}:keep") == "kept"  # only the namespaces seen are flushed


async def test_async_repairs_of_tags_and_patterns(tier: RedisTier,
                                                  redis_cluster_client: Any) -> None:
    ns = f"t{uuid.uuid4().hex[:6]}"
    await tier.set(f"{ns}:tagged", 1)
    await tier.add_tags(f"{ns}:tagged", ["x"])
    await tier.set(f"{ns}:p:1", 1)
    await tier.set(f"{ns}:other", 1)
    _open_all(tier)
    assert await tier.invalidate_tags(["x"], namespace=ns) == 0
    assert await tier.delete_pattern(f"{ns}:p:*") == 0
    assert tier.stats()["repairs"]["pending"] == 2
    tier.breaker.reset()
    # a pending tag or pattern blocks the whole namespace until applied; then it serves
    assert await tier.get(f"{ns}:other") == 1
    assert tier.stats()["repairs"] == {"pending": 0, "deferred": 2, "applied": 2,
                                       "overflows": 0}
    assert redis_cluster_client.exists(f"{ns}:tagged", f"{ns}:p:1") == 0
    assert await tier.get_many([f"{ns}:other", f"{ns}:tagged"]) == {f"{ns}:other": 1}


def test_repairs_unit() -> None:
    r = Repairs(limit=3)
    assert not r.active and not r.blocks("a:1")
    r.add_keys(["a:1"])
    assert r.active and r.blocks("a:1") and not r.blocks("a:2")
    r.add_tags("b", ["t"])
    assert r.blocks("b:anything") and not r.blocks("c:x")
    snap = r.begin()
    assert snap is not None and r.begin() is None  # one repairer at a time
    r.add_keys(["a:1"])  # re-added while the repair runs: must survive its completion
    r.done_keys(snap[2])
    r.done_tags(snap[1])
    r.end()
    assert r.blocks("a:1") and not r.blocks("b:x")
    r.add_pattern("*")
    assert r.blocks("zzz:1")
    r.add_keys(["c:1", "d:2", "d:3"])  # over the limit: namespaces flushed
    assert r.overflows == 1 and set(r.patterns) >= {"a:*", "c:*", "d:*", "*"}
    assert not r.keys and r.blocks("d:9")
