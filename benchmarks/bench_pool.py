"""pytest-benchmark micro suite for ShardedPool (``pytest benchmarks/bench_pool.py``).

Groups to compare side by side:

* ``pool-fetchval``: one ``fetchval`` round trip through the shard's own asyncpg pool, a
  separate asyncpg pool on the same server, and ShardedPool routed by ``shard_key=`` and by
  ``shard=``.  The issue's bar: ShardedPool <= 1.05x asyncpg.
* ``pool-fanout``: ``fetch_all`` over 3 shards vs each single shard.  Bar: fan-out <= 1.3x the
  slowest single shard.

Each benchmark round is a batch of sequential awaits run on a private event loop, so the
figures are per batch; divide by ``BATCH`` for per call.  Timings are reported, never asserted.
For the interleaved ratio figures see ``tiercache bench --suite pool``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from tiercache.sharding.pool import ShardedPool, create_sharded_pool

BATCH = 50
FANOUT_QUERY = "SELECT 1 FROM pg_sleep(0.002)"


class Harness:
    """A private event loop plus the pools under test, built once per module."""

    def __init__(self, dsns: dict[str, str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.dsns = dsns
        self.sharded, self.separate = self.loop.run_until_complete(self._open())
        self.shard = self.sharded.shards[0]
        self.key = next(k for k in range(100_000) if self.sharded.shard_for(k) == self.shard)
        self.own = self.sharded.shard_pool(self.shard)

    async def _open(self) -> tuple[ShardedPool, Any]:
        # Pools bind to the loop that is running when they are created.
        sharded = await create_sharded_pool(self.dsns, min_size=1, max_size=1)
        separate = await asyncpg.create_pool(
            self.dsns[sharded.shards[0]], min_size=1, max_size=1
        )
        return sharded, separate

    def batch(self, fn: Callable[[], Awaitable[Any]], n: int = BATCH) -> Callable[[], None]:
        async def many() -> None:
            for _ in range(n):
                await fn()

        def run() -> None:
            self.loop.run_until_complete(many())

        return run

    def close(self) -> None:
        self.loop.run_until_complete(self.separate.close())
        self.loop.run_until_complete(self.sharded.close())
        self.loop.close()


@pytest.fixture(scope="module")
def harness(tiercache_stack: Any) -> Iterator[Harness]:
    h = Harness(dict(tiercache_stack.pg_dsns))
    yield h
    h.close()


QUERY = "SELECT $1::int"


@pytest.mark.benchmark(group="pool-fetchval")
@pytest.mark.parametrize("variant", ["asyncpg_own", "asyncpg_separate", "sharded_key",
                                     "sharded_name"])
def test_fetchval(benchmark: Any, harness: Harness, variant: str) -> None:
    h = harness
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "asyncpg_own": lambda: h.own.fetchval(QUERY, 1),
        "asyncpg_separate": lambda: h.separate.fetchval(QUERY, 1),
        "sharded_key": lambda: h.sharded.fetchval(QUERY, 1, shard_key=h.key),
        "sharded_name": lambda: h.sharded.fetchval(QUERY, 1, shard=h.shard),
    }
    run = h.batch(calls[variant])
    run()  # warm up (statement cache)
    benchmark.extra_info["calls_per_round"] = BATCH
    benchmark.pedantic(run, rounds=30, warmup_rounds=2)


@pytest.mark.benchmark(group="pool-fanout")
@pytest.mark.parametrize("target", ["s1", "s2", "s3", "fanout"])
def test_fanout_vs_single(benchmark: Any, harness: Harness, target: str) -> None:
    h = harness
    if target == "fanout":
        def call() -> Awaitable[Any]:
            return h.sharded.fetch_all(FANOUT_QUERY)
    else:
        if target not in h.sharded.shards:
            pytest.skip(f"no shard {target}")

        def call() -> Awaitable[Any]:
            return h.sharded.fetch(FANOUT_QUERY, shard=target)
    run = h.batch(call, 10)
    run()
    benchmark.extra_info["calls_per_round"] = 10
    benchmark.pedantic(run, rounds=20, warmup_rounds=1)


@pytest.mark.benchmark(group="pool-routing")
def test_shard_for(benchmark: Any, harness: Harness) -> None:
    """Ring lookup alone: the part of the overhead that depends on the HashRing build."""
    keys = list(range(1000))
    shard_for = harness.sharded.shard_for

    def run() -> None:
        for k in keys:
            shard_for(k)

    benchmark(run)
