"""Operations surface of :class:`~tiercache.sharding.pool.ShardedPool`: stats, slow log, health.

Nothing here is on the query path: snapshots are built on demand from the integer counters the
hot path bumps, and ``health()`` opens its own probes.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tiercache.sharding._endpoints import Endpoint, Shard
    from tiercache.sharding._pool_metrics import SlowQueryLog
    from tiercache.sharding._redact import Redactor

__all__ = ["OperationsMixin"]


class OperationsMixin:
    """``name``, ``stats()``, ``reset_stats()``, ``slow_queries()``, ``health()``."""

    __slots__ = ()

    if TYPE_CHECKING:
        _name: str
        _shards: dict[str, Shard]
        _slowlog: SlowQueryLog
        _redactor: Redactor
        _retry_after: float

        def _check_open(self) -> None: ...

        async def _open(self, ep: Endpoint) -> None: ...

    @property
    def name(self) -> str:
        """The pool's name: the ``pool`` label of its exported metrics."""
        return self._name

    def stats(self) -> dict[str, Any]:
        """A plain-dict snapshot: ``{"name", "shards": {shard: {...}}, "totals", ...}``.

        Each shard entry holds its primary's ``queries``, ``errors`` (total),
        ``errors_by_class``, ``slow_queries``, ``latency`` and ``acquire_wait`` histograms
        (``{"count", "sum", "max", "buckets": [(le, cumulative), ...]}``, seconds, last ``le``
        is ``inf``), ``size``, ``idle``, ``min_size``, ``max_size``, ``waiters`` (calls blocked
        in acquire), ``weight``, ``healthy``, the redacted ``dsn``, and ``replicas``: the same
        figures per replica, keyed by role (``"replica0"``...).  ``tiercache.metrics`` exports
        any source whose ``stats()`` has ``"shards"`` as ``tiercache_pool_*`` metrics.
        """
        shards: dict[str, Any] = {}
        total_queries = total_errors = 0
        for name, shard in self._shards.items():
            entry = self._endpoint_stats(shard.primary)
            entry["weight"] = shard.weight
            entry["replicas"] = {ep.role: self._endpoint_stats(ep) for ep in shard.replicas}
            for ep in shard.endpoints():
                total_queries += ep.metrics.queries
                total_errors += sum(ep.metrics.errors.values())
            shards[name] = entry
        return {
            "name": self._name,
            "shards": shards,
            "totals": {
                "queries": total_queries,
                "errors": total_errors,
                "size": sum(s["size"] for s in shards.values()),
                "idle": sum(s["idle"] for s in shards.values()),
                "waiters": sum(s["waiters"] for s in shards.values()),
            },
            "slow_query_threshold_ms": self._slowlog.threshold_ns / 1e6,
        }

    @staticmethod
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

    def reset_stats(self) -> None:
        """Zero the counters (not the slow-query log; see :meth:`clear_slow_queries`)."""
        for shard in self._shards.values():
            for ep in shard.endpoints():
                ep.metrics.reset()

    def slow_queries(
        self, n: int | None = None, *, order: Literal["recent", "slowest"] = "recent"
    ) -> list[dict[str, Any]]:
        """Up to ``n`` slow statements (``shard``, ``role``, ``method``, ``query``,
        ``fingerprint``, ``duration_ms``, ``failed``, ``at``), newest or slowest first."""
        return self._slowlog.entries(n, order=order)

    def clear_slow_queries(self) -> None:
        """Empty the slow-query log (the counters in :meth:`stats` are kept)."""
        self._slowlog.clear()

    @property
    def slow_query_threshold_ms(self) -> float:
        """Statements at least this slow (ms) go to the slow-query log; settable."""
        return self._slowlog.threshold_ns / 1e6

    @slow_query_threshold_ms.setter
    def slow_query_threshold_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError("slow_query_threshold_ms must be >= 0")
        self._slowlog.threshold_ns = int(value * 1_000_000)

    async def health(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """Probe every primary and replica with ``SELECT 1``, concurrently.

        Returns ``{"ok", "status", "reasons", "shards": {name: {"ok", "latency_ms", "error",
        "dsn", "replicas": {role: {...}}}}}``.  ``status`` uses the vocabulary of
        ``TierCache.health()``: ``"unhealthy"`` when a primary is down (its keys cannot be
        served), ``"degraded"`` when only replicas are (reads fall back to primaries), else
        ``"healthy"``; ``ok`` is "every primary is up".  Replica results update the read
        rotation, and a replica whose pool could not be opened at start is retried here.
        """
        self._check_open()
        endpoints = [ep for s in self._shards.values() for ep in s.endpoints()]
        reports = await asyncio.gather(*(self._probe(ep, timeout) for ep in endpoints))
        by_ep = dict(zip(map(id, endpoints), reports, strict=True))
        shards: dict[str, Any] = {}
        reasons: list[str] = []
        for name, shard in self._shards.items():
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

    async def _probe(self, ep: Endpoint, timeout: float) -> dict[str, Any]:
        start = perf_counter()
        try:
            async with asyncio.timeout(timeout):
                if ep.pool is None:
                    await self._open(ep)
                await ep.pool.fetchval("SELECT 1")
        except Exception as exc:
            self._redactor.exception(exc)
            if ep.role != "primary":
                ep.mark_down(self._retry_after)
            else:
                ep.healthy = False
            return {
                "role": ep.role, "dsn": ep.redacted, "ok": False,
                "latency_ms": (perf_counter() - start) * 1000.0,
                "error": f"{type(exc).__name__}: {self._redactor.text(str(exc))}",
            }
        ep.mark_up()
        return {
            "role": ep.role, "dsn": ep.redacted, "ok": True,
            "latency_ms": (perf_counter() - start) * 1000.0, "error": None,
        }
