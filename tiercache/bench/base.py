"""The suite API: what a bench suite receives (:class:`BenchContext`) and returns (:class:`Row`).

Writing a suite
===============

A suite is a module in :mod:`tiercache.bench.suites` (file name not starting with ``_``) with::

    NAME = "l3"                       # --suite NAME
    DESCRIPTION = "one line for --list"
    NEEDS = ("pg",)                   # servers the runner provides: "redis", "pg" (default both)
    DEFAULT = True                    # run when no --suite is given (default True)

    async def run(ctx: BenchContext) -> list[Row]: ...

``run`` checks the correctness of what it is about to time first (same results as the baseline;
raise :class:`SuiteError` on a mismatch: a fast wrong answer must fail loudly), then times it,
honouring ``ctx.quick`` (``ctx.scale(full, quick)``; ``--quick`` runs every suite in ~1 minute).

Rows
----
A :class:`Row` is a dict (a ``TypedDict``: old suites' plain dicts keep working). Required:
``name`` (stable: ``bench compare`` matches rows of two runs by suite + name) and ``summary``
(one human line). Optional keys the report, the JSON file and ``bench compare`` understand:

``target`` / ``ok``
    The goal as text and whether it was met (``ok=None``: informational, no target).
``value`` / ``unit`` / ``better``
    The headline number (``"lower"`` or ``"higher"`` is better), e.g. ``0.93, "x"`` for a ratio,
    ``52_000, "rows/s", "higher"``. ``bench compare`` compares it; without it, it falls back
    on ``data["ratio"]``, ``data["ours_ns"]``, ``data["rows_per_s"]``.
``rounds``
    Every round, per contender: ``{"tiercache": [...], "lru_cache": [...]}`` in ``unit`` (or
    ns). Kept in the JSON file; the spread between rounds drives the noise warning and the noise
    band of ``bench compare``.
``status``
    ``"unavailable"`` for a peer that is not installed or failed: see :func:`unavailable_row`.
    Never skip a peer silently; the closing summary lists every unavailable one. ``"n/a"``
    (:func:`na_row`) for a comparison that does not apply (``lru_cache`` has no ``set``).
``data``
    Anything else worth keeping in the JSON file. ``data["samples_ns"]`` (legacy) is drawn as
    a latency CDF per suite and left out of the JSON.

Builders: :func:`ratio_row` (two per-op times), :func:`compare_row` (per-round samples of two
contenders; min / median / p99 and the ratio), :func:`target_row` (a value against a bound),
:func:`info_row`, :func:`unavailable_row`, :func:`na_row`. Timing helpers (warm-up,
interleaved rounds so both sides see the same background load) live in
:mod:`tiercache.bench.timing`.

Charts (``--plot DIR``, one PNG each; the data is also kept in the JSON file)
-----------------------------------------------------------------------------
``ctx.cdf(title, {label: samples}, unit="ns")``
    Latency CDF: one line per contender, tiercache's drawn bold. Pass raw per-call (or
    per-batch) latencies; they are reduced to <= 1000 quantiles when recorded.
``ctx.lines(title, {label: [(x, y), ...]}, xlabel=..., ylabel=...)``
    Any x/y plot: throughput vs concurrency (``xlog=True``), hit ratio vs cache size.
``ctx.timeseries(title, {label: [(t_seconds, y), ...]}, ylabel=...)``
    Over time: hit ratio per tier (e2e), rows/s during a rebalance. ``t`` in seconds from start.

Label axes with units (``ylabel="rows/s"``). Every suite gets a comparison bar chart for free
from rows with ``data["ours_ns"]`` / ``data["theirs_ns"]``.

Progress: ``with ctx.progress("l3: warm-up", total) as bar: ... bar.advance()``.
"""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from tiercache.bench.timing import best_ns_interleaved, best_ns_per_op, summarize

__all__ = [
    "BenchContext", "Progress", "Row", "SuiteError", "best_ns_interleaved", "best_ns_per_op",
    "compare_row", "fmt_ns", "info_row", "na_row", "optional_import", "ratio_row", "target_row",
    "unavailable_row",
]

Better = Literal["lower", "higher"]
CDF_POINTS = 1000  # quantiles kept per CDF series (plots and JSON stay small)
_UNIT_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}


class SuiteError(RuntimeError):
    """A suite could not produce a trustworthy figure (wrong results, missing servers)."""


class _RowRequired(TypedDict):
    name: str
    summary: str


