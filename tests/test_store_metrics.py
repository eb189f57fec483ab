"""Store figures reach the tiercache_* families (Prometheus) and the cache's health."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests._store_helpers import new_cache
from tiercache import Retry, WriteBehind, metrics


def _scrape(reg: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def test_store_metrics_and_health_follow_real_writes(tiercache_stack: Any) -> None:
    cache = new_cache(tiercache_stack.redis_url, name="shop")
    fail = {"on": False}
    written: dict[int, int] = {}

    async def writer(batch: dict[int, int]) -> None:
        if fail["on"]:
            raise ConnectionError("down")
        written.update(batch)

    store = cache.store("carts", loader=lambda key: written.get(key), writer=writer,
                        policy=WriteBehind(max_delay=0.0, batch_size=50, max_queue=1000,
                                           retry=Retry(attempts=2, backoff=0.0)))
    reg = CollectorRegistry()
    metrics.prometheus_collector(reg)
    metrics.register(store)
    try:
        for start in range(0, 200, 20):  # 20 putters at a time, 40 keys: some coalesce
            await asyncio.gather(*(store.put(i % 40, i) for i in range(start, start + 20)))
        assert await store.flush(timeout=30)
        fail["on"] = True
        await store.put(999, 1)
        assert await store.flush(timeout=30)
        data = _scrape(reg)

        def event(name: str) -> float:
            return data[("tiercache_store_events_total",
                         frozenset({"cache": "shop", "store": "carts", "event": name}.items()))]

        assert event("queued") == 201 and event("flushed") >= len(written) == 40
        assert event("coalesced") + event("flushed") + event("dead_lettered") == 201
        assert event("retries") == 1 and event("failures") == 2 and event("dead_lettered") == 1
        labels = frozenset({"cache": "shop", "store": "carts"}.items())
        assert data[("tiercache_store_dead_letters", labels)] == 1
        assert data[("tiercache_store_queue_depth", labels)] == 0
        assert data[("tiercache_store_batches_total", labels)] >= 2
        report = await cache.health()
        assert report["status"] == "degraded"
        assert "store carts: 1 dead-lettered batches" in report["reasons"]
    finally:
        metrics.unregister(store)
        await store.aclose()
        await cache.aclose()
