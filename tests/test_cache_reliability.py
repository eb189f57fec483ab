"""Redis failure is not the caller's failure: kill a master, then the whole cluster, mid-run.

Runs on its own LocalStack (Redis only) so killing nodes never disturbs the session's stack.
Callers keep running throughout; every returned value is checked; no caller may see an error.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio

from tiercache import _impl
from tiercache.cache import TierCache
from tiercache.local import LocalStack
from tiercache.tiers import memory
from tiercache.tiers._breaker import CircuitBreaker
from tiercache.tiers.memory import MemoryTier
from tiercache.tiers.redis import RedisTier

pytestmark = pytest.mark.slow
IMPLS = _impl.both("_lru")


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(redis_masters=3, pg_shards=0) as own:
        yield own


@pytest.fixture(params=IMPLS, ids=lambda m: m.__name__.split(".")[1])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setattr(memory, "lru_impl", request.param)
    return request.param  # type: ignore[no-any-return]


@pytest_asyncio.fixture(loop_scope="session")
async def cache(impl: ModuleType, stack: LocalStack) -> AsyncIterator[TierCache]:
    l2 = RedisTier(stack.redis_url, ttl=60, socket_timeout=0.2, connect_timeout=0.2,
                   breaker=CircuitBreaker(failure_threshold=3, reset_timeout=0.5))
    # a short L1 TTL keeps the callers going to L2 all the time
    made = TierCache(l1=MemoryTier(maxsize=10_000, ttl=0.05), l2=l2,
                     namespace=f"rel{uuid.uuid4().hex[:6]}", min_requests=10**9)
    yield made
    await made.aclose()


def expected(x: int) -> dict[str, int]:
    return {"x": x, "square": x * x}


async def run_async_callers(cache: TierCache, stop: asyncio.Event, n: int = 16) -> list[Any]:
    """Tasks calling a cached async function until ``stop``; returns the errors they saw."""

    @cache.cached(ttl=30)
    async def square(x: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return expected(x)

    errors: list[Any] = []

    async def caller(seed: int) -> None:
        i = seed
        while not stop.is_set():
            i = (i + 7) % 300  # 7 is coprime to 300: every caller visits every key
            try:
                value = await square(i)
            except Exception as exc:
                errors.append(exc)
            else:
                if value != expected(i):
                    errors.append(("wrong value", i, value))
            await asyncio.sleep(0.001)

    await asyncio.gather(*(caller(s) for s in range(n)))
    return errors


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_kill_one_master_mid_run(cache: TierCache, stack: LocalStack) -> None:
    stop = asyncio.Event()
    callers = asyncio.create_task(run_async_callers(cache, stop))
    # writes reach L2 before the kill (a loaded box may take longer than the first 0.3 s)
    await eventually(lambda: cache.l2.stats()["sets"] > 0)
    await asyncio.sleep(0.3)
    # (redis-py 8.1's async cluster client can fail a few first concurrent connects; those
    # count as L2 errors too, so measure the outage against a baseline)
    baseline = cache.l2.stats()["errors"]
    stack.kill_redis_node(1)
    try:
        await eventually(lambda: cache.l2.stats()["errors"] > baseline)
        await asyncio.sleep(0.5)
    finally:
        await asyncio.to_thread(stack.restart_redis_node, 1)
    errors_at_restart = cache.l2.stats()["errors"]
    sets_at_restart = cache.l2.stats()["sets"]
    # recovered: writes go through again, and errors stop growing
    await eventually(lambda: cache.l2.stats()["sets"] > sets_at_restart + 30)
    await eventually(lambda: cache.l2.breaker.state == "closed")
    settled = cache.l2.stats()["errors"]
    await asyncio.sleep(0.3)
    stop.set()
    assert await callers == []
    assert errors_at_restart > baseline
    assert cache.l2.stats()["errors"] == settled
    assert (await cache.health())["status"] == "healthy"


async def test_kill_whole_cluster_mid_run(cache: TierCache, stack: LocalStack) -> None:
    stop = asyncio.Event()
    callers = asyncio.create_task(run_async_callers(cache, stop))
    await asyncio.sleep(0.3)
    loads_before = cache.stats()["loader"]["calls"]
    for i in range(3):
        stack.kill_redis_node(i)
    try:
        await eventually(lambda: cache.l2.breaker.state != "closed")
        assert cache.l2.breaker.opened_total >= 1
        report = await cache.health()
        assert report["status"] == "unhealthy" and report["checks"]["redis"]["ok"] is False
        await asyncio.sleep(0.5)  # callers keep going on L1 + loader
        assert cache.stats()["loader"]["calls"] > loads_before
    finally:
        with ThreadPoolExecutor(3) as pool:  # nodes must find each other: restart together
            await asyncio.gather(*(asyncio.get_running_loop().run_in_executor(
                pool, stack.restart_redis_node, i) for i in range(3)))
    await eventually(lambda: cache.l2.breaker.state == "closed")
    sets = cache.l2.stats()["sets"]
    await eventually(lambda: cache.l2.stats()["sets"] > sets + 50)
    # the invalidation bus lost its node too: it resubscribed (and flushed L1 on the way)
    await eventually(lambda: cache.stats()["bus"]["connects"] >= 2
                     and cache.stats()["bus"]["connected"])
    stop.set()
    assert await callers == []
    assert (await cache.health())["status"] == "healthy"


def test_sync_callers_survive_cluster_outage(cache: TierCache, stack: LocalStack) -> None:
    @cache.cached(ttl=30, lock=True)
    def cube(x: int) -> int:
        return x ** 3

    stop = threading.Event()
    errors: list[Any] = []

    def caller(seed: int) -> None:
        i = seed
        while not stop.is_set():
            i = (i + 3) % 200
            try:
                if cube(i) != i ** 3:
                    errors.append(("wrong", i))
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=caller, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        for i in range(3):
            stack.kill_redis_node(i)
        deadline = time.monotonic() + 30
        while cache.l2.breaker.state == "closed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cache.l2.breaker.state != "closed"
        time.sleep(0.5)
    finally:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(stack.restart_redis_node, range(3)))
    deadline = time.monotonic() + 30
    while cache.l2.breaker.state != "closed" and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(30)
    assert errors == []
    assert cache.l2.breaker.state == "closed"
    assert cache.health_sync()["status"] == "healthy"
