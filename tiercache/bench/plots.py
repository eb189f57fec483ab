"""PNG charts of a bench run (``tiercache bench --plot DIR``; needs the ``plots`` extra).

Per suite: every chart the suite recorded on its context (latency CDFs of tiercache vs its
peers, x/y lines such as throughput vs concurrency, time series such as hit ratio per tier or
rows/s during a rebalance; see :mod:`tiercache.bench.base`), a comparison bar chart from rows
with ``ours_ns`` / ``theirs_ns``, and a CDF of legacy ``data["samples_ns"]`` rows. The same
functions redraw the charts of a saved JSON file (``tiercache bench plot results.json DIR``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tiercache.bench.base import fmt_ns

__all__ = ["SAMPLES_KEY", "plot_charts", "plot_payload", "plot_results", "strip_samples"]

SAMPLES_KEY = "samples_ns"
_OURS = "#1f5fa8"
#: tiercache variants (L1+L2, +refresh, +L3...): shades of blue, told apart by line style.
_OURS_STYLES = [(_OURS, "-"), ("#6baed6", "--"), ("#08306b", ":"), ("#4292c6", "-.")]
_PALETTE = ["#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
            "#666666", "#17becf"]


def strip_samples(results: Mapping[str, Sequence[Mapping[str, Any]]]
                  ) -> dict[str, list[dict[str, Any]]]:
    """The results without raw samples (they belong in plots, not in the JSON file)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for suite, rows in results.items():
        out[suite] = []
        for row in rows:
            copy: dict[str, Any] = dict(row)
            if "data" in row:
                copy["data"] = {k: v for k, v in row["data"].items() if k != SAMPLES_KEY}
            out[suite].append(copy)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "chart"


def _is_ours(label: str) -> bool:
    return label.lower().startswith("tiercache")