class Row(_RowRequired, total=False):
    """One measurement (see the module docstring for every key)."""

    target: str | None
    ok: bool | None
    value: float
    unit: str
    better: Better
    rounds: dict[str, list[float]]
    status: str
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
    """Where the servers are, how long to run, and where charts go.

    ``redis_url`` / ``pg_dsns`` are filled by the runner (from ``--redis-url`` / ``--pg-dsn``
    or from a :class:`~tiercache.local.LocalStack` it starts). ``quick`` asks for a short
    run (CI smoke, ``--quick``); figures from quick runs are noisier.
    """

    quick: bool = False
    redis_url: str | None = None
    pg_dsns: dict[str, str] = field(default_factory=dict)
    new_progress: Callable[[str, float], Progress] = _no_progress
    charts: list[dict[str, Any]] = field(default_factory=list)

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

    # ------------------------------------------------------------------ charts

    def cdf(self, title: str, series: Mapping[str, Sequence[float]], *, unit: str = "ns",
            note: str = "") -> None:
        """A latency CDF; ``series`` maps a contender to its latencies in ``unit``."""
        factor = _UNIT_NS[unit]
        kept: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        for label, samples in series.items():
            if samples:
                kept[label] = _quantiles([float(s) * factor for s in samples], CDF_POINTS)
                counts[label] = len(samples)
        self.charts.append({"kind": "cdf", "title": title, "unit": "ns", "series": kept,
                            "counts": counts, "note": note})

    def lines(self, title: str, series: Mapping[str, Sequence[tuple[float, float]]], *,
              xlabel: str, ylabel: str, xlog: bool = False, ylog: bool = False,
              note: str = "") -> None:
        """An x/y chart, one line per contender (throughput vs concurrency, ...)."""
        self.charts.append({
            "kind": "lines", "title": title, "xlabel": xlabel, "ylabel": ylabel, "xlog": xlog,
            "ylog": ylog, "note": note,
            "series": {k: [[float(x), float(y)] for x, y in v] for k, v in series.items()},
        })

    def timeseries(self, title: str, series: Mapping[str, Sequence[tuple[float, float]]], *,
                   ylabel: str, note: str = "") -> None:
        """Values over time; ``t`` in seconds since the start of the measurement."""
        self.lines(title, series, xlabel="time since start (s)", ylabel=ylabel, note=note)

    def take_charts(self) -> list[dict[str, Any]]:
        """The charts recorded since the last call (the runner calls it after each suite)."""
        charts, self.charts = self.charts, []
        return charts


def _quantiles(values: list[float], points: int) -> list[float]:
    ordered = sorted(values)
    if len(ordered) <= points:
        return ordered
    last = len(ordered) - 1
    return [ordered[round(i * last / (points - 1))] for i in range(points)]


# ---------------------------------------------------------------------- row builders


def fmt_ns(ns: float) -> str:
    """``123.4 ns`` / ``1.23 us`` / ``4.56 ms``."""
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} us"
    return f"{ns:.1f} ns"


_fmt_ns = fmt_ns  # the old private name


def _judge(ratio: float, theirs_label: str, max_ratio: float | None,
           min_speedup: float | None) -> tuple[str | None, bool | None]:
    if max_ratio is not None:
        return f"<= {max_ratio:g}x {theirs_label}", ratio <= max_ratio
    if min_speedup is not None:
        return f">= {min_speedup:g}x faster than {theirs_label}", 1 / ratio >= min_speedup
    return None, None


def ratio_row(
    name: str,
    ours_ns: float,
    theirs_ns: float,
    theirs_label: str,
    *,
    max_ratio: float | None = None,
    min_speedup: float | None = None,
    data: dict[str, Any] | None = None,
    rounds: dict[str, list[float]] | None = None,
) -> Row:
    """A row comparing two per-op times measured in one run (ours / theirs).

    ``max_ratio``: ours must take at most this multiple of theirs (e.g. 1.5 vs lru_cache);
    ``min_speedup``: theirs must take at least this multiple of ours (e.g. 10x vs uhashring).
    The headline ``value`` is the ratio ours / theirs (lower is better).
    """
    ratio = ours_ns / theirs_ns
    speedup = theirs_ns / ours_ns
    target, ok = _judge(ratio, theirs_label, max_ratio, min_speedup)
    summary = (
        f"{fmt_ns(ours_ns)} vs {theirs_label} {fmt_ns(theirs_ns)}: "
        + (f"{speedup:.1f}x faster" if speedup >= 1 else f"{ratio:.2f}x the time")
    )
    row: Row = {"name": name, "summary": summary, "target": target, "ok": ok,
                "value": ratio, "unit": "x", "better": "lower"}
    row["data"] = {"ours_ns": ours_ns, "theirs_ns": theirs_ns, "ratio": ratio, **(data or {})}
    if rounds:
        row["rounds"] = rounds
    return row


