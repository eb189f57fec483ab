"""L3: a query-result cache for the ShardedPool that never serves a result older than a write.

Why generations, not deletes: an entry's key contains the generation of every table the query
reads (and the shard epoch).  A write bumps the generations, which makes every older entry
unreachable at once -- no scan, no tag sets, no race between "delete" and a slow reader's
"store".  The reader captures the generations *before* sending the query and stores the result
only if they are unchanged when it returns; a write that commits during the query therefore
either bumps first (the reader sees the change and returns its result uncached) or bumps after
the reader stored (the entry sits under the old generation, unreachable by any later read).

Why a plan per SQL text: the parse, the catalog resolution of views, the sorted generation keys
and the key prefix are computed once per (SQL text, shard, identity, method); a memory hit then
costs a dict lookup of the plan, one ``map`` over the generation counters and a dict lookup of
``(plan, generations, params)`` -- no hashing of the SQL text, no encoding of simple params.

Stores: ``"memory"`` (per process, bounded by bytes, cost-aware or LRU eviction:
:mod:`._query_mem`) or Redis (shared by every process, generations too: :mod:`._query_redis`).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any

from tiercache.tiers._query_catalog import Catalog, Resolved
from tiercache.tiers._query_flight import Flights, RunnerGone
from tiercache.tiers._query_mem import MemEntry, MemoryStore, encoded_size
from tiercache.tiers._query_plan import (
    BUCKET,
    EPOCH,
    STAR,
    BucketDeps,
    Plan,
    identity_of,
    params_key,
    row_names,
)
from tiercache.tiers._sql import Analysis, analyze
from tiercache.tiers._sql_keys import bucket
from tiercache.tiers.base import MISSING

__all__ = ["BUCKET", "EPOCH", "STAR", "QueryCache"]

_MAX_PLANS = 8192
_ZEROS3 = (0, 0, 0)  # a point read: epoch, table, key bucket
_now = time.monotonic


class QueryCache:
    """The L3 tier: ``create_sharded_pool(..., query_cache=QueryCache())``.

    ``store``: ``"memory"`` (per process), a ``redis://``/``rediss://`` URL or a
    :class:`~tiercache.RedisTier` (entries *and* generations shared by every process using the
    same Redis and ``namespace``).  ``default_ttl`` applies to ``cache_ttl=True``;
    ``"adaptive"`` and explicit TTLs are capped at ``max_ttl``.  Results whose encoding
    exceeds ``max_entry_bytes`` are not stored (bypass ``too_large``); the memory store holds
    at most ``max_bytes``, evicting by ``eviction`` (``"cost"``: GreedyDual-Size on measured
    execution time x hits / size; ``"lru"``).  ``lease_wait``: seconds a process waits for
    another process's fill of the same key (Redis store).  Reports as tier ``"l3"``.
    """

    name = "l3"

    def __init__(
        self, store: Any = "memory", *, default_ttl: float = 30, max_ttl: float = 300,
        max_entry_bytes: int = 1_000_000, max_bytes: int = 256 << 20,
        eviction: str = "cost", namespace: str = "tiercache", lease_wait: float = 2.0,
        signing_key: Any = None,
    ) -> None:
        if not 0 < default_ttl <= max_ttl:
            raise ValueError("need 0 < default_ttl <= max_ttl")
        if max_entry_bytes < 1 or max_bytes < 1:
            raise ValueError("max_entry_bytes and max_bytes must be >= 1")
        self.default_ttl = float(default_ttl)
        self.max_ttl = float(max_ttl)
        self.max_entry_bytes = int(max_entry_bytes)
        self.max_bytes = int(max_bytes)
        self.eviction = eviction
        self.lease_wait = float(lease_wait)
        self._mem = MemoryStore(self.max_bytes, eviction)
        self._shared: Any = None
        if isinstance(store, str) and store == "memory":
            self.store = "memory"
        else:
            from tiercache.tiers._query_redis import SharedStore

            self._shared = SharedStore(store, namespace, signing_key)
            self.store = "redis"
        self._gens: dict[tuple[str, str], int] = {}
        self._untrusted: set[str] = set()
        self._plans: dict[tuple[Any, ...], Plan] = {}
        self._catalog = Catalog()
        self._bdeps: dict[tuple[str, str], BucketDeps] = {}
        self._flights = Flights()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.metrics_name: str | None = None
        self.hits = 0
        self.misses = 0
        self._counts: Counter[str] = Counter()
        self._bypass: Counter[str] = Counter()
        self.db_time_saved_ns = 0.0

    # -- generations ---------------------------------------------------------------------

    def generations(self, shard: str, tables: Iterable[str]) -> tuple[int, ...]:
        """The shard epoch then each table's generation (sorted by name), in this process."""
        gens = self._gens
        return (gens.get((shard, EPOCH), 0),
                *(gens.get((shard, t), 0) for t in sorted(set(tables))))

    def bump_local(self, shard: str, tables: Iterable[str]) -> list[str]:
        """Bump this process's counters (and free the entries they made unreachable)."""
        done = []
        for table in tables:
            key = (shard, table)
            self._gens[key] = self._gens.get(key, 0) + 1
            self._mem.drop_dep(key)
            done.append(table)
        self._counts["invalidations"] += len(done)
        if EPOCH in done:
            self._counts["epoch_bumps"] += 1
        return done

    async def bump(self, shard: str, tables: Iterable[str], pool: Any = None) -> None:
        """A write to ``tables`` on ``shard`` committed: older entries become unreachable
        here at once, and in every process once the shared store has the new generations.

        ``pool`` (the shard's asyncpg pool): if the shared bump fails, the names go out as a
        NOTIFY on the shard too, so every process listening there (it called
        ``install_invalidation_triggers``) applies them -- its Redis may work when ours
        does not -- instead of serving the old rows until their TTL."""
        names = self.bump_local(shard, tables)
        if (self._shared is not None and names and not await self._shared.bump(shard, names)
                and pool is not None):
            await self._notify_others(shard, names, pool)

    async def _notify_others(self, shard: str, names: list[str], pool: Any) -> None:
        from tiercache.sharding._l3_listen import CHANNEL, names_payload

        try:
            await pool.execute("SELECT pg_notify($1, $2)", CHANNEL, names_payload(names))
            self._counts["notify_fallbacks"] += 1
        except Exception:  # Postgres too: nothing more to try (this process still bypasses)
            self._counts["notify_fallback_errors"] += 1

    async def bump_shard(self, shard: str, pool: Any = None) -> None:
        """A write of unknown reach (unparsable SQL, DDL, a transaction): the whole shard."""
        await self.bump(shard, [EPOCH], pool)

    def notified(self, shard: str, names: list[str]) -> None:
        """A NOTIFY from the shard (sync callback): bump now, share in the background.

        With the shared store the names are owed at once (reads of ``shard`` here bypass
        until the bump is in Redis): from the notification on, this process never serves an
        entry of the old generations, not even while its own bump is in flight."""
        self.bump_local(shard, names)
        if self._shared is not None:
            self._shared.owe(shard, names)
            task = asyncio.ensure_future(self._shared.bump(shard, names))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def set_trusted(self, shard: str, trusted: bool) -> None:
        """An untrusted shard (its LISTEN connection is down) bypasses the cache."""
        if trusted:
            self._untrusted.discard(shard)
        else:
            self._untrusted.add(shard)

    async def _resolve(self, shard: str, pool: Any, schema: str | None, name: str) -> Resolved:
        known = self._catalog.known(shard, schema, name)
        if known is None:
            known = await self._catalog.resolve(shard, pool, schema, name)
        return known

    async def note_write(self, shard: str, sql: str, pool: Any = None,
                         args: Any = None, many: bool = False) -> None:
        """Bump what ``sql`` writes (the shard epoch if it is not a recognizable write).

        With ``pool`` (the shard's asyncpg pool) the written names are also resolved through
        the catalog, so ``UPDATE orders`` under another ``search_path`` or through an
        updatable view bumps the tables a reader's resolved names depend on.
        """
        a = analyze(sql)
        if a.kind == "select" and a.refusal != "volatile" and not a.calls_functions:
            return
        if a.kind != "write" or not a.tables:
            # DDL, SET, DO, unparsable -- or a SELECT calling functions that may write.
            if a.kind == "other":
                self._catalog.forget(shard)
            await self.bump_shard(shard, pool)
            return
        tables = set(a.tables)
        only: Resolved | None = None
        if pool is not None:
            try:
                for schema, name in a.relations:
                    only = await self._resolve(shard, pool, schema, name)
                    tables |= only.tables
            except Exception:
                tables.add(EPOCH)  # could not resolve: the whole shard, to be safe
                only = None
        if only is not None and a.pinned and len(a.relations) == 1 and args is not None:
            # executemany's rows are usable only if they are not a one-shot iterator
            rows = [args] if not many else list(args) if isinstance(args, list | tuple) else []
            names = row_names(a, only, rows) if rows else None
            if names is not None:
                await self.bump(shard, names, pool)  # only those keys' buckets, plus the star
                return
        await self.bump(shard, tables, pool)

    # -- plans ---------------------------------------------------------------------------

    async def _plan(self, memo: tuple[Any, ...], shard: str, identity: Any, method: str,
                    sql: str, extra: Any, pool: Any) -> Plan:
        analysis = analyze(sql)
        refusal = analysis.refusal
        if analysis.kind != "select":
            refusal = "not_select" if refusal in (None, "write") else refusal
        tables = set(analysis.tables)
        only: Resolved | None = None
        if refusal is None and pool is not None:
            for schema, name in analysis.relations:
                only = await self._resolve(shard, pool, schema, name)
                tables |= only.tables
                refusal = refusal or only.refusal
            if refusal is None and analysis.functions and await self._catalog.unstable(
                    shard, pool, analysis.functions):
                refusal = "volatile"
        h = hashlib.blake2b(digest_size=16)
        # Everything that can change the result: the endpoint (user, database) and its session
        # settings (search_path, TimeZone, DateStyle...), and the relations the names resolved
        # to -- two processes with other search_paths never share an entry.
        for part in (shard, identity_of(identity), method, sql, repr(extra),
                     ",".join(sorted(tables))):
            data = part.encode()
            h.update(len(data).to_bytes(4, "little"))
            h.update(data)
        plan = Plan(shard, analysis, tables, refusal, h.hexdigest())
        if (only is not None and analysis.pinned and len(analysis.relations) == 1
                and only.table is not None and only.pk is not None):
            ref = dict(analysis.eq).get(only.pk)
            bdeps = self._bdeps.get((shard, only.table))
            if bdeps is None:
                bdeps = self._bdeps[(shard, only.table)] = {}
            if ref is not None and ref[0] == "p":
                plan.pin(only.table, only.pk_kind or "", int(ref[1]) - 1, None, bdeps)
            elif ref is not None:
                const = bucket(ref[1], only.pk_kind or "")
                if const is not None:
                    plan.pin(only.table, only.pk_kind or "", -1, const, bdeps)
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        self._plans[memo] = plan
        return plan

    # -- the read path -------------------------------------------------------------------

    def bypass(self, reason: str) -> None:
        self._bypass[reason] += 1

    def ttl_for(self, cache_ttl: float | str | bool, elapsed_ns: int, analysis: Analysis) -> float:
        """Explicit TTL (capped), ``True`` = default, ``"adaptive"`` = slow/complex live longer."""
        if cache_ttl == "adaptive":
            ms = elapsed_ns / 1e6
            ttl = self.default_ttl * (1 + math.log2(1 + ms)) * (1 + 0.1 * analysis.complexity)
            return max(1.0, min(self.max_ttl, ttl))
        if cache_ttl is True:
            return self.default_ttl
        if isinstance(cache_ttl, bool) or not isinstance(cache_ttl, (int, float)):
            raise TypeError("cache_ttl must be None, a number of seconds, True or 'adaptive'")
        if cache_ttl <= 0:
            raise ValueError("cache_ttl must be > 0")
        return min(float(cache_ttl), self.max_ttl)

    async def read(
        self, shard: str, identity: Any, method: str, sql: str, args: tuple[Any, ...],
        extra: Any, cache_ttl: float | str | bool, run: Callable[[], Awaitable[Any]],
        pool: Any = None,
    ) -> Any:
        """Serve ``run()``'s result from the cache, or run it and store it if still valid.

        ``identity``: the endpoint (or a string naming it; see :func:`identity_of`).

        ``pool``: the shard's asyncpg pool, for the one-time catalog lookup of the relations
        (views -> base tables); without it the names as written are the dependencies.
        """
        memo = (sql, shard, identity, method, extra)
        plan = self._plans.get(memo)
        if plan is None:
            try:
                plan = await self._plan(memo, shard, identity, method, sql, extra, pool)
            except Exception:
                self._bypass["catalog_error"] += 1
                return await run()
        if plan.refusal is not None:
            self._bypass[plan.refusal] += 1
            return await run()
        if self._untrusted and shard in self._untrusted:
            self._bypass["untrusted"] += 1
            return await run()
        if self._shared is not None:
            return await self._shared.read(self, plan, args, cache_ttl, run)
        deps = plan.deps_for(args)
        gens = tuple(map(self._gens.get, deps, plan.zeros if deps is plan.deps else _ZEROS3))
        key = (plan, gens, params_key(args))
        entries = self._mem.entries
        while True:
            entry = entries.get(key)
            if entry is not None:
                if entry.expires > _now():
                    return self._hit(entry)
                self._mem.drop(key)
            waiter = self._flights.join(key)
            if waiter is None:
                break  # ours to run
            self._counts["singleflight_waits"] += 1
            try:
                return await waiter
            except RunnerGone:
                continue  # its runner was cancelled: look again (and maybe run it)
        self.misses += 1
        try:
            t0 = time.perf_counter_ns()
            result = await run()
            elapsed = time.perf_counter_ns() - t0
        except BaseException as exc:
            self._flights.failed(key, exc)
            raise
        self._flights.done(key, result)
        if (tuple(map(self._gens.get, deps, plan.zeros if deps is plan.deps else _ZEROS3)) != gens
                or shard in self._untrusted):
            self._counts["race_skips"] += 1  # a write committed meanwhile: don't store
            return result
        self._store(key, deps, result, elapsed, self.ttl_for(cache_ttl, elapsed, plan.analysis))
        return _copy(result)

    def lookup(self, shard: str, identity: Any, method: str, sql: str, args: tuple[Any, ...],
               extra: Any) -> Any:
        """A memory-store hit served without awaiting anything, or ``MISSING`` (then
        :meth:`read` decides: plan, refusal, bypass, single flight, the query).

        Why: the pool calls this first, so a hit builds no coroutine of :meth:`read` and no
        closure for the query it will not run -- about a fifth of a hit's cost."""
        if self._shared is not None:
            return MISSING
        plan = self._plans.get((sql, shard, identity, method, extra))
        if plan is None or plan.refusal is not None or (self._untrusted
                                                        and shard in self._untrusted):
            return MISSING
        deps = plan.deps_for(args)
        entry = self._mem.entries.get((
            plan, tuple(map(self._gens.get, deps, plan.zeros if deps is plan.deps else _ZEROS3)),
            params_key(args)))
        if entry is None or entry.expires <= _now():
            return MISSING
        return self._hit(entry)

    def _hit(self, entry: MemEntry) -> Any:
        self.hits += 1
        entry.hits += 1
        self.db_time_saved_ns += entry.cost
        mem = self._mem
        if mem.lru:
            mem.seq += 1
            entry.last = mem.seq
        value = entry.value
        return list(value) if type(value) is list else value

    def _store(self, key: Hashable, deps: tuple[tuple[str, str], ...], result: Any,
               elapsed_ns: int, ttl: float) -> None:
        try:
            size = encoded_size(result) + 96
        except TypeError:
            self._bypass["unencodable"] += 1
            return
        if size > self.max_entry_bytes or size > self.max_bytes:
            self._bypass["too_large"] += 1
            return
        entry = MemEntry(result, size, float(max(elapsed_ns, 1)), _now() + ttl, deps)
        self._mem.put(key, entry)
        self._counts["fills"] += 1

    def count(self, name: str, n: int = 1) -> None:
        self._counts[name] += n

    # -- the Tier surface ----------------------------------------------------------------

    async def clear(self) -> None:
        """Drop every entry of this process (generations are kept: they only ever increase)."""
        self._mem.clear()

    async def close(self) -> None:
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)
        if self._shared is not None:
            await self._shared.close()

    def stats(self) -> dict[str, Any]:
        """Counters for ``pool.query_cache.stats()`` and the metrics exporter (tier ``l3``)."""
        c = self._counts
        out = {
            "name": self.metrics_name or "l3", "tier": "l3", "store": self.store,
            "hits": self.hits, "misses": self.misses, "sets": c["fills"],
            "bypass": dict(self._bypass), "bypass_total": sum(self._bypass.values()),
            "race_skips": c["race_skips"], "singleflight_waits": c["singleflight_waits"],
            "lease_waits": c["lease_waits"], "invalidations": c["invalidations"],
            "epoch_bumps": c["epoch_bumps"], "notify_fallbacks": c["notify_fallbacks"],
            "notify_fallback_errors": c["notify_fallback_errors"],
            "evictions": self._mem.evictions,
            "dropped_by_writes": self._mem.dropped, "entries": len(self._mem.entries),
            "bytes": self._mem.nbytes, "max_bytes": self.max_bytes,
            "untrusted_shards": sorted(self._untrusted), "plans": len(self._plans),
            "catalog_lookups": self._catalog.lookups,
            "db_time_saved_ms": self.db_time_saved_ns / 1e6,
        }
        if self._shared is not None:
            out.update(self._shared.stats())
        return out

    def __repr__(self) -> str:
        return (f"<tiercache.QueryCache store={self.store!r} entries={len(self._mem.entries)} "
                f"bytes={self._mem.nbytes}/{self.max_bytes}>")


def _copy(value: Any) -> Any:
    """A fresh list per caller (Records themselves are immutable)."""
    return list(value) if isinstance(value, list) else value
