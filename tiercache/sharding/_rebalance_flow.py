"""One rebalance job's pipeline: prepare, copy, converge (catch-up, verify, fence, flip), clean.

Each phase is idempotent given the journal's phase, which is what makes ``resume()`` safe:
re-running ``preparing`` re-creates what exists already; ``copying`` continues after the
last checkpoint committed with its rows; catch-up re-syncs keys (idempotent); a job that
died in ``flipping`` fences again (writers may have written since the crash released the
fence) before marking the arcs moved; ``flipped`` only deletes moved rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tiercache.sharding._rebalance_journal import (
    JOURNAL_DDL,
    Journal,
    read_progress,
    write_progress,
    write_topology,
)
from tiercache.sharding._rebalance_move import ArcDiff, TableMover
from tiercache.sharding._rebalance_plan import Move, Plan, ring_from_spec
from tiercache.sharding._rebalance_progress import Progress, make_progress
from tiercache.sharding._rebalance_schema import (
    RebalanceError,
    TableInfo,
    create_table_ddl,
    same_shape,
    table_info,
    table_oid,
)
from tiercache.sharding._rebalance_sql import (
    HASH_FUNCTIONS,
    JOB_LOCK_KEY,
    SCHEMA,
    capture_ddl,
    drop_capture_ddl,
    fence_lock_key,
    multirange,
)

if TYPE_CHECKING:
    from tiercache.sharding.rebalance import Hook, Rebalancer, RebalanceReport

__all__ = ["Flow"]

CATCH_UP_LIMIT = 5000  # capture rows per catch-up statement
SMALL_BACKLOG = 200  # fence once the backlog is this small
MAX_ROUNDS = 50
LOCK_WAIT = 5.0  # seconds to wait for the job lock of a process that just died


class Flow:
    def __init__(self, rb: Rebalancer, plan: Plan, journal: Journal, batch_size: int,
                 progress: bool | Progress, fence_timeout: float, hook: Hook | None,
                 parallel: int = 2) -> None:
        from tiercache.sharding.rebalance import RebalanceReport

        self.rb, self.plan, self.journal = rb, plan, journal
        self.batch_size, self.fence_timeout, self._hook = batch_size, fence_timeout, hook
        self._progress_arg = progress
        self.parallel = max(1, parallel)
        self.progress: Progress | None = None
        self.report: RebalanceReport = RebalanceReport(plan.job)
        self.infos: dict[str, TableInfo] = {}
        self._held: dict[str, Any] = {}
        self._fence: dict[str, Any] = {}

    # -- plumbing ------------------------------------------------------------------------

    async def hook(self, event: str) -> None:
        if self._hook is not None:
            result = self._hook(event)
            if inspect.isawaitable(result):
                await result

    def conn(self, shard: str) -> contextlib.AbstractAsyncContextManager[Any]:
        held = self._held.get(shard)
        if held is not None:
            return contextlib.nullcontext(held)
        return self.rb._conn(shard)

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Take the connections the job needs up front and keep them for its whole run.

        Writers to moving keys wait inside their transactions during the fence, holding
        their pool connections; a rebalancer that then asked the same pools for one more
        connection could wait for ever.  So it never asks mid-job: one connection per
        involved shard, plus one per source for the fence lock.
        """
        async with contextlib.AsyncExitStack() as stack:
            for shard in sorted(set(self.plan.sources()) | set(self.plan.targets())):
                self._held[shard] = await stack.enter_async_context(self.rb._conn(shard))
            for source in self.plan.sources():
                self._fence[source] = await stack.enter_async_context(self.rb._conn(source))
            try:
                yield
            finally:
                self._held.clear()
                self._fence.clear()

    def movers(self) -> list[tuple[str, Move, TableMover]]:
        out = []
        for table in self.plan.tables:
            for move in self.plan.moves:
                lows = [lo for lo, _ in move.arcs]
                out.append((table, move, TableMover(self.infos[table], multirange(move.arcs),
                                                    lows)))
        return out

    async def lock(self, conn: Any) -> None:
        """The one-rebalance-at-a-time lock.  Waits a little: the session of a process that
        was just killed holds it until its server backend notices the closed socket."""
        await conn.execute(JOURNAL_DDL)
        deadline = time.monotonic() + LOCK_WAIT
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", JOB_LOCK_KEY):
            if time.monotonic() > deadline:
                from tiercache.sharding.rebalance import RebalanceRunningError

                raise RebalanceRunningError("another rebalance is running (its lock is held)")
            await asyncio.sleep(0.2)

    async def unlock(self, conn: Any) -> None:
        await conn.execute("SELECT pg_advisory_unlock($1)", JOB_LOCK_KEY)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def ring_shards(self) -> list[str]:
        """Every shard of the old or the new ring."""
        return sorted(set(self.plan.new_ring["weights"]) | set(self.plan.old_ring["weights"]))

    async def load_infos(self) -> None:
        source = self.plan.sources()[0] if self.plan.moves else self.rb.pool.shards[0]
        async with self.conn(source) as c:
            self.infos = {t: await table_info(c, t, k, source) for t, k in self.plan.tables.items()}

    # -- the pipeline ----------------------------------------------------------------------

    async def run(self, phase: str | None, cleanup: bool = True) -> RebalanceReport:
        from tiercache.sharding.rebalance import RebalanceRunningError

        started = time.perf_counter()
        if phase is None:
            if await self.journal.unfinished() is not None:
                raise RebalanceRunningError(
                    "an unfinished rebalance is in the journal: resume() or abort() it first")
            await self.preflight()
            await self.journal.create(self.plan.job, self.plan.to_json())
            phase = "preparing"
        await self.load_infos()
        self.progress = make_progress(self._progress_arg)
        if phase == "preparing":
            await self.prepare()
            phase = await self.advance("copying", "prepared")
        if phase == "copying":
            await self.copy_all()
            phase = await self.advance("catching_up", "copied")
        if phase in ("catching_up", "flipping"):
            await self.converge_and_flip()
            phase = "flipped"
        if phase == "flipped" and cleanup:
            self.rb.pool.set_ring(ring_from_spec(self.plan.new_ring))
            await self.cleanup()
            phase = await self.advance("done", "cleaned")
        self.report.seconds = time.perf_counter() - started
        self.progress.note(self.report.summary())
        return self.report

    async def advance(self, phase: str, event: str) -> str:
        await self.hook(event)
        await self.journal.set_phase(self.plan.job, phase)
        return phase

    async def preflight(self) -> None:
        """Every check that can fail, before anything is written anywhere."""
        new = ring_from_spec(self.plan.new_ring)
        current = self.rb._ring()
        if current.weights != self.plan.old_ring["weights"] or current.mode != self.plan.old_ring[
                "mode"]:
            raise RebalanceError("the pool's ring changed since the plan was made: plan again")
        missing = [n for n in new.nodes if n not in self.rb.pool.shards]
        if missing:
            raise RebalanceError(
                f"the pool has no shard {missing}: create it with every shard of the new ring "
                "(and ring= the current ring) so the flip can route to them")
        for shard in sorted(set(self.plan.sources()) | set(self.plan.targets())):
            try:
                async with self.conn(shard) as c:
                    enc = await asyncio.wait_for(c.fetchval("SHOW server_encoding"), 10)
            except (OSError, TimeoutError) as exc:
                raise RebalanceError(f"shard {shard!r} is unreachable: {type(exc).__name__}"
                                     ) from None
            if enc != "UTF8":
                raise RebalanceError(f"shard {shard!r} is {enc}; the key hash needs UTF8")
        for source in self.plan.sources():
            async with self.conn(source) as c:
                src = {t: await table_info(c, t, k, source) for t, k in self.plan.tables.items()}
            for target in self.plan.targets():
                async with self.conn(target) as c:
                    for table, key in self.plan.tables.items():
                        if await table_oid(c, table) is None:
                            continue  # created from the source's DDL in prepare()
                        why = same_shape(src[table], await table_info(c, table, key, target))
                        if why:
                            raise RebalanceError(f"{table} on {source} vs {target}: {why}")

    async def prepare(self) -> None:
        """Hash functions, target tables, arcs, capture triggers; remove earlier debris."""
        for shard in self.ring_shards():  # topology goes to every shard at the flip
            async with self.conn(shard) as c:
                await c.execute(HASH_FUNCTIONS + JOURNAL_DDL)
        for target in self.plan.targets():
            source = next(m.source for m in self.plan.moves if m.target == target)
            for table in self.plan.tables:
                async with self.conn(target) as dst:
                    if await table_oid(dst, table) is not None:
                        continue
                    async with self.conn(source) as src:
                        ddl = await create_table_ddl(src, table)
                    async with dst.transaction():
                        for stmt in ddl:
                            await dst.execute(stmt)
        for _table, move, mover in self.movers():  # rows of an aborted earlier attempt
            async with self.conn(move.target) as dst:
                async for n in mover.delete_in(dst, mover.arcs, 50_000):
                    self.report.debris += n
        for source in self.plan.sources():
            async with self.conn(source) as c, c.transaction():
                await c.execute(f"DELETE FROM {SCHEMA}.arcs WHERE job <> $1", self.plan.job)
                for move in (m for m in self.plan.moves if m.source == source):
                    await c.execute(
                        f"INSERT INTO {SCHEMA}.arcs (job, target, arcs) VALUES ($1, $2, "
                        f"$3::text::int8multirange) ON CONFLICT (job, target) DO NOTHING",
                        self.plan.job, move.target, multirange(move.arcs))
                for table, info in self.infos.items():
                    for stmt in capture_ddl(self.plan.job, table, info.key, info.key_sql_type,
                                            info.key_type, source):
                        await c.execute(stmt)

    # -- copy --------------------------------------------------------------------------------

    async def copy_all(self) -> None:
        """Copy every (table, source -> target), ``parallel`` at a time (each source shard
        hashes its own rows, so moves from different sources use different servers)."""
        started = time.perf_counter()
        gate = asyncio.Semaphore(self.parallel)

        async def one(table: str, move: Move, mover: TableMover) -> None:
            async with gate, self.rb._conn(move.source) as src, \
                    self.rb._conn(move.target) as dst:
                rows = await self.copy_move(table, move, mover, src, dst)
            self.report.copied[table] = self.report.copied.get(table, 0) + rows

        try:
            async with asyncio.TaskGroup() as group:
                for table, move, mover in self.movers():
                    group.create_task(one(table, move, mover))
        except BaseExceptionGroup as group_error:  # callers see the failure itself
            raise group_error.exceptions[0] from None
        self.report.copy_seconds = time.perf_counter() - started

    async def copy_move(self, table: str, move: Move, mover: TableMover, src: Any, dst: Any
                        ) -> int:
        assert self.progress is not None
        tm = self.plan.table_move(table, move.source, move.target)
        label = f"{table} {move.source}->{move.target}"
        self.progress.start(label, tm.rows)
        share = tm.rows / tm.source_rows if tm.source_rows else 1.0
        step = max(self.batch_size, int(self.batch_size / max(share, 1e-3)))
        last, rows, done = await read_progress(dst, self.plan.job, table, move.source)
        self.progress.advance(label, rows)
        while not done:
            upto = await mover.next_bound(src, last, step)
            record = _recorder(self.plan.job, table, move.source, upto, rows)
            n = await mover.copy_batch(src, dst, last, upto, record)
            rows += n
            last, done = upto, upto is None
            self.progress.advance(label, n)
            await self.hook("batch")
        return rows

    # -- catch-up, verify, fence, flip ------------------------------------------------------

    async def catch_up(self, limit_rounds: int) -> int:
        """Apply captured changes; stop after ``limit_rounds`` or when the backlog is small."""
        backlog = 0
        for _ in range(limit_rounds):
            consumed = 0
            for _table, move, mover in self.movers():
                async with self.conn(move.source) as src, self.conn(move.target) as dst:
                    consumed += (await mover.catch_up_once(src, dst, move.target,
                                                           CATCH_UP_LIMIT))[0]
            self.report.caught_up += consumed
            await self.hook("catch_up")
            backlog = 0
            for _table, move, mover in self.movers():
                async with self.conn(move.source) as src:
                    backlog += await mover.backlog(src, move.target)
            if backlog <= SMALL_BACKLOG:
                break
        return backlog

    async def diffs(self, name_keys: bool = False) -> list[tuple[int, str, Move, ArcDiff]]:
        """Arcs whose rows differ, per mover index (with every differing key if asked)."""
        movers = self.movers()
        gate = asyncio.Semaphore(self.parallel)
        # each target is scanned once per table for every move into it (not once per move)
        into: dict[tuple[str, str], list[int]] = {}
        for i, (table, move, _m) in enumerate(movers):
            into.setdefault((table, move.target), []).append(i)

        async def sums(shard: str, mover: TableMover) -> dict[int, tuple[int, int]]:
            async with gate, self.rb._conn(shard) as conn:
                return await mover.sums_by_lo(conn)

        def combined(table: str, idxs: list[int]) -> TableMover:
            arcs = sorted(a for i in idxs for a in movers[i][1].arcs)
            return TableMover(self.infos[table], multirange(arcs), [lo for lo, _ in arcs])

        async with asyncio.TaskGroup() as group:
            src_tasks = [group.create_task(sums(move.source, mover))
                         for _t, move, mover in movers]
            dst_tasks = {k: group.create_task(sums(k[1], combined(k[0], idxs)))
                         for k, idxs in into.items()}
        out = []
        for i, (table, move, mover) in enumerate(movers):
            b = dst_tasks[(table, move.target)].result()
            async with self.conn(move.source) as src, self.conn(move.target) as dst:
                for d in await mover.diff_arcs(src, dst, move.arcs, src_tasks[i].result(), b,
                                               max_keys=None if name_keys else 20):
                    out.append((i, table, move, d))
        return out


    async def converge_and_flip(self) -> None:
        """Catch up, verify, fence, re-check what changed, flip.

        Verification before the fence compares every arc; an arc that differs is narrowed
        to the keys that differ, and each of those must be a captured change not yet applied
        (a write racing the verification) -- anything else is corruption and refuses the
        flip.  Inside the fence only keys are compared: every key applied by the final
        catch-up, which includes each differing key and each key written since.  So the
        fence lasts as long as the last backlog takes, not as long as a full verification.
        """
        from tiercache.sharding.rebalance import VerificationError

        await self.catch_up(MAX_ROUNDS)
        await self.hook("caught_up")
        t0 = time.perf_counter()
        movers = self.movers()
        unexplained: list[tuple[str, str, str, ArcDiff]] = []
        pending: dict[int, set[Any]] = {}
        for i, table, move, d in await self.diffs(name_keys=True):
            if i not in pending:
                async with self.conn(move.source) as src:
                    pending[i] = await movers[i][2].pending_keys(src, move.target)
            if not d.keys or any(k not in pending[i] for k in d.keys):
                unexplained.append((table, move.source, move.target, d))
        self.report.verify_seconds = time.perf_counter() - t0
        if unexplained:
            raise VerificationError(_describe(unexplained), unexplained)
        # What was written during the verification is applied now, outside the fence; the
        # keys are remembered, because the fence must still compare them.
        applied: list[set[Any]] = []
        for _table, move, mover in movers:
            async with self.conn(move.source) as src, self.conn(move.target) as dst:
                n, keys = await mover.drain(src, dst, move.target, CATCH_UP_LIMIT)
            self.report.caught_up += n
            applied.append(keys)
        async with self.fence():
            await self.hook("fenced")
            bad: list[tuple[str, str, str, ArcDiff]] = []
            for i, (table, move, mover) in enumerate(movers):
                async with self.conn(move.source) as src, self.conn(move.target) as dst:
                    n, keys = await mover.drain(src, dst, move.target, CATCH_UP_LIMIT)
                    self.report.caught_up += n
                    wrong = await mover.compare_keys(src, dst, list(applied[i] | keys))
                if wrong:
                    bad.append((table, move.source, move.target,
                                ArcDiff(0, 2**32, (0, 0), (0, 0), wrong[:20])))
            if bad:
                raise VerificationError(_describe(bad), bad)
            await self.journal.set_phase(self.plan.job, "flipping")

            async def mark_moved(source: str) -> None:
                async with self.conn(source) as c:
                    await c.execute(f"UPDATE {SCHEMA}.arcs SET moved = true WHERE job = $1",
                                    self.plan.job)

            async def topology(shard: str) -> int:
                async with self.conn(shard) as c:
                    return await write_topology(c, self.plan.new_ring, self.plan.job)

            await asyncio.gather(*(mark_moved(s) for s in self.plan.sources()))
            version = max(await asyncio.gather(*(topology(s) for s in self.ring_shards())))
            self.report.topology_version = version
            await self.journal.set_phase(self.plan.job, "flipped", topology_version=version)
            self.rb.pool.set_ring(ring_from_spec(self.plan.new_ring))
        await self.hook("flipped")

    @contextlib.asynccontextmanager
    async def fence(self) -> AsyncIterator[None]:
        """Hold every source's fence lock: writers to moving keys wait (their trigger takes
        the lock shared); in-flight writers finish first, so their captures are visible."""
        async with contextlib.AsyncExitStack() as stack:
            conns = []
            started = time.perf_counter()  # writers to moving keys queue from the request on
            for source in self.plan.sources():
                c: Any = self._fence.get(source) or await stack.enter_async_context(
                    self.rb._conn(source))
                await c.execute(f"SET lock_timeout = {int(self.fence_timeout * 1000)}")
                await c.execute("SELECT pg_advisory_lock($1)",
                                fence_lock_key(self.plan.job, source))
                conns.append((c, fence_lock_key(self.plan.job, source)))
            try:
                yield
            finally:
                for c, key in conns:
                    with contextlib.suppress(Exception):
                        await c.execute("SELECT pg_advisory_unlock($1)", key)
                        await c.execute("RESET lock_timeout")
                self.report.fence_ms = (time.perf_counter() - started) * 1000

    # -- clean-up --------------------------------------------------------------------------

    async def cleanup(self) -> None:
        for table, move, mover in self.movers():
            async with self.conn(move.source) as src:
                async for n in mover.delete_in(src, mover.arcs, self.batch_size * 4):
                    self.report.deleted[table] = self.report.deleted.get(table, 0) + n
        for source in self.plan.sources():
            async with self.conn(source) as c:
                for table in self.plan.tables:
                    for stmt in drop_capture_ddl(table, keep_guard=self.rb.keep_guard):
                        await c.execute(stmt)
                if not self.rb.keep_guard:
                    await c.execute(f"DELETE FROM {SCHEMA}.arcs WHERE job = $1", self.plan.job)


def _recorder(job: str, table: str, source: str, upto: list[str] | None, before: int
              ) -> Callable[[Any, int], Awaitable[None]]:
    """The checkpoint write of one batch (runs inside the batch's target transaction)."""

    async def record(conn: Any, n: int) -> None:
        await write_progress(conn, job, table, source, upto, before + n, upto is None)

    return record


def _describe(diffs: list[tuple[str, str, str, ArcDiff]]) -> str:
    parts = []
    for table, source, target, d in diffs[:5]:
        parts.append(f"{table} {source}->{target} arc [{d.lo}, {d.hi}): source rows/sum "
                     f"{d.source}, target {d.target}, keys {d.keys[:5]!r}")
    more = f" (+{len(diffs) - 5} more)" if len(diffs) > 5 else ""
    return "verification failed, flip refused: " + "; ".join(parts) + more
