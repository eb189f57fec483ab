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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from tiercache.sharding._rebalance_journal import (
    JOURNAL_DDL,
    Journal,
    read_progress,
    write_progress,
    write_topology,
)
from tiercache.sharding._rebalance_move import RING, SESSION_TEXT, ArcDiff, TableMover
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
from tiercache.sharding._routing import ring_digest

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
        self._pair: dict[tuple[str, str], Any] = {}  # (source, target) -> a target connection
        self._movers: tuple[dict[str, TableInfo], list[tuple[str, Move, TableMover]]] | None = None

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
        connection could wait for ever.  So it never asks mid-fence: one connection per
        involved shard, one per source for the fence lock, and one per move on its target
        (the sources settle their moves in parallel).  They are the rebalancer's sessions:
        its writes pass the capture triggers, and text forms are fixed for checksums
        (asyncpg resets session settings when a connection goes back to its pool).
        """
        async with contextlib.AsyncExitStack() as stack:

            async def take(shard: str) -> Any:
                conn = await stack.enter_async_context(self.rb._conn(shard))
                await conn.execute(f"SET tiercache.rebalancer = 'on'; {SESSION_TEXT}")
                return conn

            sources = self.plan.sources()
            for source in sources:
                self._held[source] = await take(source)
                self._fence[source] = await take(source)
            for move in self.plan.moves:
                conn = self._pair[(move.source, move.target)] = await take(move.target)
                if move.target not in sources:  # a pure target: its first pair conn serves
                    self._held.setdefault(move.target, conn)
            try:
                yield
            finally:
                self._held.clear()
                self._fence.clear()
                self._pair.clear()

    def movers(self) -> list[tuple[str, Move, TableMover]]:
        """(table, move, its mover) for every table and move; built once per table info."""
        if self._movers is None or self._movers[0] is not self.infos:
            self._movers = (self.infos, [
                (table, move, TableMover(self.infos[table], move.arcs))
                for table in self.plan.tables for move in self.plan.moves])
        return self._movers[1]

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

    async def bump(self, shards: list[str]) -> None:
        """The rebalancer's writes are writes: bump the L3 generations of the moved tables
        on ``shards`` (a fan-out count cached before a move is not served after it)."""
        qc = getattr(self.rb.pool, "query_cache", None)
        if qc is None:
            return
        names = []
        for table in self.plan.tables:
            schema, _, rel = table.rpartition(".")
            names.append(rel if schema in ("", "public") else table)
        for shard in shards:
            result = qc.bump(shard, names)
            if inspect.isawaitable(result):
                await result

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
        current = self.rb._ring()
        if current.weights != self.plan.old_ring["weights"] or current.mode != self.plan.old_ring[
                "mode"]:
            raise RebalanceError("the pool's ring changed since the plan was made: plan again")
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
                async for n in mover.delete_in(dst, 50_000):
                    self.report.debris += n
        old_ring = ring_from_spec(self.plan.old_ring)
        digests = [ring_digest(old_ring), ring_digest(ring_from_spec(self.plan.new_ring))]
        for shard in self.ring_shards():
            owned = multirange([(lo, hi) for lo, hi, owner in old_ring.arcs() if owner == shard])
            incoming = multirange(sorted(a for m in self.plan.moves if m.target == shard
                                         for a in m.arcs))
            async with self.conn(shard) as c, c.transaction():
                # the job's rings are current (a ring that was stale before, e.g. after a
                # move back, is not any more); earlier guards no longer cover keys this
                # shard owns now or receives
                await c.execute(f"DELETE FROM {SCHEMA}.stale_rings WHERE digest = ANY($1)",
                                digests)
                await c.execute(
                    f"UPDATE {SCHEMA}.arcs SET arcs = arcs - $2::text::int8multirange - "
                    f"$3::text::int8multirange WHERE job <> $1", self.plan.job, owned, incoming)
                await c.execute(f"DELETE FROM {SCHEMA}.arcs WHERE isempty(arcs)")
        for source in self.plan.sources():
            async with self.conn(source) as c, c.transaction():
                for move in (m for m in self.plan.moves if m.source == source):
                    await c.execute(
                        f"INSERT INTO {SCHEMA}.arcs (job, target, arcs, fence_lock) VALUES "
                        f"($1, $2, $3::text::int8multirange, $4) ON CONFLICT (job, target) "
                        f"DO NOTHING", self.plan.job, move.target, multirange(move.arcs),
                        fence_lock_key(self.plan.job, source))
                for table, info in self.infos.items():
                    for stmt in capture_ddl(table, info.key, info.key_sql_type, info.key_type):
                        await c.execute(stmt)

    # -- copy --------------------------------------------------------------------------------

    def by_source(self) -> list[list[tuple[str, Move, TableMover]]]:
        """The movers grouped by source: groups run in parallel on the held connections
        (a source's own connection, a target connection per move), a group's in order."""
        groups: dict[str, list[tuple[str, Move, TableMover]]] = {}
        for item in self.movers():
            groups.setdefault(item[1].source, []).append(item)
        return list(groups.values())

    def pair(self, move: Move) -> tuple[Any, Any]:
        return self._held[move.source], self._pair[(move.source, move.target)]

    async def copy_all(self) -> None:
        """Copy every (table, source -> target), ``parallel`` sources at a time (each source
        reads its own rows, so moves from different sources load different servers)."""
        started = time.perf_counter()
        gate = asyncio.Semaphore(self.parallel)

        async def one(items: list[tuple[str, Move, TableMover]]) -> None:
            async with gate:
                for table, move, mover in items:
                    rows = await self.copy_move(table, move, mover, *self.pair(move))
                    self.report.copied[table] = self.report.copied.get(table, 0) + rows

        await _gather(one(group) for group in self.by_source())
        self.report.copy_seconds = time.perf_counter() - started
        await self.bump(self.plan.targets())

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
        if done:
            return rows
        bounds: list[list[str] | None] = [*await mover.bounds(src, last, step), None]
        for upto in bounds:
            record = _recorder(self.plan.job, table, move.source, upto, rows)
            n = await mover.copy_batch(src, dst, last, upto, record)
            rows += n
            last = upto
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
            if consumed:
                await self.bump(self.plan.targets())
            await self.hook("catch_up")
            backlog = 0
            for _table, move, mover in self.movers():
                async with self.conn(move.source) as src:
                    backlog += await mover.backlog(src, move.target)
            if backlog <= SMALL_BACKLOG:
                break
        return backlog

    async def diffs(self) -> list[tuple[int, str, Move, ArcDiff]]:
        """Arcs whose rows differ in a way no pending change explains, per mover index.

        Sources first, in parallel: per-arc sums through the hash index, leaving out the
        keys with a pending capture read in the same snapshot (see ``source_sums``); then
        each target once per table for all the moves into it, leaving out the same keys.
        An arc that still differs is narrowed to its keys for the error message.
        """
        movers = self.movers()
        index = {id(m): i for i, (_t, _mv, m) in enumerate(movers)}
        src: dict[int, tuple[dict[int, tuple[int, int]], list[Any]]] = {}

        async def source(items: list[tuple[str, Move, TableMover]]) -> None:
            for _table, move, mover in items:
                src[index[id(mover)]] = await mover.source_sums(self._held[move.source],
                                                                move.target)

        into: dict[str, dict[str, list[int]]] = {}  # target -> table -> mover indexes
        for i, (table, move, _m) in enumerate(movers):
            into.setdefault(move.target, {}).setdefault(table, []).append(i)
        dst: dict[tuple[str, str], tuple[TableMover, Any, dict[int, tuple[int, int]]]] = {}

        async def target(shard: str, tables: dict[str, list[int]]) -> None:
            conn = self._pair[(movers[next(iter(tables.values()))[0]][1].source, shard)]
            for table, idxs in tables.items():  # each target table once for all its moves
                both = TableMover(self.infos[table], [a for i in idxs for a in movers[i][1].arcs])
                dst[(table, shard)] = (both, conn, await both.target_sums(conn))

        # every source and every target at once: each table scanned once per shard
        await _gather([*(source(g) for g in self.by_source()),
                       *(target(shard, tables) for shard, tables in into.items())])
        sums: dict[tuple[str, str], dict[int, tuple[int, int]]] = {}
        for (table, shard), (both, conn, found) in dst.items():
            pending = [k for i in into[shard][table] for k in src[i][1]]
            sums[(table, shard)] = await both.without(conn, found, pending)
        out = []
        for i, (table, move, mover) in enumerate(movers):
            async with self.conn(move.source) as a, self.conn(move.target) as b:
                for d in await mover.diff_arcs(a, b, move.arcs, src[i][0],
                                               sums[(table, move.target)]):
                    out.append((i, table, move, d))
        return out

    async def converge_and_flip(self) -> None:
        """Catch up, verify, re-check what changed meanwhile, fence, flip.

        Verification compares every arc but leaves out keys with a pending change (see
        :meth:`diffs`): an arc that differs is corruption and refuses the flip.  The keys it
        left out, and those written during it, are then caught up and compared key by key,
        still outside the fence: a key that differs must have been written again since
        (a capture is pending), else it is corruption too.  Inside the fence only the last
        few changes are caught up and compared, so the fence lasts as long as the final
        backlog takes, not as long as a verification.
        """
        from tiercache.sharding.rebalance import VerificationError

        await self.catch_up(MAX_ROUNDS)
        await self.hook("caught_up")
        t0 = time.perf_counter()
        unexplained = [(t, m.source, m.target, d) for _i, t, m, d in await self.diffs()]
        self.report.verify_seconds = time.perf_counter() - t0
        if unexplained:
            raise VerificationError(_describe(unexplained), unexplained)
        await self.settle(fenced=False)
        # 'flipping' (resume fences again and re-checks) before the fence: inside it only
        # what must be -- the last changes, their check, and marking the arcs moved, after
        # which the source triggers reject writes to moved keys.  The pool's ring swaps as
        # the fence opens; the shared topology follows right after (a client that refreshes
        # in between is rejected once more and retries).
        await self.journal.set_phase(self.plan.job, "flipping")

        old_digest = ring_digest(ring_from_spec(self.plan.old_ring))

        async def mark_moved(source: str) -> None:  # and the old ring is stale here
            await self._held[source].execute(
                f"WITH m AS (UPDATE {SCHEMA}.arcs SET moved = true WHERE job = $1) "
                f"INSERT INTO {SCHEMA}.stale_rings (digest, job) VALUES ($2, $1) "
                f"ON CONFLICT (digest) DO NOTHING", self.plan.job, old_digest)

        async with self.fence():
            await self.hook("fenced")
            await self.settle(fenced=True)
            await _gather(mark_moved(s) for s in self.plan.sources())
            self.rb.pool.set_ring(ring_from_spec(self.plan.new_ring))
        await self.bump(self.plan.targets())  # the last changes caught up

        async def topology(shard: str) -> int:
            async with self.conn(shard) as c:
                return await write_topology(c, self.plan.new_ring, self.plan.job)

        version = max(await _gather(topology(s) for s in self.ring_shards()))
        self.report.topology_version = version
        await self.journal.set_phase(self.plan.job, "flipped", topology_version=version)
        await self.hook("flipped")

    async def settle(self, fenced: bool) -> None:
        """Catch up every move and compare the keys it re-synced, the sources in parallel.

        Outside the fence a key that differs must have been written again since (a capture
        is pending: the fence re-syncs and compares it); inside, every key must match.
        """
        from tiercache.sharding.rebalance import VerificationError

        async def one(items: list[tuple[str, Move, TableMover]]) -> list[Any]:
            bad = []
            for table, move, mover in items:
                src, dst = self.pair(move)
                if fenced:  # writers wait: every capture in one pass, left in place
                    n, keys = await mover.catch_up_once(src, dst, move.target, None, False)
                else:
                    n, keys = await mover.drain(src, dst, move.target, CATCH_UP_LIMIT)
                self.report.caught_up += n
                wrong = await mover.compare_keys(src, dst, list(keys), session_ready=True)
                if wrong and not fenced:
                    rewritten = await mover.pending_keys(src, move.target)
                    wrong = [k for k in wrong if k not in rewritten]
                if wrong:
                    bad.append((table, move.source, move.target,
                                ArcDiff(0, RING, (0, 0), (0, 0), wrong[:20])))
            return bad

        bad = [b for found in await _gather(one(g) for g in self.by_source()) for b in found]
        if bad:
            raise VerificationError(_describe(bad), bad)

    @contextlib.asynccontextmanager
    async def fence(self) -> AsyncIterator[None]:
        """Hold every source's fence lock: writers to moving keys wait (their trigger takes
        the lock shared); in-flight writers finish first, so their captures are visible."""
        timeout = int(self.fence_timeout * 1000)
        locks = [(self._fence[s], fence_lock_key(self.plan.job, s)) for s in self.plan.sources()]
        started = time.perf_counter()  # writers to moving keys queue from the request on
        taken: list[tuple[Any, int]] = []

        async def lock(conn: Any, key: int) -> None:
            await conn.execute(f"SET lock_timeout = {timeout}; SELECT pg_advisory_lock({key})")
            taken.append((conn, key))

        try:
            await _gather(lock(c, k) for c, k in locks)
            yield
        finally:
            async def unlock(conn: Any, key: int) -> None:
                with contextlib.suppress(Exception):
                    await conn.execute(f"SELECT pg_advisory_unlock({key}); RESET lock_timeout")

            await asyncio.gather(*(unlock(c, k) for c, k in taken))
            self.report.fence_ms = (time.perf_counter() - started) * 1000

    # -- clean-up --------------------------------------------------------------------------

    async def cleanup(self) -> None:
        async def one(items: list[tuple[str, Move, TableMover]]) -> None:
            for table, move, mover in items:
                async for n in mover.delete_in(self._held[move.source], self.batch_size * 4):
                    self.report.deleted[table] = self.report.deleted.get(table, 0) + n

        await _gather(one(group) for group in self.by_source())  # sources in parallel
        await self.bump(self.plan.sources())
        await self.drop_captures(keep_guard=self.rb.keep_guard)

    async def drop_captures(self, keep_guard: bool) -> None:
        """Empty the capture tables; without ``keep_guard`` forget this job's arcs too, and
        drop the triggers of a source no other job's guard needs any more."""
        for source in self.plan.sources():
            async with self.conn(source) as c:
                keep = keep_guard
                if not keep:
                    await c.execute(f"DELETE FROM {SCHEMA}.arcs WHERE job = $1", self.plan.job)
                    keep = await c.fetchval(f"SELECT EXISTS (SELECT FROM {SCHEMA}.arcs)")
                for table in self.plan.tables:
                    for stmt in drop_capture_ddl(table, keep_guard=keep):
                        await c.execute(stmt)


def _recorder(job: str, table: str, source: str, upto: list[str] | None, before: int
              ) -> Callable[[Any, int], Awaitable[None]]:
    """The checkpoint write of one batch (runs inside the batch's target transaction)."""

    async def record(conn: Any, n: int) -> None:
        await write_progress(conn, job, table, source, upto, before + n, upto is None)

    return record


async def _gather(aws: Iterable[Awaitable[Any]]) -> list[Any]:
    """``asyncio.gather`` in a TaskGroup: one failure cancels the rest and is raised as is."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_as_coro(a)) for a in aws]
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    return [t.result() for t in tasks]


async def _as_coro(aw: Awaitable[Any]) -> Any:
    return await aw


def _describe(diffs: list[tuple[str, str, str, ArcDiff]]) -> str:
    parts = []
    for table, source, target, d in diffs[:5]:
        parts.append(f"{table} {source}->{target} arc [{d.lo}, {d.hi}): source rows/sum "
                     f"{d.source}, target {d.target}, keys {d.keys[:5]!r}")
    more = f" (+{len(diffs) - 5} more)" if len(diffs) > 5 else ""
    return "verification failed, flip refused: " + "; ".join(parts) + more
