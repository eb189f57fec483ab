"""The small protocol every cache tier implements (L1 memory, L2 Redis, L3 query cache).

Kept deliberately small so TierCache can treat tiers uniformly and users can plug their own.
A miss is the :data:`MISSING` sentinel, never ``None``: ``None`` is a cacheable value
(negative caching). ``stats()`` is synchronous because ``TierCache.stats()`` is, and every
tier keeps its counters in-process. Async methods are the primary surface; tiers that
serve sync ``@cached`` functions also implement :class:`SyncTier` (``*_sync`` twins).
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

__all__ = ["MISSING", "Missing", "SyncTier", "Tier"]

K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)


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
