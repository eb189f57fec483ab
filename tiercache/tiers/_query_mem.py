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
from decimal import Decimal
from typing import Any

from tiercache import codec

__all__ = ["MemEntry", "MemoryStore", "encoded_size"]


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


# -- sizes -----------------------------------------------------------------------------------
# Why not len(codec.encode(result)): a miss of a one-row point read spent ~16 us (on the bench
# machine) encoding a result only to learn its size -- about a tenth of the whole query through
# asyncpg.  The common result shapes (lists of Records of plain scalars) are sized exactly,
# from msgpack's rules; anything else is encoded (tests check both agree).

_RECORD: Any = None
try:
    import asyncpg

    _RECORD = asyncpg.Record
except ImportError:  # pragma: no cover - asyncpg is a dependency of the pool
    pass


def _head(n: int, small: int, sizes: tuple[int, ...]) -> int:
    """msgpack header bytes of a str/bin/array of ``n`` items (``small``: its fix range)."""
    if n <= small:
        return 1
    return sizes[0] if n <= 0xFF and sizes[0] else sizes[1] if n <= 0xFFFF else sizes[2]


def _ext(n: int) -> int:
    if n in (1, 2, 4, 8, 16):
        return 2 + n
    return 3 + n if n <= 0xFF else 4 + n if n <= 0xFFFF else 6 + n


def _scalar(v: Any) -> int:
    """Encoded bytes of one plain value; -1 when the codec must say (other types)."""
    t = type(v)
    if t is str:
        n = len(v) if v.isascii() else len(v.encode())  # lone surrogates: TypeError below
        return n + _head(n, 31, (2, 3, 5))
    if t is int:
        if -32 <= v <= 127:
            return 1
        if -(1 << 63) <= v < (1 << 64):
            a = v if v >= 0 else ~v  # int8/16/32/64 for negatives, uint8/16/32/64 else
            bits = a.bit_length() + (v < 0)
            return 2 if bits <= 8 else 3 if bits <= 16 else 5 if bits <= 32 else 9
        return -1
    if v is None or t is bool:
        return 1
    if t is float:
        return 9
    if t is Decimal:
        return _ext(len(str(v)))
    if t is bytes:
        return len(v) + (2 if len(v) <= 0xFF else 3 if len(v) <= 0xFFFF else 5)
    return -1


def encoded_size(value: Any) -> int:
    """``len(codec.encode(value))``, computed without encoding for plain results; raises
    ``TypeError`` when the value can't be encoded (like the codec)."""
    try:
        size = _fast_size(value)
    except UnicodeEncodeError as exc:
        raise TypeError(f"tiercache cannot encode str: {exc}") from exc
    return size if size >= 0 else len(codec.encode(value))


def _fast_size(value: Any) -> int:
    rows = value if type(value) is list else (value,)
    total = _head(len(rows), 15, (0, 3, 5)) if rows is value else 0
    schemas: dict[tuple[str, ...], int] = {}
    for row in rows:
        if type(row) is not _RECORD or _RECORD is None:
            n = _scalar(row)
            if n < 0:
                return -1
            total += n
            continue
        if _RECORD in codec._by_type:
            return -1  # a user codec for Records: theirs decides
        names = tuple(row.keys())
        ref = schemas.get(names)
        if ref is None:
            head = _head(len(names), 15, (0, 3, 5))
            for name in names:
                head += _scalar(name)
            schemas[names] = len(schemas)
        else:
            head = _scalar(ref)
        payload = _head(len(names) + 1, 15, (0, 3, 5)) + head
        for v in row.values():
            n = _scalar(v)
            if n < 0:
                return -1
            payload += n
        total += _ext(payload)
    return total
