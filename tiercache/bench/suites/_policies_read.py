"""The read-policy rows of ``tiercache bench --suite policies``: a hot key whose loader takes
50 ms, read with and without refresh-ahead, next to a key that never expires (the L1-hit
level), all in one run on the same harness.

16 readers each read the key, then think 5 ms; the TTL is short (0.3 s) so that, without
refresh-ahead, the reads that wait for the loader at each expiry are more than 1% of all
reads (one per reader per TTL) and p99 shows them. With refresh-ahead the read at the refresh
point is served from this process's own copy and the reload runs in the background. The
judge is the ratio to a never-expiring key read the same way (the L1-hit level).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

from tiercache.bench.base import BenchContext, Row, SuiteError
from tiercache.cache import TierCache
from tiercache.policies import RefreshAhead
from tiercache.tiers.memory import MemoryTier
from tiercache.tiers.redis import RedisTier

__all__ = ["refresh_rows"]

LOADER_SECONDS = 0.05
TTL = 0.3
READERS = 16
THINK = 0.005  # seconds a reader waits between reads


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _drive(get: Any, key: int, expected: str, seconds: float) -> list[float]:
    """READERS readers for ``seconds``, each: read, think THINK -> read latencies in ns."""
    samples: list[float] = []
    clock = time.perf_counter
    end = clock() + seconds

    async def reader(offset: float) -> None:
        await asyncio.sleep(offset)
        while clock() < end:
            start = clock()
            value = await get(key)
            samples.append((clock() - start) * 1e9)
            if value != expected:
                raise SuiteError(f"policies: read returned {value!r}, expected {expected!r}")
            await asyncio.sleep(THINK)

    await asyncio.gather(*(reader(i * THINK / READERS) for i in range(READERS)))
    return samples


async def refresh_rows(ctx: BenchContext) -> list[Row]:
    """Hot key, 50 ms loader: p99 with refresh-ahead vs without vs a never-expiring key."""
    seconds = float(ctx.scale(6, 3))
    cache = TierCache(MemoryTier(maxsize=1000), RedisTier(ctx.require_redis(), ttl=60),
                      namespace=f"bench-policies-{uuid.uuid4().hex[:6]}")
    loads = {"plain": 0, "refresh-ahead": 0, "never expires": 0}

    def loader(label: str) -> Any:
        async def load(key: int) -> str:
            loads[label] += 1
            await asyncio.sleep(LOADER_SECONDS)
            return f"value-{key}"
        return load

    variants = {
        "never expires": cache.cached(ttl=3600, name="pol_hot_forever")(loader("never expires")),
        "plain": cache.cached(ttl=TTL, name="pol_hot_plain")(loader("plain")),
        "refresh-ahead": cache.cached(ttl=TTL, refresh=RefreshAhead(0.5),
                                      name="pol_hot_ahead")(loader("refresh-ahead")),
    }
    results: dict[str, list[float]] = {}
    try:
        with ctx.progress("policies: hot key, 50 ms loader", len(variants)) as bar:
            for label, get in variants.items():
                if await get(1) != "value-1":  # warm: the first load is not measured
                    raise SuiteError("policies: the first load returned the wrong value")
                results[label] = await _drive(get, 1, "value-1", seconds)
                bar.advance()
        await cache.refresher.wait(5.0)
    finally:
        await cache.aclose()
    p99 = {label: _quantile(s, 0.99) for label, s in results.items()}
    base, ahead, plain = p99["never expires"], p99["refresh-ahead"], p99["plain"]
    ctx.cdf("policies: hot key read latency (50 ms loader, 16 readers)",
            dict(results), unit="ns")
    ok = ahead <= 2.0 * base and plain >= LOADER_SECONDS * 1e9
    reads = {label: len(s) for label, s in results.items()}
    rounds = int(seconds / TTL)
    return [{
        "name": "refresh-ahead: hot key p99 vs L1-hit level (50 ms loader)",
        "summary": (f"p99 refresh-ahead {ahead / 1e3:.1f} us, never-expiring key "
                    f"{base / 1e3:.1f} us, without refresh {plain / 1e6:.1f} ms; loads "
                    f"{loads['refresh-ahead']} vs {loads['plain']} over ~{rounds} TTLs, "
                    f"{reads['refresh-ahead']} reads each"),
        "target": "refresh-ahead p99 <= 2x the never-expiring key's (L1 hit); without it "
                  "p99 >= the 50 ms loader",
        "ok": ok, "value": ahead / max(base, 1.0), "unit": "x", "better": "lower",
        "data": {"p99_ns": p99, "p50_ns": {k: statistics.median(s) for k, s in results.items()},
                 "p999_ns": {k: _quantile(s, 0.999) for k, s in results.items()},
                 "loads": loads, "reads": reads, "seconds": seconds, "ttl": TTL,
                 "readers": READERS, "think_s": THINK},
    }]
