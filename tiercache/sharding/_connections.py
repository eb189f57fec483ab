"""How :class:`~tiercache.sharding.pool.ShardedPool` talks to its shard pools.

Opening every endpoint's ``asyncpg.Pool``; the public ``acquire``, ``release`` and
``transaction``; acquiring from one endpoint while counting the wait; and the routed hot path
:meth:`ConnectionsMixin._run` (acquire, call, release, count) that every statement method
ends in.  Replicas only ever serve read-only calls, so a replica failing
with a connection-level error is taken out of the rotation and the call is run again on the
shard primary -- the caller sees an answer, not the dead replica.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections.abc import AsyncIterator, Generator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

import asyncpg
from asyncpg.pool import PoolAcquireContext

from tiercache.sharding._endpoints import CONNECTION_ERRORS, pool_of
from tiercache.sharding._fanout import ShardFanoutError
from tiercache.sharding._pool_metrics import BOUNDS_NS

if TYPE_CHECKING:
    from tiercache.sharding._endpoints import Endpoint, Shard
    from tiercache.sharding._pool_metrics import SlowQueryLog
    from tiercache.sharding._redact import Redactor

__all__ = ["ConnectionsMixin", "ShardAcquireContext"]

log = logging.getLogger("tiercache.sharding.pool")

_ns = perf_counter_ns


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

    def __init__(self, owner: ConnectionsMixin, endpoint: Endpoint, timeout: float | None) -> None:
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


class ConnectionsMixin:
    """Opening endpoint pools, ``acquire``/``release``/``transaction``, the routed call."""

    __slots__ = ()

    if TYPE_CHECKING:
        _shards: dict[str, Shard]
        _owners: dict[Any, Endpoint]
        _pool_kwargs: dict[str, Any]
        _redactor: Redactor
        _retry_after: float
        _slowlog: SlowQueryLog
        _closing: bool
        _closed: bool

        def _route(self, shard_key: Any, shard: str | None, readonly: bool) -> Endpoint: ...

        def _route_name(self, shard_key: Any, shard: str | None) -> str: ...

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

    async def _open_all(self) -> None:
        """Open every primary (all must succeed) and every replica (failures are logged).

        On failure or cancellation nothing is left open, so ``await pool`` can be retried.
        """
        endpoints = [ep for s in self._shards.values() for ep in s.endpoints()]
        try:
            outcomes = await asyncio.gather(
                *(self._open(ep) for ep in endpoints), return_exceptions=True
            )
        except BaseException:  # cancelled: the pools that did open would have no owner
            self._discard_pools(endpoints)
            raise
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
            self._discard_pools(endpoints)
            if len(primary_errors) == 1:
                (exc,) = primary_errors.values()
                raise exc
            opened = {name: None for name in self._shards if name not in primary_errors}
            raise ShardFanoutError("create_sharded_pool", opened, primary_errors)

    def _discard_pools(self, endpoints: list[Endpoint]) -> None:
        """Terminate and forget the pools of ``endpoints`` (a failed or cancelled start)."""
        for ep in endpoints:
            if ep.pool is not None:
                ep.pool.terminate()
                self._owners.pop(ep.pool, None)
                ep.pool = None

    async def _open(self, ep: Endpoint) -> None:
        """Create and await ``ep``'s asyncpg pool (also used to retry a replica later).

        ``health()`` retries replicas, so two probes may open the same endpoint at once, and
        the sharded pool may start closing meanwhile: a pool that lost either race is
        terminated here instead of being left running where ``close()`` cannot see it.
        """
        pool = asyncpg.create_pool(ep.dsn, **{**self._pool_kwargs, **ep.connect_kwargs})
        try:
            await pool
        except BaseException:
            pool.terminate()
            raise
        if self._closing or self._closed:
            pool.terminate()
            raise asyncpg.InterfaceError("pool is closing")
        if ep.pool is not None:  # a concurrent _open of this endpoint got there first
            pool.terminate()
            return
        ep.pool = pool
        ep.mark_up()
        self._owners[pool] = ep

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
                ep.mark_down(self._retry_after)
                primary = self._shards[ep.shard].primary
                return await self._run(primary, method, text, args, kwargs)
            self._redactor.exception(exc)
            raise

    @asynccontextmanager
    async def _transaction(
        self,
        ep: Endpoint,
        isolation: str | None,
        readonly: bool,
        deferrable: bool,
        timeout: float | None,
    ) -> AsyncIterator[Any]:
        """Acquire on ``ep``, run the body in one transaction there, always release."""
        ep, connection = await self._acquire(ep, timeout)
        try:
            async with connection.transaction(
                isolation=isolation, readonly=readonly, deferrable=deferrable
            ):
                yield connection
        finally:
            await ep.pool.release(connection)
