"""``cache.stats()``: the loader's counters and the snapshot built from every tier's stats().

Why here: the snapshot is what the metrics exporter and the health verdict both read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tiercache._invalidation import STALE
from tiercache.metrics.counters import LOADER_BUCKETS, Histogram

if TYPE_CHECKING:
    from tiercache.cache import TierCache

__all__ = ["LoaderStats", "snapshot"]

_L1_COUNTERS = ("hits", "misses", "sets", "deletes", "evictions_size", "evictions_expired",
                "size")


class LoaderStats:
    """Loader counters (plain ints + one histogram: only the miss path touches them)."""

    def __init__(self) -> None:
        self.calls = self.failures = self.lock_waits = self.encode_errors = 0
        # read policies (tiercache._refresh): background reloads and stale values served
        self.refreshes_started = self.refreshes_succeeded = self.refreshes_failed = 0
        self.refreshes_skipped = self.stale_served = 0
        self.duration = Histogram(LOADER_BUCKETS)

    def observe(self, seconds: float, failed: bool) -> None:
        self.calls += 1
        self.failures += failed
        self.duration.observe(seconds)

    def snapshot(self, singleflight_waits: int) -> dict[str, Any]:
        return {
            "calls": self.calls, "failures": self.failures,
            "seconds_total": self.duration.sum, "singleflight_waits": singleflight_waits,
            "lock_waits": self.lock_waits, "encode_errors": self.encode_errors,
            "refreshes_started": self.refreshes_started,
            "refreshes_succeeded": self.refreshes_succeeded,
            "refreshes_failed": self.refreshes_failed,
            "refreshes_skipped": self.refreshes_skipped, "stale_served": self.stale_served,
            "duration": self.duration.snapshot(),
        }


def _l1_stats(cache: TierCache) -> dict[str, Any]:
    """Sums over this cache's segments only: a MemoryTier may be shared by several caches."""
    total = dict.fromkeys(_L1_COUNTERS, 0)
    functions = {}
    for name, segment in cache.segments.items():
        seg = segment.stats()
        functions[name] = seg
        if name.endswith(STALE):  # read policies' own copies: not requests of the caller
            continue
        for counter in _L1_COUNTERS:
            total[counter] += seg[counter]
    gets = total["hits"] + total["misses"]
    return {
        **total,
        "evictions": total["evictions_size"] + total["evictions_expired"],
        "errors": 0,
        "hit_ratio": total["hits"] / gets if gets else 0.0,
        "maxsize": cache.l1.store.maxsize if cache.l1 is not None else None,
        "segments": functions,
    }


def snapshot(cache: TierCache) -> dict[str, Any]:
    flights = cache.flights
    out: dict[str, Any] = {
        "name": cache.name,
        "namespace": cache.namespace,
        "l1": _l1_stats(cache) if cache.l1 is not None else None,
        "l2": cache.l2.stats() if cache.l2 is not None else None,
        "loader": cache.loader.snapshot(flights.waits),
        # the core's own errors by operation ("encode": a loaded value L2 could not store)
        "errors": {"encode": cache.loader.encode_errors},
        "unencodable": dict(cache.unencodable),
    }
    if cache.stores:  # cache.store(...) objects: queue, journal, dead letters
        out["stores"] = {store.name: store.stats() for store in cache.stores}
    bus = cache.bus
    if bus is not None:
        out["bus"] = {**bus.stats, "raced_writes_undone": cache.raced_writes_undone,
                      "connected": bus.connected, "running": bus.running()}
    return out