def _styles(labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """tiercache series bold blue, peers in a fixed palette (stable across charts)."""
    out: dict[str, dict[str, Any]] = {}
    peers = 0
    ours = 0
    for label in labels:
        if _is_ours(label):
            color, style = _OURS_STYLES[ours % len(_OURS_STYLES)]
            out[label] = {"color": color, "linewidth": 2.4, "zorder": 3, "linestyle": style}
            ours += 1
        else:
            out[label] = {"color": _PALETTE[peers % len(_PALETTE)], "linewidth": 1.5,
                          "zorder": 2}
            peers += 1
    return out


def _time_unit(series: Sequence[Sequence[float]]) -> tuple[str, float]:
    """The unit that reads best for the fastest contender's median (sorted series)."""
    medians = [v[len(v) // 2] for v in series if v]
    median = min(medians) if medians else 0.0
    for unit, factor in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if median >= factor:
            return unit, factor
    return "ns", 1.0


def _pct(values: Sequence[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


def _cdf(ax: Any, chart: Mapping[str, Any]) -> None:
    series: dict[str, list[float]] = {k: sorted(v) for k, v in chart["series"].items() if v}
    unit, factor = _time_unit(list(series.values()))
    styles = _styles(list(series))
    for label, values in series.items():
        xs = [v / factor for v in values]
        n = len(xs)
        count = chart.get("counts", {}).get(label, n)
        ax.step([xs[0], *xs], [0.0, *((i + 1) / n for i in range(n))], where="post",
                **styles[label],
                label=f"{label}: p50 {fmt_ns(_pct(values, 0.5))}, "
                      f"p99 {fmt_ns(_pct(values, 0.99))} "
                      f"(n={count:,})")
    lows = [v[0] / factor for v in series.values()]
    highs = [v[-1] / factor for v in series.values()]
    if lows and min(lows) > 0:
        ax.set_xscale("log")
        ax.set_xlim(min(lows) / 1.15, max(highs) * 1.15)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"latency ({unit}, log scale)")
    ax.set_ylabel("fraction of calls <= latency")


def _lines(ax: Any, chart: Mapping[str, Any]) -> None:
    styles = _styles(list(chart["series"]))
    for label, points in chart["series"].items():
        if points:
            xs, ys = zip(*points, strict=True)
            marker = "o" if len(points) <= 30 else None
            ax.plot(xs, ys, marker=marker, markersize=4, label=label, **styles[label])
    if chart.get("xlog"):
        ax.set_xscale("log")
    if chart.get("ylog"):
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel(chart.get("xlabel", ""))
    ax.set_ylabel(chart.get("ylabel", ""))


def _title(suite: str, title: str) -> str:
    """``"e2e: <title>"``, without repeating the suite when the title starts with it."""
    for prefix in (f"{suite}: ", f"{suite} "):
        if title.lower().startswith(prefix.lower()):
            title = title[len(prefix):]
    return title


def _draw(plt: Any, suite: str, chart: Mapping[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 5.2))
    (_cdf if chart["kind"] == "cdf" else _lines)(ax, chart)
    ax.set_title(f"{suite}: {_title(suite, chart['title'])}")
    ax.grid(True, which="both", alpha=0.3)
    if chart.get("series"):  # below the axes: a legend inside hides a CDF's middle
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.13),
                  ncol=2 if len(chart["series"]) > 3 else 1, frameon=False)
    if chart.get("note"):
        ax.set_title(f"{suite}: {_title(suite, chart['title'])}\n{chart['note']}",
                     fontsize="medium")
    return _save(plt, fig, path)


def _groups(compared: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[str, float]]]:
    """``operation -> [(contender, ns), ...]`` with tiercache first: rows named
    ``"<operation> vs <peer>"`` that share an operation *and* tiercache's figure share one
    tiercache bar; any other row is a group of its own."""
    keyed: dict[tuple[str, float], list[tuple[str, float]]] = {}
    names: dict[tuple[str, float], list[str]] = {}
    for row in compared:
        op, sep, peer = row["name"].partition(" vs ")
        ours = float(row["data"]["ours_ns"])
        key = (op, ours)
        keyed.setdefault(key, [("tiercache", ours)]).append(
            (peer if sep else "baseline", float(row["data"]["theirs_ns"])))
        names.setdefault(key, []).append(row["name"])
    out: dict[str, list[tuple[str, float]]] = {}
    for key, bars in keyed.items():
        label = key[0] if len(bars) > 2 else names[key][0]
        out[label if label not in out else names[key][0]] = bars
    return out


def _compare_bars(plt: Any, suite: str, compared: Sequence[Mapping[str, Any]],
                  path: Path) -> Path:
    groups = _groups(compared)
    n_bars = sum(len(b) for b in groups.values())
    fig, ax = plt.subplots(figsize=(10, 0.28 * n_bars + 0.35 * len(groups) + 1.6))
    y, ticks, labels = 0.0, [], []
    values = [ns for bars in groups.values() for _, ns in bars]
    for op, bars in groups.items():
        ours = bars[0][1]
        for i, (who, ns) in enumerate(bars):
            ax.barh(y, ns, height=0.8, color=_OURS if i == 0 else "#b5b5b5")
            note = ("" if i == 0 else f"{ns / ours:.1f}x tiercache's time" if ns >= ours
                    else f"tiercache {ours / ns:.2f}x its time")
            ax.annotate(f"{fmt_ns(ns)}  {note}".rstrip(), (ns, y), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize="x-small")
            ticks.append(y)
            labels.append(f"{op}: {who}" if i == 0 else who)
            y += 1
        y += 0.6
    ax.set_yticks(ticks, labels, fontsize="x-small")
    ax.set_ylim(y - 0.6 - 0.5, -0.6)
    ax.set_xscale("log")
    ax.set_xlim(min(values) / 2, max(values) * 30)
    ax.set_xlabel("ns per operation (log scale; shorter is faster)")
    ax.set_title(f"{suite}: tiercache (blue) vs baselines and peers, per operation")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return _save(plt, fig, path)


def plot_charts(results: Mapping[str, Sequence[Mapping[str, Any]]],
                charts: Mapping[str, Sequence[Mapping[str, Any]]],
                directory: str | Path) -> list[Path]:
    """Write every chart of every suite; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    from matplotlib import pyplot as plt

    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for suite in dict.fromkeys([*results, *charts]):
        used: set[str] = set()

        def path_for(title: str, s: str = suite, seen: set[str] = used) -> Path:
            stem, n = f"{s}-{_slug(title)}", 2
            name = stem
            while name in seen:
                name, n = f"{stem}-{n}", n + 1
            seen.add(name)
            return out_dir / f"{name}.png"

        for chart in charts.get(suite, ()):
            if any(chart.get("series", {}).values()):
                written.append(_draw(plt, suite, chart,
                                     path_for(_title(suite, chart["title"]))))
        rows = results.get(suite, ())
        legacy = {r["name"]: r["data"][SAMPLES_KEY] for r in rows
                  if SAMPLES_KEY in r.get("data", {}) and r["data"][SAMPLES_KEY]}
        if legacy:
            chart = {"kind": "cdf", "title": "latency distributions", "series": legacy}
            written.append(_draw(plt, suite, chart, path_for("latency")))
        compared = [r for r in rows if {"ours_ns", "theirs_ns"} <= r.get("data", {}).keys()
                    and r["data"]["ours_ns"] > 0 and r["data"]["theirs_ns"] > 0]
        if compared:
            written.append(_compare_bars(plt, suite, compared, path_for("compare")))
    return written


def plot_results(results: Mapping[str, Sequence[Mapping[str, Any]]],
                 directory: str | Path) -> list[Path]:
    """The rows' own charts only (legacy entry point: no recorded charts)."""
    return plot_charts(results, {}, directory)


def plot_payload(payload: Mapping[str, Any], directory: str | Path) -> list[Path]:
    """Redraw the charts of a saved ``--json`` file."""
    return plot_charts(payload.get("results", {}), payload.get("charts", {}), directory)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
