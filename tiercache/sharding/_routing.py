"""What :class:`~tiercache.sharding.pool.ShardedPool` needs from a ring, and its default ring.

The pool asks the ring on every call rather than memoising, so that a ring changed in place
(``add_node``/``remove_node``) or swapped with ``set_ring`` takes effect on the next call.
Unrouted calls go to the pool's default shard (the only one of a one-shard pool, or
``default_shard=``); with several shards and no default they are a :class:`TypeError`,
because a silently defaulted shard is how rows end up where nobody will ever look for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tiercache.sharding._endpoints import Shard

__all__ = ["RING_SETTING", "Ring", "check_ring", "default_ring", "ring_digest", "ring_session"]


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


def check_ring(ring: Ring, shards: Mapping[str, Shard]) -> None:
    """Every ring node must be a shard (shards absent from the ring are allowed)."""
    unknown = set(ring.nodes) - set(shards)
    if unknown:
        raise ValueError(
            f"ring nodes {sorted(unknown)} have no shard; shards are {list(shards)}"
        )


#: The session setting that declares which ring routed a connection (see ring_session).
RING_SETTING = "tiercache.ring"


def ring_session(ring: Ring) -> dict[str, str]:
    """``{"tiercache.ring": digest}`` for a HashRing (weights, mode, vnodes, replicas), so
    a shard whose keys a rebalance moved can reject writes from sessions routed by the old
    ring; ``{}`` for other rings."""
    from tiercache.sharding.ring import HashRing

    if not isinstance(ring, HashRing):
        return {}
    return {RING_SETTING: ring_digest(ring)}


def ring_digest(ring: Any) -> str:
    """A stable digest of a HashRing's placement parameters (16 hex digits)."""
    import hashlib
    import json

    spec = {"weights": {str(k): v for k, v in ring.weights.items()}, "mode": ring.mode,
            "vnodes": ring.vnodes, "replicas": ring.replicas}
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:16]
