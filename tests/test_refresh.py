"""Read policies on ``@cached``: refresh-ahead, XFetch, stale-while-revalidate, stale-if-error.

On the session's Redis Cluster (``l2=True``) and L1 alone (``l2=False``: the stale segment
is then the only copy), over both L1 implementations (the ``impl`` fixture).
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tiercache import metrics
from tiercache.cache import TierCache
from tiercache.policies import RefreshAhead, XFetch

Factory = Callable[..., TierCache]


class Source:
    """A data source whose value we change; counts calls; can be made slow or failing."""

    def __init__(self, delay: float = 0.0) -> None:
        self.version, self.calls, self.delay, self.down = 1, 0, delay, False
        self.lock = threading.Lock()

    def read(self, key: int) -> str:
        with self.lock:
            self.calls += 1
            version, down = self.version, self.down
        if down:
            raise ConnectionError("source down")
        return f"{key}:v{version}"


async def _wait_refreshes(cache: TierCache, timeout: float = 10.0) -> None:
    assert await cache.refresher.wait(timeout), "background reload did not finish"


@pytest.mark.parametrize("l2", [True, False], ids=["l1+l2", "l1-only"])
async def test_refresh_ahead_serves_cached_value_and_reloads_once_under_100_readers(
        cache_factory: Factory, l2: bool) -> None:
    cache = cache_factory(l2=l2)
    source = Source()

    @cache.cached(ttl=1.0, refresh=RefreshAhead(0.4))
    async def get(key: int) -> str:
        await asyncio.sleep(source.delay)
        return source.read(key)

    assert await get(7) == "7:v1"
    source.version, source.delay = 2, 0.3  # the reload is slow: nobody may wait for it
    await asyncio.sleep(0.5)  # past 0.4 * ttl, before the ttl
    l2_reads = _l2_reads(cache)
    results = await asyncio.gather(*(get(7) for _ in range(100)))
    assert results == ["7:v1"] * 100  # all served the cached value, none waited for v2
    assert _l2_reads(cache) == l2_reads  # served from this process's copy: no round trip
    await _wait_refreshes(cache)
    assert source.calls == 2  # exactly one background reload
    assert await get(7) == "7:v2"  # the reload replaced the L1 copy
    loader = cache.stats()["loader"]
    assert loader["refreshes_started"] == 1 and loader["refreshes_succeeded"] == 1
    assert loader["calls"] == 2


@pytest.mark.parametrize("l2", [True, False], ids=["l1+l2", "l1-only"])
def test_refresh_ahead_sync_32_threads_one_reload(cache_factory: Factory, l2: bool) -> None:
    cache = cache_factory(l2=l2)
    source = Source()

    @cache.cached(ttl=1.0, refresh=RefreshAhead(0.4))
    def get(key: int) -> str:
        time.sleep(source.delay)
        return source.read(key)

    assert get(3) == "3:v1"
    source.version, source.delay = 2, 0.3
    time.sleep(0.5)
    barrier = threading.Barrier(32)
    results: list[str] = []

    def reader() -> None:
        barrier.wait()
        results.append(get(3))

    threads = [threading.Thread(target=reader) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == ["3:v1"] * 32
    assert cache.refresher.wait_sync(10)
    assert source.calls == 2
    assert get(3) == "3:v2"


async def test_failed_reload_keeps_the_old_value_and_is_counted(
        cache_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    cache = cache_factory()
    source = Source()

    @cache.cached(ttl=1.0, refresh=RefreshAhead(0.3))
    async def get(key: int) -> str:
        return source.read(key)

    assert await get(1) == "1:v1"
    source.down = True
    await asyncio.sleep(0.4)
    assert await get(1) == "1:v1"
    await _wait_refreshes(cache)
    assert await get(1) == "1:v1"  # kept
    loader = cache.stats()["loader"]
    assert loader["refreshes_failed"] == 1 and loader["refreshes_succeeded"] == 0
    assert any("background reload" in r.getMessage() for r in caplog.records)
    await asyncio.sleep(0.15)  # after the back-off, the next read tries again
    assert await get(1) == "1:v1"
    await _wait_refreshes(cache)
    assert cache.stats()["loader"]["refreshes_failed"] == 2
    samples = _samples(cache)
    assert samples["tiercache_refreshes_total"][(cache.name, "failed")] == 2


@pytest.mark.parametrize("l2", [True, False], ids=["l1+l2", "l1-only"])
async def test_stale_while_revalidate_serves_expired_value_while_one_reload_runs(
        cache_factory: Factory, l2: bool) -> None:
    cache = cache_factory(l2=l2)
    source = Source()

    @cache.cached(ttl=0.3, stale_while_revalidate=5)
    async def get(key: int) -> str:
        await asyncio.sleep(source.delay)
        return source.read(key)

    assert await get(2) == "2:v1"
    source.version, source.delay = 2, 0.2
    await asyncio.sleep(0.45)  # expired, within the stale window
    assert await asyncio.gather(*(get(2) for _ in range(20))) == ["2:v1"] * 20
    await _wait_refreshes(cache)
    assert source.calls == 2 and await get(2) == "2:v2"
    assert cache.stats()["loader"]["stale_served"] >= 1


@pytest.mark.parametrize("l2", [True, False], ids=["l1+l2", "l1-only"])
async def test_stale_if_error_serves_old_value_while_the_source_is_down(
        cache_factory: Factory, l2: bool) -> None:
    cache = cache_factory(l2=l2)
    source = Source()

    @cache.cached(ttl=0.3, stale_if_error=5)
    async def get(key: int) -> str:
        return source.read(key)

    @cache.cached(ttl=0.3)
    async def plain(key: int) -> str:
        return source.read(key)

    assert await get(4) == "4:v1" and await plain(4) == "4:v1"
    source.down = True
    await asyncio.sleep(0.45)
    assert await get(4) == "4:v1"  # loader failed: the stale value is served
    with pytest.raises(ConnectionError):
        await plain(4)  # no stale_if_error: the caller sees the failure
    assert cache.stats()["loader"]["stale_served"] == 1
    source.down, source.version = False, 2
    await asyncio.sleep(0.15)  # after the short L1 back-off the loader is tried again
    assert await get(4) == "4:v2"


async def test_refresh_ahead_works_on_entries_another_process_wrote(
        cache_factory: Factory) -> None:
    """The envelope carries stored_at and ttl: a second cache (another process's view)
    sees the refresh point of an entry it never loaded."""
    writer, reader = cache_factory(), cache_factory()
    source = Source()

    def define(cache: TierCache) -> Any:
        @cache.cached(ttl=1.0, refresh=RefreshAhead(0.4), name="shared")
        async def get(key: int) -> str:
            await asyncio.sleep(source.delay)
            return source.read(key)
        return get

    get_w, get_r = define(writer), define(reader)
    assert await get_w(5) == "5:v1"
    source.version, source.delay = 2, 0.2
    await asyncio.sleep(0.5)
    assert await get_r(5) == "5:v1"  # from L2, past the refresh point: served at once
    await _wait_refreshes(reader)
    assert source.calls == 2 and await get_r(5) == "5:v2"
    assert reader.stats()["loader"]["refreshes_succeeded"] == 1


async def test_lock_true_makes_one_process_reload(cache_factory: Factory) -> None:
    a, b = cache_factory(), cache_factory()
    source = Source()

    def define(cache: TierCache) -> Any:
        @cache.cached(ttl=1.0, refresh=RefreshAhead(0.4, lock=True), name="locked")
        async def get(key: int) -> str:
            await asyncio.sleep(source.delay)
            return source.read(key)
        return get

    get_a, get_b = define(a), define(b)
    assert await get_a(9) == "9:v1" and await get_b(9) == "9:v1"
    source.version, source.delay = 2, 0.3
    await asyncio.sleep(0.5)
    assert await asyncio.gather(get_a(9), get_b(9)) == ["9:v1", "9:v1"]
    await _wait_refreshes(a)
    await _wait_refreshes(b)
    assert source.calls == 2  # one reload for both processes
    skipped = a.stats()["loader"]["refreshes_skipped"] + b.stats()["loader"]["refreshes_skipped"]
    assert skipped == 1
    # the process that skipped took the other's value from L2 once it landed
    assert await get_a(9) == "9:v2" and await get_b(9) == "9:v2"
    await asyncio.sleep(0.15)  # past any back-off: still no further load
    assert await get_a(9) == "9:v2" and await get_b(9) == "9:v2"
    assert source.calls == 2


async def test_invalidation_during_a_reload_wins(cache_factory: Factory) -> None:
    cache = cache_factory()
    source = Source()

    @cache.cached(ttl=1.0, refresh=RefreshAhead(0.4))
    async def get(key: int) -> str:
        version = source.version
        await asyncio.sleep(source.delay)
        return f"{key}:v{version}"  # what the source held when the read began

    assert await get(6) == "6:v1"
    source.version, source.delay = 2, 0.3
    await asyncio.sleep(0.5)
    assert await get(6) == "6:v1"  # reload of v2 starts, slow
    await asyncio.sleep(0.05)
    source.version, source.delay = 3, 0.0
    await get.invalidate(6)  # the row changed again while the reload ran
    await _wait_refreshes(cache)
    assert await get(6) == "6:v3"  # the reload's v2 never landed in L1 or L2
    other = cache_factory()

    @other.cached(ttl=1.0, refresh=RefreshAhead(0.4), name=get.spec.name)
    async def get2(key: int) -> str:
        return "from-loader"

    assert await get2(6) in ("6:v3", "from-loader")


def test_xfetch_early_recompute_probability_follows_the_formula() -> None:
    """P(recompute at `remaining` seconds before expiry) = exp(-remaining / (delta*beta))."""
    rng = random.Random(1234)
    ttl, delta = 10.0, 0.5
    for beta in (0.5, 1.0, 2.0):
        policy = XFetch(beta=beta)
        for remaining in (0.1, 0.5, 1.0, 2.0):
            n = 20_000
            hits = sum(policy.due(ttl - remaining, ttl, delta, 1.0 - rng.random())
                       for _ in range(n))
            expected = math.exp(-remaining / (delta * beta))
            assert abs(hits / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-3
            # the per-fill draw that sets the L1 lifetime has the same distribution
            early = sum(policy.refresh_in(ttl, delta, 1.0 - rng.random()) <= ttl - remaining
                        for _ in range(n))
            assert abs(early / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-3
    assert not XFetch().due(ttl - 0.001, ttl, 0.0, 0.5)  # never loaded: never early


async def test_xfetch_on_cached_reloads_early_in_the_background(cache_factory: Factory) -> None:
    cache = cache_factory()
    source = Source()
    random.seed(20261201)  # the policy's draws (tiercache.policies.read.draw)

    @cache.cached(ttl=0.6, xfetch=XFetch(beta=500.0))
    async def get(key: int) -> str:
        await asyncio.sleep(0.02)  # delta = 20 ms, beta 500: early by ~10 s on average
        return source.read(key)

    assert await get(8) == "8:v1"
    source.version = 2
    deadline = time.monotonic() + 0.5  # before the TTL
    while time.monotonic() < deadline and cache.stats()["loader"]["refreshes_started"] == 0:
        assert await get(8) in ("8:v1", "8:v2")
        await asyncio.sleep(0.01)
    assert cache.stats()["loader"]["refreshes_started"] >= 1
    await _wait_refreshes(cache)
    assert await get(8) == "8:v2"


def test_policy_arguments_are_validated(cache_factory: Factory) -> None:
    cache = cache_factory(l2=False)
    with pytest.raises(ValueError, match="ratio"):
        RefreshAhead(1.5)
    with pytest.raises(ValueError, match="beta"):
        XFetch(beta=0)
    with pytest.raises(TypeError, match="not both"):
        cache.cached(ttl=1, refresh=RefreshAhead(), xfetch=XFetch())
    with pytest.raises(TypeError, match="read policy"):
        cache.cached(ttl=1, refresh=0.8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a TTL"):
        @cache.cached(refresh=RefreshAhead())
        def no_ttl(x: int) -> int:
            return x
    with pytest.raises(ValueError, match="stale_while_revalidate"):
        cache.cached(ttl=1, stale_while_revalidate=-1)


async def test_policy_for_chooses_the_policy_by_name(cache_factory: Factory) -> None:
    cache = cache_factory()
    policy = RefreshAhead(0.5)
    cache.policy_for(f"{__name__}.*", policy)

    @cache.cached(ttl=1)
    async def covered(x: int) -> int:
        return x

    @cache.cached(ttl=1, name="elsewhere")
    async def other(x: int) -> int:
        return x

    @cache.cached(ttl=1, refresh=RefreshAhead(0.9))
    async def explicit(x: int) -> int:
        return x

    assert covered.spec.read_rules is not None and covered.spec.read_rules.policy is policy
    assert other.spec.read_rules is None
    assert explicit.spec.read_rules is not None
    assert explicit.spec.read_rules.policy == RefreshAhead(0.9)
    assert await covered(1) == 1
    with pytest.raises(ValueError):
        cache.policy_for("", policy)


def _l2_reads(cache: TierCache) -> int:
    l2 = cache.stats()["l2"]
    return 0 if l2 is None else int(l2["hits"] + l2["misses"])


def _samples(cache: TierCache) -> dict[str, Any]:
    metrics.register(cache)
    try:
        return metrics.samples()
    finally:
        metrics.unregister(cache)


@pytest.mark.parametrize("l2", [True, False], ids=["l1+l2", "l1-only"])
async def test_invalidation_stays_linearizable_with_refresh_and_stale_windows(
        cache_factory: Factory, l2: bool) -> None:
    """Readers keep entries refreshing and going stale (ttl 0.15 s, reload at 50%, stale
    windows on) while a writer bumps rows and invalidates: once ``invalidate`` returns, no
    read in this process returns a version older than the one written before it."""
    cache = cache_factory(l2=l2)
    rows = dict.fromkeys(range(8), 0)
    rng = random.Random(99)

    @cache.cached(ttl=0.15, refresh=RefreshAhead(0.5), stale_while_revalidate=5,
                  stale_if_error=5)
    async def get(key: int) -> int:
        seen = rows[key]
        await asyncio.sleep(rng.random() * 0.01)
        return seen

    stop = False
    served = 0

    async def reader() -> None:
        nonlocal served
        while not stop:
            await get(rng.randrange(8))
            served += 1
            await asyncio.sleep(0)

    readers = [asyncio.create_task(reader()) for _ in range(10)]
    try:
        for _ in range(300):
            key = rng.randrange(8)
            rows[key] += 1
            written = rows[key]
            await get.invalidate(key)
            got = await get(key)
            assert got >= written, f"stale read after invalidate: {got} < {written}"
            await asyncio.sleep(rng.random() * 0.003)
    finally:
        stop = True
        await asyncio.gather(*readers)
    await _wait_refreshes(cache)
    assert served > 300
    loader = cache.stats()["loader"]
    assert loader["refreshes_started"] > 0  # the policy really was exercised
