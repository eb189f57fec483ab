"""A drop-in, shard-aware asyncpg pool routed by the :class:`~tiercache.sharding.ring.HashRing`.

Users who outgrew one Postgres replace ``asyncpg.create_pool(dsn)`` with
``tiercache.create_sharded_pool({"s1": dsn1, "s2": dsn2, ...})`` and add ``shard_key=`` to
their calls.  Everything else stays asyncpg: every :class:`asyncpg.Pool` method exists here with
the same signature (and the same defaults) plus keyword-only routing arguments:

* ``shard_key=`` -- any key the ring accepts; the shard is ``ring.get_node(shard_key)``, so
  ``pool.shard_for(k) == HashRing(...).get_node(k)`` always holds;
* ``shard=`` -- a shard name, for maintenance, migrations and tests;
* ``readonly=True`` (read methods only) -- run on a healthy replica of that shard, falling
  back to the primary.

Statement methods (``execute``, ``executemany``, ``fetch``, ``fetchval``, ``fetchrow``,
``fetchmany``, ``copy_*``) and ``acquire``/``transaction`` *require* routing: a call without
``shard_key=`` or ``shard=`` raises :class:`TypeError` rather than silently picking a shard,
because a silently defaulted shard is how rows end up where nobody will ever find them.
Pool-wide methods (``get_size``, ``get_idle_size``, ``get_min_size``, ``get_max_size``,
``get_init_size``, ``expire_connections``, ``set_connect_args``, ``release``) take optional
routing: without it they cover every shard (sizes are summed over the shard primaries).
``close``, ``terminate`` and ``is_closing`` act on the whole pool.

Cross-shard work is explicit: :meth:`ShardedPool.fetch_all`, :meth:`ShardedPool.fetchval_all`
and :meth:`ShardedPool.execute_all` run on every shard concurrently (bounded) and return
``{shard: result}``; failures are collected into one :class:`ShardFanoutError`.

Operations: :meth:`ShardedPool.stats` (per-shard queries, errors by class, latency histogram,
acquire wait and waiters, pool sizes), :meth:`ShardedPool.slow_queries` (pglast-fingerprinted
slow-query log, 100 ms by default) and :meth:`ShardedPool.health`.  Passwords never appear in
reprs, logs, stats or exception messages.

Queries run on a connection obtained from :meth:`~ShardedPool.acquire` or
:meth:`~ShardedPool.transaction` are plain asyncpg calls: their acquire wait is counted, but
they are not individually timed or slow-logged (doing so would need a query logger on every
connection, which asyncpg implements with a ``call_soon`` per statement).
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from time import perf_counter_ns
from typing import Any, Protocol

import asyncpg
from asyncpg.pool import PoolAcquireContext

from tiercache.sharding._copy import CopyMethodsMixin
from tiercache.sharding._endpoints import CONNECTION_ERRORS, Endpoint, Shard, parse_shards, pool_of
from tiercache.sharding._fanout import FanoutMixin, ShardFanoutError
from tiercache.sharding._pool_admin import PoolAdminMixin
from tiercache.sharding._pool_metrics import _BOUNDS_NS, SlowQueryLog
from tiercache.sharding._pool_ops import OperationsMixin
from tiercache.sharding._redact import Redactor

__all__ = ["ShardAcquireContext", "ShardFanoutError", "ShardedPool", "create_sharded_pool"]

log = logging.getLogger("tiercache.sharding.pool")

_ns = perf_counter_ns


class Ring(Protocol):
    """What the pool needs from a ring: ``HashRing`` or anything shaped like it."""

    def get_node(self, key: Any) -> str: ...

    @property
    def nodes(self) -> Any: ...


def _default_ring(shards: Mapping[str, Shard]) -> Ring:
    from tiercache.sharding.ring import HashRing

    weights = {name: shard.weight for name, shard in shards.items()}
    if all(w == 1 for w in weights.values()):
        return HashRing(list(weights), mode="ketama")  # type: ignore[no-any-return]
    return HashRing(weights, mode="ketama")  # type: ignore[no-any-return]


class ShardAcquireContext(PoolAcquireContext):  # type: ignore[misc]
    """asyncpg's acquire context, aimed at the routed shard and counting the acquire wait.

    It *is* an :class:`asyncpg.pool.PoolAcquireContext` (``async with`` and plain ``await``
    both work, ``release`` goes back to the right shard), so code written for asyncpg keeps
    working unchanged.  A read-only acquire whose replica is unreachable falls back to the
    shard primary.
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
        endpoint, self.connection = await self._owner._acquire(self._endpoint, self.timeout)
        self.pool = endpoint.pool
        return self.connection

    def __await__(self) -> Generator[Any, None, Any]:
        self.done = True
        return self._acquire_connection().__await__()

    async def _acquire_connection(self) -> Any:
        _endpoint, connection = await self._owner._acquire(self._endpoint, self.timeout)
        return connection


