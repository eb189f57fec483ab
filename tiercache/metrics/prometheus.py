"""Prometheus export: a collector that scrapes every registered source on read."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from tiercache.metrics.registry import samples
from tiercache.metrics.samples import FAMILIES

__all__ = ["TiercacheCollector", "prometheus_collector", "serve"]

_lock = threading.Lock()  # guards _installed


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
