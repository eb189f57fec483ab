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
    """``stats()``, ``reset_stats()``, ``slow_queries()``, ``health()``."""

    __slots__ = ()

    if TYPE_CHECKING:
        _shards: dict[str, Shard]
        _slowlog: SlowQueryLog
        _slow_ns: int
        _initialized: bool
        _redactor: Redactor
        _retry_after: float

        def _check_open(self) -> None: ...

        async def _open(self, ep: Endpoint) -> None: ...

        def get_size(self, *, shard_key: Any = None, shard: str | None = None) -> int: ...

        def get_idle_size(self, *, shard_key: Any = None, shard: str | None = None) -> int: ...

    def stats(self) -> dict[str, Any]:
        """A plain-dict snapshot of per-shard counters and pool sizes.

        ``{"shards": {name: {...primary counters..., "pool": {...}, "replicas": [...]}},
        "totals": {...}, "slow_query_threshold_ms": float}``.
        """
        out: dict[str, Any] = {}
        total_queries = total_errors = 0
        for name, shard in self._shards.items():
            entry = self._endpoint_stats(shard.primary)
            entry["weight"] = shard.weight
            entry["replicas"] = [self._endpoint_stats(ep) for ep in shard.replicas]
            for ep in shard.endpoints():
                total_queries += ep.metrics.queries
                total_errors += sum(ep.metrics.errors.values())
            out[name] = entry
        return {
            "shards": out,
            "totals": {
                "queries": total_queries,
                "errors": total_errors,
                "size": self.get_size() if self._initialized else 0,
                "idle": self.get_idle_size() if self._initialized else 0,
            },
            "slow_query_threshold_ms": self._slow_ns / 1e6,
        }

    def _endpoint_stats(self, ep: Endpoint) -> dict[str, Any]:
        snap = ep.metrics.snapshot()
        snap["role"] = ep.role
        snap["dsn"] = ep.redacted
        snap["healthy"] = ep.healthy
        pool = ep.pool
        if pool is not None:
            size, idle = pool.get_size(), pool.get_idle_size()
            snap["pool"] = {
                "size": size, "idle": idle, "in_use": size - idle,
                "min": pool.get_min_size(), "max": pool.get_max_size(),
            }
        else:
            snap["pool"] = {"size": 0, "idle": 0, "in_use": 0, "min": 0, "max": 0}
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
        self._slowlog.clear()

    async def health(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """Probe every primary and replica with ``SELECT 1``, concurrently.

        Returns ``{"ok": all primaries up, "shards": {name: {"ok", "latency_ms", "error",
        "dsn", "replicas": [...]}}}``.  Replica results update the read rotation (a replica
        that answers is put back; one that fails is taken out), and a replica whose pool
        could not be opened at start is retried here.
        """
        self._check_open()
        endpoints = [ep for s in self._shards.values() for ep in s.endpoints()]
        reports = await asyncio.gather(*(self._probe(ep, timeout) for ep in endpoints))
        by_ep = dict(zip(map(id, endpoints), reports, strict=True))
        shards: dict[str, Any] = {}
        for name, shard in self._shards.items():
            report = dict(by_ep[id(shard.primary)])
            report["replicas"] = [by_ep[id(ep)] for ep in shard.replicas]
            shards[name] = report
        return {"ok": all(r["ok"] for r in shards.values()), "shards": shards}

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
