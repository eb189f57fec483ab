"""Registered metric sources, and the one place that turns their ``stats()`` into samples.

Why a registry and not push: the hot paths only bump plain integers; a scrape reads them.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from tiercache.metrics.samples import Samples, SourceKind, collect_samples

__all__ = ["register", "registered", "samples", "source_kind", "unregister"]

log = logging.getLogger("tiercache.metrics")

_lock = threading.Lock()
_sources: dict[int, tuple[Callable[[], Any], str | None]] = {}


def register(source: Any, name: str | None = None) -> None:
    """Export ``source`` (anything with ``stats()``); registering twice is harmless."""
    if not callable(getattr(source, "stats", None)):
        raise TypeError(f"{type(source).__name__} has no stats() method")
    source_kind(source)  # an unknown kind fails here, not at scrape time
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


def source_kind(source: Any) -> SourceKind:
    """What ``source`` is, from its type (or its ``metrics_kind``): picks its sample function."""
    declared = getattr(source, "metrics_kind", None)
    if declared in ("cache", "pool", "tier", "store"):
        return declared  # type: ignore[no-any-return]
    from tiercache.cache import TierCache  # lazy: these modules import tiercache.metrics
    from tiercache.sharding.pool import ShardedPool
    from tiercache.tiers.memory import MemoryTier
    from tiercache.tiers.query import QueryCache
    from tiercache.tiers.redis import RedisTier

    if isinstance(source, TierCache):
        return "cache"
    if isinstance(source, ShardedPool):
        return "pool"
    if isinstance(source, MemoryTier | RedisTier | QueryCache):
        return "tier"
    raise TypeError(f"{type(source).__name__} is not a metrics source: set metrics_kind to "
                    "'cache', 'pool', 'tier' or 'store'")


def _source_name(source: Any, given: str | None, stats: dict[str, Any]) -> str:
    for candidate in (given, getattr(source, "metrics_name", None), stats.get("name"),
                      getattr(source, "name", None)):
        if candidate:
            return str(candidate)
    return type(source).__name__


def samples() -> Samples:
    """One consistent read of every registered source (what a scrape exports)."""
    snapshots: list[tuple[SourceKind, str, str, dict[str, Any]]] = []
    for given, source in registered():
        try:
            kind = source_kind(source)
            stats = source.stats()
        except Exception:  # a scrape must not fail because one source did
            log.exception("stats() of %s failed; skipped in this scrape", type(source).__name__)
            continue
        tier = str(getattr(source, "name", "tier"))
        snapshots.append((kind, _source_name(source, given, stats), tier, stats))
    return collect_samples(snapshots)


# ------------------------------------------------------------------ Prometheus
