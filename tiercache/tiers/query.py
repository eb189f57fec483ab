"""L3: a query-result cache for the ShardedPool that never serves a result older than a write.

Why generations, not deletes: an entry's key contains the generation of every table the query
reads (and the shard epoch).  A write bumps the generations, which makes every older entry
unreachable at once -- no scan, no tag sets, no race between "delete" and a slow reader's
"store".  The reader captures the generations *before* sending the query and stores the result
only if they are unchanged when it returns; a write that commits during the query therefore
either bumps first (the reader sees the change and returns its result uncached) or bumps after
the reader stored (the entry sits under the old generation, unreachable by any later read).

The store is in-process memory bounded by bytes, evicted GreedyDual-Size style: an entry's
priority is ``clock + cost / size`` where cost is the measured execution time times its hits,
so a 40 ms aggregate outlives a pile of 50 µs point reads of the same size.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from tiercache import codec
from tiercache.tiers._sql import Analysis, analyze

__all__ = ["QueryCache"]


class _Entry:
    __slots__ = ("cost", "expires", "hits", "priority", "size", "value")

    def __init__(self, value: Any, size: int, cost: float, expires: float) -> None:
        self.value = value
        self.size = size
        self.cost = cost
        self.expires = expires
        self.hits = 1
        self.priority = 0.0


class QueryCache:
    """The L3 tier: ``create_sharded_pool(..., query_cache=QueryCache())``.

    ``store`` is ``"memory"`` (per process).  ``default_ttl`` applies to ``cache_ttl=True``;
    ``"adaptive"`` TTLs and explicit ones are capped at ``max_ttl``.  Results whose encoding
    exceeds ``max_entry_bytes`` are not stored (bypass ``too_large``); the store holds at most
    ``max_bytes`` of encoded size.  Reports as tier ``"l3"`` in :mod:`tiercache.metrics`.
    """

    name = "l3"

    def __init__(
        self, store: str = "memory", *, default_ttl: float = 30, max_ttl: float = 300,
        max_entry_bytes: int = 1_000_000, max_bytes: int = 256 << 20,
        eviction: str = "cost",
    ) -> None:
        if store != "memory":
            raise ValueError("QueryCache store must be 'memory' (a Redis store is not built yet)")
        if eviction not in ("cost", "lru"):
            raise ValueError("eviction must be 'cost' or 'lru'")
        if not 0 < default_ttl <= max_ttl:
            raise ValueError("need 0 < default_ttl <= max_ttl")
        self.store = store
        self.default_ttl = float(default_ttl)
        self.max_ttl = float(max_ttl)
        self.max_entry_bytes = int(max_entry_bytes)
        self.max_bytes = int(max_bytes)
        self.eviction = eviction
        self._entries: dict[bytes, _Entry] = {}
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._clock = 0.0
        self._bytes = 0
        self._gens: dict[tuple[str, str], int] = {}
        self._epochs: dict[str, int] = {}
        self._untrusted: set[str] = set()
        self._flights: dict[bytes, asyncio.Future[Any]] = {}
        self.metrics_name: str | None = None
        self._counts: Counter[str] = Counter()
        self._bypass: Counter[str] = Counter()
        self.db_time_saved_ns = 0

    # -- generations ---------------------------------------------------------------------

    def generations(self, shard: str, tables: Iterable[str]) -> tuple[int, ...]:
        """The shard epoch then each table's generation (sorted by name): part of the key."""
        gens = self._gens
        return (self._epochs.get(shard, 0),
                *(gens.get((shard, t), 0) for t in sorted(tables)))

    def bump(self, shard: str, tables: Iterable[str]) -> None:
        """A write to ``tables`` on ``shard`` committed: older entries become unreachable."""
        n = 0
        for table in tables:
            key = (shard, table)
            self._gens[key] = self._gens.get(key, 0) + 1
            n += 1
        self._counts["invalidations"] += n

    def bump_shard(self, shard: str) -> None:
        """A write of unknown reach (unparsable SQL, DDL, a transaction): the whole shard."""
        self._epochs[shard] = self._epochs.get(shard, 0) + 1
        self._counts["invalidations"] += 1
        self._counts["epoch_bumps"] += 1

    def set_trusted(self, shard: str, trusted: bool) -> None:
        """An untrusted shard (its LISTEN connection is down) bypasses the cache."""
        if trusted:
            self._untrusted.discard(shard)
        else:
            self._untrusted.add(shard)

    def note_write(self, shard: str, sql: str) -> None:
        """Bump what ``sql`` writes (the shard epoch if it is not a recognizable write)."""
        a = analyze(sql)
        if a.kind == "select" and a.refusal != "volatile" and not a.calls_functions:
            return
        if a.kind == "write" and a.tables:
            self.bump(shard, a.tables)
        else:
            # DDL, SET, DO, unparsable -- or a SELECT calling functions that may write.
            self.bump_shard(shard)

    # -- the read path -------------------------------------------------------------------

    def refusal(self, shard: str, analysis: Analysis) -> str | None:
        """Why this read is not cached, or ``None``."""
        if analysis.kind != "select":
            return "not_select" if analysis.refusal in (None, "write") else analysis.refusal
        if analysis.refusal is not None:
            return analysis.refusal
        if shard in self._untrusted:
            return "untrusted"
        return None

    def bypass(self, reason: str) -> None:
        self._bypass[reason] += 1

    def ttl_for(self, cache_ttl: float | str | bool, elapsed_ns: int, analysis: Analysis) -> float:
        """Explicit TTL (capped), ``True`` = default, ``"adaptive"`` = slow/complex live longer."""
        if cache_ttl == "adaptive":
            ms = elapsed_ns / 1e6
            ttl = self.default_ttl * (1 + math.log2(1 + ms)) * (1 + 0.1 * analysis.complexity)
            return max(1.0, min(self.max_ttl, ttl))
        if cache_ttl is True:
            return self.default_ttl
        if isinstance(cache_ttl, bool) or not isinstance(cache_ttl, (int, float)):
            raise TypeError("cache_ttl must be None, a number of seconds, True or 'adaptive'")
        if cache_ttl <= 0:
            raise ValueError("cache_ttl must be > 0")
        return min(float(cache_ttl), self.max_ttl)

    @staticmethod
    def make_key(shard: str, identity: str, method: str, sql: str, args: tuple[Any, ...],
                 extra: Any, gens: tuple[int, ...]) -> bytes:
        """Hash of everything that can change a result; params canonically encoded."""
        h = hashlib.blake2b(digest_size=20)
        for part in (shard, identity, method, sql):
            data = part.encode()
            h.update(len(data).to_bytes(4, "little"))
            h.update(data)
        try:
            h.update(codec.encode([list(args), extra, list(gens)]))
        except TypeError:
            h.update(repr((tuple((type(a).__qualname__, a) for a in args), extra, gens)).encode())
        return h.digest()

    async def read(
        self, shard: str, identity: str, method: str, sql: str, args: tuple[Any, ...],
        extra: Any, cache_ttl: float | str | bool, run: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Serve ``run()``'s result from the cache, or run it and store it if still valid."""
        analysis = analyze(sql)
        reason = self.refusal(shard, analysis)
        if reason is not None:
            self._bypass[reason] += 1
            return await run()
        tables = analysis.tables
        gens = self.generations(shard, tables)
        key = self.make_key(shard, identity, method, sql, args, extra, gens)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None:
            if entry.expires > now:
                self._counts["hits"] += 1
                entry.hits += 1
                self.db_time_saved_ns += int(entry.cost)
                self._touch(key, entry)
                return _copy(entry.value)
            self._drop(key)
        flight = self._flights.get(key)
        if flight is not None:
            self._counts["singleflight_waits"] += 1
            return _copy(await asyncio.shield(flight))
        self._counts["misses"] += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._flights[key] = fut
        try:
            t0 = time.perf_counter_ns()
            result = await run()
            elapsed = time.perf_counter_ns() - t0
        except BaseException as exc:
            self._flights.pop(key, None)
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        self._flights.pop(key, None)
        fut.set_result(result)
        if self.generations(shard, tables) != gens or shard in self._untrusted:
            self._counts["race_skips"] += 1  # a write committed meanwhile: don't store
            return result
        self._store(key, result, elapsed, self.ttl_for(cache_ttl, elapsed, analysis))
        return _copy(result)

    # -- the store -----------------------------------------------------------------------

    def _store(self, key: bytes, result: Any, elapsed_ns: int, ttl: float) -> None:
        try:
            size = len(codec.encode(result)) + 96
        except TypeError:
            self._bypass["unencodable"] += 1
            return
        if size > self.max_entry_bytes or size > self.max_bytes:
            self._bypass["too_large"] += 1
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        entry = _Entry(result, size, float(max(elapsed_ns, 1)), time.monotonic() + ttl)
        self._entries[key] = entry
        self._bytes += size
        self._touch(key, entry)
        self._counts["fills"] += 1
        keep: list[tuple[float, int, bytes]] = []
        while self._bytes > self.max_bytes and self._heap:
            item = heapq.heappop(self._heap)
            cur = self._entries.get(item[2])
            if cur is None or cur.priority != item[0]:
                continue  # a superseded heap slot
            if item[2] == key:
                keep.append(item)  # never evict what we are storing
                continue
            self._clock = item[0]  # GreedyDual: the clock rises to the evicted priority
            self._drop(item[2])
            self._counts["evictions"] += 1
        for item in keep:
            heapq.heappush(self._heap, item)

    def _touch(self, key: bytes, entry: _Entry) -> None:
        self._seq += 1
        if self.eviction == "lru":
            entry.priority = float(self._seq)
        else:
            entry.priority = self._clock + entry.cost * entry.hits / entry.size
        heapq.heappush(self._heap, (entry.priority, self._seq, key))
        if len(self._heap) > 4 * len(self._entries) + 64:  # superseded slots: rebuild
            self._heap = [(e.priority, i, k) for i, (k, e) in enumerate(self._entries.items())]
            heapq.heapify(self._heap)

    def _drop(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size

    def clear(self) -> None:
        """Drop every entry (generations are kept: they only ever increase)."""
        self._entries.clear()
        self._heap.clear()
        self._bytes = 0

    def stats(self) -> dict[str, Any]:
        """Counters for ``pool.query_cache.stats()`` and the metrics exporter (tier ``l3``)."""
        c = self._counts
        return {
            "name": self.metrics_name or "l3", "tier": "l3", "store": self.store,
            "hits": c["hits"], "misses": c["misses"], "sets": c["fills"],
            "bypass": dict(self._bypass), "bypass_total": sum(self._bypass.values()),
            "race_skips": c["race_skips"], "singleflight_waits": c["singleflight_waits"],
            "invalidations": c["invalidations"], "epoch_bumps": c["epoch_bumps"],
            "evictions": c["evictions"], "entries": len(self._entries), "bytes": self._bytes,
            "max_bytes": self.max_bytes, "untrusted_shards": sorted(self._untrusted),
            "db_time_saved_ms": self.db_time_saved_ns / 1e6,
        }

    def __repr__(self) -> str:
        return (f"<tiercache.QueryCache store={self.store!r} entries={len(self._entries)} "
                f"bytes={self._bytes}/{self.max_bytes}>")


def _copy(value: Any) -> Any:
    """A fresh list per caller (Records themselves are immutable)."""
    return list(value) if isinstance(value, list) else value
