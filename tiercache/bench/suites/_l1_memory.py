"""Memory per entry of the ``l1`` suite (tracemalloc): the store alone, the whole ``@cached``.

Every contender is filled the same way (100k small-int keys) and measured the same way:
bytes still traced after the fill, per entry. The store alone is given keys and values built
beforehand, so only the store's own cost counts; the ``@cached`` entry counts what a call
leaves behind (entry, value slot, index), and a second figure also counts the argument and
result objects the calls create. cachebox and theine keep their tables in Rust-allocated
memory that tracemalloc cannot see, so they are reported as not measurable, not as 0 B.
"""

from __future__ import annotations

import functools
import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import cachetools

from tiercache.bench.base import Row, SuiteError, na_row, target_row
from tiercache.cache import TierCache
from tiercache.tiers.memory import MemoryTier

__all__ = ["CACHED_MAX_BYTES", "MEMORY_MAX_BYTES", "N_MEMORY", "memory_rows",
           "store_bytes_per_entry", "traced_bytes"]

MEMORY_MAX_BYTES = 120.0
CACHED_MAX_BYTES = 160.0
N_MEMORY = 100_000
_RUST = "its table lives in Rust-allocated memory that tracemalloc cannot see"


def _identity(x: int) -> int:
    return x


def _double(x: int) -> int:
    return x * 2


def traced_bytes(fill: Callable[[], Any], n: int = N_MEMORY) -> float:
    """Bytes still allocated after ``fill()`` (tracemalloc), per entry of ``n``."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = fill()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return (after - before) / n


def store_bytes_per_entry(kind: str, n: int = N_MEMORY) -> float:
    """tracemalloc bytes per entry of the store alone (keys/values built beforehand).

    ``kind``: ``"tiercache"`` (a MemoryTier segment), ``"cachetools"`` (``TTLCache``) or
    ``"cachetools-lru"`` (``LRUCache``).
    """
    keys = [(i,) for i in range(n)]
    values = list(range(n))

    def ours() -> Any:
        segment = MemoryTier(maxsize=n, ttl=60.0).segment("bench")
        for k, v in zip(keys, values, strict=True):
            segment.put(k, v)
        if len(segment) != n:
            raise SuiteError("the L1 store did not keep every entry")
        return segment

    def theirs() -> Any:
        store: cachetools.Cache[tuple[int], int] = (
            cachetools.TTLCache(n, ttl=60.0) if kind == "cachetools" else cachetools.LRUCache(n))
        for k, v in zip(keys, values, strict=True):
            store[k] = v
        if len(store) != n:
            raise SuiteError(f"{kind} did not keep every entry")
        return store

    return traced_bytes(ours if kind == "tiercache" else theirs, n)


def fresh_entries(n: int) -> int:
    """Entries of the "with the argument and result objects" figure (n / 5, >= 10k)."""
    return min(n, max(10_000, n // 5))


def _fill_with(filler: Callable[[Callable[[int], int]], Any],
               wrap: Callable[[Callable[[int], int]], Callable[[int], int]],
               func: Callable[[int], int]) -> Any:
    """Decorate ``func`` inside the traced window, so the wrapper's own cost counts too."""
    return filler(wrap(func))


def _cached_bytes(n: int) -> dict[str, float]:
    """Per ``@cached``-style entry: keys are the int argument (already alive)."""
    values = list(range(n))
    few = fresh_entries(n)

    def fill(fn: Callable[[int], int]) -> Callable[[int], int]:
        for i in values:
            fn(i)
        if fn(n - 1) != n - 1:
            raise SuiteError("a cached function returned a wrong value")
        return fn

    def fresh(fn: Callable[[int], int]) -> Callable[[int], int]:
        """Arguments and results created by the calls, kept alive by the cache (on ``few``
        entries: a traced @cached miss is slow, and this figure only adds the int objects)."""
        for i in range(few):
            fn(i + n)
        return fn

    out: dict[str, float] = {}
    for label, filler, func in (("", fill, _identity), ("_with_objects", fresh, _double)):
        count = n if label == "" else few
        cache = TierCache(l1=MemoryTier(maxsize=n + 10), namespace=f"bm{label}", bus=False)
        try:
            wraps: dict[str, Callable[[Callable[[int], int]], Callable[[int], int]]] = {
                "tiercache": cache.cached(ttl=60),
                "lru_cache": functools.lru_cache(maxsize=n),
                "cachetools": cachetools.cached(cachetools.LRUCache(n)),
            }
            for name, wrap in wraps.items():
                out[name + label] = traced_bytes(functools.partial(_fill_with, filler, wrap,
                                                                   func), count)
        finally:
            cache.close()
    return out


def memory_rows(n: int = N_MEMORY) -> list[Row]:
    """Store-alone and whole-entry rows for ``n`` int keys (``--quick``: fewer keys)."""
    ours_b = store_bytes_per_entry("tiercache", n)
    ttl_b = store_bytes_per_entry("cachetools", n)
    lru_b = store_bytes_per_entry("cachetools-lru", n)
    c = _cached_bytes(n)
    keys = f"{n // 1000}k int keys"
    store = target_row(
        f"L1 memory per entry ({keys})", ours_b, "B/entry", at_most=MEMORY_MAX_BYTES,
        summary=f"{ours_b:.1f} B/entry vs cachetools TTLCache {ttl_b:.1f}, LRUCache "
                f"{lru_b:.1f} B/entry (the store alone, TTL'd entries)",
        data={"ours_bytes": ours_b, "cachetools_ttlcache_bytes": ttl_b,
              "cachetools_lrucache_bytes": lru_b})
    cached = target_row(
        f"L1 memory per @cached entry ({keys})", c["tiercache"], "B/entry",
        at_most=CACHED_MAX_BYTES,
        summary=f"{c['tiercache']:.1f} B/entry vs functools.lru_cache {c['lru_cache']:.1f}, "
                f"cachetools.cached {c['cachetools']:.1f} B/entry (entry + value slot + index; "
                f"the int argument is the key); counting the argument and result ints the "
                f"calls create ({fresh_entries(n) // 1000}k entries): "
                f"{c['tiercache_with_objects']:.1f} vs "
                f"{c['lru_cache_with_objects']:.1f} vs {c['cachetools_with_objects']:.1f} B",
        data={"bytes": c["tiercache"], "lru_cache_bytes": c["lru_cache"],
              "cachetools_cached_bytes": c["cachetools"],
              "bytes_with_objects": c["tiercache_with_objects"],
              "lru_cache_bytes_with_objects": c["lru_cache_with_objects"],
              "cachetools_cached_bytes_with_objects": c["cachetools_with_objects"]})
    return [store, cached,
            na_row("L1 memory per entry vs cachebox", f"cachebox: {_RUST}"),
            na_row("L1 memory per entry vs theine", f"theine: {_RUST}")]
