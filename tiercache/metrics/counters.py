"""Cheap counting primitives shared by the tiers and the cache core.

Why this shape: counting sits on hot paths (every L2 round trip, every loader call), so
recording must cost a few attribute stores and nothing else -- no locks, no time calls
beyond the one the caller already makes, no allocation. Everything is aggregated only when
somebody *reads* (``stats()``, a Prometheus scrape), which is rare.

* Plain counters are plain ``int`` attributes on the owner (``self.hits += 1``); for a
  family of counters keyed by a label (errors by operation) use :class:`CounterMap`.
* :class:`Histogram` buckets an observation with one ``bisect`` into fixed upper bounds
  (Prometheus ``le`` semantics) and keeps a running sum; :meth:`Histogram.snapshot` builds
  the cumulative ``{"count", "sum", "buckets": [(le, cumulative_count), ...]}`` dict that
  ``stats()`` returns and :mod:`tiercache.metrics` exports unchanged.

Increments are not locked: under heavy thread contention an increment can very rarely be
lost (``+=`` is a read-modify-write). Metrics tolerate that; correctness never reads them.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypedDict

__all__ = [
    "LATENCY_BUCKETS",
    "LOADER_BUCKETS",
    "CounterMap",
    "HistSnapshot",
    "Histogram",
    "empty_snapshot",
    "hit_ratio",
    "merge_snapshots",
]

#: Seconds; sized for network round trips (100 us .. 10 s), e.g. L2 operations.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
#: Seconds; sized for data loaders / database calls (1 ms .. 60 s).
LOADER_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class HistSnapshot(TypedDict):
    """What :meth:`Histogram.snapshot` returns; ``buckets`` end with ``(inf, count)``."""

    count: int
    sum: float
    buckets: list[tuple[float, int]]


class Histogram:
    """Fixed-bucket histogram: ``observe`` is one bisect, one list store and one add.

    ``bounds`` are the finite upper bounds, ascending; an implicit ``+Inf`` bucket follows.
    """

    __slots__ = ("_counts", "bounds", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        ordered = tuple(float(b) for b in bounds)
        if list(ordered) != sorted(set(ordered)) or any(math.isinf(b) for b in ordered):
            raise ValueError("histogram bounds must be finite, unique and ascending")
        self.bounds: tuple[float, ...] = ordered
        self._counts: list[int] = [0] * (len(ordered) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation (``value <= le`` lands in bucket ``le``)."""
        self._counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self._counts)

    def snapshot(self) -> HistSnapshot:
        """Cumulative buckets, the shape Prometheus and ``stats()`` use."""
        counts = list(self._counts)  # copy first: a concurrent observe must not skew the sums
        running = 0
        buckets: list[tuple[float, int]] = []
        for le, n in zip((*self.bounds, math.inf), counts, strict=True):
            running += n
            buckets.append((le, running))
        return {"count": running, "sum": self.sum, "buckets": buckets}

    def reset(self) -> None:
        self._counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def __repr__(self) -> str:
        return f"<Histogram count={self.count} sum={self.sum:.6g}>"


class CounterMap(dict[str, int]):
    """Counters keyed by a label value (e.g. errors by operation); a plain dict underneath.

    ``inc`` is one dict lookup and one store; ``snapshot()`` is a copy for ``stats()``.
    """

    __slots__ = ()

    def inc(self, label: str, amount: int = 1) -> None:
        self[label] = self.get(label, 0) + amount

    @property
    def total(self) -> int:
        return sum(self.values())

    def snapshot(self) -> dict[str, int]:
        return dict(self)


def empty_snapshot(bounds: Sequence[float] = LATENCY_BUCKETS) -> HistSnapshot:
    """A zero histogram snapshot (for a source that has not observed anything yet)."""
    return Histogram(bounds).snapshot()


def merge_snapshots(snapshots: Iterable[Mapping[str, Any]]) -> HistSnapshot:
    """Add histogram snapshots with identical bucket bounds (e.g. several caches' loaders)."""
    merged: HistSnapshot | None = None
    for snap in snapshots:
        buckets = [(float(le), int(n)) for le, n in snap["buckets"]]
        if merged is None:
            merged = {"count": int(snap["count"]), "sum": float(snap["sum"]), "buckets": buckets}
            continue
        if [le for le, _ in merged["buckets"]] != [le for le, _ in buckets]:
            raise ValueError("cannot merge histograms with different bucket bounds")
        merged["count"] += int(snap["count"])
        merged["sum"] += float(snap["sum"])
        merged["buckets"] = [
            (le, a + b) for (le, a), (_, b) in zip(merged["buckets"], buckets, strict=True)
        ]
    return merged if merged is not None else {"count": 0, "sum": 0.0, "buckets": []}


def hit_ratio(hits: int, misses: int) -> float:
    """hits / (hits + misses), 0.0 before the first lookup."""
    total = hits + misses
    return hits / total if total else 0.0
