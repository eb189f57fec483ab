"""``tiercache bench compare A.json B.json``: what changed from run A to run B, row by row.

Rows are matched by suite + name. Each row's headline value (``value``, else ``data["ratio"]``,
``ours_ns``, ``rows_per_s``...) is compared in its "better" direction; a change inside the
noise band is "same". The band is the larger of ``--noise`` (default 5%) and the spread
between the rounds of either run (median - min over min of each contender), doubled for rows
with no rounds at all: a figure measured once on a shared machine moves by that much anyway.
Regressions are listed first, largest first; then target flips, improvements, the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["compare_payloads", "headline", "main", "noise_of"]

#: Fallback headline keys in ``data`` (key, unit, higher is better).
_FALLBACK = (("ratio", "x", False), ("ours_ns", "ns", False), ("ns_per_key", "ns", False),
             ("rows_per_s", "rows/s", True), ("ops_per_s", "ops/s", True),
             ("bytes", "B", False), ("ours_bytes", "B", False))


def headline(row: dict[str, Any]) -> tuple[float, str, bool] | None:
    """(value, unit, higher_is_better) of a row, or None when it has no number."""
    if isinstance(row.get("value"), int | float):
        return float(row["value"]), str(row.get("unit", "")), row.get("better") == "higher"
    data = row.get("data") or {}
    for key, unit, higher in _FALLBACK:
        if isinstance(data.get(key), int | float):
            return float(data[key]), unit, higher
    return None


def noise_of(row: dict[str, Any]) -> float | None:
    """Relative noise of a row from its rounds (None: the row kept no rounds)."""
    spreads = []
    for values in (row.get("rounds") or {}).values():
        vals = sorted(v for v in values if isinstance(v, int | float))
        if len(vals) >= 3 and vals[0] > 0:
            spreads.append((vals[len(vals) // 2] - vals[0]) / vals[0])
    return max(spreads) if spreads else None


def _rows(payload: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(suite, row["name"]): row for suite, rows in payload.get("results", {}).items()
            for row in rows}


def compare_payloads(a: dict[str, Any], b: dict[str, Any], noise: float = 0.05
                     ) -> list[dict[str, Any]]:
    """One entry per row of either run, regressions first (largest first)."""
    rows_a, rows_b = _rows(a), _rows(b)
    out: list[dict[str, Any]] = []
    for key in dict.fromkeys([*rows_a, *rows_b]):
        ra, rb = rows_a.get(key), rows_b.get(key)
        entry: dict[str, Any] = {"suite": key[0], "name": key[1], "a": None, "b": None,
                                 "unit": "", "change": None, "band": None,
                                 "ok_a": ra.get("ok") if ra else None,
                                 "ok_b": rb.get("ok") if rb else None}
        if ra is None or rb is None:
            entry["verdict"] = "only in A" if rb is None else "only in B"
            out.append(entry)
            continue
        ha, hb = headline(ra), headline(rb)
        if ha is None or hb is None or ha[0] == 0:
            entry["verdict"] = "no figure"
            out.append(entry)
            continue
        (va, unit, higher), vb = ha, hb[0]
        change = (vb - va) / abs(va)
        measured = [n for n in (noise_of(ra), noise_of(rb)) if n is not None]
        band = max([noise, *measured]) if measured else 2 * noise
        worse = -change if higher else change
        verdict = "same" if abs(change) <= band else "regression" if worse > 0 else "improved"
        entry.update(a=va, b=vb, unit=unit, change=change, band=band, verdict=verdict,
                     worse_by=worse)
        out.append(entry)
    order = {"regression": 0, "improved": 2, "same": 3, "no figure": 4, "only in A": 5,
             "only in B": 6}

    def rank(e: dict[str, Any]) -> tuple[int, float]:
        flipped = e["ok_a"] is True and e["ok_b"] is False
        first = 0 if e["verdict"] == "regression" else 1 if flipped else order[e["verdict"]]
        return first, -abs(e.get("worse_by") or 0.0)

    return sorted(out, key=rank)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    return f"{value:.3g}x" if unit == "x" else f"{value:,.4g} {unit}".strip()


def _describe(payload: dict[str, Any]) -> str:
    m, git = payload.get("machine", {}), payload.get("git", {})
    load = (payload.get("run") or {}).get("load") or {}
    rev = (git.get("revision") or "?")[:10] + ("+dirty" if git.get("dirty") else "")
    peak = f", load max {load['max']:.1f}" if load.get("max") is not None else ""
    return (f"{rev} {m.get('date', '?')} {m.get('implementation', '?')} "
            f"{m.get('cpu_count', '?')} cores{peak}")


def main(path_a: str, path_b: str, *, noise: float = 0.05, strict: bool = False,
         console: Console | None = None) -> int:
    """Print the comparison; exit 1 with ``strict`` when anything regressed."""
    console = console or Console()
    a = json.loads(Path(path_a).read_text(encoding="utf-8"))
    b = json.loads(Path(path_b).read_text(encoding="utf-8"))
    entries = compare_payloads(a, b, noise)
    table = Table(title=f"A: {_describe(a)}\nB: {_describe(b)}", title_justify="left")
    for column in ("suite", "measurement", "A", "B", "change", "noise band", "verdict"):
        table.add_column(column, overflow="fold", justify="right" if column in (
            "A", "B", "change", "noise band") else "left")
    styles = {"regression": "bold red", "improved": "green", "same": "dim"}
    for e in entries:
        verdict = e["verdict"]
        if e["ok_a"] is True and e["ok_b"] is False:
            verdict += ", target now missed"
        elif e["ok_a"] is False and e["ok_b"] is True:
            verdict += ", target now met"
        style = styles.get(e["verdict"], "")
        table.add_row(e["suite"], e["name"], _fmt(e["a"], e["unit"]), _fmt(e["b"], e["unit"]),
                      "" if e["change"] is None else f"{e['change']:+.1%}",
                      "" if e["band"] is None else f"±{e['band']:.0%}",
                      f"[{style}]{verdict}[/]" if style else verdict)
    console.print(table)
    regressions = sum(e["verdict"] == "regression" for e in entries)
    improved = sum(e["verdict"] == "improved" for e in entries)
    console.print(f"{regressions} regression(s), {improved} improvement(s), "
                  f"{sum(e['verdict'] == 'same' for e in entries)} within noise, "
                  f"{len(entries)} rows")
    return 1 if strict and regressions else 0