def compare_row(
    name: str,
    rounds: Mapping[str, Sequence[float]],
    *,
    ours: str,
    theirs: str,
    theirs_label: str | None = None,
    statistic: Literal["min", "median", "paired"] = "min",
    max_ratio: float | None = None,
    min_speedup: float | None = None,
    data: dict[str, Any] | None = None,
) -> Row:
    """A ratio row from per-round ns per op of two contenders measured in one run.

    ``statistic``: ``"min"`` (best round of each: the least noisy estimator for a CPU-bound
    loop), ``"median"``, or ``"paired"`` (median of per-round ratios: rounds run back to back,
    for network calls whose jitter is as large as the effect). The row keeps every round,
    min / median / p99 of each side, and the ratio of medians next to the judged one.
    """
    a, b = list(rounds[ours]), list(rounds[theirs])
    sa, sb = summarize(a), summarize(b)
    if statistic == "paired":
        ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
        ours_ns, theirs_ns = sa["median"], sb["median"]
    else:
        ours_ns, theirs_ns = sa[statistic], sb[statistic]
        ratio = ours_ns / theirs_ns
    label = theirs_label or theirs
    target, ok = _judge(ratio, label, max_ratio, min_speedup)
    speed = f"{1 / ratio:.1f}x faster" if ratio <= 1 else f"{ratio:.2f}x the time"
    summary = (f"{fmt_ns(ours_ns)} vs {label} {fmt_ns(theirs_ns)}: {speed} "
               f"({statistic} of {len(a)} rounds; p99 {fmt_ns(sa['p99'])} vs "
               f"{fmt_ns(sb['p99'])})")
    return {
        "name": name, "summary": summary, "target": target, "ok": ok,
        "value": ratio, "unit": "x", "better": "lower",
        "rounds": {ours: a, theirs: b},
        "data": {"ours_ns": ours_ns, "theirs_ns": theirs_ns, "ratio": ratio,
                 "statistic": statistic, "ratio_of_medians": sa["median"] / sb["median"],
                 "stats": {ours: sa, theirs: sb}, **(data or {})},
    }


def target_row(name: str, value: float, unit: str, *, at_most: float | None = None,
               at_least: float | None = None, summary: str | None = None,
               rounds: dict[str, list[float]] | None = None,
               data: dict[str, Any] | None = None) -> Row:
    """A value judged against a bound (``at_most`` or ``at_least``, in ``unit``)."""
    if at_most is not None:
        target, ok, better = f"<= {at_most:g} {unit}", value <= at_most, "lower"
    elif at_least is not None:
        target, ok, better = f">= {at_least:g} {unit}", value >= at_least, "higher"
    else:
        raise ValueError("target_row needs at_most= or at_least=")
    row: Row = {"name": name, "summary": summary or f"{value:,.4g} {unit}", "target": target,
                "ok": ok, "value": value, "unit": unit, "better": better,  # type: ignore[typeddict-item]
                "data": dict(data or {})}
    if rounds:
        row["rounds"] = rounds
    return row


def info_row(name: str, summary: str, *, value: float | None = None, unit: str | None = None,
             better: Better | None = None, data: dict[str, Any] | None = None) -> Row:
    """A figure reported without a target."""
    row: Row = {"name": name, "summary": summary, "target": None, "ok": None,
                "data": dict(data or {})}
    if value is not None:
        row["value"] = value
        if unit is not None:
            row["unit"] = unit
        if better is not None:
            row["better"] = better
    return row


def unavailable_row(name: str, peer: str, reason: str, *, target: str | None = None) -> Row:
    """A measurement that could not be made because a peer is not installed or failed."""
    return {"name": name, "summary": f"{peer} not measured: {reason}", "target": target,
            "ok": None, "status": "unavailable", "data": {"peer": peer, "reason": reason}}


def na_row(name: str, reason: str) -> Row:
    """A comparison that does not apply (the peer has no such operation): shown, not judged."""
    return {"name": name, "summary": f"n/a: {reason}", "target": None, "ok": None,
            "status": "n/a", "data": {"reason": reason}}


def optional_import(module: str) -> tuple[Any | None, str]:
    """``(module, "")`` or ``(None, why)``: peers are optional, their absence is reported."""
    try:
        return importlib.import_module(module), ""
    except Exception as exc:  # ImportError, or a peer broken on this platform
        return None, f"{type(exc).__name__}: {exc}" if not isinstance(
            exc, ModuleNotFoundError) else f"not installed (pip install {module})"
