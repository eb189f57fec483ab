"""Concurrent loads: single-flight (one per key per process), the Redis lease (one across
processes), and loads racing invalidations (no read after an invalidation sees older data)."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tiercache._flow import Call, Flow, Sleep, drive_async, drive_sync
from tiercache._singleflight import SingleFlight
from tiercache.cache import TierCache

Factory = Callable[..., TierCache]


@pytest.fixture
def make_cache(cache_factory: Factory) -> Factory:
    return functools.partial(cache_factory, l1_maxsize=5000)


async def test_1000_concurrent_async_misses_call_the_loader_once(make_cache: Factory) -> None:
    cache = make_cache()
    calls: list[int] = []
    release = asyncio.Event()

    @cache.cached(ttl=30)
    async def get(x: int) -> dict[str, int]:
        calls.append(x)
        await release.wait()
        return {"x": x}

    tasks = [asyncio.create_task(get(7)) for _ in range(1000)]
    while cache.flights.waits < 999:  # every caller is in: one loads, 999 wait
        await asyncio.sleep(0.005)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == [7]
    assert all(r == {"x": 7} for r in results)
    st = cache.stats()
    assert st["loader"]["calls"] == 1 and st["loader"]["singleflight_waits"] == 999
    assert len(cache.flights) == 0


async def test_l1_less_cache_single_flights_too(make_cache: Factory) -> None:
    cache = make_cache(l1=False)
    calls: list[int] = []

    @cache.cached(ttl=30)
    async def get(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.02)
        return x

    assert await asyncio.gather(*(get(1) for _ in range(200))) == [1] * 200
    assert calls == [1]


def test_threads_share_one_sync_load(make_cache: Factory) -> None:
    cache = make_cache()
    calls: list[int] = []
    gate = threading.Event()

    @cache.cached(ttl=30)
    def get(x: int) -> int:
        calls.append(x)
        gate.wait(5)
        return x * 3

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(get(4))) for _ in range(32)]
    for t in threads:
        t.start()
    while cache.flights.waits < 31 and any(t.is_alive() for t in threads):
        gate.wait(0.01)
    gate.set()
    for t in threads:
        t.join(10)
    assert results == [12] * 32 and calls == [4]


async def test_failure_reaches_every_waiter_and_is_not_cached(make_cache: Factory) -> None:
    cache = make_cache()
    calls: list[int] = []

    @cache.cached()
    async def get(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0.02)
        if len(calls) == 1:
            raise LookupError("row vanished")
        return x

    results = await asyncio.gather(*(get(1) for _ in range(50)), return_exceptions=True)
    assert all(isinstance(r, LookupError) for r in results) and calls == [1]
    assert await get(1) == 1 and calls == [1, 1]


async def test_cancelled_callers_never_break_the_others(make_cache: Factory) -> None:
    cache = make_cache()
    calls: list[int] = []
    loading, gate = asyncio.Event(), asyncio.Event()

    @cache.cached()
    async def get(x: int) -> int:
        calls.append(x)
        loading.set()
        await gate.wait()
        return x

    leader = asyncio.create_task(get(9))
    await loading.wait()  # the leader is inside the loader
    waiters = [asyncio.create_task(get(9)) for _ in range(3)]
    while cache.flights.waits < 3:
        await asyncio.sleep(0.001)
    waiters[0].cancel()  # a waiter leaves: the load goes on for the rest
    loading.clear()
    leader.cancel()  # the loading caller leaves: a waiter takes the load over
    await loading.wait()
    gate.set()
    assert list(await asyncio.gather(*waiters[1:])) == [9, 9]
    for gone in (leader, waiters[0]):
        with pytest.raises(asyncio.CancelledError):
            await gone
    assert calls == [9, 9] and len(cache.flights) == 0
    assert await get(9) == 9 and calls == [9, 9]


async def test_lease_makes_one_process_load(make_cache: Factory) -> None:
    """Two caches = two processes (own L1 and own single-flight), one lease in Redis."""
    a, b = make_cache(), make_cache()
    calls: list[str] = []

    async def slow(x: int) -> int:
        calls.append("load")
        await asyncio.sleep(0.1)
        return x + 1

    fa, fb = a.cached(lock=True)(slow), b.cached(lock=True)(slow)
    assert list(await asyncio.gather(fa(1), fb(1), fa(1), fb(1))) == [2, 2, 2, 2]
    assert calls == ["load"]
    assert a.stats()["loader"]["lock_waits"] + b.stats()["loader"]["lock_waits"] == 1


def test_lease_wait_is_bounded_then_loads_itself(make_cache: Factory) -> None:
    cache = make_cache(lock_wait=0.2)
    calls: list[int] = []

    @cache.cached(lock=True)
    def get(x: int) -> int:
        calls.append(x)
        return x

    stuck = cache.l2.acquire_lease_sync(cache.full_key(get.key_for(3)), 60_000)
    assert stuck is not None  # a "crashed" process holds the lease and never writes
    assert get(3) == 3 and calls == [3]
    assert cache.stats()["loader"]["lock_waits"] == 1
    # the holder's lease is untouched; ours was never taken, so nothing to release
    assert cache.l2.release_lease_sync(cache.full_key(get.key_for(3)), stuck)


def test_a_failed_load_releases_its_lease(make_cache: Factory) -> None:
    a, b = make_cache(), make_cache()
    attempts: list[int] = []

    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) == 1:
            raise TimeoutError("database timeout")
        return x

    fa, fb = a.cached(lock=True)(flaky), b.cached(lock=True)(flaky)
    with pytest.raises(TimeoutError):
        fa(5)
    assert fb(5) == 5  # the lease went with the failure: b loads at once, no waiting
    assert b.stats()["loader"]["lock_waits"] == 0 and attempts == [5, 5]


def test_drivers_run_one_flow_both_ways() -> None:
    log: list[str] = []

    def flow(n: int) -> Flow[int]:
        total = 0
        for i in range(n):
            yield Sleep(0)
            total += yield Call(lambda v: v * 2, (i,), {})
        try:
            yield Call(_boom, (), {})
        except KeyError:
            log.append("caught")
        return total

    assert drive_sync(flow(4)) == 12
    assert asyncio.run(drive_async(flow(4))) == 12
    assert log == ["caught", "caught"]


def _boom() -> None:
    raise KeyError("x")


def test_singleflight_sync_reentrancy_free_keys() -> None:
    flights = SingleFlight()
    assert flights.do_sync("a", lambda: flights.do_sync("b", lambda: 5)) == 5
    assert len(flights) == 0 and flights.waits == 0


LEASE_CHILD = textwrap.dedent("""
    import sys, time
    from redis.cluster import RedisCluster
    from tiercache.cache import TierCache
    from tiercache.tiers.memory import MemoryTier
    from tiercache.tiers.redis import RedisTier

    url, namespace = sys.argv[1], sys.argv[2]
    db = RedisCluster.from_url(url)
    cache = TierCache(l1=MemoryTier(), l2=RedisTier(url, ttl=60), namespace=namespace,
                      lock_wait=20)

    @cache.cached(lock=True, key=lambda report: f"report:{report}")
    def build(report):
        db.incr(f"{namespace}:loads")  # how many processes ran the expensive load
        time.sleep(0.5)
        return f"built {report}"

    db.incr(f"{namespace}:ready")
    while not db.exists(f"{namespace}:go"):
        time.sleep(0.005)
    print(build("daily"), flush=True)
    cache.close()
