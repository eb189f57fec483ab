"""``tiercache bench``: pick suites, provide servers, show progress, print and save results.

With no ``--redis-url`` / ``--pg-dsn`` the runner starts a :class:`~tiercache.local.LocalStack`
for the suites that need servers, and stops it at the end. Exit status: 0 when every
suite ran (a missed target is reported, not fatal, unless ``--strict``), 1 with ``--strict``
and a missed target, 2 when a suite failed (wrong results, servers unusable).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tiercache._impl import implementation
from tiercache.bench import base
from tiercache.bench.plots import strip_samples
from tiercache.bench.registry import Suite, discover

__all__ = ["run_cli", "run_suites"]


def _select(names: list[str] | None, suites: dict[str, Suite]) -> list[Suite]:
    if not names:
        return list(suites.values())
    unknown = [n for n in names if n not in suites]
    if unknown:
        raise SystemExit(
            f"tiercache bench: unknown suite(s) {', '.join(unknown)}; "
            f"available: {', '.join(suites)}"
        )
    return [suites[n] for n in names]


def _parse_dsns(items: list[str] | None) -> dict[str, str]:
    dsns: dict[str, str] = {}
    for item in items or []:
        name, sep, dsn = item.partition("=")
        if not sep or not name or not dsn:
            raise SystemExit("tiercache bench: --pg-dsn takes NAME=DSN (e.g. s1=postgresql://...)")
        dsns[name] = dsn
    return dsns


@contextmanager
def _servers(ctx: base.BenchContext, needs: set[str], console: Console) -> Iterator[None]:
    """Fill in what the selected suites need and was not given, from a LocalStack."""
    missing_redis = "redis" in needs and not ctx.redis_url
    missing_pg = "pg" in needs and not ctx.pg_dsns
    if not (missing_redis or missing_pg):
        yield
        return
    from tiercache.local import LocalStack

    stack = LocalStack(
        redis_masters=3 if missing_redis else 0,
        pg_shards=3 if missing_pg else 0,
        progress=lambda message: console.log(f"[dim]local stack:[/] {message}"),
    )
    with console.status("starting a local Redis Cluster + Postgres shards..."):
        stack.start()
    try:
        if missing_redis:
            ctx.redis_url = stack.redis_url
        if missing_pg:
            ctx.pg_dsns = dict(stack.pg_dsns)
        console.log(f"local stack up in {stack.startup_seconds:.1f} s")
        yield
    finally:
        stack.stop()


def _machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def run_suites(
    suites: list[Suite], ctx: base.BenchContext, console: Console
) -> tuple[dict[str, list[base.Row]], dict[str, str]]:
    """Run each suite in its own event loop; a failing suite does not stop the others."""
    results: dict[str, list[base.Row]] = {}
    failures: dict[str, str] = {}
    columns = (
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:

        def new_progress(description: str, total: float) -> base.Progress:
            task = progress.add_task(description, total=total)
            return base.Progress(lambda amount: progress.advance(task, amount))

        ctx.new_progress = new_progress
        for suite in suites:
            started = time.perf_counter()
            try:
                results[suite.name] = asyncio.run(suite.run(ctx))
            except Exception as exc:  # a suite's failure is reported, the run goes on
                failures[suite.name] = f"{type(exc).__name__}: {exc}"
                console.log(f"[red]suite {suite.name} failed:[/] {failures[suite.name]}")
            else:
                console.log(f"suite {suite.name} done in {time.perf_counter() - started:.1f} s")
    return results, failures


def _table(results: dict[str, list[base.Row]]) -> Table:
    table = Table(title="tiercache bench", show_lines=False)
    for column in ("suite", "measurement", "result", "target", ""):
        table.add_column(column, overflow="fold")
    for suite, rows in results.items():
        for row in rows:
            ok = row.get("ok")
            mark = "[green]OK[/]" if ok else "[red]MISS[/]" if ok is False else "[dim]info[/]"
            table.add_row(suite, row["name"], row["summary"], row.get("target") or "", mark)
    return table


def run_cli(args: argparse.Namespace) -> int:
    console = Console(stderr=False)
    suites = discover()
    if args.list:
        table = Table(title="benchmark suites")
        for column in ("suite", "needs", "what it measures"):
            table.add_column(column)
        for suite in suites.values():
            table.add_row(suite.name, ", ".join(sorted(suite.needs)) or "-", suite.description)
        console.print(table)
        return 0
    selected = _select(args.suite, suites)
    ctx = base.BenchContext(
        quick=args.quick, redis_url=args.redis_url, pg_dsns=_parse_dsns(args.pg_dsn)
    )
    console.log(f"tiercache bench: {', '.join(s.name for s in selected)} "
                f"({implementation()} implementation{', quick' if args.quick else ''})")
    needs = set().union(*(s.needs for s in selected))
    with _servers(ctx, needs, console):
        results, failures = run_suites(selected, ctx, console)
    console.print(_table(results))
    for name, message in failures.items():
        console.print(f"[red]suite {name} FAILED[/]: {message}")
    if getattr(args, "plot", None):
        try:
            from tiercache.bench.plots import plot_results

            for path in plot_results(results, args.plot):
                console.log(f"plot written to {path}")
        except ImportError:
            console.print("[yellow]--plot needs matplotlib: pip install 'tiercache[plots]'[/]")
    if args.json:
        payload = {"machine": _machine(), "results": strip_samples(results),
                   "failures": failures}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, default=str)
        console.log(f"results written to {args.json}")
    if failures:
        return 2
    missed = [r for rows in results.values() for r in rows if r.get("ok") is False]
    return 1 if missed and getattr(args, "strict", False) else 0


if __name__ == "__main__":  # python -m tiercache.bench.runner == tiercache bench
    from tiercache.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
