"""A drop-in, shard-aware asyncpg pool routed by the :class:`~tiercache.sharding.ring.HashRing`.

Users who outgrew one Postgres replace ``asyncpg.create_pool(dsn)`` with
``tiercache.create_sharded_pool({"s1": dsn1, "s2": dsn2, ...})`` and add ``shard_key=`` to
their calls.  Everything else stays asyncpg: :class:`ShardedPool` subclasses
:class:`asyncpg.Pool` and overrides every public method with the same parameters, kinds and
defaults, plus keyword-only routing arguments:

* ``shard_key=`` -- any key the ring accepts; the shard is ``ring.get_node(shard_key)``, so
  ``pool.shard_for(k) == HashRing(...).get_node(k)`` always holds;
* ``shard=`` -- a shard name, for maintenance, migrations and tests;
* ``readonly=True`` (``fetch*``, ``copy_from_*``, ``acquire``, ``transaction``) -- run on a
  healthy replica of that shard (round-robin or least-latency), falling back to the primary.

``execute``, ``executemany``, ``fetch``, ``fetchval``, ``fetchrow``, ``fetchmany``,
``copy_from_query``, ``copy_from_table``, ``copy_to_table``, ``copy_records_to_table``,
``acquire`` and ``transaction`` without routing go to the *default shard*: the only shard of a
one-shard pool (``create_sharded_pool(dsn)`` is one), else the ``default_shard=`` given (the
home of unsharded tables); with several shards and no default they raise :class:`TypeError`.
``release`` finds the owner from the connection.  ``get_size``, ``get_idle_size``,
``get_min_size``, ``get_max_size``, ``get_init_size``, ``expire_connections`` and
``set_connect_args`` take optional routing and without it cover every shard (sizes summed
over the primaries, so on one shard they equal asyncpg's).  ``close``, ``terminate``,
``is_closing``, ``await pool`` and ``async with pool`` act on the whole pool.

Cross-shard work is explicit: ``fetch_all``, ``fetchval_all`` and ``execute_all`` (see
``_fanout``) return ``{shard: result}`` or raise one :class:`ShardFanoutError`.  Operations:
``stats()``, ``slow_queries(n)`` (normalized statements, never literals) and ``await
health()`` (``_pool_ops``).  Shards, ring and routing live in the base class (``_base``); the
asyncpg pools themselves are opened and closed by ``_fleet``.
Errors keep their class and gain a note naming the shard and its redacted DSN; passwords never
appear in reprs, logs, stats or exception messages.

Queries run on a connection from ``acquire``/``transaction`` are plain asyncpg calls: their
acquire wait is counted, but they are not individually timed (that would need a query logger
on every connection, which asyncpg implements with a ``call_soon`` per statement).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from time import perf_counter_ns
from typing import Any, Literal

import asyncpg
from asyncpg.pool import PoolAcquireContext

from tiercache.sharding._base import ShardedPoolBase
from tiercache.sharding._endpoints import CONNECTION_ERRORS, Endpoint, name_endpoint
from tiercache.sharding._fanout import ShardFanoutError, fanout, fanout_targets
from tiercache.sharding._pool_metrics import BOUNDS_NS
from tiercache.sharding._routing import Ring
from tiercache.tiers._query_tx import TransactionWatch
from tiercache.tiers._sql import table_name as table_name_of
from tiercache.tiers.base import MISSING
from tiercache.tiers.query import QueryCache

CacheTTL = float | str | bool | None

__all__ = ["ShardAcquireContext", "ShardFanoutError", "ShardedPool", "create_sharded_pool"]

_ns = perf_counter_ns


class ShardedPool(ShardedPoolBase):
    """One asyncpg pool per shard (and per replica), routed by a consistent-hash ring.

    Create it with :func:`create_sharded_pool`.  Like :class:`asyncpg.Pool` it must be awaited
    (or entered with ``async with``) before use, and closed afterwards.  It is an
    ``asyncpg.Pool`` (see :class:`~tiercache.sharding._base.ShardedPoolBase`); shards, ring,
    routing and operations live in that base class, the asyncpg surface here.
    """

    __slots__ = ()

    # -- life cycle ----------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, ShardedPool]:
        return self._async__init__().__await__()

    async def __aenter__(self) -> ShardedPool:
        await self._async__init__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _async__init__(self) -> ShardedPool:
        if self._ready:
            return self
        if self._starting:
            raise asyncpg.InterfaceError("pool is being initialized in another task")
        if self._stopped:
            raise asyncpg.InterfaceError("pool is closed")
        self._starting = True
        try:
            await self._fleet.open_all()
            self._ready = True
            return self
        finally:
            self._starting = False

    # -- asyncpg.Pool statement methods --------------------------------------------------
    # Signatures mirror asyncpg.Pool's one for one (tests/test_pool_api.py checks names,
    # kinds and defaults), hence the repetition; each body is one _route and one _run.

    async def execute(
        self, query: str, *args: Any, timeout: float | None = None,
        shard_key: Any = None, shard: str | None = None,
    ) -> str:
        """:meth:`asyncpg.Pool.execute` on the routed shard's primary."""
        ep = self._route(shard_key, shard, False)
        if self._query_cache is None:
            result: str = await self._run(ep, "execute", query, (query, *args),
                                          {"timeout": timeout})
            return result
        try:
            result = await self._run(ep, "execute", query, (query, *args), {"timeout": timeout})
        finally:  # also on error: a lost reply may follow a commit
            await self._query_cache.note_write(ep.shard, query, ep.pool, args)
        return result

    async def executemany(
        self, command: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None,
        shard_key: Any = None, shard: str | None = None,
    ) -> None:
        """:meth:`asyncpg.Pool.executemany` on the routed shard's primary (one batch, one shard:
        split rows by ``pool.shard_for_many`` first when they span shards)."""
        ep = self._route(shard_key, shard, False)
        try:
            await self._run(ep, "executemany", command, (command, args), {"timeout": timeout})
        finally:
            if self._query_cache is not None:
                await self._query_cache.note_write(ep.shard, command, ep.pool, args, True)

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None,
        shard_key: Any = None, shard: str | None = None, readonly: bool = False,
        cache_ttl: CacheTTL = None,
    ) -> list[Any]:
        """:meth:`asyncpg.Pool.fetch` on the routed shard (a replica with ``readonly=True``);
        ``cache_ttl=`` serves it from the L3 query cache (see :meth:`_read`)."""
        ep = self._route(shard_key, shard, readonly)
        kwargs = {"timeout": timeout, "record_class": record_class}
        if cache_ttl is not None:
            return await self._read(ep, "fetch", query, args, kwargs, cache_ttl,  # type: ignore[no-any-return]
                                    record_class)
        result: list[Any] = await self._run(ep, "fetch", query, (query, *args), kwargs)
        return result

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None,
        shard_key: Any = None, shard: str | None = None, readonly: bool = False,
        cache_ttl: CacheTTL = None,
    ) -> Any:
        """:meth:`asyncpg.Pool.fetchval` on the routed shard (a replica with ``readonly=True``)."""
        ep = self._route(shard_key, shard, readonly)
        kwargs = {"column": column, "timeout": timeout}
        if cache_ttl is not None:
            return await self._read(ep, "fetchval", query, args, kwargs, cache_ttl, column)
        return await self._run(ep, "fetchval", query, (query, *args), kwargs)

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None,
        shard_key: Any = None, shard: str | None = None, readonly: bool = False,
        cache_ttl: CacheTTL = None,
    ) -> Any:
        """:meth:`asyncpg.Pool.fetchrow` on the routed shard (a replica with ``readonly=True``)."""
        ep = self._route(shard_key, shard, readonly)
        kwargs = {"timeout": timeout, "record_class": record_class}
        if cache_ttl is not None:
            return await self._read(ep, "fetchrow", query, args, kwargs, cache_ttl, record_class)
        return await self._run(ep, "fetchrow", query, (query, *args), kwargs)

    async def fetchmany(
        self, query: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None,
        record_class: Any = None, shard_key: Any = None, shard: str | None = None,
        readonly: bool = False, cache_ttl: CacheTTL = None,
    ) -> list[Any]:
        """:meth:`asyncpg.Pool.fetchmany` on the routed shard."""
        ep = self._route(shard_key, shard, readonly)
        kwargs = {"timeout": timeout, "record_class": record_class}
        if cache_ttl is not None:
            batch = tuple(tuple(a) for a in args)
            return await self._read(ep, "fetchmany", query, (batch,), kwargs,  # type: ignore[no-any-return]
                                    cache_ttl, record_class)
        result: list[Any] = await self._run(ep, "fetchmany", query, (query, args), kwargs)
        return result

    # -- COPY ------------------------------------------------------------------------------
    # The "COPY <table> ..." texts are never executed, only shown by the slow-query log;
    # asyncpg builds (and quotes) the real statement from the arguments.

    async def copy_from_query(
        self, query: str, *args: Any, output: Any, timeout: float | None = None,
        format: Any = None, oids: Any = None, delimiter: Any = None, null: Any = None,
        header: Any = None, quote: Any = None, escape: Any = None, force_quote: Any = None,
        encoding: Any = None, shard_key: Any = None, shard: str | None = None,
        readonly: bool = False,
    ) -> str:
        """:meth:`asyncpg.Pool.copy_from_query` on the routed shard."""
        ep = self._route(shard_key, shard, readonly)
        kwargs = {
            "output": output, "timeout": timeout, "format": format, "oids": oids,
            "delimiter": delimiter, "null": null, "header": header, "quote": quote,
            "escape": escape, "force_quote": force_quote, "encoding": encoding,
        }
        result: str = await self._run(ep, "copy_from_query", query, (query, *args), kwargs)
        return result

    async def copy_from_table(
        self, table_name: str, *, output: Any, columns: Any = None,
        schema_name: str | None = None, timeout: float | None = None, format: Any = None,
        oids: Any = None, delimiter: Any = None, null: Any = None, header: Any = None,
        quote: Any = None, escape: Any = None, force_quote: Any = None, encoding: Any = None,
        shard_key: Any = None, shard: str | None = None, readonly: bool = False,
    ) -> str:
        """:meth:`asyncpg.Pool.copy_from_table` on the routed shard."""
        ep = self._route(shard_key, shard, readonly)
        kwargs = {
            "output": output, "columns": columns, "schema_name": schema_name,
            "timeout": timeout, "format": format, "oids": oids, "delimiter": delimiter,
            "null": null, "header": header, "quote": quote, "escape": escape,
            "force_quote": force_quote, "encoding": encoding,
        }
        text = f"COPY {table_name} TO STDOUT"
        result: str = await self._run(ep, "copy_from_table", text, (table_name,), kwargs)
        return result

    async def copy_to_table(
        self, table_name: str, *, source: Any, columns: Any = None,
        schema_name: str | None = None, timeout: float | None = None, format: Any = None,
        oids: Any = None, freeze: Any = None, delimiter: Any = None, null: Any = None,
        header: Any = None, quote: Any = None, escape: Any = None, force_quote: Any = None,
        force_not_null: Any = None, force_null: Any = None, encoding: Any = None,
        where: Any = None, shard_key: Any = None, shard: str | None = None,
    ) -> str:
        """:meth:`asyncpg.Pool.copy_to_table` on the routed shard's primary."""
        ep = self._route(shard_key, shard, False)
        kwargs = {
            "source": source, "columns": columns, "schema_name": schema_name,
            "timeout": timeout, "format": format, "oids": oids, "freeze": freeze,
            "delimiter": delimiter, "null": null, "header": header, "quote": quote,
            "escape": escape, "force_quote": force_quote, "force_not_null": force_not_null,
            "force_null": force_null, "encoding": encoding, "where": where,
        }
        text = f"COPY {table_name} FROM STDIN"
        try:
            result: str = await self._run(ep, "copy_to_table", text, (table_name,), kwargs)
        finally:
            await self._note_copy(ep, table_name, schema_name)
        return result

    async def copy_records_to_table(
        self, table_name: str, *, records: Any, columns: Any = None,
        schema_name: str | None = None, timeout: float | None = None, where: Any = None,
        shard_key: Any = None, shard: str | None = None,
    ) -> str:
        """:meth:`asyncpg.Pool.copy_records_to_table` on the routed shard's primary."""
        ep = self._route(shard_key, shard, False)
        kwargs = {
            "records": records, "columns": columns, "schema_name": schema_name,
            "timeout": timeout, "where": where,
        }
        text = f"COPY {table_name} FROM STDIN"
        try:
            result: str = await self._run(ep, "copy_records_to_table", text, (table_name,),
                                          kwargs)
        finally:
            await self._note_copy(ep, table_name, schema_name)
        return result

    # -- acquire, release, transaction -----------------------------------------------------

    def acquire(
        self, *, timeout: float | None = None, shard_key: Any = None, shard: str | None = None,
        readonly: bool = False,
    ) -> ShardAcquireContext:
        """:meth:`asyncpg.Pool.acquire` on the routed shard: ``async with`` or ``await`` it."""
        return ShardAcquireContext(self, self._route(shard_key, shard, readonly), timeout)

    async def release(
        self, connection: Any, *, timeout: float | None = None, shard_key: Any = None,
        shard: str | None = None,
    ) -> None:
        """:meth:`asyncpg.Pool.release`; the owning shard is found from the connection.

        ``shard_key=``/``shard=`` are optional and, when given, checked against the owner.
        """
        owner = self._fleet.owner(connection)
        if owner is None:
            raise asyncpg.InterfaceError(
                f"Pool.release() received invalid connection: {connection!r} is not a "
                "member of this pool"
            )
        expected = self._route_name(shard_key, shard)
        if expected is not None and expected != owner.shard:
            raise asyncpg.InterfaceError(
                f"connection belongs to shard {owner.shard!r}, not {expected!r}"
            )
        await owner.pool.release(connection, timeout=timeout)

    def transaction(
        self, *, shard_key: Any = None, shard: str | None = None, isolation: str | None = None,
        readonly: bool = False, deferrable: bool = False, timeout: float | None = None,
    ) -> AbstractAsyncContextManager[Any]:
        """Acquire a connection on the routed shard and run a transaction on it.

        ``async with pool.transaction(shard_key=k) as conn:`` -- commits on success, rolls
        back on error, releases the connection either way; everything inside runs on one
        shard.  ``readonly=True`` makes it a READ ONLY transaction *and* lets it run on a
        replica.  Arguments as :meth:`asyncpg.Connection.transaction`; ``timeout`` bounds the
        acquire.
        """
        ep = self._route(shard_key, shard, readonly)
        return self._transaction(ep, isolation, readonly, deferrable, timeout)

    @asynccontextmanager
    async def _transaction(
        self, ep: Endpoint, isolation: str | None, readonly: bool, deferrable: bool,
        timeout: float | None,
    ) -> AsyncIterator[Any]:
        ep, connection = await self._acquire_on(ep, timeout)
        qc = self._query_cache
        watch = None if qc is None or readonly else TransactionWatch(qc, connection)
        try:
            try:
                async with connection.transaction(
                    isolation=isolation, readonly=readonly, deferrable=deferrable
                ):
                    if watch is not None:
                        await watch.start()
                    yield connection
                    if watch is not None:
                        await watch.collect()  # the tables it wrote, before COMMIT
            finally:
                if watch is not None:  # after COMMIT: bump them (nothing after a rollback)
                    await watch.done(ep.shard)
        finally:
            await ep.pool.release(connection)

    async def _acquire_on(self, ep: Endpoint, timeout: float | None) -> tuple[Endpoint, Any]:
        """Acquire from ``ep`` counting the wait; a dead replica falls back to the primary."""
        m = ep.metrics
        t0 = _ns()
        m.waiting += 1
        try:
            try:
                connection = await ep.pool.acquire(timeout=timeout)
            finally:
                m.waiting -= 1
        except Exception as exc:
            m.error(exc)
            if ep.role != "primary" and isinstance(exc, CONNECTION_ERRORS):
                ep.mark_down(self._fleet.retry_after)
                return await self._acquire_on(self._shards[ep.shard].primary, timeout)
            name_endpoint(self._fleet.redactor.exception(exc), ep)
            raise
        m.observe_acquire(_ns() - t0)
        return ep, connection

    # -- the routed hot path ---------------------------------------------------------------

    async def _run(
        self, ep: Endpoint, method: str, text: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Acquire on ``ep``, call ``connection.<method>(*args, **kwargs)``, release, count.

        This is what asyncpg's ``Pool.fetchval`` & co. do (acquire, call, release), with the
        counters of ``EndpointMetrics.observe``/``observe_acquire`` inlined: every attribute
        lookup here is paid on every routed call (the budget is 5% of a loopback fetchval).
        """
        m = ep.metrics
        pool = ep.pool
        t0 = _ns()
        m.waiting += 1
        try:
            try:
                connection = await pool.acquire()
            finally:
                m.waiting -= 1
            t1 = _ns()
            wait = t1 - t0
            m.acquires += 1
            m.acquire_wait_ns += wait
            if wait > m.acquire_wait_max_ns:
                m.acquire_wait_max_ns = wait
            m.acquire_buckets[bisect_left(BOUNDS_NS, wait)] += 1
            failed = True
            try:
                result = await getattr(connection, method)(*args, **kwargs)
                failed = False
            finally:
                elapsed = _ns() - t1
                m.queries += 1
                m.latency_ns += elapsed
                if elapsed > m.latency_max_ns:
                    m.latency_max_ns = elapsed
                m.latency_ewma_ns += (elapsed - m.latency_ewma_ns) >> 3
                m.buckets[bisect_left(BOUNDS_NS, elapsed)] += 1
                if elapsed >= self._slowlog.threshold_ns:
                    m.slow += 1
                    self._slowlog.record(ep.shard, ep.role, method, text, elapsed, failed)
                await pool.release(connection)
            return result
        except Exception as exc:
            m.error(exc)
            if ep.role != "primary" and isinstance(exc, CONNECTION_ERRORS):
                # Only read-only calls reach replicas, so running them again is safe.
                ep.mark_down(self._fleet.retry_after)
                primary = self._shards[ep.shard].primary
                return await self._run(primary, method, text, args, kwargs)
            if self._on_key_moved is not None and getattr(exc, "sqlstate", "") == "TCKM1":
                # a rebalanced shard rejected the key: refresh the topology, retry on the
                # key's new owner (a statement that failed ran in its own transaction)
                shard = await self._on_key_moved(exc, ep.shard)
                if shard is not None:
                    return await self._run(self._shards[shard].primary, method, text, args,
                                           kwargs)
            name_endpoint(self._fleet.redactor.exception(exc), ep)
            raise

    # -- L3: the query cache ---------------------------------------------------------------

    async def _read(
        self, ep: Endpoint, method: str, query: str, args: tuple[Any, ...],
        kwargs: dict[str, Any], cache_ttl: float | str | bool, extra: Any,
    ) -> Any:
        """A read through the L3 cache (``cache_ttl`` not ``None``).

        Only primaries' results are stored: a replica may lag a committed write, and caching
        its answer under the new generation would keep the lag for a whole TTL.
        """
        qc = self._query_cache
        if qc is None:
            raise TypeError("cache_ttl= needs create_sharded_pool(..., query_cache=QueryCache())")
        if ep.role != "primary":
            qc.bypass("replica")
            return await self._run(ep, method, query, (query, *args), kwargs)
        extra_key = getattr(extra, "__qualname__", extra)
        value = qc.lookup(ep.shard, ep, method, query, args, extra_key)  # a memory hit
        if value is not MISSING:
            return value
        call = (query, *args)
        return await qc.read(ep.shard, ep, method, query, args, extra_key, cache_ttl,
                             lambda: self._run(ep, method, query, call, kwargs), ep.pool)

    async def _note_copy(self, ep: Endpoint, table_name: str, schema_name: str | None) -> None:
        if self._query_cache is not None:
            await self._query_cache.bump(ep.shard, [table_name_of(table_name, schema_name)],
                                          ep.pool)

    # -- pool-wide asyncpg.Pool methods (optional routing; without it: every shard) --------

    def get_size(self, *, shard_key: Any = None, shard: str | None = None) -> int:
        """Open connections: of the routed shard's primary, or summed over all primaries."""
        return self._fleet.sum_primaries("get_size", self._route_name(shard_key, shard))

    def get_idle_size(self, *, shard_key: Any = None, shard: str | None = None) -> int:
        """Idle connections: of the routed shard's primary, or summed over all primaries."""
        return self._fleet.sum_primaries("get_idle_size", self._route_name(shard_key, shard))

    def get_min_size(self, *, shard_key: Any = None, shard: str | None = None) -> int:
        """``min_size``: of the routed shard's primary, or summed over all primaries."""
        return self._fleet.sum_primaries("get_min_size", self._route_name(shard_key, shard))

    def get_max_size(self, *, shard_key: Any = None, shard: str | None = None) -> int:
        """``max_size``: of the routed shard's primary, or summed over all primaries."""
        return self._fleet.sum_primaries("get_max_size", self._route_name(shard_key, shard))

    def get_init_size(self, *, shard_key: Any = None, shard: str | None = None) -> int:
        """``init_size``: of the routed shard's primary, or summed over all primaries."""
        return self._fleet.sum_primaries("get_init_size", self._route_name(shard_key, shard))

    async def expire_connections(
        self, *, shard_key: Any = None, shard: str | None = None
    ) -> None:
        """:meth:`asyncpg.Pool.expire_connections` on the routed shard, or on every pool."""
        await self._fleet.expire_connections(self._route_name(shard_key, shard))

    def set_connect_args(
        self, dsn: str | None = None, *, shard_key: Any = None, shard: str | None = None,
        **connect_kwargs: Any,
    ) -> None:
        """:meth:`asyncpg.Pool.set_connect_args` for the routed shard's primary.

        Without routing, ``connect_kwargs`` apply to every pool (e.g. a rotated password) and
        each keeps its own DSN; ``dsn`` then is an error unless the pool has one shard.
        ``dsn=None`` keeps the shard's current DSN.
        """
        name = self._route_name(shard_key, shard)
        if name is None and len(self._shards) == 1:
            name = self._shard_names[0]
        if dsn is not None and name is None:
            raise TypeError("set_connect_args(dsn=...) needs shard_key= or shard=")
        self._fleet.set_connect_args(dsn, name, connect_kwargs)

    async def close(self) -> None:
        """Gracefully close every shard pool (waits for acquired connections, like asyncpg)."""
        if self._stopped:
            return
        self._stopping = self._fleet.closing = True
        try:
            await self._close_l3()
            await asyncio.gather(*(p.close() for p in self._fleet.pools()))
        finally:
            self._stopped = True
            self._stopping = False

    def terminate(self) -> None:
        """Terminate every connection of every shard pool at once."""
        if self._stopped:
            return
        self._fleet.closing = True
        for pool in self._fleet.pools():
            pool.terminate()
        self._stopped = True

    def is_closing(self) -> bool:
        """True once :meth:`close` or :meth:`terminate` has been called."""
        return self._stopped or self._stopping

    # -- fan-out: every shard concurrently (the engine is _fanout.fanout) -------------------

    async def fetch_all(
        self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None,
        shards: Iterable[str] | None = None, readonly: bool = False,
        concurrency: int | None = None, cache_ttl: CacheTTL = None,
    ) -> dict[str, list[Any]]:
        """Run ``fetch`` on every shard (or on ``shards``) concurrently: ``{shard: rows}``.

        At most ``concurrency`` shards run at once (default: the pool's
        ``fanout_concurrency``).  If any shard fails, :class:`ShardFanoutError` is raised
        after all have finished; it names every failing shard and carries the ``results``
        of the others.
        """
        kwargs = {"timeout": timeout, "record_class": record_class}
        return await self._fanout("fetch_all", "fetch", query, args, kwargs, shards, readonly,
                                  concurrency, cache_ttl, record_class)

    async def fetchval_all(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None,
        shards: Iterable[str] | None = None, readonly: bool = False,
        concurrency: int | None = None, cache_ttl: CacheTTL = None,
    ) -> dict[str, Any]:
        """Like :meth:`fetch_all` with ``fetchval``: ``{shard: value}`` (e.g. counts)."""
        kwargs = {"column": column, "timeout": timeout}
        return await self._fanout("fetchval_all", "fetchval", query, args, kwargs, shards,
                                  readonly, concurrency, cache_ttl, column)

    async def execute_all(
        self, query: str, *args: Any, timeout: float | None = None,
        shards: Iterable[str] | None = None, concurrency: int | None = None,
    ) -> dict[str, str]:
        """Run ``execute`` on every shard primary (DDL, maintenance): ``{shard: status}``.

        Not atomic across shards: on :class:`ShardFanoutError`, ``.results`` says which
        shards applied the statement.
        """
        return await self._fanout("execute_all", "execute", query, args, {"timeout": timeout},
                                  shards, False, concurrency)

    async def _fanout(
        self, operation: str, method: str, query: str, args: tuple[Any, ...],
        kwargs: dict[str, Any], shards: Iterable[str] | None, readonly: bool,
        concurrency: int | None, cache_ttl: CacheTTL = None, extra: Any = None,
    ) -> dict[str, Any]:
        self._check_init()
        targets = fanout_targets(self._shards, shards, readonly)
        run = self._run
        qc = self._query_cache

        def call(name: str) -> Any:
            if cache_ttl is not None:
                return self._read(targets[name], method, query, args, kwargs, cache_ttl, extra)
            return run(targets[name], method, query, (query, *args), kwargs)

        try:
            return await fanout(
                operation, tuple(targets), call,
                concurrency=self._fanout_concurrency if concurrency is None else concurrency,
                scrub=self._fleet.redactor.exception,
            )
        finally:  # after the statements (a bump before them could be refilled with old rows)
            if qc is not None and method == "execute":
                for name, ep in targets.items():
                    await qc.note_write(name, query, ep.pool)
class ShardAcquireContext(PoolAcquireContext):  # type: ignore[misc]
    """asyncpg's acquire context, aimed at the routed shard and counting the acquire wait.

    It *is* an :class:`asyncpg.pool.PoolAcquireContext` (``async with`` and plain ``await``
    both work, ``release`` goes back to the right shard).  A read-only acquire whose replica
    is unreachable falls back to the shard primary.
    """

    # No __slots__: asyncpg's base class has them but ships no stubs, so mypy could not see
    # the inherited ones; one small __dict__ per explicit acquire is an acceptable price.
    connection: Any
    pool: Any
    done: bool
    timeout: float | None

    def __init__(self, owner: ShardedPool, endpoint: Endpoint, timeout: float | None) -> None:
        super().__init__(endpoint.pool, timeout)
        self._owner = owner
        self._endpoint = endpoint

    async def __aenter__(self) -> Any:
        if self.connection is not None or self.done:
            raise asyncpg.InterfaceError("a connection is already acquired")
        endpoint, self.connection = await self._owner._acquire_on(self._endpoint, self.timeout)
        self.pool = endpoint.pool
        return self.connection

    def __await__(self) -> Generator[Any, None, Any]:
        self.done = True
        return self._acquire_connection().__await__()

    async def _acquire_connection(self) -> Any:
        _endpoint, connection = await self._owner._acquire_on(self._endpoint, self.timeout)
        return connection


def create_sharded_pool(
    shards: Mapping[str, Any] | str | None = None,
    ring: Ring | None = None,
    *,
    init_size: int | None = None,
    min_size: int = 10,
    max_size: int = 10,
    max_queries: int = 50000,
    max_inactive_connection_lifetime: float = 300.0,
    connect: Callable[..., Any] | None = None,
    setup: Callable[..., Any] | None = None,
    init: Callable[..., Any] | None = None,
    reset: Callable[..., Any] | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    connection_class: type[Any] = asyncpg.Connection,
    record_class: type[Any] = asyncpg.Record,
    name: str = "default",
    default_shard: str | None = None,
    slow_query_ms: float = 100.0,
    slow_query_log_size: int = 1000,
    fanout_concurrency: int = 16,
    replica_retry_after: float = 5.0,
    replica_selection: Literal["round_robin", "least_latency"] = "round_robin",
    query_cache: QueryCache | None = None,
    **connect_kwargs: Any,
) -> ShardedPool:
    """Create a :class:`ShardedPool`: ``pool = await create_sharded_pool({...})``.

    ``shards`` maps shard names to a DSN, or to ``{"dsn": ..., "weight": 2, "replicas":
    [dsn, ...], **per_shard_connect_kwargs}`` (a mapping without ``"dsn"`` or ``"host"`` is a
    ``ValueError``).  A DSN string -- or nothing, with asyncpg's connect arguments -- is a
    one-shard pool, exactly like ``asyncpg.create_pool(dsn, **connect_kwargs)``.  ``ring``
    defaults to a ketama :class:`~tiercache.sharding.ring.HashRing` over the shard names
    (weighted when weights are given); pass your own to share placement with other components.

    Every :func:`asyncpg.create_pool` parameter is accepted with the same default and applies
    to each shard (and replica) pool; ``min_size``/``max_size`` are *per shard*; asyncpg's own
    argument errors are raised here, unchanged.  Extra tiercache parameters: ``name`` (the
    ``pool`` label of exported metrics), ``default_shard`` (where calls without
    ``shard_key=``/``shard=`` go; implied for one shard), ``slow_query_ms`` (slow-query log
    threshold), ``slow_query_log_size``, ``fanout_concurrency`` (default bound of the
    ``*_all`` methods), ``replica_retry_after`` (seconds a failed replica stays out of the
    read rotation) and ``replica_selection`` (``"round_robin"`` or ``"least_latency"`` for
    ``readonly=True`` calls) and ``query_cache`` (a :class:`~tiercache.QueryCache`: the L3
    behind ``cache_ttl=`` on the reads).

    Like ``asyncpg.create_pool`` the result must be awaited or used with ``async with``.
    """
    pool_kwargs: dict[str, Any] = {
        "init_size": init_size, "min_size": min_size, "max_size": max_size,
        "max_queries": max_queries,
        "max_inactive_connection_lifetime": max_inactive_connection_lifetime,
        "connect": connect, "setup": setup, "init": init, "reset": reset, "loop": loop,
        "connection_class": connection_class, "record_class": record_class,
        **connect_kwargs,
    }
    return ShardedPool(
        shards, name=name, ring=ring, pool_kwargs=pool_kwargs, default_shard=default_shard,
        slow_query_ms=slow_query_ms, slow_query_log_size=slow_query_log_size,
        fanout_concurrency=fanout_concurrency, replica_retry_after=replica_retry_after,
        replica_selection=replica_selection, query_cache=query_cache,
    )
