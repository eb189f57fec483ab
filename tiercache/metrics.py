"""Export tiercache counters to Prometheus and OpenTelemetry, aggregated on read.

Why aggregated on read: the hot paths only bump plain integers (C counters in L1, ints and
:class:`~tiercache._stats.Histogram` in L2 and the loader). Nothing is pushed anywhere;
a scrape calls every registered source's ``stats()`` and turns the dicts into metrics.

Usage::

    from tiercache import metrics
    metrics.register(cache)            # a TierCache, a ShardedPool, a bare tier
    metrics.serve(9100)                # /metrics on 127.0.0.1:9100 (prometheus_client)
    metrics.instrument_otel()          # or: OpenTelemetry observable instruments

A source is anything with ``stats() -> dict``; its name (label ``cache`` or ``pool``) is the
``name=`` given to :func:`register`, else ``source.metrics_name``, else ``stats()["name"]``,
else ``source.name``. Sources are held weakly where possible. Several sources with one name
are summed. Which metrics a source yields depends on the shape of its ``stats()``: a cache
(``"l1"``/``"l2"``/``"loader"``), a pool (``"shards"``) or a bare tier (``"hits"``); keys
that are absent are simply not exported.

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
=========================================  =========  ===============================

L2 error operations include ``decode`` (unreadable payload), ``breaker_open`` (call
skipped) and ``encode`` (a loaded value L2 could not store; counted by the core).
OpenTelemetry has no asynchronous histogram: histograms are exported there as
``<name>.sum`` / ``<name>.count`` observable counters.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tiercache._metrics_samples import FAMILIES, Samples, collect_samples

__all__ = [
    "FAMILIES",
    "TiercacheCollector",
    "instrument_otel",
    "register",
    "registered",
    "samples",
    "serve",
    "unregister",
]

log = logging.getLogger("tiercache.metrics")

_lock = threading.Lock()
_sources: dict[int, tuple[Callable[[], Any], str | None]] = {}


def register(source: Any, name: str | None = None) -> None:
    """Export ``source`` (anything with ``stats()``); registering twice is harmless."""
    if not callable(getattr(source, "stats", None)):
        raise TypeError(f"{type(source).__name__} has no stats() method")
    key = id(source)
    try:
        ref: Callable[[], Any] = weakref.ref(source, lambda _: _forget(key))
    except TypeError:  # no weakref support: keep it alive
        ref = _strong(source)
    with _lock:
        _sources[key] = (ref, name)


def _strong(source: Any) -> Callable[[], Any]:
    return lambda: source


def _forget(key: int) -> None:
    with _lock:
        _sources.pop(key, None)


def unregister(source: Any) -> None:
    _forget(id(source))


def registered() -> list[tuple[str | None, Any]]:
    """(name, source) for every live registered source."""
    with _lock:
        entries = list(_sources.values())
    out = []
    for ref, name in entries:
        source = ref()
        if source is not None:
            out.append((name, source))
    return out


def _source_name(source: Any, given: str | None, stats: dict[str, Any]) -> str:
    for candidate in (given, getattr(source, "metrics_name", None), stats.get("name"),
                      getattr(source, "name", None)):
        if candidate:
            return str(candidate)
    return type(source).__name__


def samples() -> Samples:
    """One consistent read of every registered source (what a scrape exports)."""
    snapshots: list[tuple[str, str, dict[str, Any]]] = []
    for given, source in registered():
        try:
            stats = source.stats()
        except Exception:  # a scrape must not fail because one source did
            log.exception("stats() of %s failed; skipped in this scrape", type(source).__name__)
            continue
        tier = str(getattr(source, "name", "tier"))
        snapshots.append((_source_name(source, given, stats), tier, stats))
    return collect_samples(snapshots)


# ------------------------------------------------------------------ Prometheus


class TiercacheCollector:
    """A prometheus_client custom collector over every registered source."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        current = samples()
        for name, (kind, doc, labels) in FAMILIES.items():
            series = current.get(name)
            if not series:
                continue
            family: Any
            if kind == "counter":
                family = CounterMetricFamily(name, doc, labels=labels)
                for values, value in series.items():
                    family.add_metric(list(values), value)
            elif kind == "gauge":
                family = GaugeMetricFamily(name, doc, labels=labels)
                for values, value in series.items():
                    family.add_metric(list(values), value)
            else:
                family = HistogramMetricFamily(name, doc, labels=labels)
                for values, hist in series.items():
                    buckets = [(_le(le), n) for le, n in hist["buckets"]]
                    family.add_metric(list(values), buckets, hist["sum"])
            yield family

    def describe(self) -> Iterable[Any]:
        return ()  # no scrape at registration time; names are fixed by FAMILIES anyway


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


