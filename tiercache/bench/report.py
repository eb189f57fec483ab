"""The run's report: one table per suite, the closing SUMMARY, and the JSON payload.

The summary is what a reader must not miss: targets met / missed / info per suite, every
missed row repeated, peers that could not be measured, suites that failed or are not built,
and a warning when the machine was busy (load above the core count, large spread between
rounds) so a miss on a loaded box is read as such.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tiercache.bench.base import Row
from tiercache.bench.compare import noise_of
from tiercache.bench.plots import SAMPLES_KEY

__all__ = ["NOISY_SPREAD", "SCHEMA", "build_payload", "noisy_rows", "print_tables",
           "summarize_run", "summary_panel"]

SCHEMA = 2
NOISY_SPREAD = 0.5  # (median - min) / min between rounds above this: the figure is noisy


def _status(row: Row | dict[str, Any]) -> str:
    if row.get("status") in ("unavailable", "n/a"):
        return str(row["status"])
    ok = row.get("ok")
    return "met" if ok else "missed" if ok is False else "info"


def _value_text(row: Row | dict[str, Any]) -> str:
    value, unit = row.get("value"), row.get("unit", "")
    if value is None:
        return ""
    if unit == "x" and row.get("better", "lower") == "lower" and value > 0:
        return f"{1 / value:.3g}x faster" if value < 1 else f"{value:.3g}x slower"
    if unit == "x":
        return f"{value:.3g}x"
    return f"{value:,.4g} {unit}".strip()


def print_tables(console: Console, results: dict[str, list[Row]]) -> None:
    marks = {"met": "[green]OK[/]", "missed": "[bold red]MISS[/]", "info": "[dim]info[/]",
             "unavailable": "[yellow]peer n/a[/]", "n/a": "[dim]n/a[/]"}
    for suite, rows in results.items():
        table = Table(title=f"tiercache bench: {suite}", title_justify="left", expand=True)
        table.add_column("measurement", ratio=3, overflow="fold")
        table.add_column("value", justify="right", no_wrap=True)
        table.add_column("result", ratio=5, overflow="fold")
        table.add_column("target", ratio=2, overflow="fold")
        table.add_column("", no_wrap=True)
        for row in rows:
            table.add_row(row["name"], _value_text(row), row["summary"],
                          row.get("target") or "", marks[_status(row)])
        console.print(table)


def noisy_rows(results: dict[str, list[Row]]) -> list[tuple[str, str, float]]:
    """(suite, row, spread) for rows whose rounds spread more than :data:`NOISY_SPREAD`."""
    out = []
    for suite, rows in results.items():
        for row in rows:
            noise = noise_of(dict(row))
            if noise is not None and noise > NOISY_SPREAD:
                out.append((suite, row["name"], noise))
    return out


def summarize_run(results: dict[str, list[Row]], failures: dict[str, str],
                  not_built: list[str], load: dict[str, Any] | None) -> dict[str, Any]:
    """The summary as data (kept in the JSON file; :func:`summary_panel` prints it)."""
    per_suite: dict[str, dict[str, int]] = {}
    missed: list[dict[str, Any]] = []
    unavailable: list[dict[str, Any]] = []
    for suite, rows in results.items():
        counts = dict.fromkeys(("met", "missed", "info", "unavailable"), 0)
        for row in rows:
            status = _status(row)
            counts["info" if status == "n/a" else status] += 1
            if status == "missed":
                missed.append({"suite": suite, "name": row["name"], "summary": row["summary"],
                               "target": row.get("target")})
            elif status == "unavailable":
                unavailable.append({"suite": suite, "name": row["name"],
                                    "summary": row["summary"]})
        per_suite[suite] = counts
    warnings: list[str] = []
    load_info = load or {}
    cores = load_info.get("cores") or 1
    peak = load_info.get("max")
    if peak is not None and peak > cores:
        warnings.append(f"busy machine: 1-min load average reached {peak:.1f} on {cores} "
                        f"cores (started at {load_info['start']:.1f}); figures are noisier and "
                        "ratios more trustworthy than absolute times")
    noisy = noisy_rows(results)
    if noisy:
        names = ", ".join(f"{s}/{n} ({sp:.0%})" for s, n, sp in
                          sorted(noisy, key=lambda t: -t[2])[:5])
        more = " ..." if len(noisy) > 5 else ""
        warnings.append(f"{len(noisy)} row(s) with a large spread between rounds "
                        f"(median > {1 + NOISY_SPREAD:g}x the best round): {names}{more}")
    totals = {k: sum(c[k] for c in per_suite.values())
              for k in ("met", "missed", "info", "unavailable")}
    return {"totals": totals, "per_suite": per_suite, "missed": missed,
            "unavailable": unavailable, "failed": dict(failures), "not_built": list(not_built),
            "warnings": warnings, "load": load}


def _one_line(text: str, limit: int = 240) -> str:
    """A peer's failure can carry a traceback: the summary keeps its first line."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def summary_panel(summary: dict[str, Any]) -> Panel:
    t = summary["totals"]
    lines: list[Any] = [Text.from_markup(
        f"targets [green]met {t['met']}[/], [bold red]missed {t['missed']}[/], "
        f"info {t['info']}, peers unavailable {t['unavailable']}; "
        f"suites failed {len(summary['failed'])}, not built {len(summary['not_built'])}")]
    table = Table(box=None, pad_edge=False, show_header=True)
    for column in ("suite", "met", "missed", "info", "n/a"):
        table.add_column(column, justify="left" if column == "suite" else "right")
    for suite, c in summary["per_suite"].items():
        table.add_row(suite, str(c["met"]), f"[red]{c['missed']}[/]" if c["missed"] else "0",
                      str(c["info"]), str(c["unavailable"]))
    for suite in summary["failed"]:
        table.add_row(f"[red]{suite}[/]", "", "", "", "[red]FAILED[/]")
    for suite in summary["not_built"]:
        table.add_row(f"[dim]{suite}[/]", "", "", "", "[dim]not built[/]")
    lines.append(table)
    for miss in summary["missed"]:
        lines.append(Text.from_markup(
            f"[bold red]MISSED[/] {miss['suite']} / {miss['name']}: {miss['summary']} "
            f"[dim](target {miss['target']})[/]", overflow="fold"))
    for row in summary["unavailable"]:
        lines.append(Text.from_markup(f"[yellow]n/a[/] {row['suite']} / {row['name']}: ",
                                      overflow="fold") + Text(_one_line(row["summary"])))
    for suite, message in summary["failed"].items():
        lines.append(Text.from_markup(f"[bold red]FAILED[/] suite {suite}: {message}",
                                      overflow="fold"))
    for warning in summary["warnings"]:
        lines.append(Text.from_markup(f"[yellow]WARNING[/] {warning}", overflow="fold"))
    load = summary.get("load") or {}
    if load.get("max") is not None:
        lines.append(Text(f"load average during the run: start {load['start']:.1f}, "
                          f"mean {load['mean']:.1f}, max {load['max']:.1f} on "
                          f"{load['cores']} cores"))
    ok = not (t["missed"] or summary["failed"])
    return Panel(Group(*lines), title="SUMMARY", border_style="green" if ok else "red")


def _json_row(row: Row) -> dict[str, Any]:
    out: dict[str, Any] = dict(row)
    if "data" in row:
        out["data"] = {k: v for k, v in row["data"].items() if k != SAMPLES_KEY}
    return out


def build_payload(*, machine: dict[str, Any], versions: dict[str, Any], git: dict[str, Any],
                  run: dict[str, Any], results: dict[str, list[Row]],
                  charts: dict[str, list[dict[str, Any]]], failures: dict[str, str],
                  durations: dict[str, float], summary: dict[str, Any]) -> dict[str, Any]:
    """Everything a later ``bench compare`` / ``bench plot`` / README render needs."""
    return {
        "schema": SCHEMA, "machine": machine, "versions": versions, "git": git, "run": run,
        "results": {s: [_json_row(r) for r in rows] for s, rows in results.items()},
        "charts": charts, "failures": failures, "durations_s": durations, "summary": summary,
    }
