"""What a bench suite receives (:class:`BenchContext`) and returns (:class:`Row`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypedDict

__all__ = [
    "BenchContext", "Progress", "Row", "SuiteError", "best_ns_interleaved", "best_ns_per_op",
    "ratio_row",
]


class SuiteError(RuntimeError):
    """A suite could not produce a trustworthy figure (wrong results, missing servers)."""


class _RowRequired(TypedDict):
    name: str
    summary: str


class Row(_RowRequired, total=False):
    """One measurement. ``ok`` is None when the figure is informational (no target)."""

    target: str | None
    ok: bool | None
    data: dict[str, Any]


class Progress:
    """A handle on one progress bar; ``advance()`` as work completes."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        self._advance = advance

    def advance(self, amount: float = 1) -> None:
        self._advance(amount)


def _no_progress(description: str, total: float) -> Progress:
    return Progress(lambda amount: None)


@dataclass
class BenchContext:
    """Where the servers are and how long to run.

    ``redis_url`` / ``pg_dsns`` are filled by the runner (from ``--redis-url`` / ``--pg-dsn``
    or from a :class:`~tiercache.local.LocalStack` it starts). ``quick`` asks for a short
    run (CI smoke, ``--quick``); figures from quick runs are noisier.
    """

    quick: bool = False
    redis_url: str | None = None
    pg_dsns: dict[str, str] = field(default_factory=dict)
    new_progress: Callable[[str, float], Progress] = _no_progress

    def scale(self, full: int, quick: int) -> int:
        """An iteration count: ``quick`` under ``--quick``, else ``full``."""
        return quick if self.quick else full

    @contextmanager
    def progress(self, description: str, total: float) -> Iterator[Progress]:
        """A progress bar for one step of a suite (no-op outside the CLI)."""
        yield self.new_progress(description, total)

    def require_redis(self) -> str:
        if not self.redis_url:
            raise SuiteError("this suite needs a Redis (Cluster) URL: --redis-url")
        return self.redis_url

    def require_pg(self) -> dict[str, str]:
        if not self.pg_dsns:
            raise SuiteError("this suite needs Postgres shard DSNs: --pg-dsn NAME=DSN")
        return self.pg_dsns


def ratio_row(
    name: str,
    ours_ns: float,
    theirs_ns: float,
    theirs_label: str,
    *,
    max_ratio: float | None = None,
    min_speedup: float | None = None,
    data: dict[str, Any] | None = None,
) -> Row:
    """A row comparing two per-op times measured in one run (ours / theirs).

    ``max_ratio``: ours must take at most this multiple of theirs (e.g. 1.5 vs lru_cache);
    ``min_speedup``: theirs must take at least this multiple of ours (e.g. 10x vs uhashring).
    """
    ratio = ours_ns / theirs_ns
    speedup = theirs_ns / ours_ns
    target: str | None = None
    ok: bool | None = None
    if max_ratio is not None:
        target, ok = f"<= {max_ratio:g}x {theirs_label}", ratio <= max_ratio
    elif min_speedup is not None:
        target, ok = f">= {min_speedup:g}x faster than {theirs_label}", speedup >= min_speedup
    summary = (
        f"{_fmt_ns(ours_ns)} vs {theirs_label} {_fmt_ns(theirs_ns)}: "
        + (f"{speedup:.1f}x faster" if speedup >= 1 else f"{ratio:.2f}x the time")
    )
    row: Row = {"name": name, "summary": summary, "target": target, "ok": ok}
    row["data"] = {"ours_ns": ours_ns, "theirs_ns": theirs_ns, "ratio": ratio, **(data or {})}
    return row


def _fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} us"
    return f"{ns:.1f} ns"


def best_ns_interleaved(
    fns: dict[str, Callable[[], Any]], ops: int, repeats: int
) -> dict[str, float]:
    """Best-of-``repeats`` ns per op for each callable, run in alternation.

    Alternating (A, B, A, B, ...) exposes both sides to the same background load, so the
    ratio of the two minima is fair on a shared machine.
    """
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter_ns()
            fn()
            best[name] = min(best[name], (time.perf_counter_ns() - start) / ops)
    return best


def best_ns_per_op(fn: Callable[[], Any], ops: int, repeats: int) -> float:
    """Best-of-``repeats`` nanoseconds per op of ``fn()`` doing ``ops`` operations.

    The minimum is the least noisy estimator of a CPU-bound loop on a shared machine.
    """
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        best = min(best, (time.perf_counter_ns() - start) / ops)
    return best
