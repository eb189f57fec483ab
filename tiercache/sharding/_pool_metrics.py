"""Per-endpoint counters and the slow-query log of :class:`~tiercache.sharding.pool.ShardedPool`.

The counters sit on the routed-query hot path, whose whole budget is 5% of a loopback
``fetchval`` round trip (a few microseconds).  So recording is plain attribute increments on a
``__slots__`` object, one ``bisect`` into a short tuple of integer nanosecond bounds, and no
locks (everything runs on the event loop thread).  Dicts, floats and percentages are only built
when somebody asks for :meth:`EndpointMetrics.snapshot`.

Slow statements are rare by definition, so the slow path may afford pglast: the statement is
normalized (constants -> ``$n``) and fingerprinted (``pglast.parser.fingerprint`` -- the same
normalisation as pg_stat_statements' query id, so ``WHERE id = 1`` and ``WHERE id = $1`` group
together), memoised per statement digest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from tiercache.metrics.counters import LATENCY_BUCKETS

__all__ = [
    "LATENCY_BUCKETS_S", "UNPARSEABLE", "EndpointMetrics", "SlowQueryLog", "fingerprint",
    "normalize",
]

log = logging.getLogger("tiercache.sharding.slowlog")

#: Upper bounds of the latency and acquire-wait histogram buckets, in seconds (Prometheus
#: ``le``, an implicit ``+Inf`` bucket follows): the bounds every tier uses, so pool
#: histograms merge and export like the cache's.
LATENCY_BUCKETS_S: tuple[float, ...] = LATENCY_BUCKETS
BOUNDS_NS: tuple[int, ...] = tuple(round(b * 1e9) for b in LATENCY_BUCKETS_S)
_LE: tuple[float, ...] = (*LATENCY_BUCKETS_S, float("inf"))


def _histogram(count: int, sum_ns: int, max_ns: int, buckets: list[int]) -> dict[str, Any]:
    """``{"count", "sum", "max", "buckets": [(le, cumulative), ...]}``, seconds, +Inf last:
    :class:`tiercache._stats.Histogram`'s snapshot plus ``max``."""
    cumulative: list[tuple[float, int]] = []
    running = 0
    for le, n in zip(_LE, buckets, strict=True):
        running += n
        cumulative.append((le, running))
    return {"count": count, "sum": sum_ns / 1e9, "max": max_ns / 1e9, "buckets": cumulative}


class EndpointMetrics:
    """Counters for one asyncpg pool (a shard primary or one of its replicas).

    ``waiting`` is a gauge: calls currently blocked in ``acquire()``.  Together with the
    acquire-wait histogram it answers the question asyncpg users keep asking -- "is my pool
    saturated?" -- which ``get_idle_size()`` alone cannot.
    """

    __slots__ = (
        "acquire_buckets",
        "acquire_wait_max_ns",
        "acquire_wait_ns",
        "acquires",
        "buckets",
        "errors",
        "latency_ewma_ns",
        "latency_max_ns",
        "latency_ns",
        "queries",
        "slow",
        "waiting",
    )

    def __init__(self) -> None:
        self.queries = 0
        self.errors: dict[str, int] = {}
        self.buckets = [0] * (len(BOUNDS_NS) + 1)
        self.latency_ns = 0
        self.latency_max_ns = 0
        self.latency_ewma_ns = 0  # moving average (weight 1/8) for least-latency reads
        self.acquires = 0
        self.acquire_buckets = [0] * (len(BOUNDS_NS) + 1)
        self.acquire_wait_ns = 0
        self.acquire_wait_max_ns = 0
        self.waiting = 0
        self.slow = 0

    def observe(self, elapsed_ns: int) -> None:
        """Count one finished statement (success or failure) that took ``elapsed_ns``.

        ``ConnectionsMixin._run`` inlines this and :meth:`observe_acquire` (a method call per
        routed statement is a measurable share of the hot-path budget): change them together.
        """
        self.queries += 1
        self.latency_ns += elapsed_ns
        if elapsed_ns > self.latency_max_ns:
            self.latency_max_ns = elapsed_ns
        self.latency_ewma_ns += (elapsed_ns - self.latency_ewma_ns) >> 3
        self.buckets[bisect_left(BOUNDS_NS, elapsed_ns)] += 1

    def observe_acquire(self, wait_ns: int) -> None:
        """Count one successful ``acquire()`` that waited ``wait_ns`` for a connection."""
        self.acquires += 1
        self.acquire_wait_ns += wait_ns
        if wait_ns > self.acquire_wait_max_ns:
            self.acquire_wait_max_ns = wait_ns
        self.acquire_buckets[bisect_left(BOUNDS_NS, wait_ns)] += 1

    def error(self, exc: BaseException) -> None:
        """Count a failure under its class name (``UniqueViolationError``, ``TimeoutError``...)."""
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """A plain-dict copy of the counters; durations in seconds, cumulative buckets."""
        return {
            "queries": self.queries,
            "errors": sum(self.errors.values()),
            "errors_by_class": dict(self.errors),
            "slow_queries": self.slow,
            "latency": _histogram(self.queries, self.latency_ns, self.latency_max_ns,
                                  self.buckets),
            "waiters": self.waiting,
            "acquire_wait": _histogram(self.acquires, self.acquire_wait_ns,
                                       self.acquire_wait_max_ns, self.acquire_buckets),
        }

    def reset(self) -> None:
        """Zero every counter (the ``waiting`` gauge is live state and is kept)."""
        waiting = self.waiting
        self.__init__()  # type: ignore[misc]
        self.waiting = waiting


