"""tiercache.metrics: Prometheus scrapes (and OpenTelemetry observations) that move with real
operations on a real Redis Cluster, a real TierCache and a real ShardedPool."""

from __future__ import annotations

import gc
import math
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.metrics import NoOpMeter, NoOpMeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.cluster import RedisCluster

from tiercache import metrics
from tiercache._localstack.procs import free_port
from tiercache.tiers.memory import MemoryTier
from tiercache.tiers.redis import RedisTier

Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    reg = CollectorRegistry()
    metrics.prometheus_collector(reg)
    before = {id(s) for _, s in metrics.registered()}
    yield reg
    for _, source in metrics.registered():
        if id(source) not in before:
            metrics.unregister(source)


def scrape(reg: CollectorRegistry) -> Scrape:
    text = generate_latest(reg).decode()
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(data: Scrape, name: str, **labels: str) -> float:
    return data.get((name, frozenset(labels.items())), math.nan)


def test_l2_tier_metrics_move_with_real_operations(
    registry: CollectorRegistry, tiercache_stack: Any, redis_cluster_client: RedisCluster
) -> None:
    tier = RedisTier(tiercache_stack.redis_url)
    metrics.register(tier, name="shop")
    tier.set_sync("m:1", {"a": 1})
    assert tier.get_sync("m:1") == {"a": 1}
    tier.get_sync("m:absent")
    redis_cluster_client.set("m:bad", b"\xc1TC\x01\xff")
    tier.get_sync("m:bad")
    first = scrape(registry)
    l2 = {"cache": "shop", "tier": "l2"}
    assert val(first, "tiercache_requests_total", **l2, result="hit") == 1
    assert val(first, "tiercache_requests_total", **l2, result="miss") == 2  # absent + bad
    assert val(first, "tiercache_sets_total", **l2) == 1
    assert val(first, "tiercache_errors_total", **l2, operation="decode") == 1
    assert val(first, "tiercache_breaker_state", cache="shop") == 0
    get_latency = {"cache": "shop", "operation": "get"}
    assert val(first, "tiercache_l2_latency_seconds_count", **get_latency) == 3
    assert val(first, "tiercache_l2_latency_seconds_bucket", **get_latency, le="+Inf") == 3
    assert 0 < val(first, "tiercache_l2_latency_seconds_sum", **get_latency) < 10

    for _ in range(5):
        tier.get_sync("m:1")
    tier.get_many_sync(["m:1", "m:absent"])
    second = scrape(registry)
    assert val(second, "tiercache_requests_total", **l2, result="hit") == 7
    assert val(second, "tiercache_requests_total", **l2, result="miss") == 3
    assert val(second, "tiercache_l2_latency_seconds_count", cache="shop",
               operation="get_many") == 1
    tier.close_sync()


def test_cache_metrics_through_a_real_tiercache(
    registry: CollectorRegistry, tiercache_stack: Any, redis_cluster_client: RedisCluster
) -> None:
    from tiercache.cache import TierCache

    cache = TierCache(l1=MemoryTier(maxsize=2), l2=RedisTier(tiercache_stack.redis_url),
                      namespace="mx", name="metrics-cache", bus=False)
    metrics.register(cache)
    calls: list[int] = []

    @cache.cached(ttl=60)
    def square(x: int) -> int:
        calls.append(x)
        return x * x

    assert [square(1), square(1), square(2), square(3), square(1)] == [1, 1, 4, 9, 1]
    data = scrape(registry)
    c = "metrics-cache"
    assert val(data, "tiercache_requests_total", cache=c, tier="l1", result="hit") >= 1
    assert val(data, "tiercache_requests_total", cache=c, tier="l1", result="miss") >= 3
    assert val(data, "tiercache_evictions_total", cache=c, tier="l1", reason="size") >= 1
    assert val(data, "tiercache_entries", cache=c, tier="l1") == 2
    assert val(data, "tiercache_requests_total", cache=c, tier="l2", result="miss") >= 3
    assert val(data, "tiercache_requests_total", cache=c, tier="l2", result="hit") >= 1
    assert val(data, "tiercache_loader_calls_total", cache=c) == len(calls) == 3
    assert val(data, "tiercache_loader_duration_seconds_count", cache=c) == 3
    assert val(data, "tiercache_loader_failures_total", cache=c) == 0
    assert val(data, "tiercache_singleflight_waits_total", cache=c) == 0
    cache.close()


