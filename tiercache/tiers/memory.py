"""L1: the in-process tier, over the Cython LRU store (or its pure-Python twin).

Keys are the call's argument tuples (any hashable), not strings: the L2 string key is only
built on an L1 miss. The async methods exist for the :class:`~tiercache.tiers.base.Tier`
protocol and never await anything; in-process callers use the ``*_sync`` twins or
``.store`` directly. The ``@cached`` hit path bypasses this object entirely: ``wrap()``
builds a C-level wrapper that reads ``.store`` without any Python frame.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tiercache._impl import load
from tiercache._validate import ttl_seconds
from tiercache.tiers.base import MISSING

if TYPE_CHECKING:
    from tiercache._fallback import _lru as lru_impl
else:
    lru_impl = load("_lru")

__all__ = ["MemoryTier"]

MissHandler = Callable[[Hashable | None, tuple[Any, ...], dict[str, Any]], Any]


class MemoryTier:
    """Per-process LRU + TTL tier.

    ``maxsize`` bounds the entry count (None = unbounded); ``ttl`` is the default time to
    live in seconds (None = no expiry; per-entry ``ttl=`` overrides, ``math.inf`` = never);
    ``maxbytes`` with ``sizeof(value) -> int`` adds a byte bound; ``clock`` (seconds as
    float) replaces the monotonic clock, for tests. ``len()``, ``stats()["size"]`` and the
    store's ``keys()`` count live entries only, like cachetools' ``TTLCache``.
    """

    name = "l1"

    def __init__(
        self,
        maxsize: int | None = 100_000,
        ttl: float | None = None,
        maxbytes: int | None = None,
        sizeof: Callable[[Any], int] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.store = lru_impl.LRU(maxsize, ttl, maxbytes, sizeof, clock)

    # ---------------------------------------------------------------- sync (in-process)

    def get_sync(self, key: Hashable) -> Any:
        return self.store.get(key, MISSING)

    def set_sync(self, key: Hashable, value: Any, ttl: float | None = None) -> None:
        self.store.put(key, value, ttl_seconds(ttl))

    def delete_sync(self, key: Hashable) -> bool:
        return self.store.delete(key)

    def get_many_sync(self, keys: Iterable[Hashable]) -> dict[Any, Any]:
        get = self.store.get
        found = {}
        for key in keys:
            value = get(key, MISSING)
            if value is not MISSING:
                found[key] = value
        return found

    def set_many_sync(self, mapping: Mapping[Any, Any], ttl: float | None = None) -> None:
        ttl = ttl_seconds(ttl)
        put = self.store.put
        for key, value in mapping.items():
            put(key, value, ttl)

    def clear_sync(self) -> None:
        self.store.clear()

    def close_sync(self) -> None:
        self.store.clear()

    def delete_where(self, predicate: Callable[[Hashable], bool]) -> int:
        """Invalidate every key matching ``predicate`` (by-args / bus invalidation)."""
        return self.store.delete_where(predicate)

    def expire(self) -> int:
        """Drop expired entries now; optional housekeeping, correctness never needs it."""
        return self.store.expire()

    # ---------------------------------------------------------------- Tier protocol

    async def get(self, key: Hashable) -> Any:
        return self.store.get(key, MISSING)

    async def set(self, key: Hashable, value: Any, ttl: float | None = None) -> None:
        self.store.put(key, value, ttl_seconds(ttl))

    async def delete(self, key: Hashable) -> bool:
        return self.store.delete(key)

    async def get_many(self, keys: Iterable[Hashable]) -> dict[Any, Any]:
        return self.get_many_sync(keys)

    async def set_many(self, mapping: Mapping[Any, Any], ttl: float | None = None) -> None:
        self.set_many_sync(mapping, ttl)

    async def clear(self) -> None:
        self.store.clear()

    async def close(self) -> None:
        self.store.clear()

    def stats(self) -> dict[str, Any]:
        """``hits, misses, sets, deletes, evictions (+ by size/expired), errors, size``."""
        s: dict[str, Any] = dict(self.store.stats())
        s["evictions"] = s["evictions_size"] + s["evictions_expired"]
        s["errors"] = 0
        s["maxsize"] = self.store.maxsize
        gets = s["hits"] + s["misses"]
        s["hit_ratio"] = s["hits"] / gets if gets else 0.0
        return s

    # ---------------------------------------------------------------- hit path

    def segment(self, name: Hashable) -> lru_impl.Segment:
        """The store segment holding one function's entries (shared LRU list and bounds)."""
        return self.store.segment(name)

    def segment_stats(self) -> dict[Any, dict[str, int]]:
        """Per-segment (per-function) counters, keyed by segment name."""
        return {seg.name: seg.stats() for seg in self.store.segments()}

    def wrap(
        self,
        func: Callable[..., Any],
        miss_handler: MissHandler,
        *,
        segment: Hashable | None = None,
    ) -> lru_impl.CachedFunction | lru_impl.AsyncCachedFunction:
        """The callable ``@cached`` returns: L1 hits answered in C, misses to the handler.

        Entries live in segment ``segment`` (default ``"module.qualname"`` of ``func``), so
        functions sharing this tier never see each other's argument tuples.
        ``miss_handler(key, args, kwargs)`` gets the L1 key (None when the arguments are
        unhashable), should ``put`` the value into ``wrapper.segment`` and must return the
        value (sync) or a coroutine (async functions).
        """
        if segment is None:
            segment = f"{func.__module__}.{func.__qualname__}"
        return self.wrap_segment(func, self.store.segment(segment), miss_handler)

    @staticmethod
    def wrap_segment(
        func: Callable[..., Any], segment: lru_impl.Segment | None, miss_handler: MissHandler
    ) -> lru_impl.CachedFunction | lru_impl.AsyncCachedFunction:
        """Like :meth:`wrap` over a given segment; ``None`` = no L1 (every call misses)."""
        if inspect.iscoroutinefunction(func):
            return lru_impl.AsyncCachedFunction(func, segment, miss_handler)
        return lru_impl.CachedFunction(func, segment, miss_handler)

    def l1_key(self, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> Hashable:
        """The L1 key of a call (what ``wrap()`` wrappers use)."""
        return lru_impl.make_key(args, kwargs)

    def __len__(self) -> int:
        """Live entries: an expired entry nobody read is not counted (as for ``in``/``get``)."""
        return len(self.store)

    def __repr__(self) -> str:
        return f"MemoryTier({self.store!r})"
