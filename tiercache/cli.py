"""The ``tiercache`` command: ``bench``, ``local up|down``, ``rebalance``, ``store``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def version_text() -> str:
    """``tiercache 0.1.0 (cython, Python 3.11.7)``: which build is in use matters for speed."""
    import platform

    from tiercache import __version__
    from tiercache._impl import implementation

    return f"tiercache {__version__} ({implementation()}, Python {platform.python_version()})"


class _VersionAction(argparse.Action):
    """``--version`` that imports the package only when asked (``-h`` stays fast)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiercache", description=__doc__)
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version, the implementation (cython or python) and exit")
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="run benchmark suites side by side with peers")
    bench.add_argument("--suite", action="append", default=None,
                       help="suite to run (repeatable; `cache` = l1 + l2); default: all")
    bench.add_argument("--list", action="store_true", help="list the suites and exit")
    bench.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--redis-url", help="use this Redis (Cluster) instead of a LocalStack")
    bench.add_argument("--plot", metavar="DIR",
                       help="also write PNG charts to DIR (latency CDFs of tiercache vs its "
                            "peers, comparison bars, throughput, time series)")
    bench.add_argument("--strict", action="store_true",
                       help="exit 1 when a measurement misses its target")
    bench.add_argument("--pg-dsn", action="append", metavar="NAME=DSN",
                       help="use these Postgres shards instead of a LocalStack (repeatable)")
    bench.add_argument("--out", metavar="DIR",
                       help="write DIR/results.json and the PNG charts to DIR "
                            "(make bench: bench-results/)")
    bench_commands = bench.add_subparsers(dest="bench_command", required=False,
                                          metavar="{compare,plot}")
    compare = bench_commands.add_parser(
        "compare", help="per-row change between two --json runs, regressions first",
        description="Compare two `tiercache bench --json` files row by row (matched by suite "
                    "and measurement). A change within the noise band (the larger of --noise "
                    "and the spread between rounds) is 'same'; regressions are listed first.")
    compare.add_argument("a", metavar="A.json", help="the earlier run (the baseline)")
    compare.add_argument("b", metavar="B.json", help="the later run")
    compare.add_argument("--noise", type=float, default=5.0, metavar="PCT",
                         help="smallest change reported as a change, in %% (default: 5)")
    compare.add_argument("--strict", action="store_true", help="exit 1 when a row regressed")
    plot = bench_commands.add_parser("plot", help="redraw the PNG charts of a --json file")
    plot.add_argument("results", metavar="RESULTS.json")
    plot.add_argument("directory", metavar="DIR")

    local = commands.add_parser("local", help="local Redis Cluster + Postgres shards")
    local_commands = local.add_subparsers(dest="local_command", required=True)
    up = local_commands.add_parser(
        "up", help="start a stack and keep it up until Ctrl-C or `tiercache local down`",
        description="Start a Redis Cluster and Postgres shards on loopback, print their "
                    "addresses (one per line, in full) and the state file, and keep them up "
                    "until Ctrl-C, SIGTERM or `tiercache local down` from another shell.")
    up.add_argument("--json", action="store_true",
                    help="print one JSON object (redis_url, pg_dsns, pids, state_file, ...) "
                         "instead of the text listing")
    up.add_argument("--redis-masters", type=_count(0), default=3, metavar="N",
                    help="Redis Cluster masters (default: 3; 0 = no Redis)")
    up.add_argument("--redis-replicas", type=_count(0), default=0, metavar="N",
                    help="replicas per master (default: 0)")
    up.add_argument("--pg-shards", type=_count(0), default=3, metavar="N",
                    help="Postgres servers, named s1..sN (default: 3; 0 = no Postgres)")
    local_commands.add_parser(
        "down", help="stop the stack started by `tiercache local up` (from any shell)")
    from tiercache._rebalance_cli import add_parser as add_rebalance_parser

    add_rebalance_parser(commands)
    from tiercache._store_cli import add_parser as add_store_parser

    add_store_parser(commands)
    return parser


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from tiercache.bench.runner import run_cli

        return run_cli(args)
    if args.command == "local":
        from tiercache import local

        if args.local_command == "up":
            return local.cli_up(
                as_json=args.json,
                redis_masters=args.redis_masters,
                redis_replicas=args.redis_replicas,
                pg_shards=args.pg_shards,
            )
        return local.cli_down()
    if args.command == "rebalance":
        from tiercache._rebalance_cli import main_args

        return main_args(args)
    if args.command == "store":
        from tiercache._store_cli import main_args as store_main

        return store_main(args)
    raise AssertionError(args.command)  # argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
