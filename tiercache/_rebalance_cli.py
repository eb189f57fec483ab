"""``tiercache rebalance plan|apply|status|resume|verify|abort --config shards.toml``.

The config names every shard (the new ones too), the current ring and the change::

    [shards]
    s1 = "postgresql://app:secret@db1/app"
    s2 = { dsn = "postgresql://app:secret@db2/app", weight = 2 }
    s4 = "postgresql://app:secret@db4/app"      # being added: not on the current ring

    [ring]                       # optional; default: every shard above, with its weight
    nodes = ["s1", "s2", "s3"]   # or: weights = { s1 = 1, s2 = 2 }
    mode = "ketama"              # or "stable"

    [rebalance]
    tables = { users = "id", orders = "user_id" }
    add = ["s4"]
    remove = []
    weights = {}
    batch_size = 5000

When the shards carry a newer topology (``tiercache_rb.topology``, written by each flip) it
wins over ``[ring]``, so re-running a finished ``apply`` says "already on the ring" instead of
moving rows back.  DSNs (passwords) are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "main", "main_args", "run"]

COMMANDS = ("plan", "apply", "status", "resume", "verify", "abort")


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``rebalance`` on a ``tiercache`` subparsers object."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "rebalance", help="move rows between Postgres shards (plan, apply, status, ...)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=COMMANDS)
    parser.add_argument("--config", required=True, type=Path, help="shards.toml")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-cleanup", action="store_true",
                        help="apply: stop after the flip, keep moved rows on the sources "
                             "(`resume` deletes them later)")
    return parser


def load_config(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        config = tomllib.load(f)
    shards = config.get("shards")
    if not isinstance(shards, dict) or not shards:
        raise SystemExit(f"{path}: [shards] must map shard names to DSNs")
    reb = config.get("rebalance", {})
    if not isinstance(reb.get("tables"), dict) or not reb["tables"]:
        raise SystemExit(f"{path}: [rebalance] tables = {{table = \"shard_key_column\"}} "
                         "is required")
    return config


def _ring(config: dict[str, Any]) -> Any:
    from tiercache.sharding.ring import HashRing

    spec = config.get("ring", {})
    mode = spec.get("mode", "ketama")
    if "weights" in spec:
        return HashRing(dict(spec["weights"]), mode=mode)
    shards = config["shards"]
    added = set(config.get("rebalance", {}).get("add", []))
    names = spec.get("nodes") or [n for n in shards if n not in added]
    return HashRing({n: (shards[n].get("weight", 1) if isinstance(shards[n], dict) else 1)
                     for n in names}, mode=mode)


async def run(args: argparse.Namespace) -> int:
    from tiercache.sharding.pool import create_sharded_pool
    from tiercache.sharding.rebalance import RebalanceError, Rebalancer, load_topology

    config = load_config(args.config)
    reb = config.get("rebalance", {})
    batch = args.batch_size or int(reb.get("batch_size", 5000))
    progress = not args.no_progress and sys.stdout.isatty()
    pool = create_sharded_pool(config["shards"], ring=_ring(config), min_size=1, max_size=8)
    await pool
    try:
        version = await load_topology(pool)
        if version is not None:
            print(f"current ring: topology v{version} from the shards")
        rb = Rebalancer(pool, reb["tables"])
        try:
            return await _dispatch(args, rb, reb, batch, progress)
        except RebalanceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            await rb.close()
    finally:
        await pool.close()


async def _dispatch(args: argparse.Namespace, rb: Any, reb: dict[str, Any], batch: int,
                    progress: bool) -> int:
    action = args.action
    if action in ("plan", "apply"):
        plan = await rb.plan(add=list(reb.get("add", [])), remove=list(reb.get("remove", [])),
                             weights=dict(reb.get("weights", {})), mode=reb.get("mode"))
        print(plan.summary())
        if action == "plan":
            return 0
        report = await rb.apply(plan, batch_size=batch, progress=progress,
                                cleanup=not args.no_cleanup)
        if not progress:  # the progress display already logged it
            print(report.summary())
        return 0
    if action == "resume":
        report = await rb.resume(batch_size=batch, progress=progress)
        if report is None:
            print("nothing to resume")
        elif not progress:
            print(report.summary())
        return 0
    if action == "abort":
        job = await rb.abort()
        print("nothing to abort" if job is None else f"aborted {job}")
        return 0
    if action == "verify":
        check = await rb.verify()
        print(_verify_text(check))
        return 0 if check.ok else 1
    status = await rb.status()
    if status is None:
        print("no rebalance has run on these shards")
        return 0
    started = status["created"].strftime("%Y-%m-%d %H:%M:%S")
    updated = status["updated"].strftime("%H:%M:%S")
    print(f"job {status['job']}: {status['phase']} (started {started}, updated {updated})")
    for p in status["progress"]:
        print(f"  {p['table']} {p['source']}->{p['target']}: {p['copied']:,} / "
              f"{p['planned']:,} rows copied{' (done)' if p['done'] else ''}")
    return 0


def _verify_text(check: Any) -> str:
    head = (f"verify: {'OK' if check.ok else 'FAILED'} ({check.checked_rows:,} rows on their "
            f"owners checked, {check.seconds:.2f}s)" if check.checked_rows else
            f"verify: {'OK' if check.ok else 'FAILED'} ({check.seconds:.2f}s)")
    lines = [head]
    for (table, shard), n in sorted(check.misplaced.items()):
        lines.append(f"  {table} on {shard}: {n:,} rows not owned by {shard}")
    for table, source, target, d in check.diffs[:20]:
        lines.append(f"  {table} {source}->{target} arc [{d.lo}, {d.hi}): source {d.source}, "
                     f"target {d.target}, keys {d.keys[:5]!r}")
    return "\n".join(lines)


def main_args(args: argparse.Namespace) -> int:
    """Run parsed ``tiercache rebalance ...`` arguments (``tiercache.cli`` calls this)."""
    return asyncio.run(run(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiercache")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return main_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
