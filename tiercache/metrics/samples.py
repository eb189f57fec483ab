"""Turn ``stats()`` dicts into labelled samples, exporter-neutral (see :mod:`tiercache.metrics`).

Kept apart from the exporters so Prometheus and OpenTelemetry read the very same numbers,
and so each source kind (cache / pool / bare tier, decided at register time from its type)
declares its samples in one function: a key absent from a snapshot yields no sample, never an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal

from tiercache.metrics.counters import merge_snapshots

__all__ = ["FAMILIES", "Samples", "SourceKind", "cache_samples", "collect_samples", "pool_samples",
           "store_samples", "tier_samples"]

Kind = Literal["counter", "gauge", "histogram"]
#: metric name -> {label values -> number (counter/gauge) or histogram snapshot}
Samples = dict[str, dict[tuple[str, ...], Any]]

_CT: Final = ["cache", "tier"]
_CS: Final = ["cache", "store"]
_PSR: Final = ["pool", "shard", "role"]

FAMILIES: Final[dict[str, tuple[Kind, str, list[str]]]] = {
    "tiercache_requests_total": ("counter", "Cache lookups by tier and result", [*_CT, "result"]),
    "tiercache_sets_total": ("counter", "Values written into a tier", _CT),
    "tiercache_deletes_total": ("counter", "Entries deleted from a tier", _CT),
    "tiercache_evictions_total": ("counter", "Entries evicted by a tier", [*_CT, "reason"]),
    "tiercache_errors_total": ("counter", "Tier errors by operation", [*_CT, "operation"]),
    "tiercache_entries": ("gauge", "Entries currently held by a tier", _CT),
    "tiercache_loader_calls_total": ("counter", "Loader (wrapped function) calls", ["cache"]),
    "tiercache_loader_failures_total": ("counter", "Loader calls that raised", ["cache"]),
    "tiercache_loader_duration_seconds": ("histogram", "Loader call duration", ["cache"]),
    "tiercache_singleflight_waits_total": (
        "counter", "Callers that waited for another caller's load", ["cache"]),
    "tiercache_lock_waits_total": (
        "counter", "Waits for a cross-process load lease", ["cache"]),
    "tiercache_refreshes_total": (
        "counter", "Background reloads by result (started, succeeded, failed, skipped)",
        ["cache", "result"]),
    "tiercache_stale_served_total": (
        "counter", "Values served past their TTL (stale-while-revalidate, stale-if-error)",
        ["cache"]),
    "tiercache_breaker_state": (
        "gauge", "L2 circuit breaker: 0 closed, 1 half-open, 2 open", ["cache"]),
    "tiercache_breaker_opens_total": ("counter", "Times the L2 breaker opened", ["cache"]),
    "tiercache_l2_latency_seconds": (
        "histogram", "L2 (Redis) operation latency", ["cache", "operation"]),
    "tiercache_bus_events_total": ("counter", "Invalidation bus events", ["cache", "event"]),
    "tiercache_bus_connected": ("gauge", "Invalidation bus subscribed (1) or not", ["cache"]),
    "tiercache_pool_queries_total": ("counter", "Statements run per shard endpoint", _PSR),
    "tiercache_pool_errors_total": ("counter", "Failed statements by error", [*_PSR, "error"]),
    "tiercache_pool_slow_queries_total": ("counter", "Statements over the slow threshold", _PSR),
    "tiercache_pool_query_duration_seconds": ("histogram", "Statement duration", _PSR),
    "tiercache_pool_acquire_wait_seconds": ("histogram", "Wait for a pooled connection", _PSR),
    "tiercache_pool_size": ("gauge", "Open connections", _PSR),
    "tiercache_pool_idle": ("gauge", "Idle connections", _PSR),
    "tiercache_pool_min_size": ("gauge", "Configured minimum connections", _PSR),
    "tiercache_pool_max_size": ("gauge", "Configured maximum connections", _PSR),
    "tiercache_pool_waiters": ("gauge", "Calls blocked in acquire()", _PSR),
    "tiercache_pool_healthy": ("gauge", "Endpoint reachable (1) or not", _PSR),
    "tiercache_pool_weight": ("gauge", "Shard weight on the hash ring", ["pool", "shard"]),
    "tiercache_store_events_total": (
        "counter", "Store events: writes queued, coalesced, flushed, retried, failed, "
        "dead-lettered, replayed, recovered; reads, loads", [*_CS, "event"]),
    "tiercache_store_batches_total": ("counter", "Batch calls to a store's writer", _CS),
    "tiercache_store_queue_depth": ("gauge", "Keys waiting in a write-behind queue", _CS),
    "tiercache_store_journal_pending": (
        "gauge", "Journal entries written but not yet acknowledged", _CS),
    "tiercache_store_dead_letters": ("gauge", "Batches in a store's dead-letter list", _CS),
}

#: store counters exported as tiercache_store_events_total{event=...}
STORE_EVENTS: Final = (
    "queued", "coalesced", "flushed", "retries", "failures", "dead_lettered", "replayed",
    "recovered", "bad_entries", "journal_errors", "backpressure_waits", "reads", "loads",
    "load_failures", "writes", "write_failures", "deletes", "refreshes_started",
    "refreshes_succeeded", "refreshes_failed", "stale_served")

_BREAKER: Final = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}
_POOL_GAUGES: Final = ("size", "idle", "min_size", "max_size", "waiters")


class _Acc:
    """Accumulates samples; equal label sets (two sources, one name) are summed."""

    def __init__(self) -> None:
        self.out: Samples = {}

    def add(self, name: str, labels: tuple[str, ...], value: Any) -> None:
        if value is None or isinstance(value, bool):  # flags are converted by the caller
            return
        series = self.out.setdefault(name, {})
        if FAMILIES[name][0] == "histogram":
            if not isinstance(value, Mapping) or "buckets" not in value:
                return
            prev = series.get(labels)
            series[labels] = merge_snapshots([prev, value] if prev else [value])
        elif isinstance(value, int | float):
            series[labels] = series.get(labels, 0) + float(value)

    def worst(self, name: str, labels: tuple[str, ...], value: float) -> None:
        """A state gauge: same-named sources report the highest state, not a sum."""
        series = self.out.setdefault(name, {})
        series[labels] = max(series.get(labels, 0.0), float(value))


#: what a registered source is; each kind declares its own samples (no shape-sniffing)
SourceKind = Literal["cache", "pool", "tier", "store"]


def collect_samples(snapshots: Iterable[tuple[SourceKind, str, str, dict[str, Any]]]) -> Samples:
    """``(kind, source name, tier name, stats())`` -> samples; a missing key yields nothing."""
    acc = _Acc()
    for kind, name, tier, stats in snapshots:
        _BY_KIND[kind](acc, name, tier, stats)
    return acc.out


def cache_samples(acc: _Acc, name: str, _tier_name: str, stats: Mapping[str, Any]) -> None:
    """A TierCache: its l1/l2/l3 tiers, the loader, the core's own errors and the bus."""
    for tier_name in ("l1", "l2", "l3"):
        tier_stats = stats.get(tier_name)
        if isinstance(tier_stats, Mapping):
            _tier(acc, name, tier_name, tier_stats)
    if isinstance(stats.get("loader"), Mapping):
        _loader(acc, name, stats["loader"])
    if isinstance(stats.get("errors"), Mapping):  # the core's, e.g. "encode": L2 writes
        _add_errors(acc, "tiercache_errors_total", (name, "l2"), stats["errors"], None)
    if isinstance(stats.get("bus"), Mapping):
        _bus(acc, name, stats["bus"])
    stores = stats.get("stores")
    if isinstance(stores, Mapping):  # the cache's stores come with it
        for store_name, store_stats in stores.items():
            if isinstance(store_stats, Mapping):
                _store(acc, name, str(store_name), store_stats)


