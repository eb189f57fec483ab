"""Per-endpoint counters and the slow-query log of :class:`~tiercache.sharding.pool.ShardedPool`.

The counters sit on the routed-query hot path, whose whole budget is 5% of a loopback
``fetchval`` round trip (a few microseconds).  So recording is plain attribute increments on a
``__slots__`` object, one ``bisect`` into a short tuple of integer nanosecond bounds, and no
locks (everything runs on the event loop thread).  Dicts, floats and percentages are only built
when somebody asks for :meth:`EndpointMetrics.snapshot`.

Slow statements are rare by definition, so the slow path may afford pglast: the statement is
fingerprinted (``pglast.parser.fingerprint`` -- the same normalisation as pg_stat_statements'
query id, so ``WHERE id = 1`` and ``WHERE id = $1`` group together), with the fingerprints
memoised per query text.
"""

from __future__ import annotations

import hashlib
import logging
import time
from bisect import bisect_left
from collections import deque
from typing import Any, Literal

__all__ = ["LATENCY_BUCKETS_MS", "EndpointMetrics", "SlowQueryLog", "fingerprint"]

log = logging.getLogger("tiercache.sharding.slowlog")

#: Upper bounds of the latency histogram buckets, in milliseconds (Prometheus-style, with
#: an implicit ``+Inf`` bucket after the last one).
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
    5000.0, 10000.0,
)
_BOUNDS_NS: tuple[int, ...] = tuple(int(b * 1_000_000) for b in LATENCY_BUCKETS_MS)


class EndpointMetrics:
    """Counters for one asyncpg pool (a shard primary or one of its replicas).

    ``waiting`` is a gauge: calls currently blocked in ``acquire()``.  Together with
    ``acquire_wait_ns`` it answers the question asyncpg users keep asking -- "is my pool
    saturated?" -- which ``get_idle_size()`` alone cannot.
    """

    __slots__ = (
        "acquire_wait_max_ns",
        "acquire_wait_ns",
        "acquires",
        "buckets",
        "errors",
        "latency_max_ns",
        "latency_ns",
        "queries",
        "slow",
        "waiting",
    )

    def __init__(self) -> None:
        self.queries = 0
        self.errors: dict[str, int] = {}
        self.buckets = [0] * (len(_BOUNDS_NS) + 1)
        self.latency_ns = 0
        self.latency_max_ns = 0
        self.acquires = 0
        self.acquire_wait_ns = 0
        self.acquire_wait_max_ns = 0
        self.waiting = 0
        self.slow = 0

    def observe(self, elapsed_ns: int) -> None:
        """Count one finished statement (success or failure) that took ``elapsed_ns``."""
        self.queries += 1
        self.latency_ns += elapsed_ns
        if elapsed_ns > self.latency_max_ns:
            self.latency_max_ns = elapsed_ns
        self.buckets[bisect_left(_BOUNDS_NS, elapsed_ns)] += 1

    def observe_acquire(self, wait_ns: int) -> None:
        """Count one successful ``acquire()`` that waited ``wait_ns`` for a connection."""
        self.acquires += 1
        self.acquire_wait_ns += wait_ns
        if wait_ns > self.acquire_wait_max_ns:
            self.acquire_wait_max_ns = wait_ns

    def error(self, exc: BaseException) -> None:
        """Count a failure under its class name (``UniqueViolationError``, ``TimeoutError``...)."""
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """A plain-dict copy of the counters, in milliseconds, with cumulative buckets."""
        cumulative: dict[str, int] = {}
        running = 0
        for bound, count in zip((*LATENCY_BUCKETS_MS, "+Inf"), self.buckets, strict=True):
            running += count
            cumulative[str(bound)] = running
        return {
            "queries": self.queries,
            "errors": dict(self.errors),
            "errors_total": sum(self.errors.values()),
            "slow_queries": self.slow,
            "latency_ms": {
                "count": self.queries,
                "sum": self.latency_ns / 1e6,
                "max": self.latency_max_ns / 1e6,
                "mean": (self.latency_ns / self.queries / 1e6) if self.queries else 0.0,
                "buckets": cumulative,
            },
            "acquire": {
                "count": self.acquires,
                "waiting": self.waiting,
                "wait_ms_sum": self.acquire_wait_ns / 1e6,
                "wait_ms_max": self.acquire_wait_max_ns / 1e6,
                "wait_ms_mean": (
                    self.acquire_wait_ns / self.acquires / 1e6 if self.acquires else 0.0
                ),
            },
        }

    def reset(self) -> None:
        """Zero every counter (the ``waiting`` gauge is live state and is kept)."""
        waiting = self.waiting
        self.__init__()  # type: ignore[misc]
        self.waiting = waiting


_FINGERPRINTS: dict[str, str] = {}
_FINGERPRINT_CACHE_MAX = 4096


def fingerprint(query: str) -> str:
    """pglast fingerprint of ``query``; constants and parameters are normalised away.

    Statements pglast cannot parse (other dialects, fragments) get a stable hash of their
    whitespace-normalised text instead, prefixed with ``raw:`` so they are recognisable.
    """
    cached = _FINGERPRINTS.get(query)
    if cached is not None:
        return cached
    try:
        from pglast.parser import fingerprint as pg_fingerprint

        value = str(pg_fingerprint(query))
    except Exception:
        normalised = " ".join(query.split()).lower()
        value = "raw:" + hashlib.blake2b(normalised.encode(), digest_size=8).hexdigest()
    if len(_FINGERPRINTS) >= _FINGERPRINT_CACHE_MAX:
        _FINGERPRINTS.clear()
    _FINGERPRINTS[query] = value
    return value


class SlowQueryLog:
    """Bounded in-memory log of statements slower than a threshold.

    Entries hold the statement text (truncated), its fingerprint, shard, endpoint role,
    method, duration and wall-clock time -- never the bound parameters, which may be
    personal data.  Each slow statement is also logged once on ``tiercache.sharding.slowlog``
    at WARNING.
    """

    __slots__ = ("_entries", "maxlen", "threshold_ns")

    def __init__(self, threshold_ms: float = 100.0, maxlen: int = 1000) -> None:
        if threshold_ms < 0:
            raise ValueError("slow_query_ms must be >= 0")
        self.threshold_ns = int(threshold_ms * 1_000_000)
        self.maxlen = maxlen
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)

    def record(
        self, shard: str, role: str, method: str, query: str, elapsed_ns: int, failed: bool
    ) -> None:
        """Add one slow statement (the caller already compared against ``threshold_ns``)."""
        fp = fingerprint(query)
        entry: dict[str, Any] = {
            "shard": shard,
            "role": role,
            "method": method,
            "query": query if len(query) <= 2000 else query[:2000] + "...",
            "fingerprint": fp,
            "duration_ms": elapsed_ns / 1e6,
            "failed": failed,
            "at": time.time(),
        }
        self._entries.append(entry)
        log.warning(
            "slow query on shard %s (%s) %.1f ms fingerprint=%s: %s",
            shard, role, elapsed_ns / 1e6, fp, entry["query"][:200],
        )

    def entries(
        self, n: int | None = None, *, order: Literal["recent", "slowest"] = "recent"
    ) -> list[dict[str, Any]]:
        """Up to ``n`` entries, newest first (``order="recent"``) or slowest first."""
        if order == "recent":
            items = list(reversed(self._entries))
        elif order == "slowest":
            items = sorted(self._entries, key=lambda e: e["duration_ms"], reverse=True)
        else:
            raise ValueError(f"order must be 'recent' or 'slowest', not {order!r}")
        if n is not None:
            items = items[: max(n, 0)]
        return [dict(e) for e in items]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