async def test_pool_metrics_from_a_real_sharded_pool(
    registry: CollectorRegistry, tiercache_stack: Any
) -> None:
    from tiercache.sharding.pool import create_sharded_pool

    pool = await create_sharded_pool(tiercache_stack.pg_dsns, min_size=1, max_size=2)
    try:
        metrics.register(pool, name="orders")
        for key in range(12):
            assert await pool.fetchval("SELECT $1::int", key, shard_key=key) == key
        data = scrape(registry)
        queries = sum(v for (name, labels), v in data.items()
                      if name == "tiercache_pool_queries_total" and ("pool", "orders") in labels)
        assert queries == 12
        shard = next(iter(tiercache_stack.pg_dsns))
        labels = {"pool": "orders", "shard": shard, "role": "primary"}
        assert val(data, "tiercache_pool_size", **labels) >= 1
        assert val(data, "tiercache_pool_healthy", **labels) == 1
        assert val(data, "tiercache_pool_weight", pool="orders", shard=shard) > 0
        assert not math.isnan(val(data, "tiercache_pool_query_duration_seconds_count", **labels))
    finally:
        await pool.close()


class Partial:
    """A source exposing only part of the pool shape (the collector must take what's there)."""

    metrics_kind = "pool"

    def stats(self) -> dict[str, Any]:
        return {"name": "partial", "shards": {"s1": {"queries": 3, "healthy": False}}}


class Broken:
    name = "broken"
    metrics_kind = "tier"

    def stats(self) -> dict[str, Any]:
        raise RuntimeError("stats exploded")