class ShardedPool(CopyMethodsMixin, PoolAdminMixin, FanoutMixin, OperationsMixin):
    """One asyncpg pool per shard (and per replica), routed by a consistent-hash ring.

    Create it with :func:`create_sharded_pool`.  Like :class:`asyncpg.Pool` it must be awaited
    (or entered with ``async with``) before use, and closed afterwards.
    """

    __slots__ = (
        "_closed",
        "_closing",
        "_fanout_concurrency",
        "_initialized",
        "_initializing",
        "_owners",
        "_pool_kwargs",
        "_redactor",
        "_retry_after",
        "_ring",
        "_shard_names",
        "_shards",
        "_slow_ns",
        "_slowlog",
    )

    def __init__(
        self,
        shards: Mapping[str, Any],
        *,
        ring: Ring | None,
        pool_kwargs: Mapping[str, Any],
        slow_query_ms: float,
        slow_query_log_size: int,
        fanout_concurrency: int,
        replica_retry_after: float,
    ) -> None:
        self._shards: dict[str, Shard] = parse_shards(shards)
        self._shard_names = tuple(self._shards)
        self._redactor = Redactor()
        self._redactor.add(pool_kwargs.get("password"))
        for shard in self._shards.values():
            for ep in shard.endpoints():
                self._redactor.add_dsn(ep.dsn)
                self._redactor.add(ep.connect_kwargs.get("password"))
        self._pool_kwargs = dict(pool_kwargs)
        if fanout_concurrency < 1:
            raise ValueError("fanout_concurrency must be >= 1")
        self._fanout_concurrency = fanout_concurrency
        self._retry_after = replica_retry_after
        self._slowlog = SlowQueryLog(slow_query_ms, slow_query_log_size)
        self._slow_ns = self._slowlog.threshold_ns
        self._ring: Ring = ring if ring is not None else _default_ring(self._shards)
        self._check_ring(self._ring)
        self._owners: dict[Any, Endpoint] = {}
        self._initialized = False
        self._initializing = False
        self._closing = False
        self._closed = False

    # -- life cycle ----------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, ShardedPool]:
        return self._async__init__().__await__()

    async def __aenter__(self) -> ShardedPool:
        await self._async__init__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _async__init__(self) -> ShardedPool:
        if self._initialized:
            return self
        if self._initializing:
            raise asyncpg.InterfaceError("pool is being initialized in another task")
        if self._closed:
            raise asyncpg.InterfaceError("pool is closed")
        self._initializing = True
        try:
            await self._open_all()
            self._initialized = True
            return self
        finally:
            self._initializing = False

    async def _open_all(self) -> None:
        """Open every primary (all must succeed) and every replica (failures are logged)."""
        endpoints = [ep for s in self._shards.values() for ep in s.endpoints()]
        outcomes = await asyncio.gather(
            *(self._open(ep) for ep in endpoints), return_exceptions=True
        )
        primary_errors: dict[str, BaseException] = {}
        for ep, outcome in zip(endpoints, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                continue
            self._redactor.exception(outcome)
            if ep.role == "primary":
                primary_errors[ep.shard] = outcome
            else:
                ep.mark_down(self._retry_after)
                log.warning(
                    "tiercache: replica %s of shard %s unavailable at start (%s: %s)",
                    ep.redacted, ep.shard, type(outcome).__name__, outcome,
                )
        if primary_errors:
            for ep in endpoints:
                if ep.pool is not None:
                    ep.pool.terminate()
                    self._owners.pop(ep.pool, None)
                    ep.pool = None
            if len(primary_errors) == 1:
                (exc,) = primary_errors.values()
                raise exc
            raise ShardFanoutError("create_sharded_pool", {}, primary_errors)

    async def _open(self, ep: Endpoint) -> None:
        kwargs = {**self._pool_kwargs, **ep.connect_kwargs}
        pool = asyncpg.create_pool(ep.dsn, **kwargs)
        try:
            await pool
        except BaseException:
            pool.terminate()
            raise
        ep.pool = pool
        ep.mark_up()
        self._owners[pool] = ep

    async def close(self) -> None:
        """Gracefully close every shard pool (waits for acquired connections, like asyncpg)."""
        if self._closed:
            return
        self._closing = True
        try:
            pools = [ep.pool for s in self._shards.values() for ep in s.endpoints() if ep.pool]
            await asyncio.gather(*(p.close() for p in pools))
        finally:
            self._closed = True
            self._closing = False

    def terminate(self) -> None:
        """Terminate every connection of every shard pool at once."""
        if self._closed:
            return
        for shard in self._shards.values():
            for ep in shard.endpoints():
                if ep.pool is not None:
                    ep.pool.terminate()
        self._closed = True

    def is_closing(self) -> bool:
        """True once :meth:`close` or :meth:`terminate` has been called."""
        return self._closed or self._closing

    # -- routing -------------------------------------------------------------------------

    @property
    def shards(self) -> tuple[str, ...]:
        """The shard names, in the order they were given."""
        return self._shard_names

    @property
    def ring(self) -> Ring:
        """The ring routing ``shard_key=`` to shard names."""
        return self._ring

    def set_ring(self, ring: Ring) -> None:
        """Swap the routing ring (the rebalancer's flip).  Every ring node must be a shard;
        shards absent from the ring only get ``shard=`` and fan-out traffic."""
        self._check_ring(ring)
        self._ring = ring

    def _check_ring(self, ring: Ring) -> None:
        unknown = set(ring.nodes) - set(self._shards)
        if unknown:
            raise ValueError(
                f"ring nodes {sorted(unknown)} have no shard; shards are {list(self._shards)}"
            )

    def shard_pool(self, shard: str, *, replica: int | None = None) -> Any:
        """The plain :class:`asyncpg.Pool` behind ``shard`` (or its ``replica``-th replica).

        For handing one shard to code that needs an asyncpg pool; its queries bypass this
        pool's counters.
        """
        self._check_open()
        try:
            target = self._shards[shard]
        except KeyError:
            raise ValueError(f"unknown shard {shard!r}; shards are {list(self._shards)}") from None
        ep = target.primary if replica is None else target.replicas[replica]
        if ep.pool is None:
            raise asyncpg.InterfaceError(f"{shard}/{ep.role} is not connected")
        return ep.pool

    def shard_for(self, key: Any) -> str:
        """The shard ``key`` routes to: exactly ``ring.get_node(key)``."""
        return self._ring.get_node(key)

    def _route(self, shard_key: Any, shard: str | None, readonly: bool) -> Endpoint:
        if shard is None:
            if shard_key is None:
                raise TypeError(
                    "ShardedPool call needs a shard: pass shard_key=<key> (routed by the ring) "
                    "or shard=<name>; there is no default shard"
                )
            # ring.get_node is looked up on every call (not cached as a bound method): a ring
            # that is changed in place (add_node/remove_node) must take effect at once.
            name = self._ring.get_node(shard_key)
            try:
                target = self._shards[name]
            except KeyError:
                raise LookupError(
                    f"the ring routed key {shard_key!r} to {name!r}, which is not a shard of "
                    f"this pool (shards: {list(self._shards)})"
                ) from None
        else:
            if shard_key is not None:
                raise TypeError("pass either shard_key= or shard=, not both")
            try:
                target = self._shards[shard]
            except KeyError:
                raise ValueError(
                    f"unknown shard {shard!r}; shards are {list(self._shards)}"
                ) from None
        if not self._initialized:
            self._check_open()
        if readonly and target.replicas:
            return target.pick_read()
        return target.primary

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise asyncpg.InterfaceError("pool is closing")
        if not self._initialized:
            raise asyncpg.InterfaceError("pool is not initialized")

    def _route_name(self, shard_key: Any, shard: str | None) -> str:
        if shard is not None and shard_key is not None:
            raise TypeError("pass either shard_key= or shard=, not both")
        if shard is not None:
            if shard not in self._shards:
                raise ValueError(f"unknown shard {shard!r}; shards are {list(self._shards)}")
            return shard
        return self._ring.get_node(shard_key)

    # -- the routed hot path -------------------------------------------------------------

    async def _acquire(self, ep: Endpoint, timeout: float | None) -> tuple[Endpoint, Any]:
        """Acquire from ``ep`` counting the wait; replicas fall back to the primary."""
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
                ep.mark_down(self._retry_after)
                return await self._acquire(self._shards[ep.shard].primary, timeout)
            self._redactor.exception(exc)
            raise
        m.observe_acquire(_ns() - t0)
        return ep, connection

    async def _run(
        self, ep: Endpoint, method: str, text: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Acquire on ``ep``, call ``connection.<method>(*args, **kwargs)``, release, count.

        This is what asyncpg's ``Pool.fetchval`` & co. do (acquire, call, release), with the
        counters inlined -- every attribute lookup here is paid on every routed call.
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
                m.buckets[bisect_left(_BOUNDS_NS, elapsed)] += 1
                if elapsed >= self._slow_ns:
                    m.slow += 1
                    self._slowlog.record(ep.shard, ep.role, method, text, elapsed, failed)
                await pool.release(connection)
            return result
        except Exception as exc:
            m.error(exc)
            if ep.role != "primary" and isinstance(exc, CONNECTION_ERRORS):
                # Only read-only calls reach replicas, so running them again is safe.
                ep.mark_down(self._retry_after)
                primary = self._shards[ep.shard].primary
                return await self._run(primary, method, text, args, kwargs)
            self._redactor.exception(exc)
            raise

    # -- asyncpg.Pool statement methods (routing required) -------------------------------

    async def execute(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        shard_key: Any = None,
        shard: str | None = None,
    ) -> str:
        """:meth:`asyncpg.Pool.execute` on the routed shard's primary."""
        ep = self._route(shard_key, shard, False)
        result: str = await self._run(
            ep, "execute", query, (query, *args), {"timeout": timeout}
        )
        return result

    async def executemany(
        self,
        command: str,
        args: Iterable[Sequence[Any]],
        *,
        timeout: float | None = None,
        shard_key: Any = None,
        shard: str | None = None,
    ) -> None:
        """:meth:`asyncpg.Pool.executemany` on the routed shard's primary (one batch, one shard:
        split your rows by ``pool.shard_for`` first when they span shards)."""
        ep = self._route(shard_key, shard, False)
        await self._run(ep, "executemany", command, (command, args), {"timeout": timeout})

    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        record_class: Any = None,
        shard_key: Any = None,
        shard: str | None = None,
        readonly: bool = False,
    ) -> list[Any]:
        """:meth:`asyncpg.Pool.fetch` on the routed shard (a replica with ``readonly=True``)."""
        ep = self._route(shard_key, shard, readonly)
        result: list[Any] = await self._run(
            ep, "fetch", query, (query, *args), {"timeout": timeout, "record_class": record_class}
        )
        return result

    async def fetchval(
        self,
        query: str,
        *args: Any,
        column: int = 0,
        timeout: float | None = None,
        shard_key: Any = None,
        shard: str | None = None,
        readonly: bool = False,
    ) -> Any:
        """:meth:`asyncpg.Pool.fetchval` on the routed shard (a replica with ``readonly=True``)."""
        ep = self._route(shard_key, shard, readonly)
        return await self._run(
            ep, "fetchval", query, (query, *args), {"column": column, "timeout": timeout}
        )

    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        record_class: Any = None,
        shard_key: Any = None,
        shard: str | None = None,
        readonly: bool = False,
    ) -> Any:
        """:meth:`asyncpg.Pool.fetchrow` on the routed shard (a replica with ``readonly=True``)."""
        ep = self._route(shard_key, shard, readonly)
        return await self._run(
            ep, "fetchrow", query, (query, *args),
            {"timeout": timeout, "record_class": record_class},
        )

    async def fetchmany(
        self,
        query: str,
        args: Iterable[Sequence[Any]],
        *,
        timeout: float | None = None,
        record_class: Any = None,
        shard_key: Any = None,
        shard: str | None = None,
        readonly: bool = False,
    ) -> list[Any]:
        """:meth:`asyncpg.Pool.fetchmany` on the routed shard."""
        ep = self._route(shard_key, shard, readonly)
        result: list[Any] = await self._run(
            ep, "fetchmany", query, (query, args),
            {"timeout": timeout, "record_class": record_class},
        )
        return result

    # -- connections ---------------------------------------------------------------------

    def acquire(
        self,
        *,
        timeout: float | None = None,
        shard_key: Any = None,
        shard: str | None = None,
        readonly: bool = False,
    ) -> ShardAcquireContext:
        """:meth:`asyncpg.Pool.acquire` on the routed shard: ``async with`` or ``await`` it."""
        return ShardAcquireContext(self, self._route(shard_key, shard, readonly), timeout)

    async def release(
        self,
        connection: Any,
        *,
        timeout: float | None = None,
        shard_key: Any = None,
        shard: str | None = None,
    ) -> None:
        """:meth:`asyncpg.Pool.release`; the owning shard is found from the connection.

        ``shard_key=``/``shard=`` are optional and, when given, checked against the owner.
        """
        owner = self._owners.get(pool_of(connection))
        if owner is None:
            raise asyncpg.InterfaceError(
                f"ShardedPool.release() received invalid connection: {connection!r} was not "
                "acquired from this pool"
            )
        if shard is not None or shard_key is not None:
            expected = self._route_name(shard_key, shard)
            if expected != owner.shard:
                raise asyncpg.InterfaceError(
                    f"connection belongs to shard {owner.shard!r}, not {expected!r}"
                )
        await owner.pool.release(connection, timeout=timeout)

    def transaction(
        self,
        *,
        shard_key: Any = None,
        shard: str | None = None,
        isolation: str | None = None,
        readonly: bool = False,
        deferrable: bool = False,
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[Any]:
        """Acquire a connection on the routed shard and run a transaction on it.

        ``async with pool.transaction(shard_key=k) as conn:`` -- commits on success, rolls
        back on error, releases the connection either way.  Everything inside runs on one
        shard.  ``readonly=True`` makes it a READ ONLY transaction *and* lets it run on a
        replica.  Arguments as :meth:`asyncpg.Connection.transaction`; ``timeout`` bounds the
        acquire.
        """
        ep = self._route(shard_key, shard, readonly)
        return self._transaction(ep, isolation, readonly, deferrable, timeout)

    @asynccontextmanager
    async def _transaction(
        self,
        ep: Endpoint,
        isolation: str | None,
        readonly: bool,
        deferrable: bool,
        timeout: float | None,
    ) -> AsyncIterator[Any]:
        ep, connection = await self._acquire(ep, timeout)
        try:
            async with connection.transaction(
                isolation=isolation, readonly=readonly, deferrable=deferrable
            ):
                yield connection
        finally:
            await ep.pool.release(connection)

    @property
    def slow_query_threshold_ms(self) -> float:
        """Statements at least this slow (ms) go to the slow-query log; settable."""
        return self._slow_ns / 1e6

    @slow_query_threshold_ms.setter
    def slow_query_threshold_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError("slow_query_threshold_ms must be >= 0")
        self._slow_ns = self._slowlog.threshold_ns = int(value * 1_000_000)

    def __repr__(self) -> str:
        state = (
            "closed" if self._closed else "open" if self._initialized else "not initialized"
        )
        parts = []
        for name, shard in self._shards.items():
            extra = f" +{len(shard.replicas)} replica(s)" if shard.replicas else ""
            parts.append(f"{name}={shard.primary.redacted}{extra}")
        return f"<tiercache.ShardedPool {state} [{', '.join(parts)}]>"


def create_sharded_pool(
    shards: Mapping[str, Any],
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
    slow_query_ms: float = 100.0,
    slow_query_log_size: int = 1000,
    fanout_concurrency: int = 16,
    replica_retry_after: float = 5.0,
    **connect_kwargs: Any,
) -> ShardedPool:
    """Create a :class:`ShardedPool`: ``pool = await create_sharded_pool({...})``.

    ``shards`` maps shard names to a DSN, or to ``{"dsn": ..., "weight": 2, "replicas":
    [dsn, ...], **per_shard_connect_kwargs}``.  ``ring`` defaults to a ketama
    :class:`~tiercache.sharding.ring.HashRing` over the shard names (weighted when weights are
    given); pass your own to share placement with other components.

    Every :func:`asyncpg.create_pool` parameter is accepted with the same default and applies
    to each shard (and replica) pool; ``min_size``/``max_size`` are *per shard*.  Extra
    tiercache parameters: ``slow_query_ms`` (slow-query log threshold), ``slow_query_log_size``,
    ``fanout_concurrency`` (default bound of the ``*_all`` methods) and
    ``replica_retry_after`` (seconds a failed replica stays out of the read rotation).

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
        shards,
        ring=ring,
        pool_kwargs=pool_kwargs,
        slow_query_ms=slow_query_ms,
        slow_query_log_size=slow_query_log_size,
        fanout_concurrency=fanout_concurrency,
        replica_retry_after=replica_retry_after,
    )
