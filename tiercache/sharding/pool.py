"""A drop-in, shard-aware asyncpg pool routed by the :class:`~tiercache.sharding.ring.HashRing`.

Users who outgrew one Postgres replace ``asyncpg.create_pool(dsn)`` with
``tiercache.create_sharded_pool({"s1": dsn1, "s2": dsn2, ...})`` and add ``shard_key=`` to
their calls.  Everything else stays asyncpg: every :class:`asyncpg.Pool` method exists here with
the same parameters, kinds and defaults, plus keyword-only routing arguments:

* ``shard_key=`` -- any key the ring accepts; the shard is ``ring.get_node(shard_key)``, so
  ``pool.shard_for(k) == HashRing(...).get_node(k)`` always holds;
* ``shard=`` -- a shard name, for maintenance, migrations and tests;
* ``readonly=True`` (``fetch*``, ``copy_from_*``, ``acquire``, ``transaction``) -- run on a
  healthy replica of that shard (round-robin or least-latency), falling back to the primary.

Routing is *required* by ``execute``, ``executemany``, ``fetch``, ``fetchval``, ``fetchrow``,
``fetchmany``, ``copy_from_query``, ``copy_from_table``, ``copy_to_table``,
``copy_records_to_table``, ``acquire`` and ``transaction``: without it they raise
:class:`TypeError` -- there is no default shard.  Routing is *optional* for ``release`` (the
owner is found from the connection), ``get_size``, ``get_idle_size``, ``get_min_size``,
``get_max_size``, ``get_init_size``, ``expire_connections`` and ``set_connect_args``: without it
they cover every shard (sizes summed over the primaries).  ``close``, ``terminate``,
``is_closing``, ``await pool`` and ``async with pool`` act on the whole pool.
:func:`create_sharded_pool` takes every :func:`asyncpg.create_pool` parameter with the same
default, applied to each shard's pool (``min_size``/``max_size`` are per shard).

Cross-shard work is explicit: ``fetch_all``, ``fetchval_all`` and ``execute_all`` run on every
shard concurrently (bounded) and return ``{shard: result}``; failures are collected into one
:class:`ShardFanoutError` naming every failing shard and carrying the partial results.
Operations: ``stats()``, ``slow_queries(n)`` (pglast fingerprints) and ``await health()``.
Passwords never appear in reprs, logs, stats or exception messages.

Queries run on a connection from ``acquire``/``transaction`` are plain asyncpg calls: their
acquire wait is counted, but they are not individually timed (that would need a query logger
on every connection, which asyncpg implements with a ``call_soon`` per statement).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, Literal

import asyncpg

from tiercache.sharding._connections import ConnectionsMixin, ShardAcquireContext
from tiercache.sharding._copy import CopyMethodsMixin
from tiercache.sharding._endpoints import Endpoint, Shard, parse_shards
from tiercache.sharding._fanout import FanoutMixin, ShardFanoutError
from tiercache.sharding._pool_admin import PoolAdminMixin
from tiercache.sharding._pool_metrics import SlowQueryLog
from tiercache.sharding._pool_ops import OperationsMixin
from tiercache.sharding._redact import Redactor
from tiercache.sharding._routing import Ring, RoutingMixin, default_ring

__all__ = ["ShardAcquireContext", "ShardFanoutError", "ShardedPool", "create_sharded_pool"]


class ShardedPool(
    RoutingMixin, ConnectionsMixin, CopyMethodsMixin, PoolAdminMixin, FanoutMixin, OperationsMixin
):
    """One asyncpg pool per shard (and per replica), routed by a consistent-hash ring.

    Create it with :func:`create_sharded_pool`.  Like :class:`asyncpg.Pool` it must be awaited
    (or entered with ``async with``) before use, and closed afterwards.
    """

    __slots__ = (
        "_closed", "_closing", "_fanout_concurrency", "_initialized", "_initializing", "_name",
        "_owners", "_pool_kwargs", "_redactor", "_retry_after", "_ring", "_shard_names",
        "_shards", "_slowlog",
    )

    def __init__(
        self,
        shards: Mapping[str, Any],
        *,
        name: str,
        ring: Ring | None,
        pool_kwargs: Mapping[str, Any],
        slow_query_ms: float,
        slow_query_log_size: int,
        fanout_concurrency: int,
        replica_retry_after: float,
        replica_selection: str,
    ) -> None:
        self._name = name
        self._shards: dict[str, Shard] = parse_shards(shards, replica_selection)
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
        self._slowlog = SlowQueryLog(
            slow_query_ms, slow_query_log_size, redact=self._redactor.text
        )
        self._ring: Ring = ring if ring is not None else default_ring(self._shards)
        self._check_ring(self._ring)
        self._owners: dict[Any, Endpoint] = {}  # asyncpg pool -> its endpoint
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

    # -- routing (the rest is in _routing.RoutingMixin) ---------------------------------

    def set_ring(self, ring: Ring) -> None:
        """Swap the routing ring (the rebalancer's flip).  Every ring node must be a shard;
        shards absent from the ring only get ``shard=`` and fan-out traffic."""
        self._check_ring(ring)
        self._ring = ring

    # -- asyncpg.Pool statement methods (routing required) -------------------------------
    # Signatures mirror asyncpg.Pool's one for one (tests/test_pool_asyncpg_compat.py checks
    # names, kinds and defaults), hence the repetition; each body is one _route and one _run.

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
        split rows by ``pool.shard_for_many`` first when they span shards)."""
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

    def __repr__(self) -> str:
        state = (
            "closed" if self._closed else "open" if self._initialized else "not initialized"
        )
        parts = []
        for name, shard in self._shards.items():
            extra = f" +{len(shard.replicas)} replica(s)" if shard.replicas else ""
            parts.append(f"{name}={shard.primary.redacted}{extra}")
        return f"<tiercache.ShardedPool {self._name!r} {state} [{', '.join(parts)}]>"


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
    name: str = "default",
    slow_query_ms: float = 100.0,
    slow_query_log_size: int = 1000,
    fanout_concurrency: int = 16,
    replica_retry_after: float = 5.0,
    replica_selection: Literal["round_robin", "least_latency"] = "round_robin",
    **connect_kwargs: Any,
) -> ShardedPool:
    """Create a :class:`ShardedPool`: ``pool = await create_sharded_pool({...})``.

    ``shards`` maps shard names to a DSN, or to ``{"dsn": ..., "weight": 2, "replicas":
    [dsn, ...], **per_shard_connect_kwargs}``.  ``ring`` defaults to a ketama
    :class:`~tiercache.sharding.ring.HashRing` over the shard names (weighted when weights are
    given); pass your own to share placement with other components.

    Every :func:`asyncpg.create_pool` parameter is accepted with the same default and applies
    to each shard (and replica) pool; ``min_size``/``max_size`` are *per shard*.  Extra
    tiercache parameters: ``name`` (the ``pool`` label of exported metrics),
    ``slow_query_ms`` (slow-query log threshold), ``slow_query_log_size``,
    ``fanout_concurrency`` (default bound of the ``*_all`` methods), ``replica_retry_after``
    (seconds a failed replica stays out of the read rotation) and ``replica_selection``
    (``"round_robin"`` or ``"least_latency"`` for ``readonly=True`` calls).

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
        name=name,
        ring=ring,
        pool_kwargs=pool_kwargs,
        slow_query_ms=slow_query_ms,
        slow_query_log_size=slow_query_log_size,
        fanout_concurrency=fanout_concurrency,
        replica_retry_after=replica_retry_after,
        replica_selection=replica_selection,
    )