_FINGERPRINTS: dict[bytes, tuple[str | None, str]] = {}  # blake2b(text) -> (normalized, fp)
_FINGERPRINT_CACHE_MAX = 4096
# Literal tokens of PostgreSQL's lexer: strings of every quoting style ('..', E'..', U&'..',
# $tag$..$tag$), bit/hex strings and numbers.
_LITERAL_TOKENS = frozenset({"SCONST", "USCONST", "BCONST", "XCONST", "ICONST", "FCONST"})
# Keyed per process: an unparseable statement's hash must not be a dictionary-attack oracle
# for a weak password inside it, so it is only stable within one process.
_RAW_KEY = os.urandom(16)
UNPARSEABLE = "<statement not parseable by pglast: text not kept>"


def normalize(query: str) -> tuple[str | None, str]:
    """``(normalized statement, fingerprint)`` of ``query``; no literal survives.

    pglast's ``normalize`` replaces constants by ``$n`` placeholders (as pg_stat_statements
    shows statements) and ``fingerprint`` is pg_stat_statements-like grouping, so
    ``WHERE id = 1`` and ``WHERE id = $1`` group together.  The normalizer leaves some
    constants of utility statements alone (``CREATE TABLE ... DEFAULT 'x'``, ``COMMENT ...
    IS '...'``), so every literal token the lexer still finds is replaced as well.  A statement
    pglast cannot parse gives ``(None, "raw:<keyed hash>")``: its text is never kept.
    """
    digest = hashlib.blake2b(query.encode(), digest_size=16).digest()
    cached = _FINGERPRINTS.get(digest)
    if cached is not None:
        return cached
    from pglast.parser import fingerprint as pg_fingerprint
    from pglast.parser import normalize as pg_normalize
    from pglast.parser import scan

    result: tuple[str | None, str]
    try:
        text = _mask_literals(pg_normalize(query), scan)
        result = (text, str(pg_fingerprint(query)))
    except Exception:
        normalised = " ".join(query.split()).lower().encode()
        raw = hashlib.blake2b(normalised, digest_size=8, key=_RAW_KEY).hexdigest()
        result = (None, "raw:" + raw)
    if len(_FINGERPRINTS) >= _FINGERPRINT_CACHE_MAX:
        _FINGERPRINTS.clear()
    _FINGERPRINTS[digest] = result
    return result


def _mask_literals(text: str, scan: Callable[[str], Any]) -> str:
    """``text`` with every literal token left by the normalizer replaced by ``$n``."""
    tokens = [t for t in scan(text) if t.name in _LITERAL_TOKENS]
    if not tokens:
        return text
    raw = text.encode()  # the scanner's offsets are byte offsets, ``end`` inclusive
    params = [int(m) for m in re.findall(rb"\$(\d+)", raw)]
    n = max(params, default=0)
    out: list[bytes] = []
    last = 0
    for token in tokens:
        n += 1
        out.append(raw[last:token.start])
        out.append(b"$%d" % n)
        last = token.end + 1
    out.append(raw[last:])
    return b"".join(out).decode()


def fingerprint(query: str) -> str:
    """pglast fingerprint of ``query`` (``"raw:<hash>"`` when pglast cannot parse it)."""
    return normalize(query)[1]


class SlowQueryLog:
    """Bounded in-memory log of statements slower than a threshold.

    Entries hold the *normalized* statement (every constant replaced by ``$n``, see
    :func:`normalize`), its fingerprint, shard, endpoint role, method, duration and
    wall-clock time -- never literal text nor the bound parameters: a statement may carry a
    password (``ALTER ROLE ... PASSWORD $$...$$``) or personal data, and both the log and
    ``slow_queries()`` end up in tickets.  A statement pglast cannot parse is kept as its
    fingerprint only (``query`` says so).  Each slow statement is also logged once on
    ``tiercache.sharding.slowlog`` at WARNING, with the same normalized text.
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
        text, fp = normalize(query)
        shown = UNPARSEABLE if text is None else (
            text if len(text) <= 2000 else text[:2000] + "..."
        )
        entry: dict[str, Any] = {
            "shard": shard,
            "role": role,
            "method": method,
            "query": shown,
            "fingerprint": fp,
            "duration_ms": elapsed_ns / 1e6,
            "failed": failed,
            "at": time.time(),
        }
        self._entries.append(entry)
        log.warning(
            "slow query on shard %s (%s) %.1f ms fingerprint=%s: %s",
            shard, role, elapsed_ns / 1e6, fp, shown[:200],
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
        """Drop every entry (the threshold is kept)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
