"""The small protocol every cache tier implements (L1 memory, L2 Redis, L3 query cache).

Kept deliberately small so TierCache can treat tiers uniformly and users can plug their own.
A miss is the :data:`MISSING` sentinel, never ``None``: ``None`` is a cacheable value
(negative caching). ``stats()`` is synchronous because ``TierCache.stats()`` is, and every
tier keeps its counters in-process. Async methods are the primary surface; tiers that
serve sync ``@cached`` functions also implement :class:`SyncTier` (``*_sync`` twins).
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from tiercache.codec import Entry

__all__ = ["MISSING", "BreakerView", "EntryWrite", "Missing", "RemoteTier", "SyncTier", "Tier",
           "ValueTooLarge"]

K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)

#: One write of :meth:`RemoteTier.set_many_entries`: (key, value, ttl, load_time, stale).
EntryWrite = tuple[str, Any, "float | None", float, float]


class Missing(enum.Enum):
    """Type of :data:`MISSING` (an enum so type checkers can narrow on ``is MISSING``)."""

    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = Missing.MISSING


@runtime_checkable
class Tier(Protocol[K_contra]):
    """Async tier API. ``ttl`` is seconds; None means the tier's default."""

    name: str

    async def get(self, key: K_contra) -> Any:
        """The value, or :data:`MISSING`."""
        ...

    async def set(self, key: K_contra, value: Any, ttl: float | None = None) -> None: ...

    async def delete(self, key: K_contra) -> bool:
        """True if the key was present (best effort for remote tiers)."""
        ...

    async def get_many(self, keys: Iterable[K_contra]) -> dict[Any, Any]:
        """Only the hits, keyed as given."""
        ...

    async def set_many(self, mapping: Mapping[Any, Any], ttl: float | None = None) -> None: ...

    async def clear(self) -> None: ...

    def stats(self) -> dict[str, Any]:
        """Counter snapshot: hits, misses, sets, deletes, evictions, errors, size, ..."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class SyncTier(Protocol[K_contra]):
    """Blocking twins of :class:`Tier`, for sync ``@cached`` functions."""

    name: str

    def get_sync(self, key: K_contra) -> Any: ...

    def set_sync(self, key: K_contra, value: Any, ttl: float | None = None) -> None: ...

    def delete_sync(self, key: K_contra) -> bool: ...

    def get_many_sync(self, keys: Iterable[K_contra]) -> dict[Any, Any]: ...

    def set_many_sync(self, mapping: Mapping[Any, Any], ttl: float | None = None) -> None: ...

    def clear_sync(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def close_sync(self) -> None: ...


class ValueTooLarge(TypeError):
    """An encoded value exceeds the tier's ``max_value_bytes``: nothing was written.

    A ``TypeError`` subclass on purpose: the core already treats an unencodable value
    (``TypeError`` raised before any I/O) as "keep it in L1 only, count an encode error".
    """


class BreakerView(Protocol):
    """What the core reads of a remote tier's circuit breaker (aggregate state)."""

    @property
    def state(self) -> str: ...


@runtime_checkable
class RemoteTier(Protocol):
    """The seam between :class:`~tiercache.cache.TierCache` and its shared (L2/L3) tier.

    Everything the core asks of a remote tier, with the contract it relies on:

    * **never raises for the remote's failure**: an unreachable server, a timeout or an open
      breaker is a miss (reads), a skipped-and-remembered write, ``0``/``False`` (deletes,
      invalidations) or a local lease token. Only programming errors reach the caller:
      ``TypeError`` (including :class:`ValueTooLarge`) for a value that cannot be stored,
      raised before any I/O, and ``ValueError`` for a key in the tier's reserved space.
    * **entries with metadata**: ``get_entry``/``get_many_entries`` return
      :class:`~tiercache.codec.Entry` envelopes (value, stored_at, ttl, load_time) so the
      core can bound L1 backfills by the time the L2 entry has left.
    * **keys** are the core's full keys (``"{namespace}:..."``); the tier derives the
      namespace from the part before the first ``":"`` to place its own keys (tag sets,
      leases) under it.
    * **tags**: ``add_tags`` indexes a key under tags (bounded by the entries' expiry);
      ``invalidate_tags(tags, namespace=)`` deletes what is indexed in that namespace.
    * **leases** (single flight across processes): ``acquire_lease`` -> token or None
      (another process holds it); ``release_lease`` is compare-and-delete.
    * **pub/sub** for the invalidation bus: ``publish`` and ``pubsub_client()`` (an async
      client the bus SUBSCRIBEs with and closes).
    * every I/O method has a blocking ``*_sync`` twin for sync ``@cached`` functions.
    """

    name: str
    ttl: float | None

    @property
    def breaker(self) -> BreakerView: ...

    # -- async
    async def get(self, key: str) -> Any: ...
    async def get_entry(self, key: str) -> Entry | Missing: ...
    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]: ...
    async def get_many_entries(self, keys: Iterable[str]) -> dict[str, Entry]: ...
    async def set(self, key: str, value: Any, ttl: float | None = None, *,
                  load_time: float = 0.0, stale: float = 0.0) -> None: ...
    async def set_many(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None: ...
    async def set_many_entries(self, items: Sequence[EntryWrite]
                               ) -> list[BaseException | None]: ...
    async def add_tags(self, key: str, tags: Iterable[str], ttl: float | None = None) -> None: ...
    async def delete(self, key: str) -> bool: ...
    async def delete_many(self, keys: Iterable[str]) -> int: ...
    async def invalidate_tags(self, tags: Iterable[str], *,
                              namespace: str | None = None) -> int: ...
    async def delete_pattern(self, pattern: str) -> int: ...
    async def acquire_lease(self, key: str, ttl_ms: int) -> str | None: ...
    async def release_lease(self, key: str, token: str) -> bool: ...
    async def publish(self, channel: str, message: bytes) -> None: ...
    async def ping(self) -> float: ...
    async def clear(self) -> None: ...
    async def close(self) -> None: ...

    # -- sync twins
    def get_sync(self, key: str) -> Any: ...
    def get_entry_sync(self, key: str) -> Entry | Missing: ...
    def get_many_sync(self, keys: Iterable[str]) -> dict[str, Any]: ...
    def get_many_entries_sync(self, keys: Iterable[str]) -> dict[str, Entry]: ...
    def set_sync(self, key: str, value: Any, ttl: float | None = None, *,
                 load_time: float = 0.0, stale: float = 0.0) -> None: ...
    def set_many_sync(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None: ...
    def add_tags_sync(self, key: str, tags: Iterable[str], ttl: float | None = None) -> None: ...
    def delete_sync(self, key: str) -> bool: ...
    def delete_many_sync(self, keys: Iterable[str]) -> int: ...
    def invalidate_tags_sync(self, tags: Iterable[str], *,
                             namespace: str | None = None) -> int: ...
    def delete_pattern_sync(self, pattern: str) -> int: ...
    def acquire_lease_sync(self, key: str, ttl_ms: int) -> str | None: ...
    def release_lease_sync(self, key: str, token: str) -> bool: ...
    def publish_sync(self, channel: str, message: bytes) -> None: ...
    def ping_sync(self) -> float: ...
    def clear_sync(self) -> None: ...
    def close_sync(self) -> None: ...

    def pubsub_client(self) -> Any:
        """A fresh async pub/sub-capable client (the bus closes it)."""
        ...

    def stats(self) -> dict[str, Any]: ...