def tier_samples(acc: _Acc, name: str, tier_name: str, stats: Mapping[str, Any]) -> None:
    """A bare tier (MemoryTier, RedisTier, QueryCache) registered on its own."""
    _tier(acc, name, tier_name, stats)


def pool_samples(acc: _Acc, name: str, _tier_name: str, stats: Mapping[str, Any]) -> None:
    """A ShardedPool: per shard and role endpoint counters."""
    _pool(acc, name, stats)


def store_samples(acc: _Acc, name: str, _tier_name: str, stats: Mapping[str, Any]) -> None:
    """A Store registered on its own (label ``cache``: its cache's name)."""
    _store(acc, str(stats.get("cache") or name), str(stats.get("name") or name), stats)


_BY_KIND: Final[dict[str, Callable[[_Acc, str, str, Mapping[str, Any]], None]]] = {
    "cache": cache_samples, "pool": pool_samples, "tier": tier_samples, "store": store_samples,
}


def _store(acc: _Acc, cache: str, store: str, s: Mapping[str, Any]) -> None:
    cs = (cache, store)
    for event in STORE_EVENTS:
        acc.add("tiercache_store_events_total", (*cs, event), s.get(event))
    acc.add("tiercache_store_batches_total", cs, s.get("batches"))
    acc.add("tiercache_store_queue_depth", cs, s.get("queue_depth"))
    acc.add("tiercache_store_journal_pending", cs, s.get("journal_pending"))
    acc.add("tiercache_store_dead_letters", cs, s.get("dead_letters"))


