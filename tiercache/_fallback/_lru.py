"""Pure-Python twin of ``ext/_lru.pyx``: the L1 store and the @cached hit path.

Same API and semantics as the Cython module (the shared test suite runs against both);
built on ``cachetools.LRUCache`` for the ordering and byte accounting. Used when the
extension is not compiled or ``TIERCACHE_PUREPYTHON=1``. Segments are emulated by
prefixing keys with a private per-segment token.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import cachetools

from tiercache._fallback._lru_wrappers import (
    KWMARK,
    AsyncCachedFunction,
    CachedFunction,
    Ready,
    make_key,
    ready,
)

__all__ = [
    "KWMARK",
    "LRU",
    "AsyncCachedFunction",
    "CachedFunction",
    "Ready",
    "Segment",
    "make_key",
    "ready",
]

_COUNTERS = ("hits", "misses", "sets", "deletes", "evictions_size", "evictions_expired")
_HEAP_MIN_LIMIT = 1024  # below this many items the expiry heap is never compacted


class _Entry:
    __slots__ = ("expires", "key", "seg", "size", "value")

    def __init__(self, seg: Segment, key: Hashable, value: Any, expires: float, size: int):
        self.seg, self.key, self.value = seg, key, value
        self.expires = expires  # 0.0 = never
        self.size = size


class _Data(cachetools.LRUCache[Hashable, _Entry]):
    """LRUCache that tells its owner about each overflow eviction (size vs expired)."""

    def __init__(self, owner: LRU, maxsize: float, sized: bool) -> None:
        super().__init__(maxsize, (lambda e: e.size) if sized else None)
        self._owner = owner

    def popitem(self) -> tuple[Hashable, _Entry]:
        key, entry = super().popitem()
        self._owner._count_eviction(entry)
        return key, entry

    def order(self) -> list[Hashable]:
        order = getattr(self, "_LRUCache__order", None)  # LRU first; private but stable
        return list(order) if order is not None else list(self)

    def peek(self, key: Hashable) -> _Entry | None:
        """Look up without touching the LRU order (Cache.__getitem__ skips LRUCache's)."""
        try:
            entry: _Entry = cachetools.Cache.__getitem__(self, key)
        except KeyError:
            return None
        return entry


class Segment:
    """One function's (or namespace's) keys inside a shared store, with its own counters."""

    def __init__(self, store: LRU, name: Any, token: object | None) -> None:
        self.store, self.name = store, name
        self._token = token
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self.size = 0

    def _k(self, key: Hashable) -> Hashable:
        return key if self._token is None else (self._token, key)

    def _fresh(self, key: Hashable) -> _Entry | None:
        """The live entry (moved to front) or None; counts the hit/miss; TypeError if unhashable."""
        store = self.store
        with store._lock:
            try:
                entry = store._data[self._k(key)]
            except KeyError:
                entry = None
            except TypeError:
                self.counts["misses"] += 1
                raise
            if entry is not None and entry.expires and store._now() >= entry.expires:
                store._remove(self._k(key))
                self.counts["evictions_expired"] += 1
                entry = None
            self.counts["hits" if entry is not None else "misses"] += 1
            return entry

    def get(self, key: Hashable, default: Any = None) -> Any:
        """Fresh value for ``key`` (marks it recently used) or ``default``; counts hit/miss."""
        entry = self._fresh(key)
        return default if entry is None else entry.value

    def put(self, key: Hashable, value: Any, ttl: float | None = None) -> None:
        """Store ``value``; ``ttl`` overrides the default (None = default, inf = never)."""
        self.store._put(self, key, value, ttl)

    def delete(self, key: Hashable) -> bool:
        """Remove ``key``; True if it was present."""
        if self.store._remove(self._k(key)):
            self.counts["deletes"] += 1
            return True
        return False

    def clear(self) -> None:
        """Drop this segment's entries."""
        for key in self.keys():
            self.store._remove(self._k(key))

    def expires_at(self, key: Hashable) -> float | None:
        """Expiry time of ``key`` on the store's clock, None if it never expires/is absent."""
        with self.store._lock:
            entry = self.store._data.peek(self._k(key))
        return entry.expires if entry is not None and entry.expires else None

    def keys(self) -> list[Hashable]:
        """Snapshot of this segment's live keys, least recently used first."""
        data = self.store._data
        with self.store._lock:
            self.store._prune()
            entries = [data.peek(k) for k in data.order()]
        return [e.key for e in entries if e is not None and e.seg is self]

    def delete_where(self, predicate: Callable[[Hashable], bool]) -> int:
        """Delete every key for which ``predicate(key)`` is true; returns how many."""
        n = 0
        for key in self.keys():
            if predicate(key) and self.store._remove(self._k(key)):
                self.counts["deletes"] += 1
                n += 1
        return n

    def stats(self) -> dict[str, int]:
        """This segment's counters; ``size`` counts live entries only."""
        self.store._prune()
        return {**self.counts, "size": self.size}

    def reset_stats(self) -> None:
        self.counts = dict.fromkeys(_COUNTERS, 0)

    def __len__(self) -> int:
        self.store._prune()
        return self.size

    def __contains__(self, key: object) -> bool:
        with self.store._lock:
            entry = self.store._data.peek(self._k(key))
        return entry is not None and (not entry.expires or self.store._now() < entry.expires)

    def __repr__(self) -> str:
        return f"<Segment {self.name!r} size={self.size}>"


class LRU:
    """LRU bounded by entries (and optionally bytes), with per-entry TTL.

    The store's own get/put/delete/keys act on its default segment; ``segment(name)``
    gives others. ``len()``, ``clear()``, ``expire()`` and ``stats()`` cover all segments.
    ``len()``, ``keys()`` and ``stats()["size"]`` first drop expired entries, found through
    a min-heap of ``(expires, seq, internal key)`` (like cachetools' TTLCache, they agree
    with ``in`` and ``get``); the hit path never touches the heap.
    """

    def __init__(
        self,
        maxsize: int | None = 100_000,
        ttl: float | None = None,
        maxbytes: int | None = None,
        getsizeof: Callable[[Any], int] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if maxsize is not None and maxsize < 0:
            raise ValueError("maxsize must be >= 0 or None")
        if ttl is not None and not ttl > 0:
            raise ValueError("ttl must be > 0 or None")
        if maxbytes is not None and maxbytes < 0:
            raise ValueError("maxbytes must be >= 0 or None")
        if maxbytes is not None and getsizeof is None:
            raise ValueError("maxbytes needs getsizeof=, a callable giving a value's size")
        self._maxsize = maxsize
        self._ttl = 0.0 if ttl is None or ttl == math.inf else float(ttl)
        self._maxbytes = maxbytes
        self._sizeof = getsizeof
        self._now: Callable[[], float] = clock if clock is not None else time.monotonic
        bound = maxbytes if maxbytes is not None else maxsize
        self._bound = math.inf if bound is None else bound
        self._data = _Data(self, self._bound, maxbytes is not None)
        # cachetools is not thread-safe; the C store relies on the GIL instead. Reentrant
        # because a value's __del__ may call back into the store during an eviction.
        self._lock = threading.RLock()
        self.default_segment = Segment(self, None, None)
        self._segments: dict[Any, Segment] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._heap_limit = _HEAP_MIN_LIMIT
        self._seq = itertools.count()

    def _heap_push(self, expires: float, internal: Hashable) -> None:
        """Remember when ``internal`` expires; items for replaced/deleted keys go stale."""
        if len(self._heap) >= self._heap_limit:  # compact: keep the heap O(live entries)
            peek = self._data.peek
            self._heap = [
                item for item in self._heap
                if (e := peek(item[2])) is not None and e.expires == item[0]
            ]
            heapq.heapify(self._heap)
            self._heap_limit = max(_HEAP_MIN_LIMIT, 2 * len(self._heap))
        heapq.heappush(self._heap, (expires, next(self._seq), internal))

    def _prune(self) -> int:
        """Drop every expired entry (from the heap's top); returns how many."""
        if not self._heap:
            return 0
        dropped = 0
        with self._lock:
            heap = self._heap
            now = self._now()
            while heap and heap[0][0] <= now:
                at, _, internal = heapq.heappop(heap)
                entry = self._data.peek(internal)
                if entry is not None and entry.expires == at and self._remove(internal):
                    entry.seg.counts["evictions_expired"] += 1
                    dropped += 1
        return dropped

    def _count_eviction(self, entry: _Entry) -> None:
        expired = entry.expires and self._now() >= entry.expires
        entry.seg.counts["evictions_expired" if expired else "evictions_size"] += 1
        entry.seg.size -= 1

    def _remove(self, internal_key: Hashable) -> bool:
        with self._lock:
            entry = self._data.peek(internal_key)
            if entry is None:
                return False
            del self._data[internal_key]
            entry.seg.size -= 1
            return True

    def _put(self, seg: Segment, key: Hashable, value: Any, ttl: float | None) -> None:
        t = self._ttl if ttl is None else float(ttl)
        if t == math.inf:
            t = 0.0
        elif t <= 0.0 and ttl is not None:
            self._remove(seg._k(key))
            return
        size = 0
        if self._sizeof is not None and self._maxbytes is not None:
            size = int(self._sizeof(value))
            if size < 0:
                raise ValueError("getsizeof() returned a negative size")
        if self._maxsize == 0 or (self._maxbytes is not None and size > self._maxbytes):
            self._remove(seg._k(key))
            return
        entry = _Entry(seg, key, value, self._now() + t if t > 0.0 else 0.0, size)
        internal = seg._k(key)
        with self._lock:
            # Replace, never update in place: cachetools makes room for a grown value
            # *before* replacing it and may evict the very key being written (then the
            # segment size drifts). The C store moves it to the front, then evicts.
            self._remove(internal)
            seg.size += 1
            self._data[internal] = entry
            if entry.expires:
                self._heap_push(entry.expires, internal)
            seg.counts["sets"] += 1
            if self._maxbytes is not None and self._maxsize is not None:
                while len(self._data) > self._maxsize:
                    self._data.popitem()

    def segment(self, name: Any) -> Segment:
        """The segment called ``name`` (created on first use; lives as long as the store)."""
        seg = self._segments.get(name)
        if seg is None:
            seg = self._segments[name] = Segment(self, name, object())
        return seg

    def segments(self) -> list[Segment]:
        """The named segments (not the default one)."""
        return list(self._segments.values())

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self.default_segment.get(key, default)

    def put(self, key: Hashable, value: Any, ttl: float | None = None) -> None:
        self._put(self.default_segment, key, value, ttl)

    def delete(self, key: Hashable) -> bool:
        return self.default_segment.delete(key)

    def expires_at(self, key: Hashable) -> float | None:
        return self.default_segment.expires_at(key)

    def keys(self) -> list[Hashable]:
        """Snapshot of the default segment's keys, least recently used first."""
        return self.default_segment.keys()

    def delete_where(self, predicate: Callable[[Hashable], bool]) -> int:
        return self.default_segment.delete_where(predicate)

    def clear(self) -> None:
        """Drop every entry of every segment (counters are kept)."""
        with self._lock:
            # A fresh LRUCache: Cache.clear() would popitem() and count evictions.
            self._data = _Data(self, self._bound, self._maxbytes is not None)
            self._heap, self._heap_limit = [], _HEAP_MIN_LIMIT
            for seg in (self.default_segment, *self._segments.values()):
                seg.size = 0

    def expire(self) -> int:
        """Drop every expired entry now; returns how many. Optional: memory, not correctness."""
        return self._prune()

    def now(self) -> float:
        """The store's clock (seconds, monotonic unless ``clock=`` was given)."""
        return self._now()

    def stats(self) -> dict[str, int]:
        """Counters summed over all segments, plus size and bytes (expired entries dropped)."""
        self._prune()
        total = dict.fromkeys(_COUNTERS, 0)
        for seg in (self.default_segment, *self._segments.values()):
            for k in _COUNTERS:
                total[k] += seg.counts[k]
        total["size"] = len(self._data)
        total["bytes"] = self.currbytes
        return total

    def reset_stats(self) -> None:
        for seg in (self.default_segment, *self._segments.values()):
            seg.reset_stats()

    @property
    def maxsize(self) -> int | None:
        return self._maxsize

    @property
    def maxbytes(self) -> int | None:
        return self._maxbytes

    @property
    def ttl(self) -> float | None:
        return self._ttl or None

    @property
    def currbytes(self) -> int:
        return int(self._data.currsize) if self._maxbytes is not None else 0

    def __len__(self) -> int:
        """Live entries of all segments (expired ones are dropped first, like TTLCache)."""
        self._prune()
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self.default_segment

    def __repr__(self) -> str:
        return f"<LRU size={len(self)} maxsize={self.maxsize} ttl={self.ttl}>"