_installed: dict[int, TiercacheCollector] = {}


def prometheus_collector(registry: Any = None) -> TiercacheCollector:
    """Install (once per registry) and return the collector; default: the global REGISTRY."""
    from prometheus_client import REGISTRY

    target = REGISTRY if registry is None else registry
    with _lock:
        collector = _installed.get(id(target))
        if collector is None:
            collector = _installed[id(target)] = TiercacheCollector()
            target.register(collector)
    return collector


def serve(port: int, addr: str = "127.0.0.1", registry: Any = None) -> Any:
    """Expose ``/metrics`` over HTTP (``prometheus_client.start_http_server``).

    Binds to loopback by default: metrics name caches and shards, which is not for the
    whole network unless you say so. Returns what prometheus_client returns (server, thread).
    """
    from prometheus_client import REGISTRY, start_http_server

    target = REGISTRY if registry is None else registry
    prometheus_collector(target)
    return start_http_server(port, addr=addr, registry=target)


# ------------------------------------------------------------------ OpenTelemetry


class _CachedSamples:
    """One samples() per collection cycle, shared by every instrument's callback."""

    def __init__(self, max_age: float = 0.5) -> None:
        self.max_age = max_age
        self._at = -1e9
        self._value: Samples = {}
        self._lock = threading.Lock()

    def get(self) -> Samples:
        with self._lock:
            now = time.monotonic()
            if now - self._at > self.max_age:
                self._value = samples()
                self._at = now
            return self._value


def instrument_otel(meter_provider: Any = None) -> list[Any]:
    """Create OpenTelemetry observable instruments for every family; returns them.

    Needs ``opentelemetry-api`` (the ``otel`` extra); ``meter_provider`` defaults to the
    global one. Names use dots (``tiercache.requests``), units follow OTel conventions.
    """
    try:
        from opentelemetry import metrics as otel
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("instrument_otel() needs opentelemetry-api: pip install "
                           "'tiercache[otel]'") from exc
    from tiercache import __version__

    provider = meter_provider if meter_provider is not None else otel.get_meter_provider()
    meter = provider.get_meter("tiercache", __version__)
    cache = _CachedSamples()
    instruments: list[Any] = []
    for name, (kind, doc, labels) in FAMILIES.items():
        base = name.removesuffix("_total").replace("_", ".")
        if kind == "histogram":
            base = base.removesuffix(".seconds")
            for part in ("sum", "count"):
                unit = "s" if part == "sum" else "1"
                instruments.append(meter.create_observable_counter(
                    f"{base}.{part}", callbacks=[_callback(cache, name, labels, otel, part)],
                    unit=unit, description=f"{doc} ({part})"))
        elif kind == "counter":
            instruments.append(meter.create_observable_counter(
                base, callbacks=[_callback(cache, name, labels, otel, None)], description=doc))
        else:
            instruments.append(meter.create_observable_gauge(
                base, callbacks=[_callback(cache, name, labels, otel, None)], description=doc))
    return instruments


def _callback(cache: _CachedSamples, name: str, labels: list[str], otel: Any,
              part: str | None) -> Callable[[Any], Iterable[Any]]:
    def observe(options: Any) -> Iterable[Any]:
        series = cache.get().get(name, {})
        out = []
        for values, value in series.items():
            attributes = dict(zip(labels, values, strict=True))
            if part is not None:
                value = value[part]
            out.append(otel.Observation(value, attributes))
        return out

    return observe
