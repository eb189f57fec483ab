"""Operations of :class:`~tiercache.sharding.pool.ShardedPool`: stats snapshot and health.

Plain functions over the pool's shards (the pool's ``stats()``/``health()`` call them).
Nothing here is on the query path: snapshots are built on demand from the integer counters
the hot path bumps, and ``health()`` opens its own probes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiercache.sharding._endpoints import Endpoint, Shard
    from tiercache.sharding._fleet import Fleet
    from tiercache.sharding._pool_metrics import SlowQueryLog

__all__ = ["health", "reset_stats", "stats"]


def stats(pool_name: str, shards: Mapping[str, Shard], slowlog: SlowQueryLog) -> dict[str, Any]:
    """A plain-dict snapshot: ``{"name", "shards": {shard: {...}}, "totals", ...}``.

    Each shard entry holds its primary's ``queries``, ``errors`` (total),
    ``errors_by_class``, ``slow_queries``, ``latency`` and ``acquire_wait`` histograms
    (``{"count", "sum", "max", "buckets": [(le, cumulative), ...]}``, seconds, last ``le``
    is ``inf``), ``size``, ``idle``, ``min_size``, ``max_size``, ``waiters`` (calls blocked
    in acquire), ``weight``, ``healthy``, the redacted ``dsn``, and ``replicas``: the same
    figures per replica, keyed by role (``"replica0"``...).  ``tiercache.metrics`` exports
    any source whose ``stats()`` has ``"shards"`` as ``tiercache_pool_*`` metrics.
    """
    out: dict[str, Any] = {}
    total_queries = total_errors = 0
    for name, shard in shards.items():
        entry = _endpoint_stats(shard.primary)
        entry["weight"] = shard.weight
        entry["replicas"] = {ep.role: _endpoint_stats(ep) for ep in shard.replicas}
        for ep in shard.endpoints():
            total_queries += ep.metrics.queries
            total_errors += sum(ep.metrics.errors.values())
        out[name] = entry
    return {
        "name": pool_name,
        "shards": out,
        "totals": {
            "queries": total_queries,
            "errors": total_errors,
            "size": sum(s["size"] for s in out.values()),
            "idle": sum(s["idle"] for s in out.values()),
            "waiters": sum(s["waiters"] for s in out.values()),
        },
        "slow_query_threshold_ms": slowlog.threshold_ns / 1e6,
    }


def _endpoint_stats(ep: Endpoint) -> dict[str, Any]:
    snap = ep.metrics.snapshot()
    pool = ep.pool
    if pool is not None:
        snap.update(
            size=pool.get_size(), idle=pool.get_idle_size(),
            min_size=pool.get_min_size(), max_size=pool.get_max_size(),
        )
    else:
        snap.update(size=0, idle=0, min_size=0, max_size=0)
    snap.update(role=ep.role, dsn=ep.redacted, healthy=ep.healthy)
    return snap


def reset_stats(shards: Mapping[str, Shard]) -> None:
    """Zero every endpoint's counters (not the slow-query log)."""
    for shard in shards.values():
        for ep in shard.endpoints():
            ep.metrics.reset()


async def health(fleet: Fleet, timeout: float) -> dict[str, Any]:
    """Probe every primary and replica with ``SELECT 1``, concurrently.

    Returns ``{"ok", "status", "reasons", "shards": {name: {"ok", "latency_ms", "error",
    "dsn", "replicas": {role: {...}}}}}``.  ``status`` uses the vocabulary of
    ``TierCache.health()``: ``"unhealthy"`` when a primary is down (its keys cannot be
    served), ``"degraded"`` when only replicas are (reads fall back to primaries), else
    ``"healthy"``; ``ok`` is "every primary is up".  Replica results update the read
    rotation, and a replica whose pool could not be opened at start is retried here.
    """
    endpoints = [ep for s in fleet.shards.values() for ep in s.endpoints()]
    reports = await asyncio.gather(*(_probe(fleet, ep, timeout) for ep in endpoints))
    by_ep = dict(zip(map(id, endpoints), reports, strict=True))
    shards: dict[str, Any] = {}
    reasons: list[str] = []
    for name, shard in fleet.shards.items():
        report = dict(by_ep[id(shard.primary)])
        report["replicas"] = {ep.role: by_ep[id(ep)] for ep in shard.replicas}
        shards[name] = report
        if not report["ok"]:
            reasons.append(f"shard {name}: primary down ({report['error']})")
        reasons.extend(
            f"shard {name}: {role} down ({r['error']})"
            for role, r in report["replicas"].items() if not r["ok"]
        )
    ok = all(r["ok"] for r in shards.values())
    status = "unhealthy" if not ok else "degraded" if reasons else "healthy"
    return {"ok": ok, "status": status, "reasons": reasons, "shards": shards}


async def _probe(fleet: Fleet, ep: Endpoint, timeout: float) -> dict[str, Any]:
    start = perf_counter()
    try:
        async with asyncio.timeout(timeout):
            if ep.pool is None:
                await fleet.open(ep)
            await ep.pool.fetchval("SELECT 1")
    except Exception as exc:
        fleet.redactor.exception(exc)
        if ep.role != "primary":
            ep.mark_down(fleet.retry_after)
        else:
            ep.healthy = False
        return {
            "role": ep.role, "dsn": ep.redacted, "ok": False,
            "latency_ms": (perf_counter() - start) * 1000.0,
            "error": f"{type(exc).__name__}: {fleet.redactor.text(str(exc))}",
        }
    ep.mark_up()
    return {
        "role": ep.role, "dsn": ep.redacted, "ok": True,
        "latency_ms": (perf_counter() - start) * 1000.0, "error": None,
    }