def test_collector_is_tolerant_of_partial_and_failing_sources(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    partial, broken = Partial(), Broken()
    metrics.register(partial)
    metrics.register(broken)
    data = scrape(registry)
    labels = {"pool": "partial", "shard": "s1", "role": "primary"}
    assert val(data, "tiercache_pool_queries_total", **labels) == 3
    assert val(data, "tiercache_pool_healthy", **labels) == 0
    assert not any(name.startswith("tiercache_pool_size") for name, _ in data)
    assert "stats exploded" in caplog.text


def test_sources_are_weak_and_same_names_sum(registry: CollectorRegistry) -> None:
    a, b = MemoryTier(), MemoryTier()
    a.set_sync(("k",), 1)
    b.set_sync(("k",), 1)
    a.get_sync(("k",))
    b.get_sync(("k",))
    metrics.register(a, name="twin")
    metrics.register(b, name="twin")
    data = scrape(registry)
    assert val(data, "tiercache_requests_total", cache="twin", tier="l1", result="hit") == 2
    assert val(data, "tiercache_entries", cache="twin", tier="l1") == 2
    del a, b
    gc.collect()
    assert not any(name == "twin" for name, _ in metrics.registered())
    with pytest.raises(TypeError):
        metrics.register(object())


def test_serve_exposes_metrics_over_http(tiercache_stack: Any) -> None:
    reg = CollectorRegistry()
    tier = MemoryTier()
    tier.get_sync(("nothing",))
    metrics.register(tier, name="served")
    port = free_port()
    server, thread = metrics.serve(port, registry=reg)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert 'tiercache_requests_total{cache="served",result="miss",tier="l1"} 1.0' in body
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        metrics.unregister(tier)


class RecordingMeter(NoOpMeter):
    """The OpenTelemetry API's no-op meter, keeping the callbacks so a test can collect."""

    def __init__(self) -> None:
        super().__init__("tiercache")
        self.callbacks: dict[str, list[Any]] = {}

    def create_observable_counter(self, name: str, callbacks: Any = None, unit: str = "",
                                  description: str = "") -> Any:
        self.callbacks[name] = list(callbacks or [])
        return super().create_observable_counter(name, callbacks, unit, description)

    def create_observable_gauge(self, name: str, callbacks: Any = None, unit: str = "",
                                description: str = "") -> Any:
        self.callbacks[name] = list(callbacks or [])
        return super().create_observable_gauge(name, callbacks, unit, description)

    def observe(self, name: str) -> dict[frozenset[tuple[str, Any]], float]:
        out = {}
        for cb in self.callbacks[name]:
            for obs in cb(None):
                out[frozenset(obs.attributes.items())] = obs.value
        return out


class RecordingProvider(NoOpMeterProvider):
    def __init__(self) -> None:
        self.meter = RecordingMeter()

    def get_meter(self, name: str, version: str | None = None, schema_url: str | None = None,
                  attributes: Any = None) -> Any:
        return self.meter


def test_opentelemetry_observable_instruments(tiercache_stack: Any,
                                              redis_cluster_client: RedisCluster) -> None:
    provider = RecordingProvider()
    instruments = metrics.instrument_otel(provider)
    assert len(instruments) >= len(metrics.FAMILIES)
    tier = RedisTier(tiercache_stack.redis_url)
    metrics.register(tier, name="otel")
    try:
        tier.set_sync("o:1", 1)
        tier.get_sync("o:1")
        tier.get_sync("o:2")
        meter = provider.meter
        requests = meter.observe("tiercache.requests")
        key = frozenset({"cache": "otel", "tier": "l2", "result": "hit"}.items())
        assert requests[key] == 1
        counts = meter.observe("tiercache.l2.latency.count")
        assert counts[frozenset({"cache": "otel", "operation": "get"}.items())] == 2
        assert meter.observe("tiercache.breaker.state")[frozenset({"cache": "otel"}.items())] == 0
    finally:
        metrics.unregister(tier)
        tier.close_sync()


# ------------------------------------------------------------------ the primitives underneath


def test_histogram_buckets_are_le_inclusive_and_cumulative() -> None:
    from tiercache.metrics.counters import Histogram

    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    snap = h.snapshot()
    assert snap["buckets"] == [(0.1, 2), (1.0, 4), (math.inf, 5)]
    assert snap["count"] == h.count == 5
    assert snap["sum"] == pytest.approx(8.65)
    h.reset()
    assert h.snapshot()["count"] == 0
    with pytest.raises(ValueError):
        Histogram((1.0, 0.5))


def test_merge_snapshots_and_counter_map() -> None:
    from tiercache.metrics.counters import CounterMap, Histogram, hit_ratio, merge_snapshots

    a, b = Histogram((1.0,)), Histogram((1.0,))
    a.observe(0.5)
    b.observe(2.0)
    merged = merge_snapshots([a.snapshot(), b.snapshot()])
    assert merged["buckets"] == [(1.0, 1), (math.inf, 2)] and merged["count"] == 2
    with pytest.raises(ValueError):
        merge_snapshots([a.snapshot(), Histogram((2.0,)).snapshot()])
    assert merge_snapshots([]) == {"count": 0, "sum": 0.0, "buckets": []}
    errors = CounterMap()
    errors.inc("get")
    errors.inc("get", 2)
    errors.inc("set")
    assert errors.snapshot() == {"get": 3, "set": 1} and errors.total == 4
    assert hit_ratio(3, 1) == 0.75 and hit_ratio(0, 0) == 0.0


def test_breaker_state_of_same_named_sources_is_the_worst_not_the_sum() -> None:
    """Counters of same-named sources add up; a state gauge must stay a state (0/1/2)."""
    from tiercache.metrics.samples import collect_samples

    def l2(state: str) -> dict[str, Any]:
        return {"l2": {"hits": 1, "misses": 0, "breaker": state, "breaker_opened": 1}}

    out = collect_samples([("cache", "shop", "l2", l2("open")),
                           ("cache", "shop", "l2", l2("open")),
                           ("cache", "shop", "l2", l2("closed"))])
    assert out["tiercache_breaker_state"] == {("shop",): 2}
    assert out["tiercache_breaker_opens_total"] == {("shop",): 3}
    assert out["tiercache_requests_total"][("shop", "l2", "hit")] == 3


def test_source_of_unknown_kind_is_refused_at_register() -> None:
    """No shape-sniffing: a duck-typed source must say what it is, or register fails early."""

    class Anonymous:
        def stats(self) -> dict[str, Any]:
            return {"hits": 1}

    with pytest.raises(TypeError, match="metrics_kind"):
        metrics.register(Anonymous())
    assert not any(isinstance(s, Anonymous) for _, s in metrics.registered())
