"""The ``tiercache`` command: ``bench``, ``local up|down``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiercache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="run benchmark suites side by side with peers")
    bench.add_argument("--suite", action="append", default=None,
                       help="suite to run (repeatable); default: all")
    bench.add_argument("--list", action="store_true", help="list the suites and exit")
    bench.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--redis-url", help="use this Redis (Cluster) instead of a LocalStack")
    bench.add_argument("--plot", metavar="DIR",
                       help="also write PNG plots (latency distributions, comparisons) to DIR")
    bench.add_argument("--strict", action="store_true",
                       help="exit 1 when a measurement misses its target")
    bench.add_argument("--pg-dsn", action="append", metavar="NAME=DSN",
                       help="use these Postgres shards instead of a LocalStack (repeatable)")

    local = commands.add_parser("local", help="local Redis Cluster + Postgres shards")
    local_commands = local.add_subparsers(dest="local_command", required=True)
    up = local_commands.add_parser("up", help="start a stack and keep it up until Ctrl-C")
    up.add_argument("--json", action="store_true", help="print the URLs/DSNs as JSON")
    up.add_argument("--redis-masters", type=int, default=3)
    up.add_argument("--redis-replicas", type=int, default=0)
    up.add_argument("--pg-shards", type=int, default=3)
    local_commands.add_parser("down", help="stop the stack started by `tiercache local up`")
    return parser


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
    raise AssertionError(args.command)  # argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
