"""Per-node circuit breakers on the real cluster: one dead master (SIGKILL, under a small
load) fails fast while the other masters keep serving; per-node state in stats(); the
aggregate, NodeBreakers, unit-tested. Own stacks, so killing nodes never disturbs the
session's stack; killed nodes are restarted."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import redis.cluster
from redis.cluster import RedisCluster

from tiercache.local import LocalStack
from tiercache.tiers._breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, NodeBreakers
from tiercache.tiers.base import MISSING
from tiercache.tiers.redis import RedisTier


def expected(key: str) -> dict[str, Any]:
    return {"key": key, "n": len(key)}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ NodeBreakers unit


def test_node_breakers_aggregate_is_the_worst_state() -> None:
    clock = Clock()
    tpl = CircuitBreaker(2, reset_timeout=2.0, clock=clock)
    seen: list[tuple[str, str, str]] = []
    g = NodeBreakers(tpl, on_change=lambda n, old, new: seen.append((n, old, new)))
    assert g.state == CLOSED and not g.degraded and g.states() == {}
    a, b = g.get("a:1"), g.get("b:1")
    assert a is tpl and b is not tpl and b.failure_threshold == 2 and g.get("a:1") is a
    g.failed(a)
    assert g.degraded and g.state == CLOSED  # one failure: streak, not open
    g.succeeded(a)
    assert not g.degraded
    g.failed(a)
    g.failed(a)
    assert g.state == OPEN and g.states() == {"a:1": OPEN, "b:1": CLOSED}
    assert not g.all_open() and g.seconds_until_probe == pytest.approx(2.0)
    clock.now += 2.0
    assert a.allow() and g.state == HALF_OPEN
    g.succeeded(a)
    assert g.state == CLOSED and not g.degraded and g.opened_total == 1
    assert seen == [("a:1", CLOSED, OPEN), ("a:1", OPEN, HALF_OPEN), ("a:1", HALF_OPEN, CLOSED)]


def test_node_breakers_unattributed_failure_holds_degraded_mode() -> None:
    clock = Clock()
    g = NodeBreakers(CircuitBreaker(3, reset_timeout=1.0, clock=clock))
    a = g.get("a:1")
    g.failed(None)  # a multi-node batch failed: nobody to blame, split the next batches
    assert g.degraded and a.failures == 0
    g.succeeded(a)
    assert g.degraded  # held for reset_timeout
    clock.now += 1.0
    g.succeeded(a)
    assert not g.degraded


def test_node_breakers_retire_and_bound() -> None:
    g = NodeBreakers(CircuitBreaker(1), max_nodes=2)
    g.failed(g.get("dead:1"))
    g.get("live:1")
    g.retire(set())
    assert set(g.nodes) == {"dead:1", "live:1"}  # topology unknown: keep
    g.retire({"live:1", "new:1"})
    assert set(g.nodes) == {"live:1"} and g.opened_total == 1  # counter never drops
    g.get("n2")
    g.get("n3")
    assert len(g.nodes) == 2


# ------------------------------------------------------------------ forced-open node (session)


def test_an_open_node_breaker_skips_only_that_nodes_keys(
        tiercache_stack: Any, redis_cluster_client: RedisCluster) -> None:
    tier = RedisTier(tiercache_stack.redis_url, ttl=60, breaker=CircuitBreaker(3, 60))
    try:
        keys = [f"pn:{i}" for i in range(60)]
        tier.set_many_sync({k: k for k in keys})
        owner = {k: redis_cluster_client.get_node_from_key(k).name for k in keys}
        masters = set(owner.values())
        assert tier.stats()["breakers"] == {n: "closed" for n in masters}
        victim = owner[keys[0]]
        dead = [k for k in keys if owner[k] == victim]
        alive = [k for k in keys if owner[k] != victim]
        b = tier.breakers[victim]
        for _ in range(b.failure_threshold):
            tier.breaker.failed(b)
        s = tier.stats()
        assert s["breaker"] == "open" and s["breakers"][victim] == "open"
        assert {n: st for n, st in s["breakers"].items() if n != victim} == {
            n: "closed" for n in masters - {victim}}
        assert [tier.get_sync(k) for k in dead] == [MISSING] * len(dead)
        assert [tier.get_sync(k) for k in alive] == alive  # the other masters keep serving
        assert tier.get_many_sync(keys) == {k: k for k in alive}
        tier.set_many_sync({k: "new" for k in keys})
        assert redis_cluster_client.get(dead[0]) != redis_cluster_client.get(alive[0])
        assert tier.get_sync(alive[0]) == "new"
        assert tier.stats()["errors_by_op"].get("breaker_open", 0) >= len(dead) + 2
    finally:
        tier.close_sync()


# ------------------------------------------------------------------ one dead master under load


@pytest.fixture(scope="module")
def partial_stack() -> Iterator[LocalStack]:
    """Live masters keep serving their slots while one is down
    (``cluster-require-full-coverage no``): the case per-node breakers are for."""
    with LocalStack(redis_masters=3, pg_shards=0) as stack:
        for host, port in stack.redis_nodes:
            with redis.Redis(host=host, port=port) as client:
                client.config_set("cluster-require-full-coverage", "no")
        yield stack
class NodeCallers:
    """Read-through callers (async tasks, sync threads, some get_many) counting L2 hits and
    misses separately for the victim master's keys and the other masters' keys."""

    def __init__(self, tier: RedisTier, keys: list[str], dead: set[str]) -> None:
        self.tier, self.keys, self.dead = tier, keys, dead
        self.failures: list[BaseException] = []
        self.wrong = 0
        self.counts: dict[tuple[bool, bool], int] = {}  # (victim's key?, hit?) -> calls
        self.recording = False
        self.stop = threading.Event()

    def _count(self, key: str, hit: bool, started: bool) -> None:
        """Count a call that began *and* ended inside the recording window: a thread
        descheduled between a pre-outage hit and this count must not look like a hit on a
        dead node (seen once at load ~4)."""
        if started and self.recording:
            slot = (key in self.dead, hit)
            self.counts[slot] = self.counts.get(slot, 0) + 1

    def _check(self, key: str, value: Any) -> None:
        if value != expected(key):
            self.wrong += 1

    async def async_caller(self) -> None:
        rng = random.Random()
        while not self.stop.is_set():
            key = rng.choice(self.keys)
            try:
                started = self.recording
                value = await self.tier.get(key)
                self._count(key, value is not MISSING, started)
                if value is MISSING:
                    value = expected(key)
                    await self.tier.set(key, value)
                self._check(key, value)
                if rng.random() < 0.05:
                    wanted = rng.sample(self.keys, 20)
                    started = self.recording
                    found = await self.tier.get_many(wanted)
                    for k in wanted:
                        self._count(k, k in found, started)
                    for k, v in found.items():
                        self._check(k, v)
            except BaseException as exc:
                self.failures.append(exc)
            await asyncio.sleep(0.001)

    def sync_caller(self) -> None:
        rng = random.Random()
        while not self.stop.is_set():
            key = rng.choice(self.keys)
            try:
                started = self.recording
                value = self.tier.get_sync(key)
                self._count(key, value is not MISSING, started)
                if value is MISSING:
                    value = expected(key)
                    self.tier.set_sync(key, value)
                self._check(key, value)
            except BaseException as exc:
                self.failures.append(exc)
            time.sleep(0.001)


def _attempt_errors(tier: RedisTier) -> int:
    """Failed real calls (not breaker skips)."""
    by_op = tier.stats()["errors_by_op"]
    return sum(n for op, n in by_op.items() if op not in ("breaker_open", "repair_pending"))


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_one_dead_master_fails_fast_while_the_others_keep_serving(
    partial_stack: LocalStack,
) -> None:
    victim_index = 1  # not the seed node of the URL
    host, port = partial_stack.redis_nodes[victim_index]
    victim = f"{host}:{port}"
    keys = [f"pn:{i}" for i in range(300)]
    with redis.cluster.RedisCluster(host=host, port=port) as probe:
        owner = {k: probe.get_node_from_key(k).name for k in keys}
    dead = {k for k in keys if owner[k] == victim}
    others = set(owner.values()) - {victim}
    assert dead and len(others) == 2
    tier = RedisTier(partial_stack.redis_url, ttl=30,
                     breaker=CircuitBreaker(5, reset_timeout=1.0))
    callers = NodeCallers(tier, keys, dead)
    tasks = [asyncio.create_task(callers.async_caller()) for _ in range(6)]
    pool = ThreadPoolExecutor(3)
    loop = asyncio.get_running_loop()
    threads = [loop.run_in_executor(pool, callers.sync_caller) for _ in range(3)]

    async def until(what: str, predicate: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}: {tier.stats()}")
            await asyncio.sleep(0.05)

    try:
        await until("warm hits", lambda: tier.hits > 500)
        await until("no failure streak", lambda: not tier.breaker.degraded)
        partial_stack.kill_redis_node(victim_index)
        await until("the victim's breaker to open",
                    lambda: tier.stats()["breakers"].get(victim) == "open")
        # --- outage window: the victim's breaker is open (probing every 1 s)
        skips0, attempts0 = tier.errors_by_op.get("breaker_open", 0), _attempt_errors(tier)
        callers.recording = True
        await asyncio.sleep(1.5)
        callers.recording = False
        skips = tier.errors_by_op.get("breaker_open", 0) - skips0
        attempts = _attempt_errors(tier) - attempts0
        s = tier.stats()
        assert s["breaker"] in ("open", "half_open")  # the worst node's state
        assert s["breakers"][victim] in ("open", "half_open")
        assert {n: s["breakers"][n] for n in others} == {n: "closed" for n in others}
        counts = dict(callers.counts)
        assert counts.get((False, True), 0) > 200  # the other masters' keys: L2 hits
        assert counts.get((False, False), 0) < counts.get((False, True), 0) // 20
        assert counts.get((True, True), 0) == 0  # the victim's keys: misses...
        assert counts.get((True, False), 0) > 50
        # ...that are skipped, not tried: only the half-open probes (about one per second,
        # plus a few in flight) really go to the dead node
        assert attempts <= 12 and skips > 50 and skips > 5 * attempts
    finally:
        await asyncio.to_thread(partial_stack.restart_redis_node, victim_index)
    try:
        callers.counts.clear()
        callers.recording = True
        await until("every breaker closed, the group healthy again",
                    lambda: tier.stats()["breakers"] == {n: "closed" for n in set(owner.values())}
                    and not tier.breaker.degraded)
        await until("the victim's keys hit again",
                    lambda: callers.counts.get((True, True), 0) > 50)
        assert tier.stats()["breaker"] == "closed"
        nodes = tier.breaker.nodes
        assert nodes[victim].opened_total >= 1
        assert [nodes[n].opened_total for n in others] == [0, 0]  # never flapped
    finally:
        callers.stop.set()
        await asyncio.gather(*tasks, *threads)
        pool.shutdown()
        await tier.close()
    assert callers.failures == []
    assert callers.wrong == 0


