"""Redis failure is not the caller's failure: unreachable and hung servers, a master and
then the whole cluster killed under load (their own LocalStack: the session stack stays
intact), a standalone (non-cluster) Redis, and no passwords in logs, reprs or errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from tiercache._localstack.binaries import find_redis
from tiercache._localstack.procs import free_port
from tiercache.local import LocalStack
from tiercache.tiers._breaker import CircuitBreaker
from tiercache.tiers.base import MISSING
from tiercache.tiers.redis import RedisTier

SECRET = "pa55-w0rd-never-shown"


def dead_url() -> str:
    return f"redis://app:{SECRET}@127.0.0.1:{free_port()}"


# ------------------------------------------------------------------ unreachable / hung


def test_unreachable_redis_sync_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tiercache")
    t = RedisTier(dead_url(), breaker=CircuitBreaker(failure_threshold=3, reset_timeout=60))
    assert t.get_sync("k") is MISSING
    t.set_sync("k", 1)
    assert t.get_many_sync(["a", "b"]) == {}
    assert t.breaker.state == "open"
    t.set_many_sync({"a": 1})
    assert t.delete_sync("k") is False
    assert t.delete_many_sync(["a"]) == 0
    assert t.delete_pattern_sync("*") == 0
    t.add_tags_sync("k", ["x"])
    assert t.invalidate_tags_sync(["x"]) == 0
    token = t.acquire_lease_sync("k", 1000)
    assert token is not None and token.startswith("local:")  # nobody to wait for: load now
    assert t.release_lease_sync("k", token) is True
    t.publish_sync("bus", b"x")
    s = t.stats()
    # get and set fail, the repair of the failed set (run before get_many reads) is the
    # third real failure: the breaker opens, get_many and the 8 calls after it are skipped
    assert s["errors_by_op"]["get"] == 1 and s["errors_by_op"]["repair"] == 1
    assert s["errors_by_op"]["breaker_open"] == 9
    assert s["hits"] == s["misses"] == s["sets"] == 0
    assert s["breaker"] == "open" and s["breaker_opened"] == 1
    with pytest.raises(redis.ConnectionError) as info:
        t.ping_sync()
    assert SECRET not in str(info.value)
    text = caplog.text + repr(t) + str(t.stats())
    assert SECRET not in text and "***" in repr(t)
    assert "circuit breaker closed -> open" in caplog.text
    t.close_sync()


async def test_unreachable_redis_async_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    t = RedisTier(dead_url())
    for _ in range(20):
        assert await t.get(f"k{_}") is MISSING
        await t.set("k", {"v": 1})
    assert await t.get_many(["a"]) == {}
    assert await t.delete("k") is False
    assert await t.invalidate_tags(["t"]) == 0
    assert await t.delete_pattern("*") == 0
    s = t.stats()
    # 44 calls, plus one real try of the repair owed by the first failed set: 5 real tries
    assert s["errors"] == 45 and s["errors_by_op"]["breaker_open"] >= 30
    # one warning per operation, the rest suppressed: a dead Redis must not flood the log
    assert len([r for r in caplog.records if "redis get failed" in r.getMessage()]) == 1
    assert SECRET not in caplog.text
    with pytest.raises(redis.ConnectionError) as info:
        await t.ping()
    assert SECRET not in str(info.value) and SECRET not in repr(t)
    await t.close()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung server)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conns.append(srv.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join()
    for c in conns:
        c.close()
    srv.close()


async def test_hung_server_times_out_into_misses(blackhole: int) -> None:
    t = RedisTier(f"redis://127.0.0.1:{blackhole}", cluster=False, socket_timeout=0.05,
                  breaker=CircuitBreaker(failure_threshold=2, reset_timeout=60))
    assert await t.get("k") is MISSING
    await t.set("k", 1)
    assert await t.get("k") is MISSING  # breaker open: skipped without waiting
    s = t.stats()
    assert s["errors_by_op"] == {"get": 1, "set": 1, "breaker_open": 1}
    assert s["breaker"] == "open"
    assert t.get_sync("k") is MISSING
    await t.close()


# ------------------------------------------------------------------ standalone Redis


@pytest.fixture(scope="module")
def standalone_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis-single")
    proc = subprocess.Popen(
        [str(find_redis().server), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--requirepass", SECRET],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, password=SECRET)
        for _ in range(200):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.02)
        client.close()
        yield f"redis://:{SECRET}@127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_standalone_redis_is_detected_and_fully_served(
    standalone_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    t = RedisTier(standalone_url)
    assert SECRET not in repr(t)
    t.set_many_sync({f"s:{i}": i for i in range(30)})
    assert t.cluster is False
    assert t.get_many_sync([f"s:{i}" for i in range(35)]) == {f"s:{i}": i for i in range(30)}
    t.add_tags_sync("s:1", ["one"])
    assert t.invalidate_tags_sync(["one"], namespace="s") == 1
    assert t.delete_pattern_sync("s:*") == 29
    token = t.acquire_lease_sync("s:x", 1000)
    assert token and t.release_lease_sync("s:x", token)
    assert t.ping_sync() > 0
    t.clear_sync()
    t.close_sync()
    wrong = RedisTier(standalone_url.replace(SECRET, "not-" + SECRET))
    assert wrong.get_sync("s:1") is MISSING
    assert wrong.stats()["errors_by_op"] == {"get": 1}
    assert SECRET not in caplog.text and "redis get failed" in caplog.text
    wrong.close_sync()


async def test_standalone_redis_async(standalone_url: str) -> None:
    t = RedisTier(standalone_url)
    await t.set("a:1", (1, 2))
    assert await t.get("a:1") == (1, 2)
    assert await t.get_many(["a:1", "a:2"]) == {"a:1": (1, 2)}
    assert t.cluster is False
    sub = t.pubsub_client()
    assert await sub.ping()
    await sub.aclose()
    await t.clear()
    assert await t.get("a:1") is MISSING
    await t.close()


# ------------------------------------------------------------------ kill under load


def expected(key: str) -> dict[str, Any]:
    return {"key": key, "n": len(key)}


class Callers:
    """Async tasks and sync threads doing read-through against a tier; records exceptions."""

    def __init__(self, url: str) -> None:
        self.tier = RedisTier(url, ttl=30, breaker=CircuitBreaker(5, reset_timeout=0.5))
        self.keys = [f"load:{i}" for i in range(300)]
        self.failures: list[BaseException] = []
        self.wrong = 0
        self.calls = 0
        self.stop = threading.Event()

    def _check(self, key: str, value: Any) -> None:
        self.calls += 1
        if value != expected(key):
            self.wrong += 1

    async def async_caller(self) -> None:
        rng = random.Random()
        while not self.stop.is_set():
            key = rng.choice(self.keys)
            try:
                value = await self.tier.get(key)
                if value is MISSING:
                    value = expected(key)
                    await self.tier.set(key, value)
                self._check(key, value)
                if rng.random() < 0.05:
                    found = await self.tier.get_many(rng.sample(self.keys, 20))
                    for k, v in found.items():
                        self._check(k, v)
            except BaseException as exc:  # the whole point: nothing may reach the caller
                self.failures.append(exc)
            await asyncio.sleep(0.001)

    def sync_caller(self) -> None:
        rng = random.Random()
        while not self.stop.is_set():
            key = rng.choice(self.keys)
            try:
                value = self.tier.get_sync(key)
                if value is MISSING:
                    value = expected(key)
                    self.tier.set_sync(key, value)
                self._check(key, value)
            except BaseException as exc:
                self.failures.append(exc)
            time.sleep(0.001)

    async def wait_for(self, what: str, predicate: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}: {self.tier.stats()}")
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def own_stack() -> Iterator[LocalStack]:
    with LocalStack(redis_masters=3, pg_shards=0) as stack:
        yield stack


async def _run_outage(stack: LocalStack, victims: list[int],
                      freeze: bool = False) -> Callers:
    """Callers run throughout; the victims are killed (or frozen with SIGSTOP: a hung server,
    every call times out) until the breaker has opened, then restarted (or resumed)."""
    callers = Callers(stack.redis_url)
    tasks = [asyncio.create_task(callers.async_caller()) for _ in range(6)]
    pool = ThreadPoolExecutor(3)
    loop = asyncio.get_running_loop()
    threads = [loop.run_in_executor(pool, callers.sync_caller) for _ in range(3)]
    pids = [stack.pids[i] for i in victims]
    try:
        await callers.wait_for("warm hits", lambda: callers.tier.hits > 200)
        for index, pid in zip(victims, pids, strict=True):
            if freeze:
                os.killpg(pid, signal.SIGSTOP)
            else:
                stack.kill_redis_node(index)
        await callers.wait_for("breaker to open", lambda: callers.tier.breaker.opened_total > 0)
        await asyncio.sleep(0.5)  # callers keep running against a dead L2
        if freeze:
            for pid in pids:
                os.killpg(pid, signal.SIGCONT)
        else:
            with ThreadPoolExecutor(len(victims)) as restarter:
                await asyncio.gather(*(loop.run_in_executor(
                    restarter, stack.restart_redis_node, index) for index in victims))
        hits_after = callers.tier.hits
        await callers.wait_for(
            "recovery (breaker closed, hits again)",
            lambda: callers.tier.breaker.state == "closed" and callers.tier.hits > hits_after + 50)
    finally:
        if freeze:
            for pid in pids:
                os.killpg(pid, signal.SIGCONT)
        callers.stop.set()
        await asyncio.gather(*tasks, *threads)
        pool.shutdown()
        await callers.tier.close()
    return callers


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_killing_a_master_under_load(own_stack: LocalStack) -> None:
    callers = await _run_outage(own_stack, [0])
    assert callers.failures == []
    assert callers.wrong == 0 and callers.calls > 500
    s = callers.tier.stats()
    assert s["breaker_opened"] >= 1 and s["errors_by_op"].get("breaker_open", 0) > 0
    assert s["errors"] > 0 and s["breaker"] == "closed"


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_killing_the_whole_cluster_under_load(own_stack: LocalStack) -> None:
    callers = await _run_outage(own_stack, [0, 1, 2])
    assert callers.failures == []
    assert callers.wrong == 0
    assert callers.tier.stats()["breaker"] == "closed"


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_hung_master_under_load(own_stack: LocalStack) -> None:
    """SIGSTOP: connections stay open, replies never come -- the timeout path, cluster-wide."""
    callers = await _run_outage(own_stack, [1], freeze=True)
    assert callers.failures == []
    assert callers.wrong == 0
    s = callers.tier.stats()
    assert s["breaker_opened"] >= 1 and s["breaker"] == "closed"
    own_stack._redis_servers().wait_healthy(30)  # leave a healthy cluster to the next test


async def test_pool_exhaustion_is_counted_but_does_not_open_the_breaker(
    tiercache_stack: Any, async_redis_cluster_client: Any
) -> None:
    """A burst bigger than the pool: some calls miss (counted), the cache stays on.

    ``max_in_flight`` above the pool lets the burst reach redis-py's pool limit (its asyncio
    cluster raises instead of waiting); by default the in-flight gate queues the burst, so
    every call gets its value (below)."""
    t = RedisTier(tiercache_stack.redis_url, max_connections=2, max_in_flight=200)
    await t.set("burst:1", "v")
    results = await asyncio.gather(*(t.get("burst:1") for _ in range(200)))
    assert set(results) <= {"v", MISSING} and "v" in results
    s = t.stats()
    assert s["breaker"] == "closed" and s["breaker_opened"] == 0
    assert s["errors_by_op"].get("get", 0) == results.count(MISSING) > 0
    await t.close()

    gated = RedisTier(tiercache_stack.redis_url, max_connections=2)  # max_in_flight = 2
    results = await asyncio.gather(*(gated.get("burst:1") for _ in range(200)))
    assert results == ["v"] * 200 and gated.stats()["errors"] == 0
    await gated.close()


def test_connection_spec_repr_hides_the_password() -> None:
    t = RedisTier(dead_url())
    assert SECRET not in repr(t._spec) and SECRET not in repr(t)
    assert SECRET not in str(t.stats())
