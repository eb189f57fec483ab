"""Rebalancer operations outside the main pipeline: abort, standalone verify, progress.

Functions over a :class:`~._rebalance_flow.Flow` (its connections, movers and journal), kept
apart so the pipeline module stays about the pipeline.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tiercache.sharding._rebalance_journal import read_progress
from tiercache.sharding._rebalance_move import TableMover
from tiercache.sharding._rebalance_plan import ring_from_spec
from tiercache.sharding._rebalance_schema import RebalanceError
from tiercache.sharding._rebalance_sql import SCHEMA

if TYPE_CHECKING:
    from tiercache.sharding._rebalance_flow import Flow
    from tiercache.sharding.rebalance import VerifyReport

__all__ = ["abort", "copy_progress", "verify_standalone"]


async def abort(flow: Flow, phase: str) -> None:
    """Undo an unflipped job: captures and arcs off the sources, copied rows off the targets."""
    if phase in ("flipping", "flipped"):
        raise RebalanceError("the job has flipped (or is flipping): resume() it instead")
    await flow.load_infos()
    await flow.drop_captures(keep_guard=False)
    for _table, move, mover in flow.movers():
        async with flow.conn(move.target) as dst:
            async for _n in mover.delete_in(dst, 50_000):
                pass
    await flow.bump(flow.plan.targets())
    await flow.journal.set_phase(flow.plan.job, "aborted")


async def verify_standalone(flow: Flow) -> VerifyReport:
    """Before the flip: source vs target per arc.  After it: every row on its new owner."""
    from tiercache.sharding.rebalance import VerifyReport

    await flow.load_infos()
    started = time.perf_counter()
    latest = await flow.journal.latest()
    phase = latest["phase"] if latest and latest["job"] == flow.plan.job else None
    report = VerifyReport(ok=True)
    if phase in ("flipped", "done"):
        new = ring_from_spec(flow.plan.new_ring)
        for shard in flow.ring_shards():
            foreign = [(lo, hi) for lo, hi, owner in new.arcs() if owner != shard]
            async with flow.conn(shard) as c:
                for table, info in flow.infos.items():
                    m = TableMover(info, foreign)
                    n, _ = await m.count_in(c, m.arcs)
                    report.checked_rows += await c.fetchval(f"SELECT count(*) FROM {m.table}")
                    if n:
                        report.misplaced[(table, shard)] = n
        report.ok = not report.misplaced
    else:
        report.diffs = [(t, m.source, m.target, d) for _i, t, m, d in await flow.diffs()]
        report.ok = not report.diffs
    report.seconds = time.perf_counter() - started
    return report


async def copy_progress(flow: Flow) -> list[dict[str, Any]]:
    """Rows copied so far per table move (from the targets' progress tables)."""
    out = []
    for tm in flow.plan.table_moves:
        async with flow.conn(tm.target) as c:
            exists = await c.fetchval("SELECT to_regclass($1) IS NOT NULL",
                                      f"{SCHEMA}.progress")
            _, rows, done = (await read_progress(c, flow.plan.job, tm.table, tm.source)
                             if exists else (None, 0, False))
        out.append({"table": tm.table, "source": tm.source, "target": tm.target,
                    "planned": tm.rows, "copied": rows, "done": done})
    return out
