"""Pool-wide :class:`asyncpg.Pool` methods of the sharded pool: sizes and connect arguments.

These take *optional* routing: with ``shard_key=``/``shard=`` they act on that shard, without
it on every shard -- sizes are then summed over the shard primaries (replica pools are reported
in ``stats()``), so the asyncpg invariants users rely on, such as "idle == max once every
connection is back", keep holding for the sharded pool as a whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tiercache.sharding._redact import redact_dsn

if TYPE_CHECKING:
    from tiercache.sharding._endpoints import Endpoint, Shard
    from tiercache.sharding._redact import Redactor

__all__ = ["PoolAdminMixin"]

_POOL_ONLY = frozenset({
    "init_size", "min_size", "max_size", "max_queries", "max_inactive_connection_lifetime",
    "connect", "setup", "init", "reset", "loop", "connection_class", "record_class",
})


class PoolAdminMixin:
    """``get_size`` & co., ``expire_connections`` and ``set_connect_args``."""

    __slots__ = ()

    if TYPE_CHECKING:
        _shards: dict[str, Shard]
        _pool_kwargs: dict[str, Any]
        _redactor: Redactor

        def _route_name(self, shard_key: Any, shard: str | None) -> str: ...

    def _selected(self, shard_key: Any, shard: str | None) -> Iterable[Shard]:
        """Shards a pool-wide method applies to: the routed one, or all without routing."""
        if shard is None and shard_key is None:
            return self._shards.values()
        return (self._shards[self._route_name(shard_key, shard)],)

    def _sum_primaries(self, getter: str, shard_key: Any, shard: str | None) -> int:
        """``pool.<getter>()`` of the routed shard's primary, or summed over every primary.

        Primaries whose pool is not open (before ``await pool``) count as 0.
        """
        return sum(
            getattr(s.primary.pool, getter)()
            for s in self._selected(shard_key, shard)
            if s.primary.pool is not None
        )

    def get_size(self, *, shard_key: Any = None, shard: str | None = None) -> int:
        """Open connections: of the routed shard's primary, or summed over all primaries."""
        return self._sum_primaries("get_size", shard_key, shard)

    def get_idle_size(self, *, shard_key: Any = None, shard: str | None = None) -> int:
        """Idle connections: of the routed shard's primary, or summed over all primaries."""
        return self._sum_primaries("get_idle_size", shard_key, shard)

    def get_min_size(self, *, shard_key: Any = None, shard: str | None = None) -> int:
        """``min_size``: of the routed shard's primary, or summed over all primaries."""
        return self._sum_primaries("get_min_size", shard_key, shard)

    def get_max_size(self, *, shard_key: Any = None, shard: str | None = None) -> int:
        """``max_size``: of the routed shard's primary, or summed over all primaries."""
        return self._sum_primaries("get_max_size", shard_key, shard)

    def get_init_size(self, *, shard_key: Any = None, shard: str | None = None) -> int:
        """``init_size``: of the routed shard's primary, or summed over all primaries."""
        return self._sum_primaries("get_init_size", shard_key, shard)

    async def expire_connections(
        self, *, shard_key: Any = None, shard: str | None = None
    ) -> None:
        """:meth:`asyncpg.Pool.expire_connections` on the routed shard, or on every pool."""
        await asyncio.gather(*(
            ep.pool.expire_connections()
            for s in self._selected(shard_key, shard) for ep in s.endpoints()
            if ep.pool is not None
        ))

    def set_connect_args(
        self,
        dsn: str | None = None,
        *,
        shard_key: Any = None,
        shard: str | None = None,
        **connect_kwargs: Any,
    ) -> None:
        """:meth:`asyncpg.Pool.set_connect_args` for the routed shard's primary.

        Without routing, ``connect_kwargs`` apply to every pool (e.g. a rotated password) and
        each keeps its own DSN; ``dsn`` then is an error, as one DSN cannot serve every shard.
        ``dsn=None`` keeps the shard's current DSN.
        """
        routed = shard is not None or shard_key is not None
        if dsn is not None and not routed:
            raise TypeError("set_connect_args(dsn=...) needs shard_key= or shard=")
        self._redactor.add_dsn(dsn)
        self._redactor.add(connect_kwargs.get("password"))
        if routed:
            endpoints: list[Endpoint] = [self._shards[self._route_name(shard_key, shard)].primary]
        else:
            endpoints = [ep for s in self._shards.values() for ep in s.endpoints()]
        for ep in endpoints:
            if dsn is not None:
                ep.dsn = dsn
                ep.redacted = redact_dsn(dsn)
            ep.connect_kwargs.update(connect_kwargs)
            if ep.pool is not None:
                kwargs = {**self._pool_connect_kwargs(), **ep.connect_kwargs}
                ep.pool.set_connect_args(ep.dsn, **kwargs)

    def _pool_connect_kwargs(self) -> dict[str, Any]:
        """The create_sharded_pool arguments that are connect arguments (not pool sizing)."""
        return {k: v for k, v in self._pool_kwargs.items() if k not in _POOL_ONLY}
