"""L2 micro suite: ``pytest benchmarks/bench_l2.py --benchmark-only``.

RedisTier against raw redis-py on the session's Redis Cluster (``tiercache_stack``), the
same keys holding the same bytes (the tier's msgpack envelopes); the raw clients are redis-py's
``from_url`` defaults. The tier adds a breaker check, timing, counters and the envelope
decode, and runs each async operation under one ``asyncio.timeout`` budget:

* ``l2-get-async`` / ``l2-get-sync``: ``RedisTier.get`` vs ``RedisCluster.get``
  (issue 3's bar: <= 1.2x);
* ``l2-get-many-async`` / ``l2-get-many-sync``: ``RedisTier.get_many`` of 100 keys spread
  over every master vs ``RedisCluster.mget_nonatomic`` (bar: <= 1.3x).

Async rounds are a batch of sequential awaits on a private event loop (figures are per batch;
divide by the batch size for per call). Timings are reported, never asserted: for the
call-by-call interleaved ratios see ``tiercache bench --suite l2``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.cluster import RedisCluster

from tiercache.bench.suites._cache_l2 import PREFIX, value  # the l2 suite's keys and values
from tiercache.codec import unpack_entry
from tiercache.tiers.redis import RedisTier

BATCH = 50
BATCH_MANY = 5


class Harness:
    """Clients under test, built once per module on a private event loop."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.tier = RedisTier(url, ttl=600)
        self.raw_sync = RedisCluster.from_url(url)
        self.key = PREFIX + "get"
        self.many = [f"{PREFIX}many:{i}" for i in range(100)]
        self.raw_async: AsyncCluster = self.loop.run_until_complete(self._setup(url))

    async def _setup(self, url: str) -> AsyncCluster:
        raw = AsyncCluster.from_url(url)  # created on the loop it will run on
        await self.tier.set(self.key, value(7))
        await self.tier.set_many({k: value(i) for i, k in enumerate(self.many)})
        return raw

    def batch(self, fn: Callable[[], Awaitable[Any]], n: int) -> Callable[[], None]:
        async def many() -> None:
            for _ in range(n):
                await fn()

        return lambda: self.loop.run_until_complete(many())

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.tier.delete_pattern(PREFIX + "*"))
        self.run(self.tier.close())
        self.run(self.raw_async.aclose())
        self.raw_sync.close()
        self.loop.close()


@pytest.fixture(scope="module")
def h(tiercache_stack: Any) -> Iterator[Harness]:
    harness = Harness(tiercache_stack.redis_url)
    # verify before timing: both sides read the same, correct data
    assert harness.run(harness.tier.get(harness.key)) == value(7)
    assert unpack_entry(harness.run(harness.raw_async.get(harness.key))).value == value(7)
    assert len(harness.run(harness.tier.get_many(harness.many))) == 100
    assert None not in harness.run(harness.raw_async.mget_nonatomic(harness.many))
    assert harness.tier.get_sync(harness.key) == value(7)
    yield harness
    assert harness.tier.stats()["errors"] == 0
    harness.close()


@pytest.mark.parametrize("side", ["raw", "tier"])
def test_l2_get_async(benchmark: Any, h: Harness, side: str) -> None:
    benchmark.group = "l2-get-async"
    benchmark.extra_info["per_round"] = f"{BATCH} awaits"
    fn = (lambda: h.raw_async.get(h.key)) if side == "raw" else (lambda: h.tier.get(h.key))
    benchmark(h.batch(fn, BATCH))


@pytest.mark.parametrize("side", ["raw", "tier"])
def test_l2_get_many_async(benchmark: Any, h: Harness, side: str) -> None:
    benchmark.group = "l2-get-many-async"
    benchmark.extra_info["per_round"] = f"{BATCH_MANY} x get_many(100)"
    fn = ((lambda: h.raw_async.mget_nonatomic(h.many)) if side == "raw"
          else (lambda: h.tier.get_many(h.many)))
    benchmark(h.batch(fn, BATCH_MANY))


@pytest.mark.parametrize("side", ["raw", "tier"])
def test_l2_get_sync(benchmark: Any, h: Harness, side: str) -> None:
    benchmark.group = "l2-get-sync"
    fn = (lambda: h.raw_sync.get(h.key)) if side == "raw" else (lambda: h.tier.get_sync(h.key))
    assert fn() is not None
    benchmark(fn)


@pytest.mark.parametrize("side", ["raw", "tier"])
def test_l2_get_many_sync(benchmark: Any, h: Harness, side: str) -> None:
    benchmark.group = "l2-get-many-sync"
    fn = ((lambda: h.raw_sync.mget_nonatomic(h.many)) if side == "raw"
          else (lambda: h.tier.get_many_sync(h.many)))
    assert len(fn()) == 100
    benchmark(fn)