def _tier(acc: _Acc, cache: str, tier: str, s: Mapping[str, Any]) -> None:
    ct = (cache, tier)
    acc.add("tiercache_requests_total", (*ct, "hit"), s.get("hits"))
    acc.add("tiercache_requests_total", (*ct, "miss"), s.get("misses"))
    acc.add("tiercache_sets_total", ct, s.get("sets"))
    acc.add("tiercache_deletes_total", ct, s.get("deletes"))
    if "evictions_size" in s or "evictions_expired" in s:
        acc.add("tiercache_evictions_total", (*ct, "size"), s.get("evictions_size"))
        acc.add("tiercache_evictions_total", (*ct, "expired"), s.get("evictions_expired"))
    elif s.get("evictions"):
        acc.add("tiercache_evictions_total", (*ct, "other"), s.get("evictions"))
    _add_errors(acc, "tiercache_errors_total", ct, s.get("errors_by_op"), s.get("errors"))
    acc.add("tiercache_entries", ct, s.get("size"))
    state = s.get("breaker")
    if isinstance(state, str) and state in _BREAKER:
        acc.worst("tiercache_breaker_state", (cache,), _BREAKER[state])
        acc.add("tiercache_breaker_opens_total", (cache,), s.get("breaker_opened"))
    latency = s.get("latency")
    if isinstance(latency, Mapping):
        for op, hist in latency.items():
            acc.add("tiercache_l2_latency_seconds", (cache, str(op)), hist)


def _loader(acc: _Acc, cache: str, s: Mapping[str, Any]) -> None:
    acc.add("tiercache_loader_calls_total", (cache,), s.get("calls"))
    acc.add("tiercache_loader_failures_total", (cache,), s.get("failures"))
    acc.add("tiercache_loader_duration_seconds", (cache,), s.get("duration"))
    acc.add("tiercache_singleflight_waits_total", (cache,), s.get("singleflight_waits"))
    acc.add("tiercache_lock_waits_total", (cache,), s.get("lock_waits"))
    for result in ("started", "succeeded", "failed", "skipped"):
        acc.add("tiercache_refreshes_total", (cache, result), s.get(f"refreshes_{result}"))
    acc.add("tiercache_stale_served_total", (cache,), s.get("stale_served"))


def _bus(acc: _Acc, cache: str, s: Mapping[str, Any]) -> None:
    for event, n in s.items():
        if isinstance(n, int) and not isinstance(n, bool):
            acc.add("tiercache_bus_events_total", (cache, str(event)), n)
    if isinstance(s.get("connected"), bool):
        acc.add("tiercache_bus_connected", (cache,), int(s["connected"]))


def _pool(acc: _Acc, pool: str, stats: Mapping[str, Any]) -> None:
    shards = stats.get("shards")
    if not isinstance(shards, Mapping):
        return
    for shard, entry in shards.items():
        if not isinstance(entry, Mapping):
            continue
        acc.add("tiercache_pool_weight", (pool, str(shard)), entry.get("weight"))
        endpoints = [(str(entry.get("role", "primary")), entry)]
        replicas = entry.get("replicas")
        if isinstance(replicas, Mapping):
            endpoints += [(str(r), e) for r, e in replicas.items() if isinstance(e, Mapping)]
        for role, ep in endpoints:
            _endpoint(acc, (pool, str(shard), role), ep)


def _add_errors(acc: _Acc, family: str, labels: tuple[str, ...], by_kind: Any,
                total: Any) -> None:
    """Errors per operation/class when the source breaks them down, else one "all" series."""
    if isinstance(by_kind, Mapping):
        for kind, n in by_kind.items():
            acc.add(family, (*labels, str(kind)), n)
    elif total:
        acc.add(family, (*labels, "all"), total)


def _endpoint(acc: _Acc, psr: tuple[str, str, str], ep: Mapping[str, Any]) -> None:
    acc.add("tiercache_pool_queries_total", psr, ep.get("queries"))
    acc.add("tiercache_pool_slow_queries_total", psr, ep.get("slow_queries"))
    _add_errors(acc, "tiercache_pool_errors_total", psr, ep.get("errors_by_class"),
                ep.get("errors"))
    acc.add("tiercache_pool_query_duration_seconds", psr, ep.get("latency"))
    acc.add("tiercache_pool_acquire_wait_seconds", psr, ep.get("acquire_wait"))
    for gauge in _POOL_GAUGES:
        acc.add(f"tiercache_pool_{gauge}", psr, ep.get(gauge))
    if isinstance(ep.get("healthy"), bool):
        acc.add("tiercache_pool_healthy", psr, int(ep["healthy"]))
