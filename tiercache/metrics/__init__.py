"""Export tiercache counters to Prometheus and OpenTelemetry, aggregated on read.

Why aggregated on read: the hot paths only bump plain integers (C counters in L1, ints and
:class:`~tiercache.metrics.counters.Histogram` in L2 and the loader). Nothing is pushed anywhere;
a scrape calls every registered source's ``stats()`` and turns the dicts into metrics.

Usage::

    from tiercache import metrics
    metrics.register(cache)            # a TierCache, a ShardedPool, a bare tier
    metrics.serve(9100)                # /metrics on 127.0.0.1:9100 (prometheus_client)
    metrics.instrument_otel()          # or: OpenTelemetry observable instruments

A source is anything with ``stats() -> dict``; its name (label ``cache`` or ``pool``) is the
``name=`` given to :func:`register`, else ``source.metrics_name``, else ``stats()["name"]``,
else ``source.name``. Sources are held weakly where possible. Several sources with one name
are summed. Which metrics a source yields depends on its *kind*, decided from its type at
:func:`register` (a TierCache, a ShardedPool, a Store, or a bare
MemoryTier/RedisTier/QueryCache; any other object declares ``metrics_kind = "cache" |
"pool" | "tier" | "store"``); each kind's samples are one function in
:mod:`tiercache.metrics.samples`. Absent keys are simply not exported.

=========================================  =========  ===============================
name                                       type       labels
=========================================  =========  ===============================
tiercache_requests_total                   counter    cache, tier, result (hit|miss)
tiercache_sets_total                       counter    cache, tier
tiercache_deletes_total                    counter    cache, tier
tiercache_evictions_total                  counter    cache, tier, reason (size|expired)
tiercache_errors_total                     counter    cache, tier, operation
tiercache_entries                          gauge      cache, tier
tiercache_loader_calls_total               counter    cache
tiercache_loader_failures_total            counter    cache
tiercache_loader_duration_seconds          histogram  cache
tiercache_singleflight_waits_total         counter    cache
tiercache_lock_waits_total                 counter    cache
tiercache_breaker_state                    gauge      cache (0 closed, 1 half-open, 2 open)
tiercache_breaker_opens_total              counter    cache
tiercache_l2_latency_seconds               histogram  cache, operation
tiercache_bus_events_total                 counter    cache, event
tiercache_bus_connected                    gauge      cache
tiercache_pool_queries_total               counter    pool, shard, role
tiercache_pool_errors_total                counter    pool, shard, role, error
tiercache_pool_slow_queries_total          counter    pool, shard, role
tiercache_pool_query_duration_seconds      histogram  pool, shard, role
tiercache_pool_acquire_wait_seconds        histogram  pool, shard, role
tiercache_pool_{size,idle,min_size,        gauge      pool, shard, role
max_size,waiters,healthy}
tiercache_pool_weight                      gauge      pool, shard
tiercache_store_events_total               counter    cache, store, event (queued, ...)
tiercache_store_batches_total              counter    cache, store
tiercache_store_{queue_depth,              gauge      cache, store
journal_pending,dead_letters}
=========================================  =========  ===============================

L2 error operations include ``decode`` (unreadable payload), ``breaker_open`` (call
skipped) and ``encode`` (a loaded value L2 could not store; counted by the core).
OpenTelemetry has no asynchronous histogram: histograms are exported there as
``<name>.sum`` / ``<name>.count`` observable counters.
"""

from __future__ import annotations

from tiercache.metrics.otel import instrument_otel
from tiercache.metrics.prometheus import TiercacheCollector, prometheus_collector, serve
from tiercache.metrics.registry import register, registered, samples, unregister
from tiercache.metrics.samples import FAMILIES

__all__ = [
    "FAMILIES",
    "TiercacheCollector",
    "instrument_otel",
    "prometheus_collector",
    "register",
    "registered",
    "samples",
    "serve",
    "unregister",
]
