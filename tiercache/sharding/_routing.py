"""Routing of :class:`~tiercache.sharding.pool.ShardedPool` calls: key -> shard -> endpoint.

The ring is consulted on every call rather than memoised, so that a ring changed in place
(``add_node``/``remove_node``) or swapped with :meth:`RoutingMixin.set_ring` -- the
rebalancer's flip -- takes effect on the very next call.  There is deliberately no default
shard: a call without routing is a :class:`TypeError`, because a silently defaulted shard is
how rows end up where nobody will ever look for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg

if TYPE_CHECKING:
    from tiercache.sharding._endpoints import Endpoint, Shard

__all__ = ["Ring", "RoutingMixin", "default_ring"]


class Ring(Protocol):
    """What the pool needs from a ring: ``HashRing`` or anything shaped like it."""

    def get_node(self, key: Any) -> str: ...

    @property
    def nodes(self) -> Any: ...


def default_ring(shards: Mapping[str, Shard]) -> Ring:
    """A ketama :class:`~tiercache.sharding.ring.HashRing` over the shard names.

    Weighted by the shards' ``weight`` (1 by default), so with unweighted shards it is the ring
    a user builds by hand: ``pool.shard_for(k) == HashRing(names).get_node(k)``.
    """
    from tiercache.sharding.ring import HashRing

    return HashRing({name: shard.weight for name, shard in shards.items()}, mode="ketama")


class RoutingMixin:
    """``shards``, ``ring``, ``shard_for(_many)``, ``shard_pool`` and every call's ``_route``."""

    __slots__ = ()

    if TYPE_CHECKING:
        _shards: dict[str, Shard]
        _shard_names: tuple[str, ...]
        _ring: Ring
        _initialized: bool
        _closing: bool
        _closed: bool

    @property
    def shards(self) -> tuple[str, ...]:
        """The shard names, in the order they were given."""
        return self._shard_names

    @property
    def ring(self) -> Ring:
        """The ring routing ``shard_key=`` to shard names."""
        return self._ring

    def _check_ring(self, ring: Ring) -> None:
        unknown = set(ring.nodes) - set(self._shards)
        if unknown:
            raise ValueError(
                f"ring nodes {sorted(unknown)} have no shard; shards are {list(self._shards)}"
            )

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
        """The plain :class:`asyncpg.Pool` behind ``shard`` (or its ``replica``-th replica).

        For handing one shard to code that needs an asyncpg pool; its queries bypass this
        pool's counters.
        """
        self._check_open()
        target = self._shard(shard)
        ep = target.primary if replica is None else target.replicas[replica]
        if ep.pool is None:
            raise asyncpg.InterfaceError(f"{shard}/{ep.role} is not connected")
        return ep.pool

    def _shard(self, name: str) -> Shard:
        try:
            return self._shards[name]
        except KeyError:
            raise ValueError(f"unknown shard {name!r}; shards are {list(self._shards)}") from None

    def _route(self, shard_key: Any, shard: str | None, readonly: bool) -> Endpoint:
        """The endpoint a routed call runs on (a usable replica when ``readonly``)."""
        if shard is None:
            if shard_key is None:
                raise TypeError(
                    "ShardedPool call needs a shard: pass shard_key=<key> (routed by the ring) "
                    "or shard=<name>; there is no default shard"
                )
            name = self._ring.get_node(shard_key)
            try:
                target = self._shards[name]
            except KeyError:
                raise self._not_a_shard(shard_key, name) from None
        else:
            if shard_key is not None:
                raise TypeError("pass either shard_key= or shard=, not both")
            target = self._shard(shard)
        if not self._initialized:
            self._check_open()
        if readonly and target.replicas:
            return target.pick_read()
        return target.primary

    def _route_name(self, shard_key: Any, shard: str | None) -> str:
        """The shard name for optional routing that was given (pool-wide methods)."""
        if shard is not None and shard_key is not None:
            raise TypeError("pass either shard_key= or shard=, not both")
        if shard is not None:
            return self._shard(shard).name
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

    def _check_open(self) -> None:
        """Raise asyncpg's InterfaceError unless the pool is initialised and not closing."""
        if self._closed or self._closing:
            raise asyncpg.InterfaceError("pool is closing")
        if not self._initialized:
            raise asyncpg.InterfaceError("pool is not initialized")
