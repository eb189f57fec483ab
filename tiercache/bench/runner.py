"""``tiercache bench``: pick suites, provide servers, show progress, print and save results.

With no ``--redis-url`` / ``--pg-dsn`` the runner starts a :class:`~tiercache.local.LocalStack`
for the suites that need servers, and stops it at the end. It prints one table per suite and
a closing SUMMARY (always). ``--out DIR`` writes ``DIR/results.json`` and the PNG charts
(``make bench`` uses ``bench-results/``). Exit status: 0 when every suite ran (a missed target
is reported, not fatal, unless ``--strict``), 1 with ``--strict`` and a missed target, 2 when
a suite failed (wrong results, servers unusable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tiercache._impl import implementation
from tiercache.bench import base
from tiercache.bench.machine import LoadSampler, git_revision, machine_info, versions
from tiercache.bench.registry import Suite, discover, select
from tiercache.bench.report import build_payload, print_tables, summarize_run, summary_panel

__all__ = ["RunResult", "run_cli", "run_suites"]


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


class RunResult:
    """Rows, charts, failures and durations of each suite that ran."""

    def __init__(self) -> None:
        self.results: dict[str, list[base.Row]] = {}
        self.charts: dict[str, list[dict[str, Any]]] = {}
        self.failures: dict[str, str] = {}
        self.durations: dict[str, float] = {}

    # ``results, failures = run_suites(...)`` keeps working
    def __iter__(self) -> Iterator[Any]:
        return iter((self.results, self.failures))


def run_suites(suites: list[Suite], ctx: base.BenchContext, console: Console) -> RunResult:
    """Run each suite in its own event loop; a failing suite does not stop the others."""
    out = RunResult()
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        overall = progress.add_task("[bold]bench", total=len(suites))

        def new_progress(description: str, total: float) -> base.Progress:
            task = progress.add_task(description, total=total)
            return base.Progress(lambda amount: progress.advance(task, amount))

        ctx.new_progress = new_progress
        for suite in suites:
            progress.update(overall, description=f"[bold]bench: {suite.name}")
            started = time.perf_counter()
            ctx.take_charts()
            try:
                out.results[suite.name] = asyncio.run(suite.run(ctx))
            except KeyboardInterrupt:  # Ctrl-C: stop here, still report what ran
                out.failures[suite.name] = "interrupted (Ctrl-C); later suites not run"
                out.durations[suite.name] = round(time.perf_counter() - started, 2)
                break
            except Exception as exc:  # a suite's failure is reported, the run goes on
                out.failures[suite.name] = f"{type(exc).__name__}: {exc}"
                console.log(f"[red]suite {suite.name} failed:[/] {out.failures[suite.name]}")
            else:
                console.log(f"suite {suite.name} done in {time.perf_counter() - started:.1f} s")
            out.charts[suite.name] = ctx.take_charts()
            out.durations[suite.name] = round(time.perf_counter() - started, 2)
            progress.advance(overall)
    return out


def _list(console: Console) -> int:
    table = Table(title="benchmark suites")
    for column in ("suite", "needs", "default", "what it measures"):
        table.add_column(column)
    for suite in discover().values():
        table.add_row(suite.name, ", ".join(sorted(suite.needs)) or "-",
                      "yes" if suite.default else "no", suite.description)
    for name in select(None).not_built:
        table.add_row(f"[dim]{name}[/]", "", "", "[dim]not built yet[/]")
    console.print(table)
    return 0


def _outputs(args: argparse.Namespace) -> tuple[str | None, str | None]:
    json_path, plot_dir = args.json, getattr(args, "plot", None)
    out = getattr(args, "out", None)
    if out:
        json_path = json_path or str(Path(out) / "results.json")
        plot_dir = plot_dir or out
    return json_path, plot_dir


def run_cli(args: argparse.Namespace) -> int:
    command = getattr(args, "bench_command", None)
    if command == "compare":
        from tiercache.bench.compare import main as compare_main

        return compare_main(args.a, args.b, noise=args.noise / 100, strict=args.strict)
    console = Console(stderr=False, width=None if sys.stdout.isatty() else 150)
    if command == "plot":
        from tiercache.bench.plots import plot_payload

        payload = json.loads(Path(args.results).read_text(encoding="utf-8"))
        for path in plot_payload(payload, args.directory):
            console.print(f"plot written to {path}")
        return 0
    if args.list:
        return _list(console)
    selection = select(args.suite)
    ctx = base.BenchContext(
        quick=args.quick, redis_url=args.redis_url, pg_dsns=_parse_dsns(args.pg_dsn)
    )
    json_path, plot_dir = _outputs(args)
    names = ", ".join(s.name for s in selection.suites) or "nothing"
    console.log(f"tiercache bench: {names} ({implementation()} implementation"
                f"{', quick' if args.quick else ''})")
    needs = set().union(*(s.needs for s in selection.suites))
    machine = machine_info()
    started = time.time()
    with LoadSampler() as load, _servers(ctx, needs, console):
        run = run_suites(selection.suites, ctx, console)
    print_tables(console, run.results)
    summary = summarize_run(run.results, run.failures, selection.not_built, load.report())
    written: list[str] = []
    if plot_dir:
        try:
            from tiercache.bench.plots import plot_charts

            written += [str(p) for p in plot_charts(run.results, run.charts, plot_dir)]
        except ImportError:
            console.print("[yellow]--plot needs matplotlib: pip install 'tiercache[plots]'[/]")
    if json_path:
        payload = build_payload(
            machine=machine, versions=versions(), git=git_revision(),
            run={"suites": [s.name for s in selection.suites], "quick": args.quick,
                 "argv": sys.argv[1:], "started": started,
                 "duration_s": round(time.time() - started, 1), "load": load.report()},
            results=run.results, charts=run.charts, failures=run.failures,
            durations=run.durations, summary=summary)
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
        written.insert(0, json_path)
    console.print(summary_panel(summary))
    if json_path:
        console.print(f"results: {json_path}")
    if plot_dir:
        console.print(f"charts: {len(written) - bool(json_path)} PNG file(s) in {plot_dir}/")
    console.print(f"bench took {time.time() - started:.0f} s")
    if run.failures:
        return 2
    return 1 if summary["totals"]["missed"] and getattr(args, "strict", False) else 0


if __name__ == "__main__":  # python -m tiercache.bench.runner == tiercache bench
    from tiercache.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