""")


def test_lease_across_real_processes(tiercache_stack: Any, redis_cluster_client: Any,
                                     tmp_path: Path) -> None:
    namespace = f"lease{uuid.uuid4().hex[:6]}"
    script = tmp_path / "lease_child.py"
    script.write_text(LEASE_CHILD)
    procs = [subprocess.Popen([sys.executable, str(script), tiercache_stack.redis_url, namespace],
                              stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parent.parent) for _ in range(3)]
    try:
        deadline = time.monotonic() + 60
        while int(redis_cluster_client.get(f"{namespace}:ready") or 0) < 3:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.01)
        redis_cluster_client.set(f"{namespace}:go", 1)
        outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert outputs == ["built daily"] * 3
    assert int(redis_cluster_client.get(f"{namespace}:loads")) == 1


async def test_no_read_after_invalidate_sees_an_older_version(make_cache: Factory) -> None:
    """Readers race a writer that bumps the row and invalidates; any read *started* after an
    invalidation returned must see at least that version, from whichever tier answers."""
    cache = make_cache()
    row = {"version": 0}
    committed = [0]
    stale: list[tuple[int, int]] = []
    done = asyncio.Event()

    @cache.cached()
    async def read(key: int) -> int:
        seen = row["version"]
        await asyncio.sleep(0.0005 * (seen % 4))  # loads of different lengths overlap
        return seen

    async def reader() -> None:
        while not done.is_set():
            floor = committed[0]
            got = await read(1)
            if got < floor:
                stale.append((got, floor))
            await asyncio.sleep(0)

    async def writer() -> None:
        for version in range(1, 150):
            row["version"] = version
            await read.invalidate(1)
            committed[0] = version
            await asyncio.sleep(0.001)
        done.set()

    await asyncio.gather(writer(), *(reader() for _ in range(8)))
    assert stale == []
    assert await read(1) == 149


def test_threads_never_see_an_older_version_after_invalidate(make_cache: Factory) -> None:
    cache = make_cache()
    row = {"version": 0}
    committed = [0]
    stale: list[tuple[int, int]] = []
    done = threading.Event()

    @cache.cached()
    def read(key: int) -> int:
        seen = row["version"]
        time.sleep(0.0005 * (seen % 4))
        return seen

    def reader() -> None:
        while not done.is_set():
            floor = committed[0]
            got = read(1)
            if got < floor:
                stale.append((got, floor))

    threads = [threading.Thread(target=reader) for _ in range(6)]
    for t in threads:
        t.start()
    for version in range(1, 100):
        row["version"] = version
        read.invalidate(1)
        committed[0] = version
        time.sleep(0.001)
    done.set()
    for t in threads:
        t.join(30)
    assert stale == []
    assert read(1) == 99
