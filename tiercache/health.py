"""``cache.health()`` verdict (the ``cache.stats()`` snapshot lives in tiercache.metrics.snapshot).

Why a verdict and not just numbers: load balancers and dashboards want one word with reasons.
The cache keeps *answering* when Redis is down (L1 + loader), so "unhealthy" means "the shared
tier is gone — the database takes the whole load", and "degraded" means "working, but below
what it should be" (hit ratio, error rate, a half-open breaker, a disconnected bus).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tiercache._flow import Flow, TierOp
from tiercache.metrics.snapshot import snapshot

if TYPE_CHECKING:
    from tiercache.cache import TierCache

__all__ = ["check", "snapshot", "with_pool"]

def _request_hit_ratio(stats: dict[str, Any]) -> tuple[int, float]:
    """Share of requests answered by some tier (L2 hits count only after L1 misses)."""
    l1, l2 = stats["l1"], stats["l2"]
    if l1 is not None:
        requests = l1["hits"] + l1["misses"]
        hits = l1["hits"] + (l2["hits"] if l2 is not None else 0)
    elif l2 is not None:
        requests = l2["hits"] + l2["misses"]
        hits = l2["hits"]
    else:  # no tier at all: every call loads; nothing to judge
        return 0, 1.0
    return requests, min(1.0, hits / requests) if requests else 1.0


def check(cache: TierCache) -> Flow[dict[str, Any]]:
    """Ping L2, read the breaker, compare ratios with the cache's thresholds."""
    limits = cache.thresholds
    checks: dict[str, Any] = {}
    unhealthy: list[str] = []
    degraded: list[str] = []
    l2 = cache.l2
    if l2 is not None:
        began = time.perf_counter()
        try:
            latency = yield TierOp(l2.ping, l2.ping_sync)
            checks["redis"] = {"ok": True, "latency_seconds": float(latency)}
        except Exception as exc:
            checks["redis"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                               "seconds": time.perf_counter() - began}
            unhealthy.append(f"redis unreachable: {type(exc).__name__}")
        state = _state_name(getattr(getattr(l2, "breaker", None), "state", "closed"))
        checks["breaker"] = state
        nodes = _node_states(l2.stats().get("breakers"))
        if nodes:  # one breaker per Redis node: name the nodes whose keys are skipped
            checks["breakers"] = nodes
            opened = sorted(n for n, st in nodes.items() if st == "open")
            probing = sorted(n for n, st in nodes.items() if st == "half_open")
            if opened and len(opened) == len(nodes):
                unhealthy.append(f"circuit breaker open on every Redis node ({', '.join(opened)})"
                                 ": L2 calls are skipped")
            elif opened:
                degraded.append(f"Redis node(s) {', '.join(opened)} unreachable (breaker open):"
                                " their keys are served from L1 and the loader")
            if probing:
                degraded.append(f"circuit breaker half-open, probing Redis node(s) "
                                f"{', '.join(probing)}")
        elif state == "open":
            unhealthy.append("circuit breaker open: L2 calls are skipped")
        elif state in ("half_open", "half-open"):
            degraded.append("circuit breaker half-open: probing L2")
    stats = snapshot(cache)
    if stats["unencodable"]:
        checks["unencodable"] = stats["unencodable"]
        listed = ", ".join(f"{fn} returns {kind}" for fn, kind in
                           sorted(stats["unencodable"].items()))
        degraded.append(f"values not stored in L2 (unencodable: {listed}); other processes "
                        "miss them: register the types with tiercache.register_type")
    requests, ratio = _request_hit_ratio(stats)
    checks["hit_ratio"] = {"value": ratio, "requests": requests,
                           "min": limits["min_hit_ratio"], "min_requests": limits["min_requests"]}
    if requests >= limits["min_requests"] and ratio < limits["min_hit_ratio"]:
        degraded.append(f"hit ratio {ratio:.2f} below {limits['min_hit_ratio']:.2f}")
    l2s = stats["l2"]
    if l2s is not None:
        ops = l2s["hits"] + l2s["misses"] + l2s["sets"] + l2s["deletes"]
        rate = l2s["errors"] / ops if ops else 0.0
        checks["error_rate"] = {"value": rate, "max": limits["max_error_rate"]}
        if ops >= limits["min_requests"] and rate > limits["max_error_rate"]:
            degraded.append(f"L2 error rate {rate:.2f} above {limits['max_error_rate']:.2f}")
    bus = stats.get("bus")
    if bus is not None:
        checks["bus"] = {"connected": bus["connected"], "running": bus["running"]}
        if bus["running"] and not bus["connected"]:
            degraded.append("invalidation bus disconnected (L1 may lag other processes)")
    for store in getattr(cache, "stores", ()):  # write-behind queues, dead letters
        degraded.extend(store.health_reasons())
    refresh = stats["loader"].get("refreshes_failed", 0)
    if refresh:
        checks["refreshes_failed"] = refresh
    status = "unhealthy" if unhealthy else "degraded" if degraded else "healthy"
    return {"status": status, "reasons": unhealthy + degraded, "checks": checks}


_SEVERITY = {"healthy": 0, "degraded": 1, "unhealthy": 2}


def with_pool(report: dict[str, Any], pool_report: dict[str, Any]) -> dict[str, Any]:
    """Fold a ShardedPool.health() report into a cache's: the worse status wins."""
    pool_status = str(pool_report.get("status", "unhealthy"))
    status = max(report["status"], pool_status, key=lambda s: _SEVERITY.get(s, 2))
    reasons = [*report["reasons"], *(f"pool: {r}" for r in pool_report.get("reasons", []))]
    return {"status": status, "reasons": reasons, "checks": {**report["checks"],
                                                             "pool": pool_report}}


def _node_states(breakers: Any) -> dict[str, str]:
    """``{"host:port": "closed"|"open"|"half_open"}`` from a tier's stats, or {}."""
    if not isinstance(breakers, dict):
        return {}
    return {str(node): _state_name(st).replace("-", "_") for node, st in breakers.items()}


def _state_name(state: Any) -> str:
    """Breaker states may be strings or enums; report a lowercase name."""
    name = getattr(state, "value", state)
    return str(getattr(state, "name", name) if not isinstance(name, str) else name).lower()
