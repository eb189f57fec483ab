"""The in-process L3 store: entries bounded by bytes, evicted by cost (GreedyDual-Size) or LRU.

Why lazy priorities: a hit must cost a few attribute increments, not a heap push.  An
entry's heap slot carries the priority it had when pushed; when eviction pops it and the
entry was hit since, it is re-pushed with its current priority (``clock + cost * hits /
size`` for ``"cost"``, the last access for ``"lru"``) instead of being evicted -- the same
order as eager updates, paid once per eviction round instead of once per hit.

Why a per-generation-key index: a write bumps a table's generation, which already makes the
table's entries unreachable; dropping them at once also frees their bytes, so a costly but
dead aggregate never outlives cheap live entries in the cost-aware order.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Any

__all__ = ["MemEntry", "MemoryStore"]


class MemEntry:
    __slots__ = ("cost", "deps", "expires", "hits", "last", "pushed", "size", "slot", "value")

    def __init__(self, value: Any, size: int, cost: float, expires: float,
                 deps: tuple[Hashable, ...]) -> None:
        self.value = value
        self.size = size
        self.cost = cost  # measured execution time, ns
        self.expires = expires
        self.deps = deps  # the generation keys the entry depends on
        self.hits = 1
        self.last = 0  # access sequence (lru)
        self.pushed = -1  # hits (cost) or last (lru) when its heap slot was pushed
        self.slot = -1  # sequence number of its live heap slot


class MemoryStore:
    """Entries by key; ``max_bytes`` of encoded size; ``eviction`` ``"cost"`` or ``"lru"``."""

    def __init__(self, max_bytes: int, eviction: str) -> None:
        if eviction not in ("cost", "lru"):
            raise ValueError("eviction must be 'cost' or 'lru'")
        self.max_bytes = max_bytes
        self.lru = eviction == "lru"
        self.entries: dict[Hashable, MemEntry] = {}
        self.nbytes = 0
        self.evictions = 0
        self.dropped = 0  # entries freed by a generation bump
        self.seq = 0
        self._clock = 0.0
        self._heap: list[tuple[float, int, Hashable]] = []
        self._by_dep: dict[Hashable, set[Hashable]] = {}

    def _priority(self, e: MemEntry) -> float:
        if self.lru:
            e.pushed = e.last
            return float(e.last)
        e.pushed = e.hits
        return self._clock + e.cost * e.hits / e.size

    def put(self, key: Hashable, entry: MemEntry) -> None:
        """Store (replacing), then evict down to ``max_bytes`` (never the new entry)."""
        self.drop(key)
        self.seq += 1
        entry.last = self.seq
        self.entries[key] = entry
        self.nbytes += entry.size
        for dep in entry.deps:
            keys = self._by_dep.get(dep)
            if keys is None:
                keys = self._by_dep[dep] = set()
            keys.add(key)
        entry.slot = self.seq
        heapq.heappush(self._heap, (self._priority(entry), self.seq, key))
        if self.nbytes > self.max_bytes:
            self._evict(key)
        if len(self._heap) > 4 * len(self.entries) + 64:
            self._rebuild()

    def _evict(self, keep: Hashable) -> None:
        heap = self._heap
        kept = None
        while self.nbytes > self.max_bytes and heap:
            prio, seq, key = heapq.heappop(heap)
            entry = self.entries.get(key)
            if entry is None or entry.slot != seq:
                continue  # dropped or replaced meanwhile: a stale slot
            current = entry.last if self.lru else entry.hits
            if current != entry.pushed:  # hit since its slot was pushed: re-rank it
                heapq.heappush(heap, (self._priority(entry), seq, key))
                continue
            if key == keep:
                kept = (prio, seq, key)
                continue
            if not self.lru:
                self._clock = prio  # GreedyDual: the clock rises to the evicted priority
            self.drop(key)
            self.evictions += 1
        if kept is not None:
            heapq.heappush(heap, kept)

    def _rebuild(self) -> None:
        """Superseded slots piled up (drops by bumps): one slot per live entry again."""
        heap = []
        for key, entry in self.entries.items():
            self.seq += 1
            entry.slot = self.seq
            heap.append((self._priority(entry), self.seq, key))
        heapq.heapify(heap)
        self._heap = heap

    def drop(self, key: Hashable) -> None:
        entry = self.entries.pop(key, None)
        if entry is None:
            return
        self.nbytes -= entry.size
        for dep in entry.deps:
            keys = self._by_dep.get(dep)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_dep[dep]

    def drop_dep(self, dep: Hashable) -> None:
        """A generation key was bumped: its entries are unreachable, free them now."""
        keys = self._by_dep.pop(dep, None)
        if keys:
            for key in list(keys):
                self.drop(key)
                self.dropped += 1

    def clear(self) -> None:
        self.entries.clear()
        self._heap.clear()
        self._by_dep.clear()
        self.nbytes = 0
