"""Read policies on stores: ``cache.store(..., read=RefreshAhead(...))`` takes the same policy
path as ``@cached`` (served at once past the refresh point, one background reload), and a
put made while a reload runs is never overwritten by it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tiercache import WriteBehind, WriteThrough
from tiercache.cache import TierCache
from tiercache.policies import RefreshAhead

Factory = Callable[..., TierCache]


class Source:
    def __init__(self) -> None:
        self.rows: dict[int, str] = {1: "v1"}
        self.loads = 0
        self.delay = 0.0

    async def load(self, key: int) -> str | None:
        self.loads += 1
        seen = self.rows.get(key)
        await asyncio.sleep(self.delay)
        return seen

    async def save(self, batch: dict[int, str]) -> None:
        self.rows.update(batch)


@pytest.mark.parametrize("l2", [True, False], ids=["l1+l2", "l1-only"])
async def test_store_refresh_ahead_serves_at_once_and_reloads_once(
        cache_factory: Factory, l2: bool) -> None:
    cache = cache_factory(l2=l2)
    source = Source()
    users = cache.store("users", loader=source.load, writer=source.save,
                        policy=WriteThrough(), read=RefreshAhead(0.4), ttl=1.0)
    assert await users.get(1) == "v1"
    source.rows[1], source.delay = "v2", 0.3
    await asyncio.sleep(0.5)
    assert await asyncio.gather(*(users.get(1) for _ in range(50))) == ["v1"] * 50
    assert await cache.refresher.wait(10)
    assert source.loads == 2 and await users.get(1) == "v2"
    assert await users.get_many([1, 2]) == {1: "v2"}
    assert cache.stats()["loader"]["refreshes_succeeded"] == 1


async def test_a_put_during_a_store_reload_wins(cache_factory: Factory) -> None:
    cache = cache_factory()
    source = Source()
    users = cache.store("users", loader=source.load, writer=source.save,
                        policy=WriteBehind(max_delay=5, journal=False), read=RefreshAhead(0.4),
                        ttl=1.0)
    assert await users.get(1) == "v1"
    source.delay = 0.3
    await asyncio.sleep(0.5)
    assert await users.get(1) == "v1"  # a reload starts and reads the old row
    await asyncio.sleep(0.05)
    await users.put(1, "put")  # queued, not yet in the source
    assert await cache.refresher.wait(10)
    assert await users.get(1) == "put"  # the reload's old row never replaced it
    await users.flush()
    assert source.rows[1] == "put"
    assert await users.get(1) == "put"  # and not the reload's row once the queue is empty
    await users.aclose()


def test_store_read_policy_needs_a_ttl(cache_factory: Factory) -> None:
    cache = cache_factory(l2=False)
    with pytest.raises(ValueError, match="needs a TTL"):
        cache.store("nottl", loader=lambda k: k, read=RefreshAhead(0.5))


async def test_cache_stats_and_metrics_carry_its_stores(cache_factory: Factory) -> None:
    from tiercache import metrics

    cache = cache_factory()
    source = Source()
    users = cache.store("users", loader=source.load, writer=source.save,
                        policy=WriteBehind(max_delay=5, journal=False))
    await users.put(3, "x")
    await users.put(3, "y")  # coalesced
    stats = cache.stats()["stores"]["users"]
    assert stats["queued"] >= 1 and stats["coalesced"] == 1
    metrics.register(cache)
    try:
        samples = metrics.samples()
    finally:
        metrics.unregister(cache)
    assert any("users" in labels for labels in samples["tiercache_store_events_total"])
    await users.aclose()
