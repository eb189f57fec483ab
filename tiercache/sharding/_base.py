"""State, routing and the tiercache-only surface of :class:`~tiercache.sharding.pool.ShardedPool`.

:class:`ShardedPoolBase` owns everything a sharded pool *is* -- its shards and their asyncpg
pools (a :class:`~tiercache.sharding._fleet.Fleet`), the ring, the default shard, the slow-query
log -- and answers "which endpoint runs this call" (``_route``).  It also carries what
asyncpg has no counterpart for: the ring API (``shards``, ``shard_for``, ``set_ring``...) and
operations (``stats()``, ``slow_queries()``, ``health()``).  The asyncpg surface itself --
statements, COPY, acquire, transaction and the hot path -- is ``pool.py``, which reads top to
bottom like asyncpg's own ``pool.py``.  A plain base class: it declares and sets every member
it uses, and uses nothing of its subclass.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

import asyncpg

from tiercache.sharding import _pool_ops
from tiercache.sharding._endpoints import Endpoint, Shard, parse_shards
from tiercache.sharding._fleet import Fleet
from tiercache.sharding._l3_listen import Listener, install_triggers
from tiercache.sharding._pool_metrics import SlowQueryLog
from tiercache.sharding._routing import Ring, check_ring, default_ring, ring_session
from tiercache.tiers.query import QueryCache

__all__ = ["ShardedPoolBase"]


class ShardedPoolBase(asyncpg.Pool):  # type: ignore[misc]
    """The shards, ring and routing of a sharded pool; see :class:`ShardedPool`.

    An ``asyncpg.Pool`` subclass (asyncpg's ``Pool`` is a plain class, not an ABC, so a virtual
    subclass via ``register`` is not possible) that never runs ``asyncpg.Pool.__init__``:
    :class:`ShardedPool` overrides every public method, and asyncpg's private attributes
    (``_holders``, ``_queue``...) are absent.
    """

    __slots__ = (
        "_default", "_fanout_concurrency", "_fleet", "_l3_listeners", "_name", "_on_key_moved",
        "_query_cache",
        "_ready", "_ring", "_shard_names",
        "_shards", "_slowlog", "_starting", "_stopped", "_stopping",
    )

    def __init__(
        self,
        shards: Mapping[str, Any] | str | None,
        *,
        name: str,
        ring: Ring | None,
        pool_kwargs: Mapping[str, Any],
        default_shard: str | None,
        slow_query_ms: float,
        slow_query_log_size: int,
        fanout_concurrency: int,
        replica_retry_after: float,
        replica_selection: str,
        query_cache: QueryCache | None = None,
    ) -> None:
        self._name = name
        self._query_cache = query_cache
        self._l3_listeners: dict[str, Listener] = {}
        if query_cache is not None and query_cache.metrics_name is None:
            query_cache.metrics_name = name
        self._shards: dict[str, Shard] = parse_shards(shards, replica_selection, pool_kwargs)
        self._shard_names = tuple(self._shards)
        self._fleet = Fleet(self._shards, pool_kwargs, replica_retry_after)
        if fanout_concurrency < 1:
            raise ValueError("fanout_concurrency must be >= 1")
        self._fanout_concurrency = fanout_concurrency
        self._slowlog = SlowQueryLog(slow_query_ms, slow_query_log_size)
        self._ring: Ring = ring if ring is not None else default_ring(self._shards)
        check_ring(self._ring, self._shards)
        self._fleet.session = ring_session(self._ring)
        # set by a TopologyWatcher: (error, shard) -> shard to retry a KeyMovedError on
        self._on_key_moved: Callable[[BaseException, str], Awaitable[str | None]] | None = None
        if default_shard is None and len(self._shards) == 1:
            default_shard = self._shard_names[0]
        self._default: Shard | None = None if default_shard is None else self._shard(default_shard)
        self._ready = False
        self._starting = False
        self._stopping = False
        self._stopped = False

    def _check_init(self) -> None:
        """asyncpg's checks and messages for a pool that is not ready (or no longer is)."""
        if not self._ready:
            if self._starting:
                raise asyncpg.InterfaceError(
                    "pool is being initialized, but not yet ready: likely there is a race "
                    "between creating a pool and using it"
                )
            raise asyncpg.InterfaceError("pool is not initialized")
        if self._stopped:
            raise asyncpg.InterfaceError("pool is closed")
        if self._stopping:
            raise asyncpg.InterfaceError("pool is closing")

    # -- routing: key -> shard -> endpoint -----------------------------------------------

    def _shard(self, name: str) -> Shard:
        try:
            return self._shards[name]
        except KeyError:
            raise ValueError(f"unknown shard {name!r}; shards are {list(self._shards)}") from None

    def _route(self, shard_key: Any, shard: str | None, readonly: bool) -> Endpoint:
        """The endpoint a routed call runs on (a usable replica when ``readonly``).

        The ring is asked on every call (not memoised), so a ring changed in place or swapped
        with :meth:`set_ring` -- the rebalancer's flip -- takes effect on the very next call.
        """
        if shard is not None:
            if shard_key is not None:
                raise TypeError("pass either shard_key= or shard=, not both")
            target = self._shard(shard)
        elif shard_key is not None:
            name = self._ring.get_node(shard_key)
            try:
                target = self._shards[name]
            except KeyError:
                raise self._not_a_shard(shard_key, name) from None
        elif self._default is not None:
            target = self._default
        else:
            raise TypeError(
                "ShardedPool call needs a shard: pass shard_key=<key> (routed by the ring) or "
                "shard=<name>, or create the pool with default_shard=<name> for unrouted calls"
            )
        if not self._ready:
            self._check_init()
        if readonly and target.replicas:
            return target.pick_read()
        return target.primary

    def _route_name(self, shard_key: Any, shard: str | None) -> str | None:
        """The shard a pool-wide method was routed to, or ``None`` (= every shard)."""
        if shard is not None and shard_key is not None:
            raise TypeError("pass either shard_key= or shard=, not both")
        if shard is not None:
            return self._shard(shard).name
        if shard_key is None:
            return None
        name = self._ring.get_node(shard_key)
        if name not in self._shards:
            raise self._not_a_shard(shard_key, name)
        return name

    def _not_a_shard(self, shard_key: Any, name: str) -> LookupError:
        """The ring was changed in place (``add_node``) to name a shard this pool lacks."""
        return LookupError(
            f"the ring routed key {shard_key!r} to {name!r}, which is not a shard of "
            f"this pool (shards: {list(self._shards)})"
        )

    # -- tiercache additions: shards and ring, operations ---------------------------------

    @property
    def shards(self) -> tuple[str, ...]:
        """The shard names, in the order they were given."""
        return self._shard_names

    @property
    def default_shard(self) -> str | None:
        """Where unrouted statements go (the only shard of a one-shard pool), or ``None``."""
        return None if self._default is None else self._default.name

    @property
    def ring(self) -> Ring:
        """The ring routing ``shard_key=`` to shard names."""
        return self._ring

    def set_ring(self, ring: Ring) -> None:
        """Swap the routing ring (the rebalancer's flip).  Every ring node must be a shard;
        shards absent from the ring only get ``shard=``, default and fan-out traffic."""
        check_ring(ring, self._shards)
        self._ring = ring
        self._fleet.retag(ring_session(ring))  # sessions declare the ring that routed them

    async def add_shard(self, name: str, spec: Any) -> None:
        """Open one more shard (a DSN, or ``{"dsn": ..., "replicas": [...], ...}`` as in
        :func:`create_sharded_pool`).  It gets no keys until a ring names it: the
        rebalancer adds it, moves its rows, then flips the ring (``set_ring``)."""
        self._check_init()
        await self._fleet.add(name, spec)
        self._shard_names = (*self._shard_names, name)

    def shard_for(self, key: Any) -> str:
        """The shard ``key`` routes to: exactly ``ring.get_node(key)``."""
        return self._ring.get_node(key)

    def shard_for_many(self, keys: Iterable[Any]) -> list[str]:
        """``[shard_for(k) for k in keys]``, in one batch call when the ring has
        ``get_node_many`` -- for splitting an ``executemany`` batch by shard."""
        many = getattr(self._ring, "get_node_many", None)
        if many is not None:
            return list(many(keys))
        get_node = self._ring.get_node
        return [get_node(k) for k in keys]

    def shard_pool(self, shard: str, *, replica: int | None = None) -> Any:
        """The plain :class:`asyncpg.Pool` behind ``shard`` (or its ``replica``-th replica),
        for code that needs an asyncpg pool; its queries bypass this pool's counters."""
        self._check_init()
        target = self._shard(shard)
        ep = target.primary if replica is None else target.replicas[replica]
        if ep.pool is None:
            raise asyncpg.InterfaceError(f"{shard}/{ep.role} is not connected")
        return ep.pool


    @property
    def query_cache(self) -> QueryCache | None:
        """The L3 :class:`~tiercache.tiers.query.QueryCache` (``None`` without one)."""
        return self._query_cache

    async def install_invalidation_triggers(self, tables: Iterable[str]) -> dict[str, list[str]]:
        """Make writes by any client to ``tables`` invalidate L3, on every shard.

        Creates statement-level AFTER INSERT/UPDATE/DELETE and TRUNCATE triggers that
        ``pg_notify`` the table name, and opens one dedicated LISTEN connection per shard
        (idempotent).  Returns ``{shard: [resolved table names]}``.
        """
        self._check_init()
        if self._query_cache is None:
            raise TypeError("install_invalidation_triggers needs a query_cache")
        names = list(tables)
        out: dict[str, list[str]] = {}
        for shard_name, shard in self._shards.items():
            async with shard.primary.pool.acquire() as conn:
                out[shard_name] = await install_triggers(conn, names)
            if shard_name not in self._l3_listeners:
                listener = Listener(shard.primary, self._query_cache)
                await listener.start()
                self._l3_listeners[shard_name] = listener
        return out

    async def _close_l3(self) -> None:
        listeners, self._l3_listeners = self._l3_listeners, {}
        for listener in listeners.values():
            await listener.close()

    @property
    def name(self) -> str:
        """The pool's name: the ``pool`` label of its exported metrics."""
        return self._name

    def stats(self) -> dict[str, Any]:
        """A plain-dict snapshot per shard and replica (see :func:`_pool_ops.stats`)."""
        return _pool_ops.stats(self._name, self._shards, self._slowlog)

    def reset_stats(self) -> None:
        """Zero the counters (not the slow-query log; see :meth:`clear_slow_queries`)."""
        _pool_ops.reset_stats(self._shards)

    def slow_queries(
        self, n: int | None = None, *, order: Literal["recent", "slowest"] = "recent"
    ) -> list[dict[str, Any]]:
        """Up to ``n`` slow statements (``shard``, ``role``, ``method``, ``query``
        (normalized), ``fingerprint``, ``duration_ms``, ``failed``, ``at``)."""
        return self._slowlog.entries(n, order=order)

    def clear_slow_queries(self) -> None:
        """Empty the slow-query log (the counters in :meth:`stats` are kept)."""
        self._slowlog.clear()

    @property
    def slow_query_threshold_ms(self) -> float:
        """Statements at least this slow (ms) go to the slow-query log; settable."""
        return self._slowlog.threshold_ns / 1e6

    @slow_query_threshold_ms.setter
    def slow_query_threshold_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError("slow_query_threshold_ms must be >= 0")
        self._slowlog.threshold_ns = int(value * 1_000_000)

    async def health(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """Probe every primary and replica (see :func:`_pool_ops.health`)."""
        self._check_init()
        return await _pool_ops.health(self._fleet, timeout)

    def __repr__(self) -> str:
        state = "closed" if self._stopped else "open" if self._ready else "not initialized"
        parts = []
        for name, shard in self._shards.items():
            extra = f" +{len(shard.replicas)} replica(s)" if shard.replicas else ""
            parts.append(f"{name}={shard.primary.redacted}{extra}")
        return f"<tiercache.ShardedPool {self._name!r} {state} [{', '.join(parts)}]>"
