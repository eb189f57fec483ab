"""Online shard rebalancer: plan, copy, catch up, fence, verify, flip, clean up; resumable.

``rb = Rebalancer(pool, tables={"users": "id"})``; ``plan = await rb.plan(add=..., remove=...,
weights=...)`` is a dry run: the arcs of the hash space whose owner changes
(``HashRing.diff``) and, per table and source -> target, the exact rows in them, counted by
the source shard itself with the same ketama hash as :class:`HashRing` installed as a SQL
function.  ``await rb.apply(plan)`` moves exactly those rows while the application writes:

1. pre-flight (targets reachable, tables of the same shape or created from the source's DDL,
   primary keys, UTF-8, one rebalance at a time via an advisory lock), before touching data;
2. a row trigger on each source records the shard keys written in the moving arcs;
3. binary COPY in primary-key batches, each committed with its checkpoint on the target;
4. catch-up from the capture tables until the backlog is small;
5. verification per arc (counts + checksums, server-side);
6. the **write fence**: writes to moving keys wait on an advisory lock while the last changes
   are applied and re-verified; then the flip marks the arcs moved (the trigger now rejects
   writes to them with SQLSTATE ``TCKM1`` -> :class:`KeyMovedError`), records the new ring in
   ``tiercache_rb.topology`` on every shard and swaps the pool's ring (``pool.set_ring``);
7. clean-up deletes the moved rows from the sources in batches and drops the capture tables.
   The trigger stays as a guard against clients still on the old ring (``keep_guard``).

Every phase is journaled (see :mod:`._rebalance_journal`); ``await rb.resume()`` continues an
interrupted job from where it stopped, with nothing lost or copied twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from tiercache.sharding import _rebalance_admin as admin
from tiercache.sharding._rebalance_flow import Flow
from tiercache.sharding._rebalance_journal import Journal
from tiercache.sharding._rebalance_move import ArcDiff, TableMover
from tiercache.sharding._rebalance_plan import (
    Plan,
    TableMove,
    moves_between,
    ring_spec,
)
from tiercache.sharding._rebalance_progress import Progress
from tiercache.sharding._rebalance_schema import RebalanceError, TableInfo, table_info
from tiercache.sharding._rebalance_sql import HASH_FUNCTIONS
from tiercache.sharding._rebalance_topology import KeyMovedError, TopologyWatcher, load_topology
from tiercache.sharding.ring import HashRing

__all__ = [
    "KeyMovedError", "Plan", "RebalanceError", "RebalanceReport", "RebalanceRunningError",
    "Rebalancer", "TopologyWatcher", "VerificationError", "VerifyReport", "load_topology",
]

Hook = Callable[[str], Awaitable[None] | None]


class RebalanceRunningError(RebalanceError):
    """Another rebalance holds the lock, or an unfinished job must be resumed first."""


class VerificationError(RebalanceError):
    """Source and target differ in a way no pending change explains: the flip is refused."""

    def __init__(self, message: str, diffs: list[tuple[str, str, str, ArcDiff]]) -> None:
        super().__init__(message)
        self.diffs = diffs  # (table, source, target, arc)


@dataclass
class VerifyReport:
    """Result of :meth:`Rebalancer.verify`."""

    ok: bool
    checked_rows: int = 0
    diffs: list[tuple[str, str, str, ArcDiff]] = field(default_factory=list)
    misplaced: dict[tuple[str, str], int] = field(default_factory=dict)  # (table, shard) -> n
    seconds: float = 0.0


@dataclass
class RebalanceReport:
    """What ``apply``/``resume`` did, with the figures an operator asks for."""

    job: str
    copied: dict[str, int] = field(default_factory=dict)  # table -> rows copied
    caught_up: int = 0  # capture records applied
    deleted: dict[str, int] = field(default_factory=dict)  # table -> rows removed from sources
    debris: int = 0  # leftover rows of an earlier attempt removed from targets
    copy_seconds: float = 0.0
    fence_ms: float = 0.0
    verify_seconds: float = 0.0
    seconds: float = 0.0
    topology_version: int = 0

    @property
    def copy_rate(self) -> float:
        rows = sum(self.copied.values())
        return rows / self.copy_seconds if self.copy_seconds else 0.0

    def summary(self) -> str:
        return (f"rebalance {self.job} done in {self.seconds:.2f}s: copied "
                f"{sum(self.copied.values()):,} rows ({self.copy_rate:,.0f} rows/s), "
                f"{self.caught_up:,} changes caught up, fence {self.fence_ms:.1f} ms, "
                f"verify {self.verify_seconds:.2f}s, deleted {sum(self.deleted.values()):,} "
                f"rows from sources, topology v{self.topology_version}")


class Rebalancer:
    """Moves rows between the shards of a :class:`~tiercache.ShardedPool` (see module doc).

    ``tables`` maps each sharded table (``"name"`` or ``"schema.name"``) to its shard-key
    column.  ``dsns`` gives connection strings for shards the pool does not have yet (also
    accepted as ``plan(add={name: dsn})``): ``apply`` adds them to the pool
    (``pool.add_shard``) before it copies anything.
    The journal lives on ``journal_shard`` (default: the pool's first shard).
    """

    def __init__(self, pool: Any, tables: Mapping[str, str], *,
                 dsns: Mapping[str, str] | None = None, journal_shard: str | None = None,
                 keep_guard: bool = True) -> None:
        if not tables:
            raise ValueError("tables must name at least one table -> shard-key column")
        self.pool = pool
        self.tables = dict(tables)
        self._dsns = dict(dsns or {})
        self._own: dict[str, Any] = {}
        self._journal_shard = journal_shard or pool.shards[0]
        self.keep_guard = keep_guard

    # -- connections -------------------------------------------------------------------------

    async def _pg(self, shard: str) -> Any:
        """An asyncpg pool of ``shard``: the ShardedPool's own, or one we open from a DSN."""
        if shard in self.pool.shards:
            return self.pool.shard_pool(shard)
        if shard not in self._own:
            dsn = self._dsns.get(shard)
            if dsn is None:
                raise RebalanceError(f"shard {shard!r} is not in the pool and has no DSN")
            self._own[shard] = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        return self._own[shard]

    @contextlib.asynccontextmanager
    async def _conn(self, shard: str) -> AsyncIterator[Any]:
        async with (await self._pg(shard)).acquire(timeout=60) as conn:
            yield conn

    async def _adopt_new_shards(self, plan: Plan) -> None:
        """Shards of the new ring the pool lacks are added from their DSNs (nothing is
        written yet: they get keys at the flip); without a DSN the job cannot start."""
        missing = [n for n in plan.new_ring["weights"] if n not in self.pool.shards]
        unknown = [n for n in missing if not self._dsns.get(n)]
        if unknown:
            raise RebalanceError(
                f"the pool has no shard {unknown}: pass its DSN (plan(add={{name: dsn}}) or "
                "Rebalancer(dsns=...)), or create the pool with it, so the flip can route there")
        for name in missing:
            await self.adopt(name)

    async def adopt(self, shard: str) -> None:
        """Add ``shard`` to the pool from its DSN (``pool.add_shard``), in place of the
        connections opened for planning."""
        await self.pool.add_shard(shard, self._dsns[shard])
        own = self._own.pop(shard, None)
        if own is not None:
            await own.close()

    async def close(self) -> None:
        """Close the connections opened for shards outside the pool."""
        for p in self._own.values():
            await p.close()
        self._own.clear()

    def _ring(self) -> HashRing:
        ring = self.pool.ring
        if not isinstance(ring, HashRing):
            raise RebalanceError("the pool's ring must be a tiercache.HashRing to rebalance")
        return ring

    async def _infos(self, shard: str) -> dict[str, TableInfo]:
        async with self._conn(shard) as conn:
            return {t: await table_info(conn, t, k, shard) for t, k in self.tables.items()}

    # -- plan ----------------------------------------------------------------------------------

    async def plan(self, add: Mapping[str, str | None] | Iterable[str] | None = None,
                   remove: Iterable[str] = (), weights: Mapping[str, int] | None = None,
                   mode: str | None = None) -> Plan:
        """Dry run: the arcs that move and the exact rows per table and source -> target."""
        old = self._ring()
        weights = dict(weights or {})
        added = dict(add) if isinstance(add, Mapping) else dict.fromkeys(add or ())
        for name, dsn in added.items():
            if dsn:
                self._dsns[name] = dsn
        if mode is not None and mode != old.mode:
            new: HashRing = HashRing(old.weights, mode=mode,  # type: ignore[arg-type]
                                          vnodes=old.vnodes, replicas=old.replicas)
        else:
            new = old.copy()
        for name in added:
            if name in old:
                raise RebalanceError(f"shard {name!r} is already on the ring")
            new.add_node(name, weights.get(name, 1))
        for name in remove:
            new.remove_node(name)
        for name, w in weights.items():
            if name not in added:
                if name not in new:
                    raise RebalanceError(f"weights: {name!r} is not on the new ring")
                new.add_node(name, w)
        if not len(new):
            raise RebalanceError("the new ring would have no shards")
        moves = moves_between(old, new) if len(old) else []
        plan = Plan(ring_spec(old), ring_spec(new), self.tables, moves)
        plan.table_moves = await self._count(plan)
        return plan

    async def shard_loads(self) -> dict[str, dict[str, float]]:
        """Per ring shard: bytes of the sharded tables (``pg_total_relation_size``), row
        operations since the stats reset (scans' rows read + inserts/updates/deletes), and
        ``load``: the mean of the two shares (0..1, summing to 1 over the shards; a measure
        that is zero everywhere, such as ops right after a stats reset, is left out)."""
        raw: dict[str, tuple[int, int]] = {}
        for shard in self._ring().nodes:
            async with self._conn(shard) as conn:
                size = ops = 0
                for table in self.tables:
                    row = await conn.fetchrow(
                        "SELECT pg_total_relation_size(c.oid) AS size, coalesce(s.seq_tup_read, 0)"
                        " + coalesce(s.idx_tup_fetch, 0) + coalesce(s.n_tup_ins, 0) + "
                        "coalesce(s.n_tup_upd, 0) + coalesce(s.n_tup_del, 0) AS ops "
                        "FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
                        "WHERE c.oid = to_regclass($1)", TableMover.quote(table))
                    if row is not None:
                        size, ops = size + int(row["size"]), ops + int(row["ops"])
                raw[shard] = (size, ops)
        total_size = sum(v[0] for v in raw.values())
        total_ops = sum(v[1] for v in raw.values())
        out = {}
        for shard, (size, ops) in raw.items():
            shares = [x / t for x, t in ((size, total_size), (ops, total_ops)) if t]
            load = sum(shares) / len(shares) if shares else 1 / len(raw)
            out[shard] = {"bytes": float(size), "ops": float(ops), "load": load}
        return out

    async def suggest_weights(self, *, scale: int = 10) -> Plan:
        """A plan that reweights the ring so each shard's expected load evens out.

        A shard's load per unit of weight is ``load / weight``; the proposal gives each
        shard a weight inversely proportional to it, the least loaded-per-weight shard
        getting ``scale * weight`` (weights are integers, so ``scale`` sets the granularity).
        Review it with ``plan.summary()`` and ``apply`` it like any plan.
        """
        ring = self._ring()
        loads = await self.shard_loads()
        per_weight = {n: max(loads[n]["load"], 1e-9) / w for n, w in ring.weights.items()}
        best = min(per_weight.values())
        weights = {n: max(1, round(scale * best / per_weight[n])) for n in ring.nodes}
        return await self.plan(weights=weights)

    async def _count(self, plan: Plan) -> list[TableMove]:
        out: list[TableMove] = []
        for source in plan.sources():
            infos = await self._infos(source)
            async with self._conn(source) as conn:
                await conn.execute(HASH_FUNCTIONS)
                for table, info in infos.items():
                    name = TableMover(info, []).table
                    total = await conn.fetchval(f"SELECT count(*) FROM {name}")
                    # indexes per heap byte on the source: the target builds the same ones
                    ratio = await conn.fetchval(
                        "SELECT pg_indexes_size(to_regclass($1))::float8 / "
                        "greatest(pg_relation_size(to_regclass($1)), 1)", name)
                    for move in (m for m in plan.moves if m.source == source):
                        mover = TableMover(info, move.arcs)
                        rows, size = await mover.count_in(conn, mover.arcs)
                        out.append(TableMove(table, source, move.target, rows, size, int(total),
                                             int(size * float(ratio))))
        return out

    # -- apply / resume ---------------------------------------------------------------------

    async def apply(self, plan: Plan, *, batch_size: int = 5000, progress: bool | Progress = False,
                    fence_timeout: float = 10.0, cleanup: bool = True, parallel: int = 4,
                    hook: Hook | None = None) -> RebalanceReport:
        """Execute ``plan`` online (see the module docstring); returns the report.

        ``cleanup=False`` stops after the flip, keeping the moved rows on the sources: until
        ``resume()`` deletes them, a client still on the old ring gets :class:`KeyMovedError`
        for UPDATE/DELETE of a moved key too (once the rows are gone such a statement matches
        no row; INSERTs of moved keys are rejected either way).  Use it when other processes
        need time to pick up the new topology.

        Up to ``parallel`` sources copy at once (each reads its own table once; moves from
        different sources load different servers).  ``hook(event)`` is called at each step
        (``prepared``, ``batch``, ``copied``, ``catch_up`` per round, ``caught_up``,
        ``fenced``, ``flipped``, ``cleaned``): for progress UIs and tests that inject a crash.
        """
        return await self._run(plan, None, batch_size, progress, fence_timeout, hook, cleanup,
                               parallel)

    async def resume(self, *, batch_size: int = 5000, progress: bool | Progress = False,
                     fence_timeout: float = 10.0, parallel: int = 4, hook: Hook | None = None
                     ) -> RebalanceReport | None:
        """Continue the unfinished job from the journal; ``None`` when there is none."""
        found = await Journal(await self._pg(self._journal_shard)).unfinished()
        if found is None:
            return None
        _job, plan_json, phase = found
        plan = Plan.from_json(plan_json)
        self.tables = dict(plan.tables)
        return await self._run(plan, phase, batch_size, progress, fence_timeout, hook, True,
                               parallel)

    async def _run(self, plan: Plan, phase: str | None, batch_size: int,
                   progress: bool | Progress, fence_timeout: float, hook: Hook | None,
                   cleanup: bool, parallel: int) -> RebalanceReport:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        await self._adopt_new_shards(plan)
        async with self._conn(self._journal_shard) as lock_conn:
            flow = Flow(self, plan, Journal(lock_conn), batch_size, progress, fence_timeout,
                        hook, parallel)
            await flow.lock(lock_conn)
            try:
                async with flow.held():
                    return await flow.run(phase, cleanup)
            finally:
                flow.close()
                with contextlib.suppress(Exception):
                    await flow.unlock(lock_conn)

    async def abort(self) -> str | None:
        """Give up the unfinished job before its flip: drop captures, delete copied rows."""
        found = await Journal(await self._pg(self._journal_shard)).unfinished()
        if found is None:
            return None
        job, plan_json, phase = found
        plan = Plan.from_json(plan_json)
        async with self._conn(self._journal_shard) as lock_conn:
            flow = Flow(self, plan, Journal(lock_conn), 5000, False, 10.0, None)
            await flow.lock(lock_conn)
            try:
                async with flow.held():
                    await admin.abort(flow, phase)
            finally:
                flow.close()
                await flow.unlock(lock_conn)
        return job

    async def verify(self, plan: Plan | None = None) -> VerifyReport:
        """Check a plan's moves: before the flip, source vs target per arc (counts +
        checksums); after it, that every row of every table sits on its new-ring owner."""
        journal = Journal(await self._pg(self._journal_shard))
        if plan is None:
            latest = await journal.latest()
            if latest is None:
                raise RebalanceError("no rebalance job in the journal")
            plan = Plan.from_json(latest["plan"])
        flow = Flow(self, plan, journal, 5000, False, 10.0, None)
        try:
            async with flow.held():
                return await admin.verify_standalone(flow)
        finally:
            flow.close()

    async def status(self) -> dict[str, Any] | None:
        """The latest job: phase, timestamps, info, and copy progress per table move."""
        latest = await Journal(await self._pg(self._journal_shard)).latest()
        if latest is None:
            return None
        plan = Plan.from_json(latest["plan"])
        flow = Flow(self, plan, Journal(await self._pg(self._journal_shard)), 5000, False,
                    10.0, None)
        latest["progress"] = await admin.copy_progress(flow)
        latest["plan"] = plan
        return latest
